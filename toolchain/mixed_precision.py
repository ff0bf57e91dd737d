"""The fewest, worst layers of a Q/DQ INT8 half kept out of INT8 until the bundle meets its bound.

TensorRT runs a layer without Q/DQ around it in FP16 (the INT8 recipe sets the FP16 flag too): its mixed
precision, as ModelOpt's and Polygraphy's per-layer debugging find it. Analysis: each quantized layer's
sensitivity, the relative error of the half's outputs when that layer alone stays in float (calibration
inputs, against the float half). Policy: keep the 1, 2, 4, ... most sensitive in float, at most half of
them, until the whole bundle meets its bound. Mutation: onnxruntime's quantizer with those nodes excluded,
every other range as calibrated.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import onnx

from toolchain.calibration import answers, run_all
from toolchain.errors import EdgesplitError
from toolchain.quantize import quantize_qdq

MAX_SHARE = 0.5  # of a half's quantized layers, at most this many are kept in float


class Requantizable(NamedTuple):
    """What a Q/DQ half was made from, kept out of the bundle so it can be quantized again."""
    float_path: Path
    samples: dict  # input name -> the calibration inputs its ranges were scored on
    thresholds: dict  # tensor name -> |x| range, as calibrated

    @classmethod
    def save(cls, scratch: Path, role: str, float_path: Path, samples: dict, thresholds: dict) -> None:
        kept = scratch / f"{role}.float.onnx"
        float_path.replace(kept)
        np.savez(scratch / f"{role}.samples.npz", **samples)
        (scratch / f"{role}.ranges.json").write_text(json.dumps(thresholds))

    @classmethod
    def load(cls, scratch: Path, role: str) -> Requantizable | None:
        if not (scratch / f"{role}.float.onnx").exists():
            return None
        with np.load(scratch / f"{role}.samples.npz") as stored:
            samples = {name: stored[name] for name in stored.files}
        return cls(scratch / f"{role}.float.onnx", samples,
                   json.loads((scratch / f"{role}.ranges.json").read_text()))

    def quantize(self, qdq_path: Path, exclude: list[str]) -> None:
        quantize_qdq(self.float_path, qdq_path, self.samples, self.thresholds, exclude)


def quantized_layers(qdq_path: Path) -> list[str]:
    """Convolutions and matrix products whose weights the quantizer made int8 (a DequantizeLinear feeds them),
    in graph order; a layer kept in float reads its weights directly."""
    model = onnx.load(str(qdq_path))
    dequantized = {node.output[0] for node in model.graph.node if node.op_type == "DequantizeLinear"}
    return [node.name for node in model.graph.node if node.op_type in ("Conv", "ConvTranspose", "MatMul", "Gemm")
            and len(node.input) > 1 and node.input[1] in dequantized]


def sensitivities(half: Requantizable, layers: list[str], scratch: Path) -> list[tuple[str, float]]:
    """(layer, relative error of the half with that layer alone in float), most sensitive (least error) first."""
    reference = run_all(half.float_path, half.samples, "all")
    errors = []
    for layer in layers:
        candidate = scratch / "sensitivity.onnx"
        half.quantize(candidate, [layer])
        errors.append((layer, answers(reference, run_all(candidate, half.samples, "disabled"))["relative_error"]))
        candidate.unlink()
    return sorted(errors, key=lambda pair: pair[1])


def multiply_accumulates(float_path: Path) -> dict[str, int]:
    """Per convolution or matrix product, its multiply-accumulates for one sample (shapes inferred)."""
    model = onnx.shape_inference.infer_shapes(onnx.load(str(float_path)))
    weights = {tensor.name: list(tensor.dims) for tensor in model.graph.initializer}
    shapes = {value.name: [d.dim_value or 1 for d in value.type.tensor_type.shape.dim[1:]]
              for value in [*model.graph.value_info, *model.graph.output]}
    counts = {}
    for node in model.graph.node:
        weight = next((weights[name] for name in node.input[1:2] if name in weights), None)
        if weight is None or node.output[0] not in shapes:
            continue
        transposed = any(attribute.name == "transB" and attribute.i for attribute in node.attribute)
        per_output = int(np.prod(weight[1:])) if node.op_type.startswith("Conv") else weight[1 if transposed else 0]
        counts[node.name] = int(np.prod(shapes[node.output[0]])) * per_output
    return counts


def keep_in_float(half: Requantizable, qdq_path: Path, meets: Callable[[], bool], what: str) -> dict:
    """Requantizes `qdq_path` with the fewest most sensitive layers in float so that `meets()` (the bundle's
    bound, measured with the file in place) holds; returns what was kept and what it costs. `what` names the
    half in the refusal when even MAX_SHARE of its layers in float do not suffice."""
    started = time.monotonic()
    half.quantize(qdq_path, [])  # every layer it can have in INT8, whatever an earlier search kept out
    layers = quantized_layers(qdq_path)
    ranked = [layer for layer, _ in sensitivities(half, layers, qdq_path.parent)]
    count, most = 1, max(1, int(len(ranked) * MAX_SHARE))
    while True:
        half.quantize(qdq_path, ranked[:count])
        if meets():
            break
        if count == most:
            raise EdgesplitError(f"{what} misses the bound even with its {count} most sensitive of {len(ranked)} "
                                 f"int8 layers in fp16: {', '.join(ranked[:3])} first")
        count = min(2 * count, most)
    macs = multiply_accumulates(half.float_path)
    share = sum(macs.get(layer, 0) for layer in ranked[:count]) / max(1, sum(macs.get(layer, 0) for layer in layers))
    return {"layers": ranked[:count], "of": len(layers), "macs_share": share,
            "search_seconds": round(time.monotonic() - started, 1)}
