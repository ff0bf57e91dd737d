"""The models and data people bring: other architectures, RGB images from folders and NHWC arrays,
declared preprocessing, several outputs, several crossing tensors; and `edgesplit edge` on them."""

import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

from calibration_data import DEFAULT_CALIBRATION
from runtime.bundle import load_bundle
from runtime.cloud import BackgroundServer, ServerConfig
from runtime.edge import CLOUD, ClientConfig, EdgeClient
from runtime.errors import EdgesplitError
from runtime.images import SourceFrame, open_source
from runtime.inputs import InputSpec
from runtime.local import SplitInference, softmax_entropy
from runtime.scores import PixelScores
from toolchain.cli import main
from toolchain.data import load_images, to_model_input
from toolchain.evaluate import batch_size_for, batched, predict_outputs, reference_outputs
from toolchain.load import InputOptions, load_model

import architectures
from conftest import top1

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
# Fashion-MNIST tinted per class: real pictures, three channels that differ
TINTS = np.array([[1, .3, .3], [.3, 1, .3], [.3, .3, 1], [1, 1, .3], [1, .3, 1], [.3, 1, 1], [1, .6, .2], [.6, .2, 1],
                  [.2, 1, .6], [.9, .9, .9]])


def tinted(images: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """N,H,W grayscale → N,3,H,W RGB."""
    return (images[:, None].astype(np.float32) * TINTS[labels][:, :, None, None]).round().astype(np.uint8)


@pytest.fixture(scope="module")
def rgb_npz(tmp_path_factory) -> Path:
    """Train and test splits of RGB 28x28 images, stored N,C,H,W."""
    with np.load(DEFAULT_CALIBRATION) as data:
        arrays = {f"{split}_images": tinted(data[f"{split}_images"][:count], data[f"{split}_labels"][:count])
                  for split, count in (("train", 256), ("test", 300))}
        arrays.update({f"{split}_labels": data[f"{split}_labels"][:count] for split, count in (("train", 256),
                                                                                            ("test", 300))})
    path = tmp_path_factory.mktemp("rgb") / "rgb.npz"
    np.savez(path, **arrays)
    return path


def build(arguments, tmp_path, name="bundle"):
    output = tmp_path / name
    result = CliRunner().invoke(main, ["build-engines", *arguments, "--output", str(output)], env={"COLUMNS": "250"})
    return result, output


@pytest.mark.parametrize("device", ["cpu", "raspberry-pi"])
@pytest.mark.parametrize("name", sorted(architectures.SHAPES))
def test_architectures_nobody_designed_for_build_and_reproduce_pytorch(name, device, rgb_npz, tmp_path):
    shape = architectures.SHAPES[name]
    resize = "resize" if shape[1] == 64 else "pad"
    model = ["--model", f"architectures:{name}", "--input-shape", ",".join(map(str, shape)), "--resize", resize]
    # random weights: accuracy means nothing, so the gates are opened and the halves compared instead
    result, output = build([*model, "--target", device, "--cloud", "cpu", "--calib", str(rgb_npz),
                            "--max-loss", "100", "--min-agreement", "0"], tmp_path)
    assert result.exit_code == 0, result.output[-3000:]
    bundle = load_bundle(output)
    loaded = load_model(f"architectures:{name}", None, InputOptions(shape, resize))
    spec = bundle.input_spec()
    inputs = load_images(rgb_npz, "test", spec).inputs()[:64]
    run = SplitInference(bundle)
    from toolchain.split import split_model

    halves = split_model(loaded.module, bundle.manifest["split"]["node"], shape)
    with torch.no_grad():
        features = halves.head(torch.from_numpy(inputs)).numpy()
    codec = bundle.manifest["codec"]
    dequantized = (run.edge_half.codes(inputs).astype(np.float32) - codec["zero_point"][0]) * codec["scale"][0]
    relative = np.linalg.norm(dequantized - features) / np.linalg.norm(features)
    # the wire's int8 rounding alone (cpu), or an int8 edge all through (raspberry-pi)
    assert relative < (0.02 if device == "cpu" else 0.15), relative
    deployed = run.cloud_outputs(run.edge(inputs))
    with torch.no_grad():
        decoded = torch.from_numpy(np.ascontiguousarray(dequantized))
        expected = halves.tail(decoded)
    expected = [t.numpy() for t in (expected if isinstance(expected, tuple) else (expected,))]
    for found, wanted in zip(deployed, expected):
        np.testing.assert_allclose(found, wanted, atol=1e-3, rtol=1e-3)  # the cloud ONNX is the tail, exactly


def test_a_transformer_splits_between_attention_blocks_on_every_device_that_takes_tokens(tmp_path):
    """Per-channel int8 on tokens is per feature; the Nano's opset 13 has no attention op, so it is decomposed;
    the Pi's converter takes maps only and says so."""
    model = ["--model", "architectures:tiny_vit", "--input-shape", "1,32,32", "--resize", "pad", "--split", "blocks_0",
             "--codec", "int8:per=channel", "--max-loss", "100", "--min-agreement", "0"]
    result, output = build([*model, "--target", "cpu"], tmp_path)
    assert result.exit_code == 0, result.output[-2000:]
    assert len(load_bundle(output).manifest["codec"]["scale"]) == 32  # 16 tokens of 32 features: one per feature
    result, output = build([*model, "--target", "jetson-nano"], tmp_path, "nano")
    assert result.exit_code == 0, result.output[-2000:]
    edge = onnx.load(output / load_bundle(output).artefact("edge")["file"])
    assert edge.opset_import[0].version == 13 and {"MatMul", "Softmax"} <= {n.op_type for n in edge.graph.node}
    result, _ = build([*model, "--target", "raspberry-pi"], tmp_path, "pi")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.strip().splitlines()[-1:] == [
        "error: raspberry-pi's full-int8 TFLite half sends a C x H x W map; this cut crosses 16x32: split "
        "where a convolution's map crosses, or build for another edge device"]


def write_folder(root: Path, images: np.ndarray, labels: np.ndarray, suffix: str) -> None:
    from PIL import Image

    for index, (image, label) in enumerate(zip(images, labels)):
        folder = root / f"class{label}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image.transpose(1, 2, 0)).save(folder / f"{index:04d}{suffix}", quality=95)


def test_an_rgb_folder_and_an_nhwc_npz_calibrate_an_rgb_model_and_the_edge_sees_what_calibration_saw(
        rgb_npz, tmp_path):
    with np.load(rgb_npz) as data:
        train, train_labels = data["train_images"], data["train_labels"]
        test, test_labels = data["test_images"][:60], data["test_labels"][:60]
    folder = tmp_path / "pictures"
    write_folder(folder / "train", train, train_labels, ".png")
    write_folder(folder / "test", test, test_labels, ".jpg")
    nhwc = tmp_path / "nhwc.npz"
    np.savez(nhwc, train_images=train.transpose(0, 2, 3, 1), train_labels=train_labels,
             test_images=test.transpose(0, 2, 3, 1), test_labels=test_labels)
    model = ["--model", "architectures:rgb64", "--input-shape", "3,64,64", "--resize", "resize",
             "--max-loss", "100", "--min-agreement", "0"]
    from_folder, folder_bundle = build([*model, "--calib", str(folder)], tmp_path, "folder")
    from_array, array_bundle = build([*model, "--calib", str(nhwc)], tmp_path, "nhwc")
    assert from_folder.exit_code == 0 and from_array.exit_code == 0, from_folder.output + from_array.output
    checks = load_bundle(folder_bundle).manifest["checks"]
    assert checks["holdout_frames"] == 60 and checks["holdout_origin"] == str(folder / "test")
    assert load_bundle(array_bundle).manifest["checks"]["holdout_frames"] == 60
    bundle = load_bundle(folder_bundle)
    assert bundle.manifest["source_model"]["input"]["resize"] == "resize"
    calibration_view = load_images(folder, "test", bundle.input_spec())
    edge_view = list(open_source(str(folder), bundle.input_spec(), "test"))
    edge = SplitInference(bundle).edge_half
    np.testing.assert_array_equal(edge.codes(np.stack([f.image for f in edge_view])),
                                  edge.codes(calibration_view.inputs()))
    assert [f.label for f in edge_view] == calibration_view.labels.tolist() == sorted(test_labels.tolist())


def test_small_images_are_refused_unless_the_spec_resizes_them(tmp_path):
    with np.load(DEFAULT_CALIBRATION) as data:
        small = data["test_images"][:100, ::2, ::2]  # 14x14
        np.savez(tmp_path / "small.npz", images=small, labels=data["test_labels"][:100])
    model = ["--model", "conftest:TinyNet", "--weights", str(TESTS / "assets" / "tiny.pt"), "--input-shape", "1,32,32",
             "--calib", str(tmp_path / "small.npz")]
    refused, output = build(model, tmp_path)
    assert refused.exit_code == 1 and not output.exists()
    assert refused.output.strip().splitlines() == [
        f"error: {tmp_path / 'small.npz'}: images are 14x14, the model takes 32x32 (resize policy: none); "
        "give images of the model's size, or build the bundle with --resize resize (bilinear) or --resize pad "
        "(centre zero-padding)"]
    resized, output = build([*model, "--resize", "resize", "--max-loss", "100", "--min-agreement", "0"], tmp_path)
    assert resized.exit_code == 0, resized.output
    checks = load_bundle(output).manifest["checks"]
    assert checks["holdout_frames"] == 20 and "every 5th image" in checks["holdout_origin"]  # one set, held out


@pytest.mark.parametrize("labels,message", [
    (np.array(["shirt"] * 100), "labels must be integer class indices (one per image, or per pixel) or float "
                                "targets shaped like an output, got <U5 (100,)"),
    (np.full(100, 0.5), "labels must be integer class indices (one per image, or per pixel) or float targets "
                        "shaped like an output, got float64 (100,)"),
    (np.zeros(99, dtype=np.int64), "99 labels for 100 images"),
])
def test_bad_labels_are_one_line(labels, message, tmp_path):
    with np.load(DEFAULT_CALIBRATION) as data:
        np.savez(tmp_path / "bad.npz", images=data["test_images"][:100], labels=labels)
    result, _ = build(["--calib", str(tmp_path / "bad.npz")], tmp_path)
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1
    assert message in result.output


def test_declared_mean_and_std_are_folded_into_the_edge_half(tmp_path, rgb_npz):
    """A torchvision-style model normalizes outside its graph: the spec's mean/std go into the edge half,
    and the bundle equals the model fed normalized images."""
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    result, output = build(["--model", "architectures:mobilenet_v2", "--input-shape", "3,32,32", "--resize", "pad",
                            "--mean", ",".join(map(str, mean)), "--std", ",".join(map(str, std)),
                            "--calib", str(rgb_npz), "--max-loss", "100", "--min-agreement", "0"], tmp_path)
    assert result.exit_code == 0, result.output
    bundle = load_bundle(output)
    assert bundle.manifest["source_model"]["input"]["mean"] == list(mean)
    inputs = load_images(rgb_npz, "test", bundle.input_spec()).inputs()[:100]
    normalized = (inputs - np.array(mean, np.float32)[:, None, None]) / np.array(std, np.float32)[:, None, None]
    reference = predict_outputs(architectures.mobilenet_v2(), normalized.astype(np.float32))[0]
    assert (top1(SplitInference(bundle)(inputs)) == top1(reference)).mean() >= 0.97
    wrong = CliRunner().invoke(main, ["list-splits", "--model", "architectures:mobilenet_v2", "--input-shape",
                                      "3,32,32", "--mean", "0.5,0.5", "--std", "0.2,0.2"])
    assert wrong.exit_code == 1 and "--mean needs 1 or 3 values (one per channel), got 2" in wrong.output


def test_a_class_one_split_lacks_keeps_the_numbers_of_the_others(tmp_path):
    images = np.full((3, 3, 8, 8), 100, np.uint8)
    write_folder(tmp_path / "train", images, np.array([0, 1, 2]), ".png")
    write_folder(tmp_path / "test", images[:2], np.array([0, 2]), ".png")  # no class1
    spec = InputSpec(3, 8, 8, "none", None, None)
    assert load_images(tmp_path, "test", spec).labels.tolist() == [0, 2]
    assert [frame.label for frame in open_source(str(tmp_path), spec, "test")] == [0, 2]
    assert load_images(tmp_path, "train", spec).labels.tolist() == [0, 1, 2]


def test_the_console_script_imports_a_model_module_from_the_current_folder(tmp_path):
    (tmp_path / "mynets.py").write_text("import torch\n\ndef make(linear=torch.nn.Linear):\n    return torch.nn."
                                        "Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), linear(144, 2))\n"
                                        "\ndef lazy():\n    return make(lambda _, n: torch.nn.LazyLinear(n))\n")
    script = Path(sys.executable).with_name("edgesplit")
    listed = subprocess.run([str(script), "list-splits", "--model", "mynets:make", "--input-shape", "3,8,8"],
                            cwd=tmp_path, capture_output=True, text=True)
    assert listed.returncode == 0 and "0" in listed.stdout.split(), listed.stdout + listed.stderr
    missing = subprocess.run([str(script), "list-splits", "--model", "nonets:make", "--input-shape", "3,8,8"],
                             cwd=tmp_path, capture_output=True, text=True)
    assert missing.returncode == 1 and missing.stderr.strip() == ("error: cannot import 'nonets:make' (from the "
                                                                  "current folder or the installed packages): No "
                                                                  "module named 'nonets'"), missing.stderr
    lazy = subprocess.run([str(script), "list-splits", "--model", "mynets:lazy", "--input-shape", "3,8,8"],
                          cwd=tmp_path, capture_output=True, text=True)
    assert lazy.returncode == 1 and lazy.stderr.strip() == (
        "error: mynets:lazy has parameters not yet made (2.weight, 2.bias: a lazy module such as LazyLinear): run "
        "one forward pass before returning the model, or give --weights"), lazy.stderr


def frames_of(bundle, source, count):
    return list(open_source(str(source), bundle.input_spec()))[:count]


def test_a_two_output_model_answers_both_outputs_over_tcp(rgb_npz, tmp_path):
    result, output = build(["--model", "architectures:detector", "--input-shape", "3,32,32", "--resize", "pad",
                            "--calib", str(rgb_npz), "--max-loss", "100", "--min-agreement", "0"], tmp_path)
    assert result.exit_code == 0, result.output
    bundle = load_bundle(output)
    assert [t["name"] for t in bundle.artefact("cloud")["outputs"]] == ["logits", "boxes"]
    assert bundle.manifest["checks"]["outputs"]["boxes"]["kind"] == "regression"
    frames = frames_of(bundle, rgb_npz, 24)
    expected = SplitInference(bundle).cloud_outputs(SplitInference(bundle).edge(np.stack([f.image for f in frames])))
    with BackgroundServer(bundle, ServerConfig(key=b"a test key of 128 bits")) as server:
        with EdgeClient(bundle, ClientConfig(*server.address, key=b"a test key of 128 bits")) as client:
            outcomes = client.run_all(frames)
    assert all(o.answered_by == CLOUD for o in outcomes)
    for index, name in enumerate(("logits", "boxes")):
        np.testing.assert_allclose(np.stack([o.outputs[index] for o in outcomes]), expected[index], atol=1e-4)
    assert np.stack([o.outputs[1] for o in outcomes]).shape == (24, 4)
    saved = tmp_path / "outputs.npz"  # the edge command keeps every output too
    summary, _ = serve_and_run_edge(output, str(rgb_npz), tmp_path, 24, "--save-outputs", str(saved))
    with np.load(saved) as kept:
        assert list(kept["index"]) == list(range(24))
        for index, name in enumerate(("logits", "boxes")):
            np.testing.assert_allclose(kept[name], expected[index], atol=1e-4)


def test_a_cut_crossed_by_two_tensors_carries_both_in_one_frame(default_model, holdout, tmp_path):
    result, output = build(["--split", "layer2.0.conv1", "--lossless", "none"], tmp_path)
    assert result.exit_code == 0, result.output
    bundle = load_bundle(output)
    assert bundle.wire.parts == ((32, 32, 32), (64, 16, 16))
    assert [t["name"] for t in bundle.artefact("cloud")["inputs"]] == ["codes0", "codes1"]
    frames = [SourceFrame(i, image, int(label)) for i, (image, label) in
              enumerate(zip(holdout.inputs()[:40], holdout.labels[:40]))]
    run = SplitInference(bundle)
    inputs = np.stack([f.image for f in frames])
    assert [len(p) for p in run.edge(inputs[:2])] == [32 * 32 * 32 + 64 * 16 * 16] * 2
    with BackgroundServer(bundle, ServerConfig(key=b"a test key of 128 bits")) as server:
        with EdgeClient(bundle, ClientConfig(*server.address, key=b"a test key of 128 bits")) as client:
            outcomes = client.run_all(frames)
    np.testing.assert_allclose(np.stack([o.logits for o in outcomes]), run(inputs), atol=1e-4)
    reference = top1(reference_outputs(default_model, holdout.inputs())[0])
    assert (top1(run(holdout.inputs())) == reference).mean() >= 0.98
    assert bundle.manifest["checks"]["top1_agreement"] >= 0.98


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def serve_and_run_edge(bundle_path: Path, source: str, tmp_path: Path, limit: int, *options, refused=False):
    """`edgesplit serve` and `edgesplit edge` (with `options`) as users start them, two processes over loopback:
    (summary, frame rows), or the edge's failed process where it is to be `refused`."""
    port = free_port()
    environment = dict(os.environ, EDGESPLIT_KEY="a shared key for this test, long enough")
    server = subprocess.Popen([sys.executable, "-m", "edgesplit", "serve", "--bundle", str(bundle_path), "--port",
                               str(port)], cwd=ROOT, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    try:
        assert "serving bundle" in server.stdout.readline()
        summary, rows = tmp_path / "summary.json", tmp_path / "frames.csv"
        edge = subprocess.run([sys.executable, "-m", "edgesplit", "edge", "--bundle", str(bundle_path), "--server",
                               f"127.0.0.1:{port}", "--source", source, "--limit", str(limit), "--summary-json",
                               str(summary), "--output", str(rows), *options], cwd=ROOT, env=environment, capture_output=True,
                              text=True, timeout=300)
        assert (edge.returncode != 0) == refused, edge.stderr
    finally:
        server.terminate()
        server.wait(30)
    if refused:
        return edge
    with open(rows) as stream:
        return json.loads(summary.read_text()), list(csv.DictReader(stream))


def test_a_model_without_a_class_output_builds_and_runs_on_closeness_alone(tmp_path):
    """A map per image (a segmenter's, a detector's grid) is no class output: the build holds it to relative
    error, does not read the images' class labels as its own, and the edge prints no top-1 for it."""
    model = ["--model", "architectures:tiny_segmenter", "--input-shape", "1,32,32", "--resize", "pad"]
    result, output = build(model, tmp_path)
    assert result.exit_code == 0, result.output[-2000:]
    assert "not measured: the model has no class output" in " ".join(result.output.split())
    checks = load_bundle(output).manifest["checks"]
    assert "top1_agreement" not in checks and "float_accuracy" not in checks and checks["labels_unused"]
    assert 0 < checks["outputs"]["logits"]["relative_error"] < 0.1
    summary, rows = serve_and_run_edge(output, str(DEFAULT_CALIBRATION), tmp_path, 5)
    assert summary["cloud_answers"] == 5 and summary["accuracy"] is None
    assert [row["prediction"] for row in rows] == [""] * 5
    for extra, message in ((["--early-exit"], "error: an exit branch answers with a class: this model has no class "
                                              "output"),
                           (["--output-kinds", "class"], "error: output 'logits' is 3x8x8 per image, not one score "
                                                         "per class: it cannot be a class output (--output-kinds "
                                                         "regression for it)")):
        result, _ = build([*model, *extra], tmp_path, "refused")
        assert result.exit_code == 1 and result.output.strip().splitlines()[-1] == message, result.output[-2000:]


@pytest.mark.parametrize("edge_device", ["cpu", "raspberry-pi"])
def test_the_edge_command_runs_each_edge_device_that_runs_here(edge_device, device_bundle, default_build, holdout,
                                                               tmp_path):
    """The default model for the device with a cpu cloud (for the cpu: the README's build-engines)."""
    path = default_build[0] if edge_device == "cpu" else device_bundle(edge_device, "cpu").bundle
    summary, rows = serve_and_run_edge(path, str(DEFAULT_CALIBRATION), tmp_path, 200)
    assert summary["cloud_answers"] + summary["edge_answers"] == 200 and summary["errors"] == 0
    assert summary["cloud_answers"] > 0 and summary["edge_answers"] > 0  # the default bundle's early exit
    bundle = load_bundle(path)
    run = SplitInference(bundle)
    payloads, exit_logits = run.edge_half.payloads_and_exit(holdout.inputs()[:200])
    on_edge = softmax_entropy(exit_logits) < bundle.manifest["exit"]["threshold"]
    expected = np.where(on_edge, top1(exit_logits), top1(run.cloud(payloads)))
    assert [row["answered_by"] == "edge" for row in rows] == on_edge.tolist()
    assert [int(row["prediction"]) for row in rows] == expected.tolist()


def test_the_default_raspberry_pi_edge_takes_the_whole_pixel_range(device_bundle):
    quantization = device_bundle("raspberry-pi").manifest["artefacts"]["edge"]["inputs"][0]["quantization"]
    scale, zero_point = quantization["scale"], quantization["zero_point"]
    assert scale * (-128 - zero_point) <= 0.0 and scale * (127 - zero_point) >= 1.0 - 1e-6


def test_an_int8_input_range_short_of_the_pixels_is_refused():
    from toolchain.backends.tflite import check_input_range
    check_input_range((1 / 255, -128))
    with pytest.raises(EdgesplitError, match=r"input covers \[0.000, 0.800\], pixels span \[0, 1\]: frames outside "
                                             "would be clipped"):
        check_input_range((0.8 / 255, -128))


SEGMENTER = ["--model", "architectures:tiny_segmenter", "--input-shape", "1,32,32", "--resize", "pad"]


def segmenter_data(tmp_path: Path, labels_of) -> Path:
    """Fashion-MNIST train and test splits whose labels are `labels_of(the float segmenter's maps)`."""
    with np.load(DEFAULT_CALIBRATION) as data:
        arrays = {f"{split}_images": data[f"{split}_images"][:count] for split, count in (("train", 256), ("test", 200))}
    loaded = load_model("architectures:tiny_segmenter", None, InputOptions((1, 32, 32), "pad"))
    for split in ("train", "test"):
        maps = predict_outputs(loaded.module, to_model_input(arrays[f"{split}_images"], loaded.spec()))[0]
        arrays[f"{split}_labels"] = labels_of(maps)
    path = tmp_path / "labeled.npz"
    np.savez(path, **arrays)
    return path


def a_quarter_flipped(maps: np.ndarray) -> np.ndarray:
    """The float model's classes per pixel, every pixel of even row and column moved to the next class."""
    classes = maps.argmax(1)
    classes[:, ::2, ::2] = (classes[:, ::2, ::2] + 1) % maps.shape[1]
    return classes


def test_per_pixel_labels_score_a_segmenters_map_by_pixel_accuracy_and_mean_iou(tmp_path):
    result, output = build([*SEGMENTER, "--calib", str(segmenter_data(tmp_path, a_quarter_flipped))], tmp_path)
    assert result.exit_code == 0, result.output[-2000:]
    checks = load_bundle(output).manifest["checks"]
    assert (checks["labeled_output"], checks["accuracy_metric"]) == ("logits", "pixel accuracy")
    assert checks["float_accuracy"] == pytest.approx(0.75)  # the float model misses exactly the flipped quarter
    assert abs(checks["bundle_accuracy"] - checks["float_accuracy"]) <= 0.01
    assert checks["outputs"]["logits"]["kind"] == "class map" and checks["outputs"]["logits"]["pixel_agreement"] >= 0.98
    assert 0 < checks["float_miou"] < 0.75 and abs(checks["bundle_miou"] - checks["float_miou"]) <= 0.02
    text = " ".join(result.output.split())
    assert f"float pixel accuracy │ 75.00% on the held-out images (logits, mean IoU {checks['float_miou']:.3f})" in text
    # the edge scores its frames the same way, with the labels the build was given
    summary, rows = serve_and_run_edge(output, str(tmp_path / "labeled.npz"), tmp_path, 40)
    assert summary["accuracy"] is None and abs(summary["pixel_accuracy"] - 0.75) <= 0.02
    assert abs(summary["mean_iou"] - checks["bundle_miou"]) <= 0.05
    per_frame = [float(row["pixel_accuracy"]) for row in rows]
    assert len(per_frame) == 40 and np.mean(per_frame) == pytest.approx(summary["pixel_accuracy"], abs=1e-6)
    unfit = segmenter_data(tmp_path, lambda maps: maps.argmax(1)[:, :5, :5])
    edge = serve_and_run_edge(output, str(unfit), tmp_path, 4, refused=True)
    assert edge.stderr.strip().splitlines() == [
        "error: per-pixel labels of 5x5 fit none of the bundle's outputs (3x8x8): they score a classes x H x W map"]


def test_pixel_scores_accumulate_frames_into_the_same_accuracy_and_mean_iou_as_all_at_once():
    generator = np.random.default_rng(0)
    scores, labels = generator.random((6, 4, 5, 7)), generator.integers(0, 3, (6, 5, 7))  # class 3 never labeled
    together, framewise = PixelScores(4), PixelScores(4)
    together.add(scores, labels)
    for frame_scores, frame_labels in zip(scores, labels):
        framewise.add(frame_scores, frame_labels)
    predicted = scores.argmax(1)
    present = np.union1d(np.unique(predicted), np.unique(labels))
    iou = np.mean([((predicted == c) & (labels == c)).sum() / ((predicted == c) | (labels == c)).sum() for c in present])
    for scored in (together, framewise):
        assert scored.accuracy == pytest.approx((predicted == labels).mean()) and scored.mean_iou == pytest.approx(iou)
    with pytest.raises(EdgesplitError, match=r"^per-pixel labels hold class 4, the output scores classes 0 to 3$"):
        together.add(scores[:1], np.full((1, 5, 7), 4))
    with pytest.raises(EdgesplitError, match=r"^per-pixel labels of shape \(5, 5\) for a class map of \(4, 5, 7\): "
                                             r"expected \(5, 7\)$"):
        together.add(scores[0], labels[0, :, :5])


def test_float_targets_shaped_like_an_output_are_scored_by_relative_error_and_other_shapes_are_one_line(tmp_path):
    noise = np.random.default_rng(0)
    targets = segmenter_data(tmp_path, lambda maps: maps + noise.normal(0, 0.1, maps.shape).astype(np.float32))
    result, output = build([*SEGMENTER, "--calib", str(targets)], tmp_path)
    assert result.exit_code == 0, result.output[-2000:]
    checks = load_bundle(output).manifest["checks"]
    assert checks["labeled_output"] == "logits" and "float_accuracy" not in checks
    float_error, bundle_error = checks["float_target_error"], checks["bundle_target_error"]
    # the bundle is its own relative error away from the float model's maps, the targets their noise
    assert 0 < float_error and abs(bundle_error - float_error) <= 1.1 * checks["outputs"]["logits"]["relative_error"]
    unfit = segmenter_data(tmp_path, lambda maps: maps.argmax(1)[:, :5, :5])
    result, _ = build([*SEGMENTER, "--calib", str(unfit)], tmp_path, "refused")
    assert result.exit_code == 1 and result.output.strip().splitlines()[-1] == (
        "error: labels shaped 5x5 per image (int64) fit none of the model's outputs (logits 3x8x8): per-pixel class "
        "indices fit a classes x H x W map, float targets an output of their own shape"), result.output[-2000:]


def test_large_inputs_run_through_a_module_in_batches_that_bound_the_builds_memory():
    """A 224x224 RGB model's calibration images go through the head 27 at a time (4M input values), not 512."""
    seen = []
    convolution = torch.nn.Conv2d(3, 4, 3).eval()

    def recorded(images: torch.Tensor) -> torch.Tensor:
        seen.append(len(images))
        return convolution(images)
    images = np.random.default_rng(0).random((60, 3, 224, 224), dtype=np.float32)
    assert batch_size_for(images) == 27 and batch_size_for(images[:, :1, :32, :32]) == 500
    result = batched(recorded, images)
    assert seen == [27, 27, 6]
    with torch.no_grad():
        assert torch.allclose(result, convolution(torch.from_numpy(images)), atol=1e-5)
