"""Writing bundles: hash every artefact into the manifest, then move the directory into place."""

from __future__ import annotations

import json
import shutil
import tarfile
import tempfile
from pathlib import Path

from runtime.bundle import MANIFEST_NAME, compute_bundle_id, file_sha256
from toolchain.errors import BundleError


def staging_directory(output: Path) -> Path:
    """An empty directory beside `output`; the bundle appears at `output` only when complete."""
    staging = output.with_name(output.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    return staging


def finish_bundle(staging: Path, output: Path, manifest: dict, tar: bool) -> dict:
    """Add file hashes and the bundle id, write manifest.json, replace `output`, optionally tar it."""
    manifest["files"] = {
        path.name: {"sha256": file_sha256(path), "bytes": path.stat().st_size}
        for path in sorted(staging.iterdir())
    }
    manifest["bundle_id"] = compute_bundle_id(manifest)
    (staging / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    if output.exists():
        if not (output / MANIFEST_NAME).exists() and any(output.iterdir()):
            raise BundleError(f"{output} exists and is not a bundle: refusing to replace it")
        shutil.rmtree(output)
    staging.rename(output)
    if tar:
        pack_tar(output, output.with_suffix(".tar"))
    return manifest


def pack_tar(directory: Path, archive: Path, compressed: bool = False) -> None:
    """A bundle directory as a .tar of plain top-level files (gzip-compressed if asked), as the runtime reads."""
    with tarfile.open(archive, "w:gz" if compressed else "w") as packed:
        for path in sorted(directory.iterdir()):
            packed.add(path, arcname=path.name)


def sign_bundle(path: Path, private_key: Path) -> None:
    """Sign a bundle directory's manifest (Ed25519, runtime/signing.py); a .tar is repacked with the signature."""
    from runtime.bundle import extract_tar, load_bundle
    from runtime.signing import sign_manifest

    if path.is_dir():
        load_bundle(path)  # only a bundle that verifies is worth a signature
        sign_manifest(path, private_key)
        return
    with tempfile.TemporaryDirectory() as scratch:
        directory = extract_tar(path, Path(scratch) / "bundle")
        load_bundle(directory)
        sign_manifest(directory, private_key)
        packed = path.with_name(path.name + ".partial")
        pack_tar(directory, packed, compressed=path.name.endswith((".gz", ".tgz")))  # repacked as it came
        packed.replace(path)
