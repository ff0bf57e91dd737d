"""The fewest, worst layers of an INT8 half kept in higher precision until the bundle meets its bound.

A backend's half that can be quantized again (its `requantizable`) says what higher precision means for it:
a Q/DQ half's layers without Q/DQ run in FP16 on TensorRT (the INT8 recipe sets the FP16 flag too), as
ModelOpt's and Polygraphy's per-layer debugging find them; a full-integer TFLite half's layers get int16
activations with int8 weights (16x8), still integer-only (toolchain/backends/tflite.py). Analysis: each
quantized layer's sensitivity, the relative error of the half's outputs when that layer alone is kept
(calibration inputs, against the float half); a half with many layers is screened first in one run, each
layer's own error at its output, and only its worst are measured so. Policy: keep the 1, 2, 4, ... most sensitive, at most half of
them, until the whole bundle meets its bound. Mutation: the half's quantizer with those layers kept, every
range as calibrated.

A requantizable half has `higher` (the precision's name), `quantize(path, kept)`, `layers(path)` (what can be
kept, in graph order), `name(layer)` (how a user reads it), `error(path)` (relative error against the float
half on its samples), `screen(path)` (each layer's error estimated from one run, or None where every layer
is to be measured alone), `macs()` (per layer, one sample), `cost(path, share)` (what keeping the layers in
`path`, that share of multiply-accumulates, costs in time, in words) and `entry(path)` (what the artefact's
manifest entry says of the file, updated once layers are kept).
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import onnx

from toolchain.calibration import answers, run_all
from toolchain.errors import EdgesplitError
from toolchain.quantize import INT8_WEIGHTED, quantize_qdq

MAX_SHARE = 0.5  # of a half's quantized layers, at most this many are kept in float
MEASURED = 8  # layers measured one by one, of those a one-run screen found worst
QDQ = ("QuantizeLinear", "DequantizeLinear")
SCREEN_BATCH = 2  # samples whose every layer's activations the screen holds at once (a ResNet-50's: ~300 MB)


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

    def screen(self, qdq_path: Path) -> dict[str, float]:
        return own_errors(self.float_path, qdq_path, self.samples, self.layers(qdq_path))

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
    return [node.name for node in model.graph.node if node.op_type in INT8_WEIGHTED
            and len(node.input) > 1 and node.input[1] in dequantized]


def own_errors(float_path: Path, qdq_path: Path, samples: dict, layers: list[str]) -> dict[str, float]:
    """Each quantized layer's own error, from one run of each half with every layer's input and output exposed
    (Polygraphy's layerwise comparison): the relative error at its output less that at its input, what it adds
    rather than inherits. Samples go SCREEN_BATCH at a time: a 224x224 ResNet-50's activations for 64 inputs
    would take 10 GB."""
    qdq = onnx.load(str(qdq_path), load_external_data=False)
    producers = {output: node for node in qdq.graph.node for output in node.output}
    edges = {layer.name: (source(producers, layer.input[0]), layer.output[0])
             for layer in qdq.graph.node if layer.name in layers}
    tensors = float_names({name for edge in edges.values() for name in edge}, qdq, float_path)
    squares = {name: np.zeros(2) for name in tensors}  # (|deployed - reference|^2, |reference|^2)
    with tempfile.TemporaryDirectory() as scratch:
        float_run = exposing(float_path, sorted(set(tensors.values())), Path(scratch) / "float.onnx")
        qdq_run = exposing(qdq_path, sorted(tensors), Path(scratch) / "qdq.onnx")
        count = len(next(iter(samples.values())))
        for start in range(0, count, SCREEN_BATCH):
            batch = {name: array[start:start + SCREEN_BATCH] for name, array in samples.items()}
            reference, deployed = run_named(float_run, batch, "all"), run_named(qdq_run, batch, "disabled")
            for name, float_name in tensors.items():
                expected = reference[float_name].astype(np.float64)
                squares[name] += (np.sum((deployed[name] - expected) ** 2), np.sum(expected ** 2))
    errors = {name: float(np.sqrt(found / total)) if total else 0.0 for name, (found, total) in squares.items()}
    # a graph input has no error of its own
    return {layer: errors.get(output, 0.0) - errors.get(input_, 0.0) for layer, (input_, output) in edges.items()}


def source(producers: dict, name: str) -> str:
    """The float tensor a dequantized input was quantized from (`producers`: tensor name -> the node writing it)."""
    while name in producers and producers[name].op_type in QDQ:
        name = producers[name].input[0]
    return name


def float_names(names: set[str], qdq, float_path: Path) -> dict[str, str]:
    """Each of the Q/DQ half's tensors `names` that the float half computes too, and its name there: a layer
    writing a graph output writes it under another name, quantized and dequantized to the output's."""
    computed = {output for node in onnx.load(str(float_path), load_external_data=False).graph.node
                for output in node.output}
    consumers = {name: node for node in qdq.graph.node for name in node.input}
    found = {}
    for name in names:
        there = name
        while there not in computed and there in consumers and consumers[there].op_type in QDQ:
            there = consumers[there].output[0]
        if there in computed:
            found[name] = there
    return found


def exposing(path: Path, names: list[str], target: Path) -> Path:
    """A copy of the model at `path` with `names` among its outputs too."""
    model = onnx.load(str(path))
    present = {value.name for value in model.graph.output}
    model.graph.output.extend(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
                              for name in names if name not in present)
    onnx.save(model, str(target))
    return target


def run_named(path: Path, samples: dict, graph_optimization: str) -> dict[str, np.ndarray]:
    from runtime.backends.onnxrt.runner import OnnxRuntimeRunner

    return OnnxRuntimeRunner(path, graph_optimization=graph_optimization).infer_impl(samples)


def ranked_layers(half, layers: list[str], path: Path) -> tuple[list[str], int]:
    """The half's layers, most sensitive first, and how many were measured one by one: all of them, or where
    the half can screen its layers in one run, the MEASURED worst of that screen (the rest follow in the
    screen's order), so a 53-layer half costs 8 quantizations rather than 53."""
    screened = half.screen(path) if len(layers) > MEASURED else None
    if not screened:
        return [layer for layer, _ in sensitivities(half, layers, path.parent, path.suffix)], len(layers)
    order = sorted(layers, key=lambda layer: -screened[layer])
    measured = [layer for layer, _ in sensitivities(half, order[:MEASURED], path.parent, path.suffix)]
    return measured + order[MEASURED:], MEASURED


def sensitivities(half, layers: list[str], scratch: Path, suffix: str) -> list[tuple[str, float]]:
    """(layer, relative error of the half with that layer alone kept), most sensitive (least error) first."""
    errors = []
    for layer in layers:
        candidate = scratch / f"sensitivity{suffix}"
        half.quantize(candidate, [layer])
        errors.append((layer, half.error(candidate)))
        candidate.unlink()
    return sorted(errors, key=lambda pair: pair[1])


def attribute(node, name: str, default):
    found = next((onnx.helper.get_attribute_value(item) for item in node.attribute if item.name == name), None)
    return default if found is None else found


def transposed_convolution(weight: list[int], node) -> int:
    """[in, out / groups, kernel...]: each input element meets the kernel once, spread over stride^2 outputs."""
    per_input = weight[0] // attribute(node, "group", 1) * int(np.prod(weight[2:]))
    return max(1, per_input // int(np.prod(attribute(node, "strides", [1]))))


# multiply-accumulates per output element of a weighted layer, from its weight's dims
PER_OUTPUT = {
    "Conv": lambda weight, node: int(np.prod(weight[1:])),  # [out, in / groups, kernel...]
    "ConvTranspose": transposed_convolution,
    "Gemm": lambda weight, node: weight[1] if attribute(node, "transB", 0) else weight[0],
    "MatMul": lambda weight, node: weight[-2] if len(weight) > 1 else weight[0],  # [..., in, out]
}


def multiply_accumulates(float_path: Path) -> dict[str, int]:
    """Per convolution or matrix product with a constant weight, its multiply-accumulates for one sample (shapes
    inferred); other ops with a constant second input (an Add's bias, a Resize's scales) are not layers."""
    model = onnx.shape_inference.infer_shapes(onnx.load(str(float_path)))
    weights = {tensor.name: list(tensor.dims) for tensor in model.graph.initializer}
    shapes = {value.name: [d.dim_value or 1 for d in value.type.tensor_type.shape.dim[1:]]
              for value in [*model.graph.value_info, *model.graph.output]}
    counts = {}
    for node in model.graph.node:
        weight = next((weights[name] for name in node.input[1:2] if name in weights), None)
        if node.op_type not in PER_OUTPUT or weight is None or node.output[0] not in shapes:
            continue
        counts[node.name] = int(np.prod(shapes[node.output[0]])) * PER_OUTPUT[node.op_type](weight, node)
    return counts


def keep_in_higher_precision(half, path: Path, missed: Callable[[], str], what: str, advice: str = "") -> dict:
    """Requantizes `path` with the fewest most sensitive layers in the half's higher precision so that `missed()`
    (the bound the bundle misses with the file in place, '' for none) is ''; returns what was kept and what it
    costs. When even MAX_SHARE of its layers kept do not suffice, the refusal names the half (`what`), the bound
    still missed, the worst layers and `advice` (what else would pass). That share is tried first, so a refusal
    costs one check of the bound, not one per doubling (six for a 224x224 ResNet-50's 53 layers); a pass costs one more."""
    started = time.monotonic()
    half.quantize(path, [])  # every layer it can have in INT8, whatever an earlier search kept out
    layers = half.layers(path)
    ranked, measured = ranked_layers(half, layers, path)
    most = max(1, int(len(ranked) * MAX_SHARE))
    half.quantize(path, ranked[:most])
    still = missed()
    if still:
        raise EdgesplitError(f"{what} misses the bound even with its {most} most sensitive of {len(ranked)} "
                             f"int8 layers in {half.higher}, {', '.join(map(half.name, ranked[:3]))} first: "
                             f"{still}{advice}")
    count, tried = 1, most
    while count < most:
        half.quantize(path, ranked[:count])
        tried = count
        if not missed():
            break
        count = min(2 * count, most)
    if tried != count:
        half.quantize(path, ranked[:count])  # the file holds the last count that missed
    macs = half.macs()
    share = sum(macs.get(layer, 0) for layer in ranked[:count]) / max(1, sum(macs.get(layer, 0) for layer in layers))
    return {"precision": half.higher, "layers": [half.name(layer) for layer in ranked[:count]], "of": len(layers),
            "measured": measured, "macs_share": share,
            "cost": half.cost(path, share), "search_seconds": round(time.monotonic() - started, 1)}
