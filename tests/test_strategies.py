"""Bundles for the two baselines a split is measured against, run by the same commands: edge-only (the whole model
on the edge device, no server) and cloud-only (the image sent raw, PNG or JPEG; the whole model in the cloud)."""

import io
import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from calibration_data import DEFAULT_CALIBRATION
from runtime.bundle import load_bundle
from runtime.errors import WireError
from runtime.images import open_source
from runtime.wire import WireFormat, decode_frame, encode_frame
from toolchain.cli import main

ROOT = Path(__file__).resolve().parents[1]
KEY = "a strategy test key, 128 bits or more"
FRAMES = 100


def build(tmp_path_factory, *options) -> Path:
    output = tmp_path_factory.mktemp("strategies") / "bundle"
    result = CliRunner().invoke(main, ["build-engines", *options, "--holdout-frames", "300", "--output", str(output)],
                                env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    return output


def runtime_command(*arguments, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "runtime.cli", *arguments], cwd=str(ROOT), capture_output=True,
                          text=True, timeout=timeout, env=dict(os.environ, EDGESPLIT_KEY=KEY))


def float_predictions(default_model, bundle: Path) -> tuple[np.ndarray, np.ndarray]:
    """The float model's top-1 and the labels on the frames `edgesplit edge --limit FRAMES` reads."""
    frames = list(open_source(str(DEFAULT_CALIBRATION), load_bundle(bundle).input_spec(), "test"))[:FRAMES]
    with torch.no_grad():
        logits = default_model.module(torch.from_numpy(np.stack([f.image for f in frames])))
    return logits.argmax(1).numpy(), np.array([f.label for f in frames])


def edge_run(bundle: Path, tmp_path: Path, *options) -> tuple[dict, np.ndarray]:
    summary, rows = tmp_path / "summary.json", tmp_path / "frames.csv"
    result = runtime_command("edge", "--bundle", str(bundle), "--source", str(DEFAULT_CALIBRATION), "--limit",
                             str(FRAMES), "--summary-json", str(summary), "--output", str(rows), *options)
    assert result.returncode == 0, result.stderr
    predictions = np.genfromtxt(rows, delimiter=",", names=True, dtype=None, encoding=None)["prediction"]
    return json.loads(summary.read_text()), predictions


@pytest.fixture(scope="module")
def edge_only(tmp_path_factory):
    return {target: build(tmp_path_factory, "--strategy", "edge-only", "--target", target)
            for target in ("cpu", "raspberry-pi")}


@pytest.mark.parametrize("target,agreement", [("cpu", 1.0), ("raspberry-pi", 0.97)])
def test_an_edge_only_bundle_answers_every_frame_on_the_device_without_a_server(edge_only, default_model, target,
                                                                               agreement, tmp_path):
    bundle = edge_only[target]
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["strategy"] == "edge-only" and list(manifest["artefacts"]) == ["edge"]
    assert "wire" not in manifest and "codec" not in manifest
    summary, predictions = edge_run(bundle, tmp_path)
    assert summary["edge_answers"] == FRAMES and summary["cloud_answers"] == summary["errors"] == 0
    assert summary["bytes_sent"] == 0 and summary["connects"] == 0
    expected, labels = float_predictions(default_model, bundle)
    assert (predictions == expected).mean() >= agreement
    assert summary["accuracy"] == pytest.approx((predictions == labels).mean())
    verified = CliRunner().invoke(main, ["verify-bundle", str(bundle)])
    assert verified.exit_code == 0 and f"edge-only: edge {target}), 1 files verified" in verified.output


def test_serving_an_edge_only_bundle_or_sizing_its_uplink_is_refused_in_one_line(edge_only):
    result = runtime_command("serve", "--bundle", str(edge_only["cpu"]), "--port", "0")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].endswith(
        "has no cloud half (it is edge-only: the whole model runs on the edge device; run it with `edgesplit edge`, "
        "no server needed)")
    rate = CliRunner().invoke(main, ["estimate-rate", "--cameras", "4", "--fps", "10", "--bundle", str(edge_only["cpu"])])
    assert rate.exit_code == 1 and rate.output.strip() == (
        "error: this bundle is edge-only: its edge sends nothing, so it needs no uplink (0 bit/s)")


