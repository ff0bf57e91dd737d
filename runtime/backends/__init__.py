"""Inference backends, one folder each, imported only when a bundle asks for them.

Every runner has the same small interface: built from an artefact path, `inputs`/`outputs`
as (name, dtype, shape) and `infer({name: array}) -> {name: array}`.
"""

import importlib

from runtime.errors import BundleError

RUNNERS = {
    "onnxrt": ("runtime.backends.onnxrt.runner", "OnnxRuntimeRunner"),
    "tflite": ("runtime.backends.tflite.runner", "TFLiteRunner"),
    "tensorrt": ("runtime.backends.tensorrt.runner", "TensorRTRunner"),
}


def open_runner(backend: str, path, **options):
    if backend not in RUNNERS:
        raise BundleError("no runtime backend {!r}; this runtime has {}".format(backend, ", ".join(sorted(RUNNERS))))
    module_name, class_name = RUNNERS[backend]
    return getattr(importlib.import_module(module_name), class_name)(path, **options)
