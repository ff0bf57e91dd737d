"""Deployments: every edge device with every cloud device, driven through the commands users type."""

import itertools
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from rich.console import Console

from runtime.backends import available
from runtime.backends.onnxrt.runner import OnnxRuntimeRunner
from runtime.bundle import load_bundle
from runtime.errors import BundleError
from runtime.local import SplitInference
from runtime.coding import ENTROPY_CODERS, LOSSLESS
from targets import DEVICES, names
from toolchain.backends import EXPORTERS
from toolchain.calibration import rank
from toolchain.cli import main
from toolchain.data import to_model_input
from toolchain.evaluate import reference_outputs
from toolchain.load import InputOptions, load_model
from toolchain.summary import build_summary
from toolchain.train import predict

from conftest import INPUT_SHAPE, TINY_MODEL, TINY_WEIGHTS, top1

ROOT = Path(__file__).resolve().parents[1]
PAIRS = list(itertools.product(names("edge"), names("cloud")))


@pytest.fixture(scope="module")
def tiny():
    return load_model("conftest:TinyNet", TINY_WEIGHTS, InputOptions(INPUT_SHAPE, "pad"))


MISSED = ["build-engines", *TINY_MODEL, "--target", "jetson-nano", "--min-agreement", "0.99"]


def test_a_missed_bound_names_the_half_its_precision_and_the_option_that_passes(tmp_path):
    """The tiny model's INT8 cloud half agrees on about 97 % alone, the Nano's FP16 head on 99 %: with
    --strict-int8 the refusal names the cloud half, its precision and its score, and the option it names makes
    the build pass."""
    arguments = MISSED + ["--strict-int8", "--output", str(tmp_path / "bundle")]
    refused = CliRunner().invoke(main, arguments)
    assert refused.exit_code == 1 and "Traceback" not in refused.output, refused.output
    line = refused.output.strip().splitlines()[-1]
    assert re.fullmatch(
        r"error: output 'logits' agrees with the float model on [\d.]+% of held-out images \(bound --min-agreement "
        r"99.00%\); the edge half \(fp16 on jetson-nano\) beside the other in float: 99.\d\d% top-1 agreement, "
        r"[\d.-]+ pt lost; the cloud half \(int8 on cloud-gpu\) beside the other in float: 9[0-8].\d\d% top-1 "
        r"agreement, [\d.-]+ pt lost: the cloud half misses it alone; without --strict-int8 the build first keeps "
        r"its most sensitive layers in higher precision; --cloud-precision fp16 would build the cloud half in fp16; "
        r"nothing was written to \S+", line), line
    passed = CliRunner().invoke(main, arguments + ["--cloud-precision", "fp16"])
    assert passed.exit_code == 0, passed.output


def test_a_strict_refusal_of_both_int8_halves_names_each_option_and_the_search_once(tmp_path):
    refused = CliRunner().invoke(main, ["build-engines", *TINY_MODEL, "--target", "jetson-orin", "--min-agreement",
                                        "0.995", "--strict-int8", "--output", str(tmp_path / "bundle")])
    line = refused.output.strip().splitlines()[-1]
    assert refused.exit_code == 1 and "the edge half (int8 on jetson-orin) beside" in line, refused.output
    assert line.count("without --strict-int8 the build first keeps") == 1
    assert "--precision fp16 would build the edge half" in line and "--cloud-precision fp16 would" in line


def test_an_int8_half_whose_most_sensitive_layers_in_fp16_still_miss_is_refused_naming_them(tmp_path):
    """Without --strict-int8 the build first keeps the cloud half's most sensitive layers out of INT8, those
    holding at most half its multiply-accumulates, or one: the tiny model's cloud half has six (a convolution,
    the classifier, the ops between them), its worst, the convolution, holds nearly all its work, and in fp16
    does not reach 99 %, so the refusal names the half and its layers, worst first (the search that succeeds is
    tests/test_calibration.py's)."""
    refused = CliRunner().invoke(main, MISSED + ["--output", str(tmp_path / "bundle")])
    assert refused.exit_code == 1 and "Traceback" not in refused.output, refused.output
    assert re.fullmatch(r"error: the cloud half \(int8 on cloud-gpu\) misses the bound even with its 1 most sensitive "
                        r"of 6 int8 layers \(\d+% of its multiply-accumulates\) in fp16, /second/\S+ first: output "
                        r"'logits' agrees with the "
                        r"float model on \d+\.\d\d% of held-out images \(bound --min-agreement 99\.00%\); "
                        r"--cloud-precision fp16 would build the cloud half in fp16",
                        refused.output.strip().splitlines()[-1]), refused.output
    assert not (tmp_path / "bundle").exists()


