"""Learned codecs trained for real (tiny data), checkpointed, searched and bundled."""

import pytest
import torch
from click.testing import CliRunner

import toolchain.codec_training as training
from calibration_data import DEFAULT_CALIBRATION
from runtime.bundle import load_bundle
from runtime.local import SplitInference
from toolchain.cli import main
from toolchain.codec_search import search, grid
from toolchain.codec_training import epochs_for, load_checkpoint, prepare_training, score_codec, train_codec
from toolchain.codecs import make_codec
from toolchain.load import InputOptions
from toolchain.data import to_model_input
from toolchain.errors import EdgesplitError

from conftest import DEFAULT_SPEC, INPUT_SHAPE, top1

SPEC = "bbnet:c=8,s=4,bits=4"
RATE_SPEC = "bbnet:c=16,s=4,bits=4"  # 32 bytes bit-packed: room below them beside the 3 bytes of rANS state


@pytest.fixture(scope="module")
def frozen():
    from toolchain.load import load_model

    model = load_model(None)
    return model, prepare_training(model.module, "layer3", DEFAULT_SPEC, str(DEFAULT_CALIBRATION))


def test_trained_codec_beats_untrained(frozen):
    _, split = frozen
    torch.manual_seed(0)
    untrained = make_codec(SPEC, split.point.shape).eval()
    before = score_codec(untrained, split.tail, split.test)
    trained = make_codec(SPEC, split.point.shape)
    train_codec(trained, split.tail, split.train, epochs=6, seed=0, batch_size=64)
    after = score_codec(trained, split.tail, split.test)
    assert after.accuracy > before.accuracy + 0.3
    assert after.agreement > before.agreement + 0.3


def test_interrupted_training_resumes_to_the_same_weights(frozen, tmp_path, monkeypatch):
    model, split = frozen
    facts = {"spec": SPEC, "split": split.point.node, "model_sha256": model.sha256}
    torch.manual_seed(3)
    unbroken = make_codec(SPEC, split.point.shape)
    train_codec(unbroken, split.tail, split.train, epochs=2, seed=3, batch_size=128)

    steps_per_epoch = len(split.train) // 128
    calls = {"n": 0}
    real_loss = training.distillation_loss

    def crash_in_second_epoch(*args):
        calls["n"] += 1
        if calls["n"] > steps_per_epoch:
            raise KeyboardInterrupt
        return real_loss(*args)

    checkpoint = tmp_path / "codec.pt"
    monkeypatch.setattr(training, "distillation_loss", crash_in_second_epoch)
    torch.manual_seed(3)
    with pytest.raises(KeyboardInterrupt):
        train_codec(make_codec(SPEC, split.point.shape), split.tail, split.train, epochs=2, seed=3,
                    checkpoint=checkpoint, checkpoint_facts=facts)
    monkeypatch.setattr(training, "distillation_loss", real_loss)
    resumed = make_codec(SPEC, split.point.shape)
    train_codec(resumed, split.tail, split.train, epochs=2, seed=3, checkpoint=checkpoint,
                checkpoint_facts=facts, resume=True)
    for key, value in unbroken.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key


def test_checkpoint_for_another_split_is_refused(frozen, tmp_path):
    model, split = frozen
    path = tmp_path / "codec.pt"
    training.save_checkpoint(path, make_codec(SPEC, split.point.shape), SPEC, split.point.node, model.sha256, 1)
    codec, state = load_checkpoint(path, split.point.node, model.sha256, split.point.shape)
    assert state["codec"] == SPEC and codec.bits == 4
    with pytest.raises(EdgesplitError, match="trained for split 'layer3_1_relu2' .* not split 'layer2'"):
        load_checkpoint(path, "layer2", model.sha256, split.point.shape)
    # the same codec saved by an edgesplit whose tensors had another shape (a prior per channel, not per code)
    rated = make_codec(SPEC + ",rate=0.1", split.point.shape)
    state = dict(rated.state_dict(), prior=torch.zeros(rated.channels, rated.levels))
    torch.save({"version": training.CHECKPOINT_VERSION, "codec": SPEC + ",rate=0.1", "split": split.point.node,
                "model_sha256": model.sha256, "epoch": 1, "state_dict": state}, path)
    with pytest.raises(EdgesplitError, match=r"does not fit codec .*,rate=0.1 as this edgesplit builds it \(size "
                                             r"mismatch for prior.*\): train it again with train-codec$"):
        load_checkpoint(path, split.point.node, model.sha256, split.point.shape)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(EdgesplitError, match="cannot read codec checkpoint"):
        load_checkpoint(path, split.point.node, model.sha256, split.point.shape)


