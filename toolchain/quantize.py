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
from onnx import numpy_helper

from toolchain.errors import EdgesplitError
from toolchain.quiet import quiet

# TensorRT takes int8 constants only into convolutions and matrix products: an elementwise op's Q/DQ weight
# (a codec's scale in a Mul) fails its build ("Quantized constant ... is only allowed before DQ"; found by
# TensorRT-RTX's builder), so such weights are stored dequantized: the very values ONNX Runtime computes.
INT8_WEIGHTED = {"Conv", "ConvTranspose", "Gemm", "MatMul"}
# Where Q/DQ goes: None, at every op onnxruntime can quantize, inputs and outputs (batch norms, sums and
# concatenations too); else at the inputs and weights of those op types only, TensorRT's recommendation, the ops
# between them left to FP16 ("Q/DQ layer placement recommendations"). Which keeps a half's answers best depends
# on the half (a DenseNet's batch norms after concatenations round badly), so calibration tries both.
PLACEMENTS = {"every op": None, "weighted ops": sorted(INT8_WEIGHTED)}


def quantize_qdq(float_path: Path, qdq_path: Path, samples: dict[str, np.ndarray], thresholds: dict[str, float],
                 exclude: list[str] | None = None, placement: str = "every op") -> None:
    """Float ONNX → Q/DQ ONNX (int8 activations and per-channel weights, symmetric) at the ops `placement` names
    (PLACEMENTS): activation ranges from `thresholds` (|x| per tensor name, calibration.py); the nodes named in
    `exclude` stay in float."""
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
                            nodes_to_exclude=exclude or [], op_types_to_quantize=PLACEMENTS[placement],
                            calibrate_method=CalibrationMethod.MinMax,
                            # biases stay float: TensorRT's Q/DQ path is int8 only
                            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True,
                                           "QuantizeBias": False, "TensorQuantOverrides": overrides,
                                           "OpTypesToExcludeOutputQuantization": PLACEMENTS[placement] or []})
    except Exception as error:  # the tools raise many types; the build must name the stage
        raise EdgesplitError(f"onnxruntime could not quantize {float_path.name} to Q/DQ: {error}") from error
    quantized = onnx.load(str(qdq_path))
    found = next(entry.version for entry in quantized.opset_import if entry.domain in ("", "ai.onnx"))
    if found != opset:
        raise EdgesplitError(f"Q/DQ quantization moved {float_path.name} from opset {opset} to {found}")
    if dequantize_elementwise_weights(quantized):
        onnx.save(quantized, str(qdq_path))


def dequantize_elementwise_weights(model: onnx.ModelProto) -> int:
    """Fold each DequantizeLinear of a constant that feeds anything but INT8_WEIGHTED ops into a float
    constant; returns how many were folded."""
    graph = model.graph
    constants = {tensor.name: tensor for tensor in graph.initializer}
    consumers: dict[str, set[str]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, set()).add(node.op_type)
    folded = [node for node in graph.node if node.op_type == "DequantizeLinear" and node.input[0] in constants
              and not consumers.get(node.output[0], set()) <= INT8_WEIGHTED]
    for node in folded:
        graph.initializer.append(numpy_helper.from_array(_dequantized(node, constants), node.output[0]))
        graph.node.remove(node)
    used = {name for node in graph.node for name in node.input}
    for tensor in [tensor for tensor in graph.initializer if tensor.name not in used]:
        graph.initializer.remove(tensor)
    return len(folded)


def _dequantized(node: onnx.NodeProto, constants: dict) -> np.ndarray:
    """(q - zero point) * scale in float32, per the node's axis where the scale is per channel."""
    values, scale = (numpy_helper.to_array(constants[name]).astype(np.float32) for name in node.input[:2])
    zero_name = node.input[2] if len(node.input) > 2 else ""
    zero = numpy_helper.to_array(constants[zero_name]).astype(np.float32) if zero_name else np.float32(0)
    if scale.ndim == 1 and values.ndim > 1:
        axis = next((attribute.i for attribute in node.attribute if attribute.name == "axis"), 1)
        shape = [1] * values.ndim
        shape[axis] = -1
        scale, zero = scale.reshape(shape), np.reshape(zero, shape) if np.ndim(zero) else zero
    return ((values - zero) * scale).astype(np.float32)


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
            Requantizable.save(scratch, role, float_path, scored, calibrated.thresholds, calibrated.placement)
        return calibrated
    finally:
        float_path.unlink(missing_ok=True)
