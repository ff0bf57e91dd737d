"""Ranges for int8: min-max, percentile and MSE per tensor (or channel), the one kept that keeps the float
model's answers best, for the affine codec at the cut and for a Q/DQ half; a Q/DQ half's most sensitive
layers kept in float where it misses its bound."""

import re
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from toolchain.calibration import (LEVELS, RANGES, Histogram, calibrate, choose_codec_range, histograms,
                                   quantization_error, rank)
from toolchain.codecs import make_codec
from toolchain.codecs.affine import AffineCodec
from toolchain.export import export_onnx
from toolchain.errors import EdgesplitError
from toolchain.mixed_precision import (MEASURED, AtFault, Requantizable, keep_in_higher_precision, own_errors,
                                       quantized_layers, sensitivities)
from toolchain.quantize import PLACEMENTS, quantize_in_place, quantize_qdq


def heavy_tailed(shape, seed=0) -> torch.Tensor:
    """Post-ReLU-like features with one value in 20,000 a hundred times larger: min-max spends its codes on them."""
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(shape, generator=generator).abs()
    features.view(-1)[::20000] = 300.0
    return features


def test_percentile_clips_a_heavy_tail_and_mse_has_the_least_expected_error():
    values = heavy_tailed((64, 4096)).flatten().numpy()
    counts, edges = np.histogram(values, bins=2048)
    histogram = Histogram(counts.astype(np.float64), edges.astype(np.float64))
    thresholds = {method: fit(histogram) for method, fit in RANGES.items()}
    assert thresholds["min-max"] == pytest.approx(300.0)
    assert thresholds["percentile"] < 10  # 13 outliers in 262,144 values lie beyond its 99.99 %
    errors = dict(zip(thresholds, quantization_error(histogram, np.array(list(thresholds.values())))))
    assert errors["mse"] == min(errors.values()) and errors["mse"] < errors["min-max"]


@pytest.mark.parametrize("per", ["tensor", "channel"])
def test_the_codec_keeps_the_range_whose_decoded_features_keep_the_tails_answers(per):
    features = heavy_tailed((256, 4, 6, 6))
    classes = torch.randn(4 * 6 * 6, 10, generator=torch.Generator().manual_seed(1))

    def tail(x):
        return x.flatten(1) @ classes

    codec = AffineCodec((4, 6, 6), per=per)
    chosen = choose_codec_range(codec, features, tail)
    scores = chosen["candidates"]
    assert set(scores) == {"min-max", "percentile", "mse"} and chosen["frames"] == 256
    assert rank(scores[chosen["method"]]) == max(rank(score) for score in scores.values())
    assert chosen["method"] != "min-max"  # a code step of 300/255 erases the answers that the clipped ranges keep
    assert scores[chosen["method"]]["agreement"] > scores["min-max"]["agreement"] + 0.1
    fitted = AffineCodec((4, 6, 6), per=per)
    fitted.calibrate(features, chosen["method"])
    assert torch.equal(codec.scale, fitted.scale) and torch.equal(codec.zero_point, fitted.zero_point)


def test_a_codec_with_one_way_to_fit_a_range_is_calibrated_without_a_choice():
    features = heavy_tailed((8, 4, 6, 6))
    codec = make_codec("bbnet:c=4,s=2,bits=2", (4, 6, 6))
    assert choose_codec_range(codec, features, lambda x: x) is None


@pytest.fixture(scope="module")
def float_half(tmp_path_factory):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3), torch.nn.ReLU(),
                                torch.nn.Conv2d(8, 8, 1), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(8 * 4 * 4, 10)).eval()
    path = tmp_path_factory.mktemp("half") / "half.float.onnx"
    export_onnx(model, (torch.zeros(1, 3, 8, 8),), path, 13, ("features",), ("logits",), metadata={})
    samples = heavy_tailed((128, 3, 8, 8)).numpy()
    return path, {"features": samples}


