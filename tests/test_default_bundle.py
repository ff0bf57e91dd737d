"""The default bundle shows what splitting buys: the shipped learned codec and exit branch, driven through
`build-engines` and `edgesplit demo` as a newcomer types them."""

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from runtime.bundle import load_bundle
from runtime.local import SplitInference, softmax_entropy
from toolchain.cli import main
from toolchain.codecs import make_codec
from toolchain.evaluate import reference_outputs
from toolchain.lossless import choose
from toolchain.zoo import ZOO, DEFAULT_MODEL

from conftest import TINY_MODEL, tiny_features

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ZOO[DEFAULT_MODEL].shipped
RAW_IMAGE_BYTES = 32 * 32


def test_default_bundle_sends_few_bytes_within_the_accuracy_bound(default_build, default_model, holdout):
    """Through ONNX Runtime on the held-out slice: <= 64 B per frame (16x fewer than the raw image) and
    within 0.5 pt of the float model, before and with the exits."""
    bundle = load_bundle(default_build[0])
    manifest = bundle.manifest
    assert manifest["split"]["module"] == ZOO[DEFAULT_MODEL].default_split
    assert manifest["codec"]["name"] == "bbnet" and manifest["codec"]["shipped"] == SHIPPED.card.name
    assert "trained_here" not in manifest["codec"]

    inputs, labels = holdout.inputs(), holdout.labels
    run = SplitInference(bundle)
    payloads, exit_logits = run.edge_half.payloads_and_exit(inputs)
    sizes = np.array([len(p) for p in payloads])
    assert sizes.max() <= 64 and RAW_IMAGE_BYTES / sizes.mean() >= 16
    cloud = run.cloud(payloads).argmax(1)
    float_accuracy = (reference_outputs(default_model, inputs)[0].argmax(1) == labels).mean()
    assert 100 * (float_accuracy - (cloud == labels).mean()) <= 0.5

    entry = manifest["exit"]
    local = softmax_entropy(exit_logits) < entry["threshold"]
    answers = np.where(local, exit_logits.argmax(1), cloud)
    assert 100 * (float_accuracy - (answers == labels).mean()) <= 0.5
    assert sizes[~local].sum() / len(sizes) <= 0.75 * sizes.mean()  # exits send nothing
    calibration = entry["calibration"]
    assert calibration["frames"] == 512 and calibration["max_loss_points"] == SHIPPED.exit_max_loss
    assert manifest["checks"]["exit"]["offload_rate"] == pytest.approx(1 - local.mean(), abs=1e-9)


def test_build_summary_compares_the_wire_with_sending_the_image(default_build):
    bundle, printed = default_build
    checks = load_bundle(bundle).manifest["checks"]
    text = " ".join(printed.split())  # one table row per line at 250 columns
    payload = checks["mean_payload_bytes"]
    for title, name in (("raw", "raw"), ("PNG", "png"), ("JPEG q90", "jpeg")):
        size = checks["image_bytes"][name]
        assert f"{title} {size:,.0f} B: {size / payload:,.1f}x the wire" in text
    assert checks["image_bytes"]["raw"] == RAW_IMAGE_BYTES
    assert re.search(r"with early exit │ [\d.]+% of held-out frames sent, accuracy", text)
    assert f"{checks['exit']['mean_payload_bytes_all_frames']:,.1f} B per frame over all frames" in text


