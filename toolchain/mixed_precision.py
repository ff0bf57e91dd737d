"""The fewest, worst layers of an INT8 half kept in higher precision until the bundle meets its bound.

A backend's half that can be quantized again (its `requantizable`) says what higher precision means for it:
a Q/DQ half's layers without Q/DQ run in FP16 on TensorRT (the INT8 recipe sets the FP16 flag too), as
ModelOpt's and Polygraphy's per-layer debugging find them; a full-integer TFLite half's layers get int16
activations with int8 weights (16x8), still integer-only (toolchain/backends/tflite.py). Analysis: each
quantized layer's sensitivity, the relative error of the half's outputs when that layer alone is kept
(calibration inputs, against the float half). Policy: keep the 1, 2, 4, ... most sensitive, at most half of
them, until the whole bundle meets its bound. Mutation: the half's quantizer with those layers kept, every
range as calibrated.

A requantizable half has `higher` (the precision's name), `quantize(path, kept)`, `layers(path)` (what can be
kept, in graph order), `name(layer)` (how a user reads it), `error(path)` (relative error against the float
half on its samples), `macs()` (per layer, one sample), `cost(path, share)` (what keeping the layers in
`path`, that share of multiply-accumulates, costs in time, in words) and `entry(path)` (what the artefact's
manifest entry says of the file, updated once layers are kept).
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
    reference: list  # the float half's outputs on the samples

    higher = "fp16"

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
        float_path = scratch / f"{role}.float.onnx"
        return cls(float_path, samples, json.loads((scratch / f"{role}.ranges.json").read_text()),
                   run_all(float_path, samples, "all"))

    def quantize(self, qdq_path: Path, exclude: list[str]) -> None:
        quantize_qdq(self.float_path, qdq_path, self.samples, self.thresholds, exclude)

    def layers(self, qdq_path: Path) -> list[str]:
        return quantized_layers(qdq_path)

    @staticmethod
    def name(layer: str) -> str:
        return layer

    def error(self, qdq_path: Path) -> float:
        return answers(self.reference, run_all(qdq_path, self.samples, "disabled"))["relative_error"]

    def macs(self) -> dict[str, int]:
        return multiply_accumulates(self.float_path)

    @staticmethod
    def cost(qdq_path: Path, share: float) -> str:
        return f"about +{share / 2:.1%} compute time at INT8 twice FP16's rate"

    @staticmethod
    def entry(qdq_path: Path) -> dict:
        return {}


def quantized_layers(qdq_path: Path) -> list[str]:
    """Convolutions and matrix products whose weights the quantizer made int8 (a DequantizeLinear feeds them),
    in graph order; a layer kept in float reads its weights directly."""
    model = onnx.load(str(qdq_path))
    dequantized = {node.output[0] for node in model.graph.node if node.op_type == "DequantizeLinear"}
    return [node.name for node in model.graph.node if node.op_type in ("Conv", "ConvTranspose", "MatMul", "Gemm")
            and len(node.input) > 1 and node.input[1] in dequantized]


def sensitivities(half, layers: list[str], scratch: Path, suffix: str) -> list[tuple[str, float]]:
    """(layer, relative error of the half with that layer alone kept), most sensitive (least error) first."""
    errors = []
    for layer in layers:
        candidate = scratch / f"sensitivity{suffix}"
        half.quantize(candidate, [layer])
        errors.append((layer, half.error(candidate)))
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


def keep_in_higher_precision(half, path: Path, missed: Callable[[], str], what: str, advice: str = "") -> dict:
    """Requantizes `path` with the fewest most sensitive layers in the half's higher precision so that `missed()`
    (the bound the bundle misses with the file in place, '' for none) is ''; returns what was kept and what it
    costs. When even MAX_SHARE of its layers kept do not suffice, the refusal names the half (`what`), the bound
    still missed, the worst layers and `advice` (what else would pass)."""
    started = time.monotonic()
    half.quantize(path, [])  # every layer it can have in INT8, whatever an earlier search kept out
    layers = half.layers(path)
    ranked = [layer for layer, _ in sensitivities(half, layers, path.parent, path.suffix)]
    count, most = 1, max(1, int(len(ranked) * MAX_SHARE))
    while True:
        half.quantize(path, ranked[:count])
        still = missed()
        if not still:
            break
        if count == most:
            raise EdgesplitError(f"{what} misses the bound even with its {count} most sensitive of {len(ranked)} "
                                 f"int8 layers in {half.higher}, {', '.join(map(half.name, ranked[:3]))} first: "
                                 f"{still}{advice}")
        count = min(2 * count, most)
    macs = half.macs()
    share = sum(macs.get(layer, 0) for layer in ranked[:count]) / max(1, sum(macs.get(layer, 0) for layer in layers))
    return {"precision": half.higher, "layers": [half.name(layer) for layer in ranked[:count]], "of": len(layers), "macs_share": share,
            "cost": half.cost(path, share), "search_seconds": round(time.monotonic() - started, 1)}