def test_options_an_edge_only_bundle_does_not_use_are_named_not_ignored(edge_only, tmp_path):
    result = runtime_command("edge", "--bundle", str(edge_only["cpu"]), "--source", str(DEFAULT_CALIBRATION),
                             "--limit", "5", "--server", "127.0.0.1:9", "--exit-threshold", "0.1", "--uplink", "1mbit")
    assert result.returncode == 0 and "5 on the edge" in result.stdout
    assert "so --server, --exit-threshold, --uplink are not used" in result.stderr


def test_an_edge_only_bundle_for_the_nano_carries_the_whole_model_and_its_engine_recipe(tmp_path_factory):
    bundle = build(tmp_path_factory, "--strategy", "edge-only", "--target", "jetson-nano")
    edge = json.loads((bundle / "manifest.json").read_text())["artefacts"]["edge"]
    assert edge["backend"] == "tensorrt" and edge["precision"] == "fp16"
    assert [t["name"] for t in edge["inputs"]] == ["image"] and [t["name"] for t in edge["outputs"]] == ["logits"]
    assert edge["engine"]["recipe"]["profiles"]["image"][0] == [1, 1, 32, 32]


def picture_bytes(pixels: np.ndarray, picture: str) -> int:
    """What Pillow makes of one C x H x W image, as a camera would send it (JPEG at quality 90)."""
    buffer = io.BytesIO()
    options = {"quality": 90} if picture == "jpeg" else {"optimize": True}
    Image.fromarray(pixels[0]).save(buffer, format=picture.upper(), **options)
    return len(buffer.getvalue())


@pytest.mark.parametrize("picture,agreement", [("raw", 1.0), ("png", 1.0), ("jpeg", 0.95)])
def test_a_cloud_only_bundle_sends_the_image_to_serve_and_the_whole_model_answers(
        tmp_path_factory, default_model, picture, agreement, tmp_path):
    bundle = build(tmp_path_factory, "--strategy", "cloud-only", "--image-format", picture)
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["strategy"] == "cloud-only" and list(manifest["artefacts"]) == ["cloud"]
    server = subprocess.Popen([sys.executable, "-m", "runtime.cli", "serve", "--bundle", str(bundle), "--port", "0"],
                              cwd=str(ROOT), env=dict(os.environ, EDGESPLIT_KEY=KEY), stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True)
    try:
        address = server.stdout.readline().split(" on ")[1].split()[0]
        summary, predictions = edge_run(bundle, tmp_path, "--server", address)
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert summary["cloud_answers"] == FRAMES and summary["errors"] == 0
    frames = list(open_source(str(DEFAULT_CALIBRATION), load_bundle(bundle).input_spec(), "test"))[:FRAMES]
    pixels = [np.round(f.image * 255).astype(np.uint8) for f in frames]
    sizes = [p.size if picture == "raw" else picture_bytes(p, picture) for p in pixels]
    assert summary["payload_bytes_per_frame"] == pytest.approx(np.mean(sizes))
    expected, _ = float_predictions(default_model, bundle)
    assert (predictions == expected).mean() >= agreement


def test_an_edge_without_a_server_for_a_bundle_that_needs_one_is_told_in_one_line(tmp_path_factory):
    bundle = build(tmp_path_factory, "--strategy", "cloud-only")
    result = runtime_command("edge", "--bundle", str(bundle), "--source", str(DEFAULT_CALIBRATION))
    assert result.returncode == 1 and result.stderr.strip().endswith(
        "is cloud-only: it sends frames to a cloud server; give --server HOST:PORT")


