"""Early exit: the exit branch inside every kind of edge artefact, and the entropy offload controller."""

import json
import shutil
import socket
import time

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

from calibration_data import DEFAULT_CALIBRATION
from runtime.bundle import check_artefact_io, load_bundle
from runtime.cloud import BackgroundServer, ServerConfig
from runtime.edge import CLOUD, EDGE, ClientConfig, EdgeClient
from runtime.images import SourceFrame
from runtime.local import EdgeHalf
from toolchain.build import BuildOptions, build_engines
from toolchain.cli import main
from toolchain.codec_training import prepare_training
from toolchain.data import to_model_input
from toolchain.exit_branch import load_exit, save_exit, train_exit
from toolchain.zoo import DEFAULT_MODEL, ZOO

from conftest import DEFAULT_SPEC, INPUT_SHAPE

FRAMES = 300


@pytest.fixture(scope="module")
def exit_weights(default_model, tmp_path_factory):
    """An exit branch trained for one epoch on the 512 calibration images (weak, but real)."""
    frozen = prepare_training(default_model.module, "layer2", DEFAULT_SPEC, str(DEFAULT_CALIBRATION),
                              test_frames=0)
    path = tmp_path_factory.mktemp("exit") / "exit.pt"
    save_exit(path, train_exit(frozen.train, 10, epochs=1), frozen.point.node, default_model.sha256)
    return path


@pytest.fixture(scope="module")
def exit_bundle(exit_weights, tmp_path_factory):
    return build_engines(BuildOptions(split="layer2", codec="int8", lossless="none", exit_weights=exit_weights,
                                      output=tmp_path_factory.mktemp("b") / "exit"))


@pytest.fixture(scope="module")
def frames(holdout):
    inputs = to_model_input(holdout.images[:FRAMES], INPUT_SHAPE)
    return [SourceFrame(i, inputs[i], int(holdout.labels[i])) for i in range(FRAMES)]


def exit_reference(default_model, exit_weights, inputs, split="layer2"):
    from toolchain.split import split_model

    halves = split_model(default_model.module, split, INPUT_SHAPE)
    with torch.no_grad():
        branch = load_exit(exit_weights, halves.point.node, default_model.sha256)
        return branch(halves.head(torch.from_numpy(inputs))).numpy()


def test_onnx_edge_carries_codes_and_exit_logits_that_agree_with_pytorch(exit_bundle, exit_weights, default_model,
                                                                          frames):
    model = onnx.load(str(exit_bundle.bundle / "edge.onnx"))
    assert [o.name for o in model.graph.output] == ["codes", "exit_logits"]
    inputs = np.stack([f.image for f in frames[:64]])
    _, exit_logits = EdgeHalf(load_bundle(exit_bundle.bundle)).codes_and_exit(inputs)
    np.testing.assert_allclose(exit_logits, exit_reference(default_model, exit_weights, inputs), atol=1e-4)
    entry = exit_bundle.manifest["exit"]
    assert {key: entry[key] for key in ("output", "classes", "branch")} == {
        "output": "exit_logits", "classes": 10, "branch": {"width": 64}}
    # calibrated by the build: exits change at most 0.3 % of the cloud's answers on the 512 calibration images
    calibration = entry["calibration"]
    assert calibration["frames"] == 512 and calibration["changed_answers"] <= 0.003 and entry["threshold"] > 0


@pytest.mark.parametrize("target", ["raspberry-pi", "jetson-orin"])
def test_tflite_and_tensorrt_edges_carry_the_exit_output(target, device_bundle, default_model, frames):
    """The device's default bundle: the shipped exit branch inside its int8 TFLite or Q/DQ TensorRT edge."""
    report = device_bundle(target)
    bundle = load_bundle(report.bundle)
    check_artefact_io(bundle)
    inputs = np.stack([f.image for f in frames[:64]])
    # TensorRT's Q/DQ ONNX runs in ONNX Runtime here; the TFLite half in ai-edge-litert
    edge = EdgeHalf(bundle, verified=True)
    _, exit_logits = edge.codes_and_exit(inputs)
    split = bundle.manifest["split"]["module"]
    reference = exit_reference(default_model, ZOO[DEFAULT_MODEL].shipped.exit_weights, inputs, split)
    assert (exit_logits.argmax(1) == reference.argmax(1)).mean() >= 0.9  # int8 inside, so agreement not equality


def run_edge(bundle, frames, address, threshold):
    config = ClientConfig(address[0], address[1], key=b"a test key of 128 bits", exit_threshold=threshold, backoff_s=5.0)
    with EdgeClient(bundle, config) as client:
        return client.run_all(frames), client.stats.as_dict()