def test_a_codec_that_misses_a_bound_alone_is_named_with_the_bound_it_misses(tmp_path):
    refused = CliRunner().invoke(main, ["build-engines", *TINY_MODEL, "--codec", "affine:bits=1", "--output",
                                        str(tmp_path / "bundle")])
    assert refused.exit_code == 1 and "Traceback" not in refused.output, refused.output
    assert re.fullmatch(r"error: .*; with both halves in float \(PyTorch\) the codec alone \(affine at split \S+\) "
                        r"misses a bound too: it loses \d+\.\d\d accuracy points on the \d+ held-out images \(one "
                        r"image is \S+ pt; limit --max-loss 1\.0\); try another --codec or --split; nothing was "
                        r"written to .*", refused.output.strip().splitlines()[-1]), refused.output


def test_a_full_int8_pi_half_that_misses_even_with_int16_activations_is_refused_naming_its_layers(tmp_path):
    """The tiny model's Pi head loses 1.2 points in int8; its one layer that may take int16 activations (the
    other writes the wire's int8 output) does not win them back: one line naming it (the search that succeeds
    is test_tflite's)."""
    refused = CliRunner().invoke(main, ["build-engines", *TINY_MODEL, "--target", "raspberry-pi", "--cloud", "cpu",
                                        "--output", str(tmp_path / "bundle")])
    assert refused.exit_code == 1 and re.fullmatch(
        r"error: the edge half \(int8 on raspberry-pi\) misses the bound even with its 1 most sensitive of 1 int8 "
        r"layers \(100% of its multiply-accumulates\) in int16 activations \(16x8\), 1 \(Conv2d\) first: output 'logits' agrees with the float model on "
        r"\d+\.\d\d% of held-out images \(bound --min-agreement 98\.00%\); raspberry-pi builds its edge half in "
        r"int8 at most: try another --split or --codec", refused.output.strip().splitlines()[-1]), refused.output
    assert not (tmp_path / "bundle").exists()


@pytest.mark.parametrize("edge,cloud", PAIRS)
def test_every_edge_device_works_with_every_cloud_device(edge, cloud, tiny, holdout, tmp_path):
    output = tmp_path / "bundle"
    built = CliRunner().invoke(main, ["build-engines", *TINY_MODEL, "--target", edge, "--cloud", cloud,
                                      "--max-loss", "3", "--min-agreement", "0.9", "--max-relative-error", "0.05",
                                      "--output", str(output)])
    assert built.exit_code == 0, built.output
    # a classifier has no regression output to hold to it: named, not ignored
    assert built.output.strip().splitlines()[-1] == \
        "note: no output of this model is a regression, so --max-relative-error is not used"
    verified = CliRunner().invoke(main, ["verify-bundle", str(output)])
    assert verified.exit_code == 0 and f"edge {edge}, cloud {cloud}" in verified.output

    manifest = load_bundle(output).manifest
    for role, device in (("edge", DEVICES[edge]), ("cloud", DEVICES[cloud])):
        entry = manifest["artefacts"][role]
        assert manifest["deployment"][role]["name"] == device.name
        assert (entry["backend"], entry["precision"]) == (device.backend, device.precision)
        if "engine" in entry:  # a TensorRT half: its device's batch profile, checked as fake quantization
            recipe = entry["engine"]["recipe"]
            assert [shape[0] for shape in list(recipe["profiles"].values())[0]] == \
                device.backend_options["batch_profile"]
            assert entry["verification"]["options"] == {"graph_optimization": "disabled"}
    inputs = to_model_input(holdout.images, INPUT_SHAPE)
    reference = top1(predict(tiny.module, inputs))
    deployed = top1(SplitInference(load_bundle(output), verified=True)(inputs))
    # a 5k-parameter model quantized in both halves: looser bounds than the default model's (tested below)
    assert (deployed == reference).mean() >= 0.9
    assert 100 * ((reference == holdout.labels).mean() - (deployed == holdout.labels).mean()) <= 3.0