def test_search_goes_from_least_to_most_compressed_and_stops_at_the_first_miss(frozen):
    _, split = frozen
    specs = grid("bbnet", channels=(2, 8), strides=(4,), bits=(8, 2))
    rows, best = search(specs, split.point.shape, split.tail, split.train, split.test,
                        budget_points=100.0, epochs=1, seed=0)
    # packed bytes 32, 8, 8, 2: ties keep the grid's order
    assert [r.codec for r in rows] == ["bbnet:c=8,s=4,bits=8", "bbnet:c=2,s=4,bits=8",
                                       "bbnet:c=8,s=4,bits=2", "bbnet:c=2,s=4,bits=2"]
    assert best.params() == {"c": 2, "s": 4, "bits": 2}
    assert rows[0].compression == 128 * 8 * 8 * 32 / (32 * 8)
    rows, best = search(specs, split.point.shape, split.tail, split.train, split.test,
                        budget_points=-100.0, epochs=1, seed=0)
    assert len(rows) == 1 and best is None


def test_train_codec_then_build_a_learned_bundle(tmp_path, holdout, plain_cnn):
    checkpoint, weights = tmp_path / "codec.pt", tmp_path / "plain.pt"
    torch.save(plain_cnn.state_dict(), weights)
    common = ["--model", "conftest:PlainCNNSmall", "--weights", str(weights), "--input-shape", "1,32,32",
              "--resize", "pad", "--split", "features.4"]
    result = CliRunner().invoke(main, ["train-codec", *common, "--data", str(DEFAULT_CALIBRATION),
                                       "--codec", "bbnet:c=4,s=2,bits=4", "--epochs", "1", "--output", str(checkpoint)])
    assert result.exit_code == 0, result.output
    assert "bbnet:c=4,s=2,bits=4 at features_4: 1024 bits per frame" in result.output

    output = tmp_path / "bundle"
    result = CliRunner().invoke(main, ["build-engines", *common, "--codec", "bbnet:c=4,s=2,bits=4",
                                       "--codec-weights", str(checkpoint), "--lossless", "zstd",
                                       "--output", str(output), "--max-loss", "100"])
    assert result.exit_code == 0, result.output
    bundle = load_bundle(output)
    assert bundle.wire.bits == 4 and bundle.wire.lossless == "zstd" and bundle.wire.shape == (4, 8, 8)
    checks = bundle.manifest["checks"]
    assert checks["edge_max_abs_error"] <= 1 and checks["cloud_max_abs_error"] <= 1e-3
    run = SplitInference(bundle)
    payloads = run.edge(to_model_input(holdout.images[:8], INPUT_SHAPE))
    assert all(len(p) <= 4 * 8 * 8 * 4 // 8 + 16 for p in payloads)  # packed 128 bytes + zstd header

    wrong = CliRunner().invoke(main, ["build-engines", *common, "--codec", "bbnet:c=8,s=2,bits=4",
                                      "--codec-weights", str(checkpoint), "--output", str(tmp_path / "b2")])
    assert wrong.exit_code == 1
    assert "hold codec bbnet:c=4,s=2,bits=4, not the requested bbnet:c=8,s=2,bits=4" in wrong.stderr


def test_a_codec_trained_in_the_build_takes_as_many_epochs_as_its_data_needs():
    """Two epochs of 1,000 images are 16 steps: a codec that has not learned anything, refused as if it could not."""
    assert [epochs_for(frames) for frames in (60000, 1000, 100, 1)] == [2, 113, 200, 200]


@pytest.mark.parametrize("family", ["bbnet", "safbmp"])
def test_learned_codec_inside_exported_onnx_matches_pytorch(family, tmp_path, plain_cnn, holdout):
    """build-engines trains the codec itself when given --train-data, then exports and checks it."""
    from toolchain.build import BuildOptions, build_engines

    weights = tmp_path / "w.pt"
    torch.save(plain_cnn.state_dict(), weights)
    report = build_engines(BuildOptions(
        model="conftest:PlainCNNSmall", weights=weights, inputs=InputOptions(INPUT_SHAPE, "pad"), split="features.4",
        codec=f"{family}:c=4,s=2,bits=6", train_data=str(DEFAULT_CALIBRATION), codec_epochs=1,
        lossless="none", output=tmp_path / "b", max_loss=100.0,
    ))
    checks = report.manifest["checks"]
    assert checks["edge_max_abs_error"] <= 1 and checks["edge_mismatched_fraction"] < 0.01
    assert checks["cloud_max_abs_error"] <= 1e-3
    assert report.manifest["codec"]["name"] == family and report.manifest["wire"]["bits"] == 6
    assert report.manifest["codec"]["epochs"] == 1 and report.manifest["codec"]["training_frames"] == 512
    assert checks["mean_payload_bytes"] == 4 * 8 * 8 * 6 // 8
    bundle_top1 = top1(SplitInference(load_bundle(report.bundle))(to_model_input(holdout.images[:50], INPUT_SHAPE)))
    assert bundle_top1.shape == (50,)


def test_a_rate_term_trains_codes_the_rans_stage_sends_in_fewer_bytes(frozen):
    """The same codec trained with and without a rate weight on the calibration images' head outputs: the rate
    one's codes, coded with the prior the build would fit, take fewer bytes on held-out frames, and its prior
    learned their histogram."""
    import numpy as np

    from runtime.wire import encode_frame
    from toolchain.lossless import fit_prior

    _, split = frozen
    sizes, codecs, agreements = {}, {}, {}
    for rate in (0.0, 0.3):
        torch.manual_seed(0)
        codec = codecs[rate] = make_codec(f"{RATE_SPEC},rate={rate}" if rate else RATE_SPEC, split.point.shape)
        train_codec(codec, split.tail, split.train, epochs=12, seed=0, batch_size=64)
        agreements[rate] = score_codec(codec, split.tail, split.test).agreement
        with torch.no_grad():
            train_codes = codec.encoder().eval()(split.train.features.float()).numpy()
            test_codes = codec.encoder().eval()(split.test.features.float()).numpy()
        wire = codec.wire_format().entropy_coded(fit_prior(codec, train_codes))
        sizes[rate] = float(np.mean([len(encode_frame(frame, wire)) for frame in test_codes]))
    assert sizes[0.3] < 0.8 * sizes[0.0] <= codecs[0.0].wire_format().packed_bytes + 1, sizes
    assert agreements[0.3] > agreements[0.0] - 0.1, agreements  # bytes saved, not the answers
    with torch.no_grad():  # what the prior prices the held-out codes at is what rANS spends, near enough
        latent = codecs[0.3].eval().analysis(split.test.features.float())
        priced = float(codecs[0.3].code_bits(latent).mean()) / 8
    assert priced == pytest.approx(sizes[0.3], rel=0.25)


@pytest.mark.parametrize("spec, problem", [
    ("bbnet:c=8,s=4,bits=4,rate=-1", "rate >= 0"), ("bbnet:c=8,s=4,bits=4,rate=lots", "rate must be a number")])
def test_a_rate_that_is_not_a_weight_is_refused(spec, problem):
    with pytest.raises(EdgesplitError, match=problem):
        make_codec(spec, (128, 8, 8))


def test_search_codec_trades_bytes_for_accuracy_with_a_rate_and_names_the_stage_to_build_with(tmp_path):
    import subprocess
    import sys

    output = tmp_path / "search"
    result = subprocess.run([
        sys.executable, "-m", "edgesplit", "search-codec", "--split", "layer3", "--data", str(DEFAULT_CALIBRATION),
        "--channels", "16", "--strides", "4", "--bits", "4", "--rates", "0,0.3", "--epochs", "12", "--budget", "100",
        "--output", str(output)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [line.split() for line in result.stdout.splitlines() if line.startswith("bbnet:")]
    assert [row[0] for row in rows] == ["bbnet:c=16,s=4,bits=4", "bbnet:c=16,s=4,bits=4,rate=0.3"]  # least first
    assert rows[1][3] == "(rans)" and float(rows[1][1]) < float(rows[0][1])
    assert "--codec bbnet:c=16,s=4,bits=4,rate=0.3 " in result.stdout and "--lossless rans)" in result.stdout
    refused = CliRunner().invoke(main, ["search-codec", "--rates", "0,lots", "--output", str(output)])
    assert refused.exit_code == 2 and "'0,lots' is not a comma-separated list of numbers" in refused.output
    refused = CliRunner().invoke(main, ["search-codec", "--family", "int8", "--output", str(output)])
    assert refused.exit_code == 2 and "'int8' is not a learned codec; learned codecs: bbnet, safbmp" in refused.output
