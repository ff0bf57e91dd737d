"""TFLite runner: ai-edge-litert, else tflite-runtime, else TensorFlow's tf.lite. XNNPACK on.

Models have a fixed batch of 1 (what a camera gives); a batch is run frame by frame.
Quantization parameters are read from the interpreter, never assumed.
"""

from typing import Dict, Optional, Tuple

import numpy as np

from runtime.backends.base import Runner
from runtime.errors import BundleError

INTERPRETERS = ("ai_edge_litert.interpreter", "tflite_runtime.interpreter", "tensorflow.lite")


def load_interpreter_module():
    """The first TFLite interpreter module importable here, in the order of INTERPRETERS."""
    import importlib

    for module_name in INTERPRETERS:
        try:
            return importlib.import_module(module_name)
        except ImportError:
            continue
    raise BundleError("the tflite backend needs a TFLite interpreter: pip install ai-edge-litert "
                      "(or tflite-runtime, or tensorflow)")


class TFLiteRunner(Runner):
    def __init__(self, path, threads: Optional[int] = None, xnnpack: bool = True):
        """`xnnpack=False`: TFLite's builtin kernels only (int8 rounding differs a little between the two)."""
        module = load_interpreter_module()
        options = {} if xnnpack else {"experimental_op_resolver_type":
                                      module.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES}
        try:
            self.interpreter = module.Interpreter(model_path=str(path), num_threads=threads or 1, **options)
            self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as error:
            raise BundleError("TFLite cannot load {}: {}".format(path, error)) from error
        self._inputs = self.interpreter.get_input_details()
        self._outputs = self.interpreter.get_output_details()
        self.inputs = [(d["name"], np.dtype(d["dtype"]).name, [int(s) for s in d["shape"]]) for d in self._inputs]
        self.outputs = [(d["name"], np.dtype(d["dtype"]).name, [int(s) for s in d["shape"]]) for d in self._outputs]

    def quantization(self, name: str) -> Optional[Tuple[float, int]]:
        """(scale, zero point) of an integer input or output tensor; None for a float one."""
        for detail in self._inputs + self._outputs:
            if detail["name"] == name:
                scale, zero_point = detail["quantization"]
                return (float(scale), int(zero_point)) if scale else None
        raise BundleError("the TFLite model has no tensor {!r}".format(name))

    def infer_impl(self, feed: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        frames = len(next(iter(feed.values())))
        results = {detail["name"]: [] for detail in self._outputs}
        for row in range(frames):
            for detail in self._inputs:
                self.interpreter.set_tensor(detail["index"], feed[detail["name"]][row:row + 1])
            self.interpreter.invoke()
            for detail in self._outputs:
                results[detail["name"]].append(self.interpreter.get_tensor(detail["index"]))
        return {name: np.concatenate(arrays) for name, arrays in results.items()}

    def close(self) -> None:
        self.interpreter = None


RUNNER = TFLiteRunner
