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


def quantize_qdq(float_path: Path, qdq_path: Path, samples: dict[str, np.ndarray], thresholds: dict[str, float],
                 exclude: list[str] | None = None) -> None:
    """Float ONNX → Q/DQ ONNX (int8 activations and per-channel weights, symmetric): activation ranges from
    `thresholds` (|x| per tensor name, calibration.py); the nodes named in `exclude` stay in float."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from toolchain.calibration import CalibrationFeed

    overrides = {name: [{"rmin": np.float32(-limit), "rmax": np.float32(limit)}] for name, limit in thresholds.items()}
    samples = {name: array[:1] for name, array in samples.items()}  # ranges given: its pass only finds the tensors

    model = onnx.load(str(float_path))
    opset = next(entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx"))
    try:
        with quiet():  # "please consider pre-processing" warnings, every time
            quantize_static(str(float_path), str(qdq_path), CalibrationFeed(samples), quant_format=QuantFormat.QDQ,
                            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, per_channel=True,
                            nodes_to_exclude=exclude or [],
                            calibrate_method=CalibrationMethod.MinMax,
                            # biases stay float: TensorRT's Q/DQ path is int8 only
                            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True,
                                           "QuantizeBias": False, "TensorQuantOverrides": overrides})
    except Exception as error:  # the tools raise many types; the build must name the stage
        raise EdgesplitError(f"onnxruntime could not quantize {float_path.name} to Q/DQ: {error}") from error
    quantized = onnx.load(str(qdq_path))
    found = next(entry.version for entry in quantized.opset_import if entry.domain in ("", "ai.onnx"))
    if found != opset:
        raise EdgesplitError(f"Q/DQ quantization moved {float_path.name} from opset {opset} to {found}")


def quantize_in_place(path: Path, samples: dict[str, np.ndarray], scratch: Path | None = None, role: str = ""):
    """Replace the float ONNX at `path` by its Q/DQ INT8 version calibrated on `samples` with the activation
    ranges that keep the float half's answers best; returns what was chosen (calibration.Calibrated). With a
    `scratch` folder, what quantizing it again needs is kept there for `role` (mixed_precision.Requantizable)."""
    from toolchain.calibration import SCORED_SAMPLES, calibrate
    from toolchain.mixed_precision import Requantizable

    float_path = path.with_suffix(".float.onnx")
    path.rename(float_path)
    try:
        calibrated = calibrate(float_path, path, samples, quantize_qdq)
        if scratch is not None:
            scored = {name: array[:SCORED_SAMPLES] for name, array in samples.items()}
            Requantizable.save(scratch, role, float_path, scored, calibrated.thresholds)
        return calibrated
    finally:
        float_path.unlink(missing_ok=True)
