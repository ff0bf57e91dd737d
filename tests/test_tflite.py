"""raspberry-pi target: a full-int8 TFLite edge half, run by a real TFLite interpreter (ai-edge-litert)."""

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from ai_edge_litert.interpreter import Interpreter

from runtime.bundle import check_artefact_io, load_bundle
from runtime.cloud import BackgroundServer, ServerConfig
from runtime.edge import CLOUD, ClientConfig, EdgeClient
from runtime.errors import BundleError, EdgesplitError
from runtime.images import SourceFrame
from runtime.local import EdgeHalf, SplitInference
from toolchain.build import BuildOptions, build_engines
from toolchain.data import to_model_input
from toolchain.split import split_model, trace
from toolchain.backends.tflite import Int16Requantizable, convert_int8, float_ops, graph_ops
from toolchain.mixed_precision import AtFault, keep_in_higher_precision, sensitivities
from toolchain.evaluate import reference_outputs

from conftest import INPUT_SHAPE, top1

ROOT = Path(__file__).resolve().parents[1]
SEARCHED_CODEC = ROOT / "benchmarks" / "results" / "search-layer2" / "best.pt"


@pytest.fixture(scope="module")
def pi_bundle(tmp_path_factory):
    """The Pi with the int8 codec at layer2: its TFLite output is the wire code (the default's learned codec and
    exit are tested in test_deployments and test_inputs)."""
    output = tmp_path_factory.mktemp("pi") / "int8-raspberry-pi"
    return build_engines(BuildOptions(target="raspberry-pi", cloud="cpu", split="layer2", codec="int8",
                                      lossless="none", output=output))


@pytest.fixture(scope="module")
def holdout_inputs(holdout):
    return to_model_input(holdout.images, INPUT_SHAPE)


def test_int8_tflite_edge_keeps_accuracy_within_half_a_point(pi_bundle, default_model, holdout, holdout_inputs):
    reference = top1(reference_outputs(default_model, holdout_inputs)[0])
    deployed = top1(SplitInference(load_bundle(pi_bundle.bundle))(holdout_inputs))
    loss_points = 100 * ((reference == holdout.labels).mean() - (deployed == holdout.labels).mean())
    assert loss_points <= 0.5
    assert (deployed == reference).mean() >= 0.98
    assert pi_bundle.manifest["checks"]["top1_agreement"] == pytest.approx((deployed == reference).mean())


def test_no_float_op_remains_and_io_is_int8_nhwc(pi_bundle):
    path = pi_bundle.bundle / "edge.tflite"
    ops = graph_ops(path)
    assert float_ops(ops) == []
    assert {"CONV_2D", "ADD"} <= {name for name, _ in ops}  # residual adds run in int8 too
    assert all(dtypes <= {"int8", "int32"} for _, dtypes in ops)
    edge = pi_bundle.manifest["artefacts"]["edge"]
    assert edge["backend"] == "tflite" and edge["precision"] == "int8"
    assert [t["layout"] for t in edge["inputs"] + edge["outputs"]] == ["NHWC", "NHWC"]
    assert edge["inputs"][0]["shape"] == ["batch", 32, 32, 1] and edge["outputs"][0]["shape"] == ["batch", 16, 16, 64]
    assert edge["to_codes"]["method"] == "passthrough"  # int8 features are the wire codes: no float on the Pi


def test_the_float_model_is_what_the_inspection_refuses(tmp_path, plain_cnn):
    import litert_torch

    path = tmp_path / "float.tflite"
    litert_torch.convert(plain_cnn, (torch.zeros(1, *INPUT_SHAPE),)).export(str(path))
    refused = float_ops(graph_ops(path))
    assert refused and any(entry.startswith("CONV_2D (float32") for entry in refused)


def test_tflite_codes_follow_pytorch(pi_bundle, default_model, holdout_inputs):
    bundle = load_bundle(pi_bundle.bundle)
    graph = trace(default_model.module, INPUT_SHAPE)
    head = split_model(graph, "layer2", INPUT_SHAPE).head
    frames = holdout_inputs[:64]
    with torch.no_grad():
        features = head(torch.from_numpy(frames)).numpy()
    scale, zero_point = bundle.manifest["codec"]["scale"][0], bundle.manifest["codec"]["zero_point"][0]
    dequantized = (EdgeHalf(bundle).codes(frames).astype(np.float32) - zero_point) * scale
    relative = np.linalg.norm(dequantized - np.minimum(features, 255 * scale)) / np.linalg.norm(features)
    assert relative < 0.1


