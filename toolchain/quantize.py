"""INT8 for TensorRT, prepared on a CPU: explicit Q/DQ ONNX from onnxruntime's quantization tools.

TensorRT 10 deprecated its implicit INT8 calibrators and 11 removed them; explicit
QuantizeLinear/DequantizeLinear pairs (symmetric int8, zero point 0, per-channel weights) are
the INT8 path every TensorRT >= 8 builds. onnxruntime runs the same Q/DQ model on a CPU, so
its accuracy is checked here before any GPU sees it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from toolchain.errors import EdgesplitError
from toolchain.quiet import quiet


class _Feed:
    """onnxruntime's CalibrationDataReader protocol over arrays (one per input), one sample per call."""

    def __init__(self, samples: dict[str, np.ndarray]):
        count = len(next(iter(samples.values())))
        self.rows = iter([{name: array[i:i + 1] for name, array in samples.items()} for i in range(count)])

    def get_next(self):
        return next(self.rows, None)


def quantize_qdq(float_path: Path, qdq_path: Path, samples: dict[str, np.ndarray]) -> None:
    """Float ONNX → Q/DQ ONNX (int8 activations and per-channel weights, symmetric), MinMax on `samples`
    (an array per input name)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    model = onnx.load(str(float_path))
    opset = next(entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx"))
    try:
        with quiet():  # "please consider pre-processing" warnings, every time
            quantize_static(str(float_path), str(qdq_path), _Feed(samples), quant_format=QuantFormat.QDQ,
                            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, per_channel=True,
                            calibrate_method=CalibrationMethod.MinMax,
                            # biases stay float: TensorRT's Q/DQ path is int8 only
                            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True,
                                           "QuantizeBias": False})
    except Exception as error:  # the tools raise many types; the build must name the stage
        raise EdgesplitError(f"onnxruntime could not quantize {float_path.name} to Q/DQ: {error}") from error
    quantized = onnx.load(str(qdq_path))
    found = next(entry.version for entry in quantized.opset_import if entry.domain in ("", "ai.onnx"))
    if found != opset:
        raise EdgesplitError(f"Q/DQ quantization moved {float_path.name} from opset {opset} to {found}")


def quantize_in_place(path: Path, samples: dict[str, np.ndarray]) -> None:
    """Replace the float ONNX at `path` by its Q/DQ INT8 version calibrated on `samples`."""
    float_path = path.with_suffix(".float.onnx")
    path.rename(float_path)
    try:
        quantize_qdq(float_path, path, samples)
    finally:
        float_path.unlink()