def test_demo_sends_features_over_a_socket_and_exits_on_the_edge(default_build):
    result = subprocess.run([sys.executable, "-m", "edgesplit", "demo", "--bundle", str(default_build[0]),
                             "--frames", "200"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr
    counts = re.search(r"200 frames in .*: (\d+) answered by the cloud, (\d+) on the edge, 0 errors, top-1 "
                       r"([\d.]+)%", result.stdout)
    assert counts, result.stdout
    cloud, edge, accuracy = int(counts[1]), int(counts[2]), float(counts[3])
    assert cloud > 0 and edge > 0 and cloud + edge == 200 and accuracy >= 85
    payload = re.search(r"wire: ([\d.]+) payload bytes/frame, [\d.]+ with headers \(over all frames", result.stdout)
    assert payload and float(payload[1]) == pytest.approx(64 * cloud / 200, abs=0.05)  # exits send nothing


def test_demo_takes_a_source_with_one_set_of_images(default_build, holdout, tmp_path):
    one_set = tmp_path / "pictures.npy"
    np.save(one_set, holdout.images[:20, 0, 2:30, 2:30])  # 28x28, as a camera of Fashion-MNIST gives them
    result = subprocess.run([sys.executable, "-m", "edgesplit", "demo", "--bundle", str(default_build[0]),
                             "--source", str(one_set), "--frames", "20"], capture_output=True, text=True, cwd=ROOT,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert re.search(r"^20 frames in .*, 0 errors$", result.stdout, re.MULTILINE)  # no labels: no accuracy


@pytest.mark.parametrize("bundle", ["nope", "not-a-tar"])
def test_demo_refuses_what_is_not_a_bundle_in_one_line(bundle, tmp_path):
    (tmp_path / "not-a-tar").write_text("hello")
    result = subprocess.run([sys.executable, "-m", "edgesplit", "demo", "--bundle", str(tmp_path / bundle)],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.startswith("error: ") and str(tmp_path / bundle) in result.stderr


@pytest.mark.parametrize("option", ["--codec-weights", "--exit-weights"])
def test_shipped_checkpoints_are_refused_for_another_model(option, tmp_path):
    """The zoo's checkpoints name the model they were trained for: another model gets one line saying so."""
    weights = SHIPPED.codec_weights if option == "--codec-weights" else SHIPPED.exit_weights
    # no --codec: the codec comes from the checkpoint, which is then checked like any other
    result = CliRunner().invoke(main, ["build-engines", *TINY_MODEL, "--split", "features.8", option, str(weights),
                                       "--output", str(tmp_path / "b")])
    assert result.exit_code == 1
    assert re.fullmatch(r"error: .* (trained for|an exit branch for) .*model [0-9a-f]{12}, not .* [0-9a-f]{12}",
                        result.output.strip())
    assert not (tmp_path / "b").exists()


def test_the_bundled_model_with_other_weights_builds_without_the_shipped_codec(tmp_path, default_model):
    """Shipped checkpoints belong to the shipped weights: other weights of the same architecture get int8."""
    module = ZOO[DEFAULT_MODEL].factory()
    torch.manual_seed(1)
    module.load_state_dict(default_model.module.state_dict())
    with torch.no_grad():
        module.fc.bias.add_(0.01)
    weights = tmp_path / "tuned.pt"
    torch.save(module.state_dict(), weights)
    from toolchain.build import BuildOptions, with_shipped
    from toolchain.load import load_model

    options = with_shipped(BuildOptions(weights=weights), load_model(None, weights))
    assert (options.codec, options.codec_weights, options.exit_weights) == ("int8", None, None)
    refused = CliRunner().invoke(main, ["build-engines", "--weights", str(weights), "--codec", SHIPPED.codec,
                                        "--codec-weights", str(SHIPPED.codec_weights), "--output", str(tmp_path / "b")])
    assert refused.exit_code == 1
    assert re.search(r"was trained for split '\w+' of model (\w{12}), not split '\w+' of model (?!\1)\w{12}$",
                     refused.output.strip())


def test_lossless_auto_takes_the_smallest_stage_every_edge_has():
    """Sparse int8 codes shrink under zlib; 4-bit packed learned codes do not, and stay uncompressed. A codec
    trained for rate is tried with rans too, where a frame is small enough for pure-Python coding (144 codes here,
    not 2,304); the sparse codes then go entropy-coded."""
    features = torch.relu(tiny_features() - 2.0)  # mostly zeros, as after a ReLU
    int8 = make_codec("int8", tuple(features.shape[1:]))
    int8.calibrate(features)
    codes = int8.encoder().eval()(features).numpy()
    wire, sizes = choose(int8, codes)
    assert set(sizes) == {"none", "zlib"} and wire.lossless == "zlib" and sizes["zlib"] < sizes["none"]
    wire, sizes = choose(int8, codes, entropy=True)  # as a codec trained for rate is
    assert sizes["rans"] < sizes["zlib"] and wire.lossless == "rans" and len(wire.prior) == 1  # 16 frames: one table

    learned = make_codec("bbnet:c=4,s=2,bits=4", tuple(features.shape[1:])).eval()
    with torch.no_grad():
        wire, sizes = choose(learned, learned.encoder()(features).numpy())
    assert wire.lossless == "none" and sizes["none"] == learned.wire_format().packed_bytes

    large = torch.nn.functional.interpolate(features, scale_factor=4)  # 4 x 24 x 24 codes a frame
    int8 = make_codec("int8", tuple(large.shape[1:]))
    int8.calibrate(large)
    wire, sizes = choose(int8, int8.encoder().eval()(large).numpy(), entropy=True)
    assert set(sizes) == {"none", "zlib"} and wire.lossless == "zlib" and not wire.prior


def test_readme_shows_the_default_benchmark_numbers():
    """The README's numbers are the committed benchmark's, rendered by the benchmark's own code."""
    from benchmarks.default import README_BLOCK, readme_block

    summary = json.loads((ROOT / "benchmarks" / "results" / "default" / "summary.json").read_text())
    block = README_BLOCK.search((ROOT / "README.md").read_text())
    assert block and block.group(0).split("\n", 1)[1].rsplit("<!-- end -->", 1)[0] == readme_block(summary)


def test_the_shipped_codecs_card_is_what_its_script_writes_from_the_facts_it_kept(tmp_path, default_model):
    """toolchain/zoo/make.py --card-only re-renders the committed card from its .json, and that .json names the
    checkpoints that ship (regenerate rather than edit)."""
    import shutil

    from runtime.bundle import file_sha256

    facts = SHIPPED.card.with_suffix(".json")
    shutil.copy(facts, tmp_path)
    subprocess.run([sys.executable, "-m", "toolchain.zoo.make", "--card-only", "--output-dir", str(tmp_path)],
                   cwd=ROOT, check=True, capture_output=True)
    assert (tmp_path / SHIPPED.card.name).read_text() == SHIPPED.card.read_text()
    kept = json.loads(facts.read_text())
    assert (kept["codec_sha256"], kept["exit_sha256"], kept["model_sha256"]) == (
        file_sha256(SHIPPED.codec_weights), file_sha256(SHIPPED.exit_weights), default_model.sha256)


def test_train_model_writes_weights_that_load_and_a_card_with_the_measured_accuracy(holdout, tmp_path):
    """`edgesplit train-model` on a small labeled .npz: weights for the bundled architecture and a model card
    whose numbers come from the run."""
    source = tmp_path / "small.npz"
    np.savez(source, train_images=holdout.images[:96, 0, 2:30, 2:30], train_labels=holdout.labels[:96],
             test_images=holdout.images[96:160, 0, 2:30, 2:30], test_labels=holdout.labels[96:160])
    weights = tmp_path / "weights.pt"
    result = CliRunner().invoke(main, ["train-model", "--data", str(source), "--epochs", "1", "--output",
                                       str(weights)])
    assert result.exit_code == 0, result.output
    accuracy = re.search(r"test accuracy (\d+\.\d\d)% after 1 epochs; wrote ", result.output).group(1)
    card = weights.with_suffix(".md").read_text()
    assert f"| test accuracy | {accuracy}% on the {source} test split |" in card
    assert f"`{hashlib.sha256(weights.read_bytes()).hexdigest()}`" in card
    ZOO[DEFAULT_MODEL].factory().load_state_dict(torch.load(weights, weights_only=True))
