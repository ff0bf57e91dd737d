"""The fewest, worst layers of an INT8 half kept in higher precision until the bundle meets its bound.

A backend's half that can be quantized again (its `requantizable`) says what higher precision means for it:
a Q/DQ half's layers without Q/DQ run in FP16 on TensorRT (the INT8 recipe sets the FP16 flag too), as
ModelOpt's and Polygraphy's per-layer debugging find them; a full-integer TFLite half's layers get int16
activations with int8 weights (16x8), still integer-only (toolchain/backends/tflite.py). Analysis: each
quantized layer's sensitivity, the relative error of the half's outputs when that layer alone is kept
(calibration inputs, against the float half); a half with many layers is screened first in one run, each
layer's own error at its output, and only its worst are measured so. A Q/DQ half's layers are all its quantized
ops, not only the weighted ones: a batch norm after a concatenation (DenseNet's), a squeeze-excitation's
sigmoid and product, a residual sum each add their own rounding. Policy: keep the 1, 2, 4, ... most sensitive,
at most those holding half the half's multiply-accumulates (past that the half is an FP16 half with Q/DQ left
around its cheap ops), until the whole bundle meets its bound; where both halves are at fault, each keeps that
many of its own at every step. Mutation: the half's quantizer with those layers kept, every range as calibrated.

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
from toolchain.quantize import quantize_qdq

MAX_SHARE = 0.5  # of a half's multiply-accumulates, at most this share is kept in float
MEASURED = 8  # layers measured one by one, of those a one-run screen found worst
QDQ = ("QuantizeLinear", "DequantizeLinear")
SCREEN_BATCH = 2  # samples whose every layer's activations the screen holds at once (a ResNet-50's: ~300 MB)


class Requantizable(NamedTuple):
    """What a Q/DQ half was made from, kept out of the bundle so it can be quantized again."""
    float_path: Path
    samples: dict  # input name -> the calibration inputs its ranges were scored on
    thresholds: dict  # tensor name -> |x| range, as calibrated
    placement: str  # which ops have Q/DQ (quantize.PLACEMENTS), as calibrated
    reference: list  # the float half's outputs on the samples

    higher = "fp16"

    @classmethod
    def save(cls, scratch: Path, role: str, float_path: Path, samples: dict, thresholds: dict, placement: str) -> None:
        kept = scratch / f"{role}.float.onnx"
        float_path.replace(kept)
        np.savez(scratch / f"{role}.samples.npz", **samples)
        (scratch / f"{role}.ranges.json").write_text(json.dumps({"thresholds": thresholds, "placement": placement}))

    @classmethod
    def load(cls, scratch: Path, role: str) -> Requantizable | None:
        if not (scratch / f"{role}.float.onnx").exists():
            return None
        with np.load(scratch / f"{role}.samples.npz") as stored:
            samples = {name: stored[name] for name in stored.files}
        float_path = scratch / f"{role}.float.onnx"
        calibrated = json.loads((scratch / f"{role}.ranges.json").read_text())
        return cls(float_path, samples, calibrated["thresholds"], calibrated["placement"],
                   run_all(float_path, samples, "all"))

    def quantize(self, qdq_path: Path, exclude: list[str]) -> None:
        quantize_qdq(self.float_path, qdq_path, self.samples, self.thresholds, exclude, self.placement)

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
    """The ops the quantizer gave int8 inputs or weights (a DequantizeLinear feeds them), in graph order; a layer
    kept in float reads its inputs and weights unquantized."""
    model = onnx.load(str(qdq_path))
    dequantized = {node.output[0] for node in model.graph.node if node.op_type == "DequantizeLinear"}
    return [node.name for node in model.graph.node if node.op_type not in QDQ
            and any(name in dequantized for name in node.input)]


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


class AtFault(NamedTuple):
    """An INT8 half at fault for a missed bound: its requantizable, its file in the bundle, how a refusal names it."""
    half: object
    path: Path
    what: str


def keep_in_higher_precision(halves: list[AtFault], missed: Callable[[], str], advice: str = "") -> list[dict]:
    """Requantizes each half's file with its fewest most sensitive layers in its higher precision (the same count
    in each, at most those holding MAX_SHARE of its multiply-accumulates) so that `missed()` (the bound the bundle
    misses with the files in place, '' for none) is ''; returns what each half kept and what it costs, the bundle's
    checks (what `missed` measures) left describing the files as written. When even the most kept do not suffice,
    the refusal names the halves, the bound still missed, their worst layers and `advice` (what else would pass).
    The most are tried first, so a refusal costs one check of the bound, not one per doubling."""
    started = time.monotonic()
    rankings, macs = [], []
    for entry in halves:
        entry.half.quantize(entry.path, [])  # every layer it can have in INT8, whatever an earlier search kept out
        rankings.append(ranked_layers(entry.half, entry.half.layers(entry.path), entry.path))
        macs.append(entry.half.macs())
    most = [most_kept(ranked, counts) for (ranked, _), counts in zip(rankings, macs)]

    def keep(count: int) -> str:
        for entry, (ranked, _), limit in zip(halves, rankings, most):
            entry.half.quantize(entry.path, ranked[:min(count, limit)])
        return missed()
    largest = max(most)
    still = keep(largest)
    if still:
        raise EdgesplitError(refusal(halves, rankings, macs, most, still) + advice)
    count = 1
    while count < largest and keep(count):
        count *= 2
    if count >= largest:
        count = largest
        if largest > 1:
            keep(largest)  # the files and the checks held the last count that missed
    seconds = round(time.monotonic() - started, 1)
    return [described(entry, ranked, counts, min(count, limit), measured, seconds)
            for entry, (ranked, measured), counts, limit in zip(halves, rankings, macs, most)]


def share_of(macs: dict[str, int], kept: list[str], layers: list[str]) -> float:
    return sum(macs.get(layer, 0) for layer in kept) / max(1, sum(macs.get(layer, 0) for layer in layers))


def most_kept(ranked: list[str], macs: dict[str, int]) -> int:
    """How many of the ranked layers, worst first, hold at most MAX_SHARE of the multiply-accumulates (at least
    one)."""
    total, kept, count = sum(macs.get(layer, 0) for layer in ranked), 0, 0
    for layer in ranked:
        kept += macs.get(layer, 0)
        if kept > MAX_SHARE * total:
            break
        count += 1
    return max(1, count)


def described(entry: AtFault, ranked: list[str], macs: dict[str, int], count: int, measured: int,
              seconds: float) -> dict:
    """What a half kept in higher precision: its layers, their share of its multiply-accumulates, the cost."""
    share = share_of(macs, ranked[:count], ranked)
    return {"precision": entry.half.higher, "layers": [entry.half.name(layer) for layer in ranked[:count]],
            "of": len(ranked), "measured": measured, "macs_share": share,
            "cost": entry.half.cost(entry.path, share), "search_seconds": seconds}


def refusal(halves: list[AtFault], rankings: list, macs: list[dict], most: list[int], still: str) -> str:
    clauses = [f"its {limit} most sensitive of {len(ranked)} int8 layers "
               f"({share_of(counts, ranked[:limit], ranked):.0%} of its multiply-accumulates) in {entry.half.higher}, "
               f"{', '.join(map(entry.half.name, ranked[:min(3, limit)]))} first"
               for entry, (ranked, _), counts, limit in zip(halves, rankings, macs, most)]
    if len(halves) == 1:
        return f"{halves[0].what} misses the bound even with {clauses[0]}: {still}"
    kept = " and ".join(f"{entry.what} keeping {clause}" for entry, clause in zip(halves, clauses))
    return f"the bundle misses the bound even with {kept}: {still}"