def test_the_wire_range_is_the_calibration_sets_not_a_moving_average(pi_bundle, default_model, holdout_inputs):
    """ai-edge-quantizer's own output range (a moving average of per-image ranges) clipped some feature value
    of 45 % of held-out frames (9.42 against a maximum of 15.8); the calibration set's min/max clips 0.2 %."""
    head = split_model(trace(default_model.module, INPUT_SHAPE), "layer2", INPUT_SHAPE).head
    with torch.no_grad():
        features = head(torch.from_numpy(holdout_inputs)).numpy()
    quantization = pi_bundle.manifest["artefacts"]["edge"]["outputs"][0]["quantization"]
    high = quantization["scale"] * (127 - quantization["zero_point"])
    clipped_frames = (features > high + quantization["scale"] / 2).reshape(len(features), -1).any(axis=1)
    assert clipped_frames.mean() < 0.01
    checks = pi_bundle.manifest["checks"]
    assert checks["wire_range"][1] == pytest.approx(high) and 0 <= checks["wire_clipped_share"] < 1e-3


def test_bundle_verifies_and_a_wrong_quantization_in_the_manifest_is_named(pi_bundle):
    result = subprocess.run([sys.executable, "-m", "edgesplit", "verify-bundle", str(pi_bundle.bundle)],
                            cwd=str(ROOT), capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.startswith("ok: bundle"), result.stderr
    bundle = load_bundle(pi_bundle.bundle)
    bundle.manifest = json.loads(json.dumps(bundle.manifest))
    bundle.manifest["artefacts"]["edge"]["outputs"][0]["quantization"]["scale"] *= 2
    with pytest.raises(BundleError, match="edge artefact's serving_default_output_0_output is quantized with"):
        check_artefact_io(bundle)


def test_edge_runtime_with_tflite_imports_no_torch(pi_bundle, holdout_inputs):
    code = (
        "import sys, numpy as np\n"
        "from runtime.bundle import load_bundle\n"
        "from runtime.local import EdgeHalf\n"
        "edge = EdgeHalf(load_bundle(sys.argv[1]), threads=2)\n"
        "codes = edge.codes(np.zeros((2, 1, 32, 32), dtype=np.float32))\n"
        "assert codes.shape == (2, 64, 16, 16) and codes.dtype == np.uint8\n"
        "assert not [m for m in sys.modules if m.split('.')[0] in ('torch', 'toolchain', 'tensorflow')]\n"
    )
    subprocess.run([sys.executable, "-c", code, str(pi_bundle.bundle)], check=True, cwd=str(ROOT))


def test_tflite_edge_over_the_network_equals_in_process(pi_bundle, holdout_inputs):
    bundle = load_bundle(pi_bundle.bundle)
    frames = [SourceFrame(i, holdout_inputs[i], None) for i in range(16)]
    expected = SplitInference(bundle)(holdout_inputs[:16])
    with BackgroundServer(bundle, ServerConfig(key=b"a test key of 128 bits")) as server:
        with EdgeClient(bundle, ClientConfig(*server.address, key=b"a test key of 128 bits")) as client:
            outcomes = client.run_all(frames)
    assert all(o.answered_by == CLOUD for o in outcomes)
    np.testing.assert_allclose(np.stack([o.logits for o in outcomes]), expected, atol=1e-4)


@pytest.mark.slow
def test_learned_codec_on_the_pi_requantizes_int8_tanh_to_its_bits(tmp_path, default_model, holdout, holdout_inputs):
    report = build_engines(BuildOptions(target="raspberry-pi", cloud="cpu", split="layer2",
                                        codec="bbnet:c=16,s=4,bits=4", codec_weights=SEARCHED_CODEC,
                                        output=tmp_path / "bbnet-pi"))
    edge = report.manifest["artefacts"]["edge"]
    assert edge["to_codes"]["method"] == "requantize" and edge["to_codes"]["levels"] == 16
    assert "TANH" in edge["ops"] and float_ops(graph_ops(report.bundle / "edge.tflite")) == []
    codes = EdgeHalf(load_bundle(report.bundle)).codes(holdout_inputs[:8])
    assert codes.shape == (8, 16, 4, 4) and codes.max() <= 15
    assert report.manifest["checks"]["mean_payload_bytes"] == 16 * 4 * 4 * 4 / 8
    assert 100 * (report.manifest["checks"]["float_accuracy"] - report.manifest["checks"]["bundle_accuracy"]) <= 1.0


def test_the_most_sensitive_layers_get_int16_activations_and_the_half_stays_integer_only(tmp_path):
    """A full-int8 half quantized again with its most sensitive layers' activations in int16 (16x8, int8
    weights): QUANTIZE ops requantize between them and the int8 rest, no float op appears, the half's input and
    output keep their int8 quantization (the wire's mapping reads it), and its error to the float half shrinks."""
    torch.manual_seed(0)
    layers = [module for _ in range(4) for module in (torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.ReLU())]
    module = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(), *layers).eval()
    calibration = np.random.default_rng(0).random((64, 1, 16, 16), dtype=np.float32)
    path = tmp_path / "edge.tflite"
    artefact = convert_int8(module, calibration, path, tmp_path / "edge")
    half = Int16Requantizable.load(tmp_path, "edge")
    all_int8 = half.error(path)
    ranked = [layer for layer, _ in sensitivities(half, half.layers(path), tmp_path, ".tflite")]
    assert len(ranked) == 4  # five convolutions; the last writes the output, which stays int8
    answers = iter(["", "output 'logits' misses", ""])  # half the layers kept pass, one does not: two are kept
    kept, = keep_in_higher_precision([AtFault(half, path, "the edge half")], lambda: next(answers))
    assert kept["precision"] == "int16 activations (16x8)" and kept["of"] == 4 and 0 < kept["macs_share"] < 1
    assert re.fullmatch(r"[\d.]+ ms per frame all int8, [\d.]+ ms as kept \(this CPU's TFLite interpreter\)",
                        kept["cost"])
    assert kept["layers"] == [half.name(layer) for layer in ranked[:2]]
    assert all(re.fullmatch(r"\d+ \(Conv2d\)", name) for name in kept["layers"])
    ops = graph_ops(path)
    assert not float_ops(ops) and "QUANTIZE" in half.entry(path)["ops"]
    assert sum("int16" in dtypes for name, dtypes in ops if name.endswith("CONV_2D")) == 2  # the first is depthwise
    interpreter = Interpreter(model_path=str(path))
    (given,), (written,) = interpreter.get_input_details(), interpreter.get_output_details()
    assert (given["dtype"], written["dtype"]) == (np.int8, np.int8)
    assert (given["quantization"], written["quantization"]) == (artefact.input_quantization,
                                                                 artefact.output_quantization)
    assert half.error(path) < all_int8
    with pytest.raises(EdgesplitError, match=r"^the edge half misses the bound even with its 2 most sensitive of 4 "
                                             r"int8 layers \(\d+% of its multiply-accumulates\) in int16 activations \(16x8\), \d+ \(Conv2d\), .* first: "
                                             r"a bound missed; what would pass$"):
        keep_in_higher_precision([AtFault(half, path, "the edge half")], lambda: "a bound missed",
                                 "; what would pass")


class _Block(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        return torch.relu(self.conv(x))


def test_requantizable_layers_have_one_name_each_even_where_the_converter_flattens_their_paths(tmp_path):
    """Blocks that each hold a `conv`: the refusal and the summary name each layer so that it can be found."""
    module = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), _Block(), _Block(), _Block(),
                                 torch.nn.Conv2d(4, 4, 1)).eval()
    path = tmp_path / "edge.tflite"
    convert_int8(module, np.random.default_rng(0).random((16, 1, 8, 8), dtype=np.float32), path, tmp_path / "edge")
    half = Int16Requantizable.load(tmp_path, "edge")
    names = [half.name(layer) for layer in half.layers(path)]
    assert len(names) == 4 and len(set(names)) == 4
    named = r"\d\.conv \(Conv2d\)|conv \(Conv2d, weighted layer \d\)"  # as torch names it, or by its place
    assert sum(bool(re.fullmatch(named, name)) for name in names) == 3
