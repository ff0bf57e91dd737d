"""Input that is wrong on purpose gets one line naming the problem and what was expected: no traceback, no
silent fix (found by trying the commands as a stranger would)."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from calibration_data import DEFAULT_CALIBRATION
from runtime.errors import EdgesplitError
from runtime.images import open_source
from runtime.inputs import InputSpec
from toolchain.cli import main

from conftest import TINY_MODEL

ROOT = Path(__file__).resolve().parents[1]


def one_line_error(arguments) -> str:
    result = CliRunner().invoke(main, arguments)
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    return lines[0]


def test_a_file_that_is_not_an_npz_is_named(tmp_path):
    bad = tmp_path / "images.npz"
    bad.write_text("hello")
    line = one_line_error(["build-engines", *TINY_MODEL, "--calib", str(bad), "--output", str(tmp_path / "b")])
    assert line.startswith(f"error: {bad} is not a numpy .npz file of uint8 images")


def test_a_model_that_does_not_run_on_the_given_shape_says_why_in_one_line():
    line = one_line_error(["list-splits", *TINY_MODEL[:4], "--input-shape", "3,32,32"])
    assert "does not run on an input of shape 1x3x32x32 (--input-shape C,H,W): Given groups=1" in line
    assert "expected input[1, 3, 32, 32] to have 1 channels" in line


def test_an_exit_threshold_without_an_exit_branch_is_refused():
    """It was ignored: the bundle answered every frame in the cloud, as if the threshold had said so."""
    assert one_line_error(["build-engines", *TINY_MODEL, "--exit-threshold", "0.5", "--output", "/tmp/never"]) == (
        "error: --exit-threshold is an exit branch's; this build has none: add --early-exit or --exit-weights")


@pytest.mark.parametrize("threshold,answered", [("2.31", "every"), ("-0.1", "no")])
def test_an_exit_threshold_past_the_largest_entropy_is_refused_before_the_branch_is_trained(threshold, answered):
    """An entropy over 10 classes is at most ln(10) = 2.303: from there up the edge answers every frame."""
    assert one_line_error(["build-engines", *TINY_MODEL, "--early-exit", "--exit-threshold", threshold, "--output",
                           "/tmp/never"]) == (
        f"error: --exit-threshold {float(threshold):g}: a softmax entropy over 10 classes lies between 0 and "
        f"ln(10) = 2.303, so the edge would answer {answered} frame; expected a threshold from 0 below 2.303")


@pytest.mark.parametrize("option,expected", [
    ("--split=", "error: no node or module named '' in the model; valid points include features.0"),
    ("--output-kinds=", "error: --output-kinds needs one of class, regression per model output (logits), got "),
])
def test_an_empty_value_is_a_wrong_value_not_the_default(option, expected):
    """Both built with the defaults, as if the option had not been given."""
    assert one_line_error(["build-engines", *TINY_MODEL, option, "--output", "/tmp/never"]).startswith(expected.strip())


def test_a_factory_that_raises_or_cannot_be_imported_is_one_line(tmp_path, monkeypatch):
    (tmp_path / "stranger_factory.py").write_text("def model():\n    raise ValueError('no width 7')\n")
    (tmp_path / "stranger_broken.py").write_text("raise RuntimeError('broken at import')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert one_line_error(["list-splits", "--model", "stranger_factory:model"]) == (
        "error: stranger_factory:model() raised ValueError: no width 7; expected it to return the model called "
        "with no arguments")
    assert one_line_error(["list-splits", "--model", "stranger_broken:model"]) == (
        "error: importing stranger_broken raised RuntimeError: broken at import")


def test_a_file_that_is_not_a_torch_export_archive_is_one_line(tmp_path):
    import torch

    (tmp_path / "text.pt2").write_text("hello")
    torch.save({"weight": torch.zeros(2)}, tmp_path / "checkpoint.pt2")
    expected = "; expected a file written by torch.export.save"
    for name, problem in (("text.pt2", "is not a .pt2 archive (not a zip file)"), ("missing.pt2", "does not exist"),
                          ("checkpoint.pt2", "is a zip file but no torch.export archive (a torch.save checkpoint? "
                                             "give it as --weights)")):
        path = tmp_path / name
        assert one_line_error(["list-splits", "--model", str(path)]) == f"error: {path} {problem}{expected}"


def test_an_array_file_with_no_images_is_one_line_for_the_build_and_the_edge(tmp_path, int8_built):
    empty = tmp_path / "empty.npz"
    np.savez(empty, images=np.zeros((0, 1, 32, 32), np.uint8), labels=np.zeros(0, np.int64))
    np.save(tmp_path / "empty.npy", np.zeros((0, 32, 32), np.uint8))
    assert one_line_error(["build-engines", *TINY_MODEL, "--calib", str(empty), "--output", str(tmp_path / "b")]) \
        == f"error: {empty} holds no images: its 'images' array is empty"
    result = subprocess.run([sys.executable, "-m", "edgesplit", "edge", "--bundle", str(int8_built.bundle), "--server",
                             "127.0.0.1:9", "--source", str(tmp_path / "empty.npy")], cwd=ROOT, capture_output=True,
                            text=True, timeout=120, env=dict(os.environ, EDGESPLIT_KEY="a key for this test"))
    assert result.returncode == 1 and result.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'empty.npy'} holds no images: the array is empty"], result.stderr


def test_a_learned_codec_at_a_split_without_a_feature_map_names_the_split(tmp_path):
    assert one_line_error(["build-engines", *TINY_MODEL, "--split", "classifier.1", "--codec", "bbnet:c=4,s=1,bits=4",
                           "--train-data", "fashion-mnist", "--output", str(tmp_path / "b")]) == (
        "error: at split classifier_1: bbnet codec needs a C,H,W split tensor, got shape (32,)")


def test_labels_beyond_the_models_classes_are_one_line(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (40, 1, 32, 32), dtype=np.uint8)
    labeled = tmp_path / "labeled.npz"
    np.savez(labeled, images=images, labels=np.full(40, 99))
    assert one_line_error(["build-engines", *TINY_MODEL, "--calib", str(labeled), "--output", str(tmp_path / "b")]) \
        == "error: labels go up to 99, but output 'logits' scores 10 classes: labels must be its class indices, 0 to 9"


def test_weights_that_are_not_a_state_dict_of_tensors_are_one_line(tmp_path):
    import torch

    (tmp_path / "text.pt").write_text("hello")
    torch.save({"where": Path("/")}, tmp_path / "objects.pt")  # loading it would unpickle a Path
    expected = "; expected torch.save(model.state_dict(), path)"
    for name, problem in (("text.pt", "is not a torch.save file (not a zip archive)"),
                          ("objects.pt", "holds objects other than tensors")):
        path = tmp_path / name
        assert one_line_error(["list-splits", "--weights", str(path)]) == f"error: {path} {problem}{expected}"


def save_png(path: Path, mode: str, alpha: int = 255) -> Path:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(28, 28, len(mode)), dtype=np.uint8)
    if "A" in mode:
        pixels[..., -1] = alpha
    Image.fromarray(pixels[..., 0] if mode == "L" else pixels, mode).save(path)
    return path


@pytest.mark.parametrize("mode,alpha,channels", [("RGB", 255, 3), ("RGBA", 128, 4)])
def test_image_files_of_another_channel_count_are_refused_not_converted(mode, alpha, channels, tmp_path):
    folder = tmp_path / "pictures"
    (folder / "a").mkdir(parents=True)
    picture = save_png(folder / "a" / "0.png", mode, alpha)
    spec = InputSpec(1, 32, 32, "pad")
    [frame] = open_source(str(folder), spec)  # that file's own outcome: the run goes on
    assert frame.image is None
    assert frame.error == f"{picture}: the image has {channels} channel(s), the model takes 1 (L)"


def test_an_opaque_alpha_channel_is_dropped_losslessly(tmp_path):
    folder = tmp_path / "pictures"
    folder.mkdir()
    picture = save_png(folder / "0.png", "RGBA")
    frame = next(iter(open_source(str(folder), InputSpec(3, 28, 28))))
    expected = np.asarray(Image.open(picture))[..., :3].transpose(2, 0, 1) / 255.0
    np.testing.assert_allclose(frame.image, expected, atol=1e-6)


def test_split_is_refused_for_a_source_with_one_set(tmp_path):
    one_set = tmp_path / "one.npz"
    with np.load(DEFAULT_CALIBRATION) as data:
        np.savez(one_set, images=data["test_images"][:8])
    spec = InputSpec(1, 32, 32, "pad")
    with pytest.raises(EdgesplitError, match="holds one set of images, not a 'train' split: leave out --split"):
        open_source(str(one_set), spec, "train")
    assert len(list(open_source(str(one_set), spec))) == 8


def test_the_edge_command_fails_when_no_frame_is_answered(int8_built):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    result = subprocess.run([sys.executable, "-m", "edgesplit", "edge", "--bundle", str(int8_built.bundle), "--server",
                             f"127.0.0.1:{closed}", "--source", str(DEFAULT_CALIBRATION), "--limit", "3",
                             "--timeout", "2"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                            env=dict(os.environ, EDGESPLIT_KEY="a key for this test"))
    assert result.returncode == 1
    assert "0 answered by the cloud, 0 on the edge, 3 errors" in result.stdout
    assert "wire: nothing sent; latency no answers" in result.stdout
    assert result.stderr.strip().splitlines()[-1].startswith("error: no frame was answered: cloud unreachable")


@pytest.mark.parametrize("arguments,expected", [
    (["--bogus"], "edgesplit: error: No such option '--bogus'."),
    (["frobnicate"], "edgesplit: error: No such command 'frobnicate'."),
    (["build-engines", "--precision", "fp64"],
     "edgesplit build-engines: error: Invalid value for '--precision': 'fp64' is not one of 'fp32', 'fp16', 'int8'."),
    (["export-triton", "--bundle", "/no/such/bundle"],
     "edgesplit export-triton: error: Invalid value for '--bundle': Path '/no/such/bundle' does not exist."),
])
def test_wrong_arguments_to_toolchain_commands_are_one_line_and_exit_2(arguments, expected):
    """As the runtime's commands do: the problem in one line, not click's usage block (`--help` shows that)."""
    done = subprocess.run([sys.executable, "-m", "edgesplit", *arguments], capture_output=True, text=True)
    assert done.returncode == 2 and done.stdout == "" and done.stderr.strip().splitlines() == [expected], done.stderr


def test_the_edge_command_names_a_server_that_does_not_speak_edgesplit(int8_built):
    """An HTTP server at HOST:PORT: one line with what it answered, not 'server closed the connection'."""
    import threading

    listener = socket.create_server(("127.0.0.1", 0))

    def answer_like_http():
        connection, _ = listener.accept()
        with connection:
            connection.recv(4096)
            connection.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")

    threading.Thread(target=answer_like_http, daemon=True).start()
    address = "127.0.0.1:{}".format(listener.getsockname()[1])
    with listener:
        result = subprocess.run([sys.executable, "-m", "edgesplit", "edge", "--bundle", str(int8_built.bundle),
                                 "--server", address, "--source", str(DEFAULT_CALIBRATION), "--limit", "3"],
                                cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and result.stderr == (
        f"error: {address} is not an edgesplit server: it answered with bytes 48 54 54 50\n"), result.stderr


RUNTIME_WRONG = [
    (["edge", "--timeout", "nan"], "argument --timeout: expected a number > 0 and <= 86400, got nan"),
    (["edge", "--timeout", "1e300"], "argument --timeout: expected a number > 0 and <= 86400, got 1e300"),
    (["edge", "--timeout", "0"], "argument --timeout: expected a number > 0 and <= 86400, got 0"),
    (["edge", "--fps", "-1"], "argument --fps: expected a number > 0 and <= 86400, got -1"),
    (["edge", "--limit", "-5"], "argument --limit: expected a whole number >= 1, got -5"),
    (["edge", "--in-flight", "0"], "argument --in-flight: expected a whole number >= 1, got 0"),
    (["edge", "--burst", "-1"], "argument --burst: expected a whole number >= 0, got -1"),
    (["edge", "--exit-threshold", "nan"], "argument --exit-threshold: expected an entropy >= 0 (nats), got nan"),
    (["edge", "--output", "/nonexistent/x.csv"],
     "argument --output: cannot write /nonexistent/x.csv: the folder /nonexistent does not exist"),
    (["edge", "--tls-ca", "/nonexistent/ca.pem"], "argument --tls-ca: no such file: /nonexistent/ca.pem"),
    (["serve", "--port", "70000"], "argument --port: expected a port 0-65535 (0: any free one), got '70000'"),
    (["serve", "--threads", "-3"], "argument --threads: expected a whole number >= 1, got -3"),
]


@pytest.mark.parametrize("arguments, message", RUNTIME_WRONG, ids=[" ".join(a) for a, _ in RUNTIME_WRONG])
def test_runtime_options_out_of_range_are_one_line_before_anything_runs(int8_built, arguments, message, capsys):
    """What a stranger typed: every one used to be a traceback, a hang (--in-flight 0) or a run that failed
    every frame (--timeout 0). The runtime's own entry point, in this process: argparse refuses them first."""
    from runtime.cli import main as runtime_main

    command, *options = arguments
    where = ["--server", "127.0.0.1:9", "--source", str(DEFAULT_CALIBRATION)] if command == "edge" else []
    with pytest.raises(SystemExit) as stopped:
        runtime_main([command, "--bundle", str(int8_built.bundle), *where, *options])
    assert stopped.value.code == 2
    assert capsys.readouterr().err.strip() == f"edgesplit {command}: error: {message}"


def test_a_source_that_exists_but_is_no_source_says_so(int8_built, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    result = subprocess.run([sys.executable, "-m", "edgesplit", "edge", "--bundle", str(int8_built.bundle),
                             "--server", "127.0.0.1:9", "--source", str(text)], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 1 and result.stderr.strip() == (
        f"error: source '{text}' is not an .npz, an .npy or a folder: give an .npz or .npy of uint8 images, a "
        "folder of image files, or camera[:N]")


def test_an_error_quoting_a_huge_value_is_cut_to_one_readable_line():
    from runtime.errors import MAX_MESSAGE_CHARS, BundleError, one_line

    line = one_line(BundleError("bundle id " + "f" * 3_000_000))
    assert len(line) < MAX_MESSAGE_CHARS + 50 and line.endswith("(3,000,010 characters in all)")