@pytest.mark.parametrize("edge", ["jetson-nano", "jetson-orin", "raspberry-pi"])
def test_device_edges_default_to_the_cloud_gpu_and_keep_accuracy(edge, device_bundle, deployed_top1, default_model,
                                                                 holdout):
    """The default model on each device edge + the INT8 TensorRT cloud, run as deployed (the Q/DQ cloud as
    fake quantization in ONNX Runtime here): <= 0.5 pt against the float model."""
    report = device_bundle(edge)
    manifest = report.manifest
    assert manifest["deployment"]["cloud"]["name"] == "cloud-gpu"
    cloud = manifest["artefacts"]["cloud"]
    assert (cloud["backend"], cloud["precision"], cloud["opset"]) == ("tensorrt", "int8", 17)
    assert cloud["engine"]["recipe"]["max_batch"] == 64
    edge_entry = manifest["artefacts"]["edge"]
    assert (edge_entry["backend"], edge_entry["precision"]) == (DEVICES[edge].backend, DEVICES[edge].precision)
    inputs = to_model_input(holdout.images, INPUT_SHAPE)
    reference = top1(reference_outputs(default_model, inputs)[0])
    deployed = deployed_top1(report.bundle)
    assert 100 * ((reference == holdout.labels).mean() - (deployed == holdout.labels).mean()) <= 0.5
    assert (deployed == reference).mean() >= 0.98
    calibration = manifest["checks"]["cloud_calibration"]  # of the INT8 cloud's ranges, the best answers kept
    scores = calibration["candidates"]
    chosen = f"{calibration['method']} at {calibration['placement']}"
    assert set(scores) == {f"{method} at {placement}" for method in ("min-max", "percentile", "mse")
                           for placement in ("every op", "weighted ops")}
    assert rank(scores[chosen]) == max(map(rank, scores.values()))
    console = Console(width=400, record=True)
    console.print(build_summary(report))
    text = " ".join(console.export_text().split())
    assert f"cloud int8 ranges │ {chosen}, whose answers on 64 calibration images" in text


@pytest.mark.parametrize("arguments,message", [
    (["--target", "jetson-tx2"], "error: unknown device 'jetson-tx2'; edge devices: cpu, jetson-nano, jetson-orin, "
                                 "raspberry-pi; cloud devices: cloud-gpu, cpu"),
    (["--target", "cloud-gpu"], "error: 'cloud-gpu' is a cloud device, not an edge device; edge devices: cpu, "
                                "jetson-nano, jetson-orin, raspberry-pi"),
    (["--cloud", "jetson-orin"], "error: 'jetson-orin' is an edge device, not a cloud device; cloud devices: "
                                 "cloud-gpu, cpu"),
    (["--target", "jetson-nano", "--precision", "int8"], "error: int8 is refused for jetson-nano: the Jetson Nano's "
                                                         "Maxwell GPU (sm_53) has no INT8 kernels"),
    (["--target", "raspberry-pi", "--precision", "fp32"], "error: raspberry-pi's edge half runs on TFLite (LiteRT), "
                                                          "which edgesplit builds in int8, not fp32"),
    (["--cloud-precision", "fp16"], "error: cpu's cloud half runs on ONNX Runtime, which edgesplit builds in fp32, "
                                    "not fp16"),
])
def test_refusals_are_one_clear_line(arguments, message, tmp_path):
    result = CliRunner().invoke(main, ["build-engines", *arguments, "--output", str(tmp_path / "b")])
    assert result.exit_code == 1
    assert len(result.output.strip().splitlines()) == 1 and result.output.startswith(message)
    assert not (tmp_path / "b").exists() and not list(tmp_path.iterdir())


@pytest.mark.parametrize("option,value,message", [
    ("--min-agreement", "nan", "'nan' is not a finite number."),  # nan compares with no bound: it passed any build
    ("--min-agreement", "-0.1", "-0.1 is not in the range 0<=x<=1."),
    ("--min-agreement", "1.5", "1.5 is not in the range 0<=x<=1."),  # was refused after the whole build
    ("--max-loss", "-1", "-1.0 is not in the range x>=0."),
    ("--max-relative-error", "inf", "'inf' is not a finite number."),
])
def test_a_bound_outside_its_range_is_refused_in_one_line_before_the_build(option, value, message, tmp_path):
    result = CliRunner().invoke(main, ["build-engines", option, value, "--output", str(tmp_path / "b")],
                                prog_name="edgesplit")
    assert result.exit_code == 2 and result.output.strip().splitlines() == [
        f"edgesplit build-engines: error: Invalid value for '{option}': {message}"], result.output
    assert not list(tmp_path.iterdir())


