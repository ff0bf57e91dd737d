"""ONNX Runtime runner (CPU, or any execution provider the installed build has)."""

from typing import Dict, List, Optional

import numpy as np

from runtime.errors import BundleError

ONNX_DTYPES = {"tensor(float)": "float32", "tensor(uint8)": "uint8", "tensor(int8)": "int8",
               "tensor(float16)": "float16", "tensor(int64)": "int64"}


class OnnxRuntimeRunner:
    def __init__(self, path, threads: Optional[int] = None, providers: Optional[List[str]] = None):
        try:
            import onnxruntime
        except ImportError as error:
            raise BundleError("the onnxrt backend needs onnxruntime: pip install 'edgesplit[onnxrt]'") from error
        options = onnxruntime.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = onnxruntime.InferenceSession(
                str(path), options, providers=providers or ["CPUExecutionProvider"])
        except Exception as error:
            raise BundleError("ONNX Runtime cannot load {}: {}".format(path, error)) from error
        self.inputs = [(i.name, ONNX_DTYPES.get(i.type, i.type), i.shape) for i in self.session.get_inputs()]
        self.outputs = [(o.name, ONNX_DTYPES.get(o.type, o.type), o.shape) for o in self.session.get_outputs()]

    def infer(self, feed: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        names = [name for name, _, _ in self.outputs]
        return dict(zip(names, self.session.run(names, feed)))