def test_a_qdq_half_keeps_the_ranges_that_keep_the_float_halfs_answers_and_its_file_has_them(float_half, tmp_path):
    path, samples = float_half
    chosen = calibrate(path, tmp_path / "half.onnx", samples, quantize_qdq)
    assert set(chosen.scores) == {f"{method} at {placement}" for method in RANGES for placement in PLACEMENTS}
    assert chosen.frames == 64 and chosen.placement in PLACEMENTS
    best = chosen.scores[f"{chosen.method} at {chosen.placement}"]
    assert rank(best) == max(rank(score) for score in chosen.scores.values())
    onnx.checker.check_model(str(tmp_path / "half.onnx"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["half.onnx"]  # the other candidates are gone
    # the input's QuantizeLinear has the chosen method's range: |x| up to the threshold in 127 steps
    threshold = RANGES[chosen.method](histograms(path, samples)["features"])
    model = onnx.load(str(tmp_path / "half.onnx"))
    constants = {tensor.name: numpy_helper.to_array(tensor) for tensor in model.graph.initializer}
    quantizer = next(node for node in model.graph.node if node.op_type == "QuantizeLinear"
                     and node.input[0] == "features")
    assert float(constants[quantizer.input[1]]) == pytest.approx(threshold / LEVELS, rel=1e-5)


class _DenseJoin(torch.nn.Module):
    """DenseNet's pattern: two branches of very different scales concatenated, then normalized per channel."""

    def __init__(self):
        super().__init__()
        self.small, self.large = torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.Conv2d(3, 4, 3, padding=1)
        self.norm, self.mix = torch.nn.BatchNorm2d(8), torch.nn.Conv2d(8, 4, 1)
        with torch.no_grad():
            self.large.weight.mul_(300)
            self.norm.running_var.copy_(torch.tensor([0.01] * 4 + [900.0] * 4))

    def forward(self, x):
        joined = torch.cat([self.small(x), self.large(x)], 1)
        return self.mix(torch.relu(self.norm(joined))).mean((2, 3))


def test_a_batch_norm_after_a_concatenation_of_unlike_scales_keeps_q_dq_at_the_weighted_ops_only(tmp_path):
    """Every op quantized, the concatenation's one int8 range is the large branch's and rounds the small one away
    before the batch norm scales it back up; Q/DQ at the weighted ops' inputs only (TensorRT's placement) reads
    it normalized: calibration keeps that placement, and its answers."""
    torch.manual_seed(0)
    path = tmp_path / "half.float.onnx"
    export_onnx(_DenseJoin().eval(), (torch.zeros(1, 3, 8, 8),), path, 13, ("features",), ("logits",), metadata={})
    chosen = calibrate(path, tmp_path / "half.onnx", {"features": torch.rand(64, 3, 8, 8).numpy()}, quantize_qdq)
    assert chosen.placement == "weighted ops"
    every, weighted = (chosen.scores[f"{chosen.method} at {placement}"] for placement in PLACEMENTS)
    assert weighted["relative_error"] < every["relative_error"] / 3
    assert {layer.rsplit("/", 1)[1] for layer in quantized_layers(tmp_path / "half.onnx")} == {"Conv"}
    # at every op, each is a layer the mixed-precision search may keep in float
    quantize_qdq(path, tmp_path / "every.onnx", {"features": torch.rand(1, 3, 8, 8).numpy()}, chosen.thresholds)
    assert {"Concat", "BatchNormalization", "Relu"} <= {layer.rsplit("/", 1)[1]
                                                        for layer in quantized_layers(tmp_path / "every.onnx")}


def test_the_most_sensitive_layers_stay_in_float_until_the_bound_holds_at_most_half_their_work(float_half, tmp_path):
    path, samples = float_half
    qdq = tmp_path / "half.onnx"
    shutil.copy(path, qdq)
    quantize_in_place(qdq, samples, tmp_path, "cloud")
    half = Requantizable.load(tmp_path, "cloud")
    layers = quantized_layers(qdq)
    # three convolutions, the linear layer and, where calibration put Q/DQ at every op, the ops between them
    assert [layer.rsplit("/", 1)[1] for layer in layers] in (["Conv", "Relu"] * 3 + ["Flatten", "Gemm"],
                                                            ["Conv"] * 3 + ["Gemm"])
    ranked = [layer for layer, _ in sensitivities(half, layers, tmp_path, ".onnx")]
    # the two worst hold under half the multiply-accumulates (the first convolution and the classifier): they pass,
    # one does not
    answers = iter(["", "output 'logits' misses", ""])
    kept, = keep_in_higher_precision([AtFault(half, qdq, "the cloud half")], lambda: next(answers))
    assert kept["layers"] == ranked[:2] and kept["of"] == len(layers) and 0 < kept["macs_share"] < 0.5
    assert kept["precision"] == "fp16" and kept["cost"].endswith("compute time at INT8 twice FP16's rate")
    assert int8_weights(qdq) == int8_weights(path, False) - set(ranked[:2])  # the kept read their weights in float
    checks = []
    with pytest.raises(EdgesplitError, match=rf"^the cloud half misses the bound even with its 2 most sensitive of "
                                             rf"{len(layers)} int8 layers \(4\d% of its multiply-accumulates\) in fp16, "
                                             rf"{re.escape(', '.join(ranked[:2]))} first: "
                                             rf"a bound missed; what would pass$"):
        keep_in_higher_precision([AtFault(half, qdq, "the cloud half")], lambda: checks.append(1) or "a bound missed",
                                 "; what would pass")
    assert len(checks) == 1  # the largest share, tried first, settles a refusal


def int8_weights(path: Path, dequantized_only: bool = True) -> set[str]:
    """The convolutions and linear layers of an ONNX file whose weights are int8 (dequantized), or all of them."""
    nodes = onnx.load(str(path)).graph.node
    dequantized = {node.output[0] for node in nodes if node.op_type == "DequantizeLinear"}
    return {node.name for node in nodes if node.op_type in ("Conv", "Gemm")
            and (node.input[1] in dequantized or not dequantized_only)}


def test_the_bundles_checks_describe_the_file_written_when_the_search_ends_at_its_largest_share(float_half,
                                                                                                 tmp_path):
    """One layer kept misses, the most that may be kept (two, under half the multiply-accumulates) pass: the file is
    written with two again, and the bound measured once more on it, so that what the manifest says is of that
    file."""
    path, samples = float_half
    qdq = tmp_path / "half.onnx"
    shutil.copy(path, qdq)
    quantize_in_place(qdq, samples, tmp_path, "cloud")
    half = Requantizable.load(tmp_path, "cloud")
    answers, measured = iter(["", "missed", ""]), []
    kept, = keep_in_higher_precision([AtFault(half, qdq, "the cloud half")],
                                     lambda: measured.append(qdq.read_bytes()) or next(answers))
    assert len(kept["layers"]) == 2 and len(measured) == 3 and measured[-1] == qdq.read_bytes() == measured[0]


def test_two_halves_at_fault_keep_as_many_of_their_own_worst_layers_at_each_step(float_half, tmp_path):
    """Where each half alone meets the bound and the two together do not, both are searched at once: here the
    bound holds once each keeps its worst layer; a refusal names both halves and their worst layers."""
    path, samples = float_half
    halves = []
    for role in ("edge", "cloud"):
        qdq = tmp_path / f"{role}-half.onnx"
        shutil.copy(path, qdq)
        quantize_in_place(qdq, samples, tmp_path, role)
        halves.append(AtFault(Requantizable.load(tmp_path, role), qdq, f"the {role} half"))
    answers = iter(["", ""])  # the most of each pass, and one of each
    kept = keep_in_higher_precision(halves, lambda: next(answers))
    assert [len(described["layers"]) for described in kept] == [1, 1]
    for entry, described in zip(halves, kept):
        assert int8_weights(entry.path) == int8_weights(path, False) - set(described["layers"])
    with pytest.raises(EdgesplitError, match=r"^the bundle misses the bound even with the edge half keeping its 2 "
                                             r"most sensitive of \d+ int8 layers \(\d+% of its multiply-accumulates\) "
                                             r"in fp16, \S+, \S+ first and the cloud half keeping its 2 most "
                                             r"sensitive of \d+ int8 layers \(\d+% of its multiply-accumulates\) in "
                                             r"fp16, \S+, \S+ first: a bound missed; what would pass$"):
        keep_in_higher_precision(halves, lambda: "a bound missed", "; what would pass")


def test_a_deep_half_is_screened_in_one_run_and_only_its_worst_layers_are_measured_one_by_one(tmp_path):
    """Eleven layers passing their input on (near identities), the sixth spoiled for int8: each output channel's
    weights hold one outlier on an input channel that is always zero, harmless in float, but per-channel int8
    then rounds the identity's weight by a fifth and every other weight to zero."""
    torch.manual_seed(0)
    convolutions = [torch.nn.Conv2d(8, 8, 3, padding=1) for _ in range(10)]
    with torch.no_grad():
        for convolution in convolutions:
            convolution.weight.normal_(0, 0.05)
            convolution.weight[range(8), range(8), 1, 1] += 1
            convolution.bias.zero_()
        convolutions[4].weight[0] = 0
        convolutions[4].bias[0] = -1  # channel 0 is zero after the ReLU
        convolutions[5].weight[:, 0, 1, 1] = 100
    layers = [part for convolution in convolutions for part in (convolution, torch.nn.ReLU())]
    model = torch.nn.Sequential(*layers, torch.nn.Flatten(), torch.nn.Linear(8 * 6 * 6, 10)).eval()
    qdq = tmp_path / "half.onnx"
    export_onnx(model, (torch.zeros(1, 8, 6, 6),), qdq, 13, ("features",), ("logits",), metadata={})
    quantize_in_place(qdq, {"features": torch.rand(64, 8, 6, 6).numpy()}, tmp_path, "cloud")
    half, layers = Requantizable.load(tmp_path, "cloud"), quantized_layers(qdq)
    assert len([layer for layer in layers if layer.endswith(("Conv", "Gemm"))]) == 11 and len(layers) > MEASURED
    errors = own_errors(half.float_path, qdq, half.samples, layers)
    spoiled = [layer for layer in layers if layer.endswith("Conv")][5]
    assert max(errors, key=errors.get) == spoiled
    assert errors[spoiled] > 3 * max(error for layer, error in errors.items() if layer != spoiled)
    kept, = keep_in_higher_precision([AtFault(half, qdq, "the cloud half")],
                                     lambda: "missed" if spoiled in int8_weights(qdq) else "")
    assert kept["layers"] == [spoiled] and kept["measured"] == MEASURED and kept["of"] == len(layers)