@pytest.mark.parametrize("options,message", [
    (["--strategy", "edge-only", "--codec", "int8", "--split", "layer2"],
     "error: --split, --codec describe a split; this edge-only bundle has no cut"),
    (["--strategy", "cloud-only", "--early-exit"], "error: --early-exit describes a split; this cloud-only bundle "
                                                   "has no cut"),
    (["--image-format", "png"], "error: --image-format is how cloud-only sends the image; this bundle is split"),
    (["--strategy", "cloud-only", "--lossless", "zstd"],
     "error: --lossless zstd compresses a split's codes; this cloud-only bundle sends the image (--image-format)"),
    (["--strategy", "edge-only", "--train-data", "fashion-mnist"],
     "error: --train-data describes a split; this edge-only bundle has no cut"),
    (["--strategy", "edge-only", "--cloud-precision", "fp16"],
     "error: --cloud-precision sets a half this edge-only bundle does not have"),
    (["--strategy", "cloud-only", "--precision", "int8"],
     "error: --precision sets a half this cloud-only bundle does not have"),
])
def test_options_that_do_not_fit_the_strategy_are_refused_in_one_line(options, message, tmp_path):
    result = CliRunner().invoke(main, ["build-engines", *options, "--output", str(tmp_path / "b")])
    assert result.exit_code == 1 and result.output.strip() == message


WIRE = WireFormat((1, 32, 32), picture="png")


def png_declaring(width: int, height: int) -> bytes:
    """A valid 32 x 32 grey PNG whose header (CRC fixed) declares another size."""
    data = bytearray(encode_frame(np.zeros((1, 32, 32), np.uint8), WIRE))
    header = b"IHDR" + struct.pack(">II", width, height) + bytes(data[24:29])
    data[12:29] = header
    data[29:33] = struct.pack(">I", zlib.crc32(header))
    return bytes(data)


def test_picture_frames_round_trip_and_anything_else_is_refused_before_decoding():
    pixels = np.random.default_rng(0).integers(0, 256, (1, 32, 32), dtype=np.uint8)
    payload = encode_frame(pixels, WIRE)
    assert np.array_equal(decode_frame(payload, WIRE), pixels)  # PNG is lossless
    jpeg = WireFormat((1, 32, 32), picture="jpeg")
    assert np.abs(decode_frame(encode_frame(pixels, jpeg), jpeg).astype(int) - pixels).mean() < 40
    refusals = {
        png_declaring(4000, 4000): "the png frame is a 4000x4000 L picture; the bundle sends 32x32 L",
        png_declaring(60000, 60000): "payload is not a valid png picture: Image size",  # Pillow's bomb check
        payload[:len(payload) // 2]: "payload is not a valid png picture",
        encode_frame(pixels, jpeg): "payload is not a valid png picture",
        bytes(200): "payload is not a valid png picture",
        b"": "payload is not a valid png picture",
    }
    for bad, message in refusals.items():
        with pytest.raises(WireError, match=message):
            decode_frame(bad, WIRE)
    with pytest.raises(WireError, match="a 'png' picture frame carries one 8-bit grey or RGB image"):
        WireFormat((2, 32, 32), picture="png").validated()


def test_pictures_survive_random_corruption_with_one_outcome_each():
    rng = np.random.default_rng(1)
    payload = encode_frame(rng.integers(0, 256, (1, 32, 32), dtype=np.uint8), WIRE)
    for _ in range(300):
        corrupt = bytearray(payload)
        for position in rng.integers(0, len(corrupt), rng.integers(1, 8)):
            corrupt[position] = rng.integers(0, 256)
        try:
            assert decode_frame(bytes(corrupt), WIRE).shape == (1, 32, 32)
        except WireError:
            pass


def test_a_paced_frame_s_latency_counts_from_its_capture_not_from_when_the_edge_took_it(edge_only):
    """A camera does not wait for the edge: a frame the edge takes late has been waiting since its capture."""
    from runtime.edge import LocalClient
    from runtime.images import paced

    frames = [frame for _, frame in zip(range(5), open_source(str(DEFAULT_CALIBRATION),
                                                              load_bundle(edge_only["cpu"]).input_spec()))]
    stamped = list(paced(iter(frames), fps=50))
    assert np.diff([frame.due for frame in stamped]) == pytest.approx([0.02] * 4, abs=1e-9)
    late = [frame._replace(due=frame.due - 0.5) for frame in stamped]  # taken half a second after capture
    outcomes = LocalClient(load_bundle(edge_only["cpu"])).run_all(late)
    assert min(outcome.latency_s for outcome in outcomes) >= 0.5
    assert max(outcome.latency_s for outcome in LocalClient(load_bundle(edge_only["cpu"])).run_all(frames)) < 0.5
