"""ONNX Runtime runner (CPU, or any execution provider the installed build has).

`graph_optimization` picks ONNX Runtime's graph optimization level. "disabled" keeps Q/DQ
nodes as separate quantize/dequantize ops (fake quantization in float): how TensorRT's int8
arithmetic behaves, on every CPU. From "extended" up, ONNX Runtime fuses Q/DQ into its own
int8 kernels, whose results depend on the host (on AVX2 without VNNI its u8s8 path saturates).
"""

from typing import Dict, List, Optional

import numpy as np

from runtime.backends.base import Runner
from runtime.errors import BundleError

ONNX_DTYPES = {"tensor(float)": "float32", "tensor(uint8)": "uint8", "tensor(int8)": "int8",
               "tensor(float16)": "float16", "tensor(int64)": "int64"}
GRAPH_OPTIMIZATIONS = {"disabled": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC",
                       "extended": "ORT_ENABLE_EXTENDED", "all": "ORT_ENABLE_ALL"}


class OnnxRuntimeRunner(Runner):
    def __init__(self, path, threads: Optional[int] = None, providers: Optional[List[str]] = None,
                 graph_optimization: str = "all"):
        try:
            import onnxruntime
        except ImportError as error:
            raise BundleError("the onnxrt backend needs onnxruntime: pip install 'edgesplit[onnxrt]'") from error
        if graph_optimization not in GRAPH_OPTIMIZATIONS:
            raise BundleError("unknown ONNX Runtime graph optimization {!r}; levels: {}".format(
                graph_optimization, ", ".join(GRAPH_OPTIMIZATIONS)))
        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = getattr(onnxruntime.GraphOptimizationLevel,
                                                   GRAPH_OPTIMIZATIONS[graph_optimization])
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = onnxruntime.InferenceSession(
                str(path), options, providers=providers or ["CPUExecutionProvider"])
        except Exception as error:
            raise BundleError("ONNX Runtime cannot load {}: {}".format(path, error)) from error
        self.inputs = [(i.name, ONNX_DTYPES.get(i.type, i.type), i.shape) for i in self.session.get_inputs()]
        self.outputs = [(o.name, ONNX_DTYPES.get(o.type, o.type), o.shape) for o in self.session.get_outputs()]

    def infer_impl(self, feed: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        names = [name for name, _, _ in self.outputs]
        return dict(zip(names, self.session.run(names, feed)))

    def close(self) -> None:
        self.session = None


RUNNER = OnnxRuntimeRunner
