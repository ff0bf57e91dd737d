"""Results the toolchain can reuse across processes, stored under a key made from the content they come from.

Off unless the environment variable EDGESPLIT_CACHE names a folder. A key hashes everything a result depends
on (the model's weights and architecture, the images, the versions of the code that computes it), so a
changed input is a miss, never a stale hit. The tests point it at one folder per run: the benchmark
processes they start then reuse what the run has already computed.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import tempfile
from importlib import metadata, util
from pathlib import Path
from typing import Callable

import numpy as np

CACHE_ENV = "EDGESPLIT_CACHE"


def folder(kind: str) -> Path | None:
    """The folder of one kind of result, created; None when caching is off."""
    root = os.environ.get(CACHE_ENV)
    if not root:
        return None
    path = Path(root).expanduser() / kind
    path.mkdir(parents=True, exist_ok=True)
    return path


def content_key(*parts) -> str:
    """A hash of JSON-able parts; arrays among them count by their dtype, shape and bytes."""
    digest = hashlib.sha256()
    for part in parts:
        if isinstance(part, np.ndarray):
            digest.update(f"{part.dtype.str}{part.shape}".encode())
            digest.update(np.ascontiguousarray(part).data)
        else:
            digest.update(json.dumps(part, sort_keys=True, default=str).encode())
    return digest.hexdigest()


@functools.lru_cache(maxsize=None)
def code_version() -> str:
    """edgesplit's own source (toolchain, runtime, targets) and the version of every installed distribution."""
    digest = hashlib.sha256()
    for package in ("toolchain", "runtime", "targets"):
        for location in util.find_spec(package).submodule_search_locations:
            for path in sorted(Path(location).rglob("*.py")):
                digest.update(str(path.relative_to(location)).encode())
                digest.update(path.read_bytes())
    versions = sorted(f"{d.metadata['Name']}=={d.version}" for d in metadata.distributions())
    digest.update("\n".join(versions).encode())
    return digest.hexdigest()


def module_code(module) -> list[str]:
    """What a torch module computes besides its weights: its layers and the source of every class in it (a
    traced graph's generated code included), so an edited forward() changes the key."""
    import inspect

    parts = [repr(module)]
    for cls in sorted({type(m) for m in module.modules()}, key=lambda c: f"{c.__module__}.{c.__qualname__}"):
        try:
            parts.append(inspect.getsource(cls))
        except (OSError, TypeError):  # built in, or defined where no source is kept
            parts.append(f"{cls.__module__}.{cls.__qualname__}")
    parts += [m.code for m in module.modules() if hasattr(m, "code") and isinstance(m.code, str)]
    return parts


def stored_file(root: Path, kind: str, key: str, suffix: str, make: Callable[[Path], None]) -> Path:
    """root/kind/<key><suffix>, made by `make(path)` first where missing: written aside and renamed, so a process
    reading the key meanwhile sees all of it or nothing."""
    directory = root / kind
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{key}{suffix}"
    if not path.exists():
        descriptor, aside = tempfile.mkstemp(dir=directory, suffix=suffix)
        os.close(descriptor)
        make(Path(aside))
        os.replace(aside, path)
    return path


def arrays(kind: str, key: str, compute: Callable[[], list[np.ndarray]]) -> list[np.ndarray]:
    """`compute()`, or what it returned for the same key before (read back without pickle)."""
    root = os.environ.get(CACHE_ENV)
    if not root:
        return compute()
    path = stored_file(Path(root).expanduser(), kind, key, ".npz",
                       lambda aside: np.savez(aside, *compute()))
    with np.load(path, allow_pickle=False) as stored:
        return [stored[f"arr_{index}"] for index in range(len(stored.files))]


def stored_directory(kind: str, key: str) -> Path | None:
    """A folder stored under the key before, or None."""
    root = folder(kind)
    return root / key if root is not None and (root / key).is_dir() else None


def store_directory(kind: str, key: str, source: Path) -> None:
    """A copy of `source` under the key (copied aside and renamed, so a reader never sees half of it)."""
    root = folder(kind)
    if root is None or (root / key).exists():
        return
    aside = Path(tempfile.mkdtemp(dir=root))
    shutil.copytree(source, aside / key)
    try:
        (aside / key).rename(root / key)
    except OSError:  # another process stored the same key meanwhile
        pass
    shutil.rmtree(aside, ignore_errors=True)
