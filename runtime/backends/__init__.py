"""Inference backends, one folder each (`<name>/runner.py` with a `RUNNER` class), imported only when a
bundle asks for them: a Pi never imports tensorrt, a server never imports tflite.

Every runner is a `runtime.backends.base.Runner`: built from an artefact path, `inputs`/`outputs`
as (name, dtype, shape), `infer({name: array}) -> {name: array}`, `close()`. Adding a backend is
adding its folder.
"""

import importlib
import pkgutil

from runtime.errors import BundleError


def available() -> list:
    return sorted(module.name for module in pkgutil.iter_modules(__path__) if module.ispkg)


def open_runner(backend: str, path, **options):
    if backend not in available():
        raise BundleError("no runtime backend {!r}; this runtime has {}".format(backend, ", ".join(available())))
    return importlib.import_module("{}.{}.runner".format(__name__, backend)).RUNNER(path, **options)