def test_threshold_zero_sends_everything_and_a_huge_one_nothing(exit_bundle, frames):
    bundle = load_bundle(exit_bundle.bundle)
    with BackgroundServer(bundle, ServerConfig(key=b"a test key of 128 bits")) as server:
        outcomes, stats = run_edge(bundle, frames[:50], server.address, 0.0)
        assert [o.answered_by for o in outcomes] == [CLOUD] * 50
        outcomes, stats = run_edge(bundle, frames[:50], server.address, 1e9)
        assert [o.answered_by for o in outcomes] == [EDGE] * 50 and stats["bytes_sent"] == 0
        assert server.server.metrics.value("edgesplit_frames_total", outcome="answered") == 50  # the first run only


def test_calibrated_offload_rate_is_what_the_edge_then_sends(exit_bundle, frames, holdout, tmp_path):
    directory = shutil.copytree(exit_bundle.bundle, tmp_path / "bundle")
    data = tmp_path / "labeled.npz"
    np.savez(data, test_images=holdout.images[:FRAMES], test_labels=holdout.labels[:FRAMES])
    result = CliRunner().invoke(main, ["calibrate-exit", "--bundle", str(directory), "--data", str(data),
                                       "--offload-rate", "0.4", "--output", str(tmp_path / "curve")])
    assert result.exit_code == 0, result.output
    bundle = load_bundle(directory)  # verified: the new threshold changed the bundle id, consistently
    calibration = bundle.manifest["exit"]["calibration"]
    assert calibration["frames"] == FRAMES and calibration["offload_rate"] >= 0.4
    with BackgroundServer(bundle, ServerConfig(key=b"a test key of 128 bits")) as server:
        outcomes, stats = run_edge(bundle, frames, server.address, None)  # the bundle's threshold
        answered = server.server.metrics.value("edgesplit_frames_total", outcome="answered")
    sent = sum(o.answered_by == CLOUD for o in outcomes)
    assert sent == answered == round(calibration["offload_rate"] * FRAMES)
    accuracy = np.mean([o.logits.argmax() == o.label for o in outcomes])
    assert accuracy == pytest.approx(calibration["accuracy"])
    curve = (tmp_path / "curve" / "curve.csv").read_text().splitlines()
    assert curve[0] == "threshold,offload_rate,accuracy" and curve[1].split(",")[1] == "1.0"


def test_without_the_cloud_the_exit_branch_answers_and_says_so(exit_bundle, frames):
    bundle = load_bundle(exit_bundle.bundle)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    outcomes, stats = run_edge(bundle, frames[:20], ("127.0.0.1", closed_port), None)
    assert [o.answered_by for o in outcomes] == [EDGE] * 20
    assert all("cloud unreachable" in o.error and "exit branch" in o.error for o in outcomes)
    inputs = np.stack([f.image for f in frames[:20]])
    expected = EdgeHalf(bundle).codes_and_exit(inputs)[1]
    np.testing.assert_allclose(np.stack([o.logits for o in outcomes]), expected, atol=1e-5)


def test_when_the_clouds_backend_fails_or_hangs_the_exit_branch_answers_and_says_so(exit_bundle, frames):
    bundle = load_bundle(exit_bundle.bundle)
    expected = EdgeHalf(bundle).codes_and_exit(np.stack([f.image for f in frames[:12]]))[1]
    with BackgroundServer(bundle, ServerConfig(key=b"a test key of 128 bits", batch_timeout_s=0.3)) as server:
        real_infer = server.server.batchers[0].infer

        def fail_then_hang(codes):
            if server.server.metrics.value("edgesplit_batch_size_count") <= 1:
                raise RuntimeError("injected backend failure")
            time.sleep(1.0)  # past the watchdog
            return real_infer(codes)

        server.server.batchers[0].infer = fail_then_hang
        outcomes, _ = run_edge(bundle, frames[:12], server.address, 0.0)  # every frame goes to the cloud
    assert [o.answered_by for o in outcomes] == [EDGE] * 12  # one outcome each, from the exit branch
    assert all(o.error.startswith("cloud failed (") and "exit branch" in o.error for o in outcomes)
    assert any("injected backend failure" in o.error for o in outcomes)
    assert any("gave no answer within 0.3 s" in o.error for o in outcomes)
    np.testing.assert_allclose(np.stack([o.logits for o in outcomes]), expected, atol=1e-5)


def test_calibrate_exit_refuses_a_bundle_without_exit(int8_built, tmp_path):
    result = CliRunner().invoke(main, ["calibrate-exit", "--bundle", str(int8_built.bundle), "--output", str(tmp_path)])
    assert result.exit_code == 1
    assert "has no exit branch: build it with --early-exit" in result.output
    assert json.loads((int8_built.bundle / "manifest.json").read_text()).get("exit") is None


def test_an_accuracy_above_cloud_always_is_refused_naming_both(exit_bundle, tmp_path):
    result = CliRunner().invoke(main, ["calibrate-exit", "--bundle", str(exit_bundle.bundle), "--min-accuracy",
                                       "0.999", "--output", str(tmp_path)])
    assert result.exit_code == 1
    assert "--min-accuracy 99.90% is above sending every frame (93.55%): no threshold reaches it" in result.output