def test_serving_a_tensorrt_cloud_without_a_gpu_fails_with_one_line(device_bundle):
    from runtime.backends.tensorrt.engine import probe_device

    reason = probe_device().get("reason")
    if reason is None:
        pytest.skip("this machine has TensorRT and a GPU: the server would start")
    report = device_bundle("jetson-nano")
    result = subprocess.run([sys.executable, "-m", "edgesplit", "serve", "--bundle", str(report.bundle), "--no-auth",
                             "--port", "0"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [f"error: cannot build or run the TensorRT artefact cloud.onnx: {reason}"]


def test_an_older_bundle_names_the_command_that_rebuilds_it(int8_built, tmp_path):
    old = shutil.copytree(int8_built.bundle, tmp_path / "old")
    manifest = json.loads((old / "manifest.json").read_text())
    manifest["schema_version"] = 1
    manifest["target"] = {"name": "cpu"}
    del manifest["deployment"]
    (old / "manifest.json").write_text(json.dumps(manifest))
    result = CliRunner().invoke(main, ["verify-bundle", str(old)])
    assert result.exit_code == 1
    assert result.output.strip() == (
        "error: this bundle was written by an older edgesplit (manifest schema 1, this runtime reads 2); rebuild it: "
        "build-engines --model resnet18w05-fmnist --input-shape 1,32,32 --target cpu --cloud cpu --split layer2 "
        "--codec affine:bits=8,per=tensor --lossless none (with the same --weights, --calib and codec or exit checkpoints, if any)")


def test_runners_check_what_they_are_fed_and_free_what_they_hold(int8_built):
    with OnnxRuntimeRunner(int8_built.bundle / "cloud.onnx") as runner:
        codes = np.zeros((2, 64, 16, 16), dtype=np.uint8)
        assert runner.infer({"codes": codes})["logits"].shape == (2, 10)
        for feed, problem in (({"features": codes}, "the artefact takes inputs ['codes'], got ['features']"),
                              ({"codes": codes.astype(np.float32)}, "input 'codes' must be uint8, got float32"),
                              ({"codes": codes[:, :, :8]}, "input 'codes' must be shaped"),
                              ({"codes": codes[0]}, "input 'codes' must have 4 axes")):
            with pytest.raises(BundleError, match=re.escape(problem)):
                runner.infer(feed)
    assert runner.session is None


def test_every_device_backend_has_an_exporter_and_a_runner_and_one_table_per_concept():
    for device in DEVICES.values():
        assert device.backend in EXPORTERS and device.backend in available()
        assert set(device.roles) <= set(EXPORTERS[device.backend].roles)
    lossless = next(p for p in main.commands["build-engines"].params if p.name == "lossless")
    # auto: the smaller builtin stage, measured; rans: its prior fitted to the calibration codes
    assert list(lossless.type.choices) == ["auto", *LOSSLESS, *ENTROPY_CODERS]


BACKEND_COMPARISON = re.compile(r"""(==|!=|\bin)\s*\(?["'](onnxrt|tflite|tensorrt)["']|["'](onnxrt|tflite|tensorrt)["']\s*(==|!=)""")


def test_no_code_outside_a_backends_home_compares_against_its_name():
    homes = (ROOT / "toolchain" / "backends", ROOT / "runtime" / "backends")
    offenders = []
    for folder in ("toolchain", "runtime", "benchmarks", "edgesplit", "targets"):
        for path in (ROOT / folder).rglob("*.py"):
            if not any(home in path.parents for home in homes):
                offenders += [f"{path.relative_to(ROOT)}:{n}" for n, line in enumerate(path.read_text().splitlines(), 1)
                              if BACKEND_COMPARISON.search(line)]
    assert offenders == []


def test_the_readme_shows_the_device_and_backend_tables_as_they_are():
    result = CliRunner().invoke(main, ["devices", "--markdown"])
    readme = (ROOT / "README.md").read_text()
    copy = readme.split("<!-- edgesplit devices --markdown -->\n", 1)[1].split("\n<!-- end -->", 1)[0]
    assert copy == result.output.strip(), "README's device tables are stale: paste `edgesplit devices --markdown`"
