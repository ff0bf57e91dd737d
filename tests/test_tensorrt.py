"""TensorRT devices: everything up to the engine is built and checked on this CPU; engine tests need a GPU.

Each bundle here pairs one TensorRT half with a CPU half, so a test looks at one TensorRT half at a time."""

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper

from runtime.backends.tensorrt.engine import probe_device, stamp_mismatch
from runtime.bundle import check_artefact_io, load_bundle
from runtime.errors import BundleError, TargetError
from runtime.local import CloudHalf, SplitInference
from targets import DEVICES
from toolchain.build import BuildOptions, build_engines
from toolchain.cli import main
from toolchain.data import to_model_input
from toolchain.backends.tensorrt import lint
from toolchain.evaluate import reference_outputs

import numpy_convolutions
from conftest import INPUT_SHAPE, top1

ENGINE_ROLE = {"cloud-gpu": "cloud", "jetson-orin": "edge", "jetson-nano": "edge"}
# each TensorRT device's half, found in the default bundle of an edge device (whose default cloud is cloud-gpu)
BUNDLE_OF = {"jetson-nano": "jetson-nano", "cloud-gpu": "jetson-nano", "jetson-orin": "jetson-orin"}
DEVICE = probe_device()
needs_gpu = pytest.mark.skipif("reason" in DEVICE, reason=f"needs TensorRT and a CUDA GPU: {DEVICE.get('reason')}")


@pytest.fixture(scope="module", params=sorted(ENGINE_ROLE))
def trt_bundle(request, device_bundle):
    """(TensorRT device, the default-model bundle holding its half)."""
    return request.param, device_bundle(BUNDLE_OF[request.param])


@pytest.fixture(scope="module", params=sorted(d for d in ENGINE_ROLE if DEVICES[d].precision == "int8"))
def qdq_bundle(request, device_bundle):
    """(TensorRT device whose half is Q/DQ INT8, the default-model bundle holding its half)."""
    return request.param, device_bundle(BUNDLE_OF[request.param])


def test_engine_onnx_is_valid_and_passes_the_target_lint(trt_bundle):
    target_name, report = trt_bundle
    target = DEVICES[target_name]
    role = ENGINE_ROLE[target_name]
    path = report.bundle / report.manifest["artefacts"][role]["file"]
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version == target.onnx_opset
    assert lint(path, target) == []
    ops = {node.op_type for node in model.graph.node}
    precision = report.manifest["artefacts"][role]["precision"]
    assert ("QuantizeLinear" in ops) == (precision == "int8")
    assert [t.type.tensor_type.elem_type for t in model.graph.input] != [TensorProto.UINT8]


def test_without_a_gpu_the_bundle_is_complete_and_says_why_no_engine(trt_bundle):
    target_name, report = trt_bundle
    engine = report.manifest["artefacts"][ENGINE_ROLE[target_name]]["engine"]
    recipe = engine["recipe"]
    assert recipe["precision"] == report.manifest["artefacts"][ENGINE_ROLE[target_name]]["precision"]
    assert list(recipe["profiles"].values())[0][2][0] == recipe["max_batch"]
    if "reason" in DEVICE:
        assert engine["plan"] is None and engine["not_built"] == DEVICE["reason"]
    check_artefact_io(load_bundle(report.bundle))  # ONNX Runtime opens the ONNX the device builds from


def test_qdq_halves_meet_the_accuracy_gate_in_onnx_runtime(trt_bundle, deployed_top1, default_model, holdout):
    _, report = trt_bundle
    inputs = to_model_input(holdout.images, INPUT_SHAPE)
    reference = top1(reference_outputs(default_model, inputs)[0])
    deployed = deployed_top1(report.bundle)
    loss = 100 * ((reference == holdout.labels).mean() - (deployed == holdout.labels).mean())
    assert loss <= 0.5
    assert (deployed == reference).mean() >= 0.98
    evaluated = holdout.drawn(report.manifest["checks"]["holdout_frames"])  # the images the build judged
    assert report.manifest["checks"]["top1_agreement"] == pytest.approx((deployed == reference)[evaluated].mean())


def test_qdq_accuracy_does_not_depend_on_the_hosts_int8_kernels(qdq_bundle, deployed_top1, holdout):
    """The gate runs Q/DQ as separate ops (fake quantization, as TensorRT computes), never ONNX Runtime's
    fused int8 kernels: numpy's ONNX reference evaluator, which has no int8 kernels, gives the same accuracy."""
    from onnx import version_converter
    from onnx.reference import ReferenceEvaluator

    target_name, report = qdq_bundle
    bundle = load_bundle(report.bundle)
    role = ENGINE_ROLE[target_name]
    entry = bundle.artefact(role)
    assert entry["verification"]["options"] == {"graph_optimization": "disabled"}
    inputs, labels = to_model_input(holdout.images[:1000], INPUT_SHAPE), holdout.labels[:1000]
    run = SplitInference(bundle, verified=True)
    verified = deployed_top1(report.bundle)[:1000]
    # DequantizeLinear has numpy reference kernels from opset 19 on; the conversion changes no arithmetic
    model = version_converter.convert_version(onnx.load(str(bundle.directory / entry["file"])), 19)
    reference = ReferenceEvaluator(model, new_ops=numpy_convolutions.OPS)
    name = entry["inputs"][0]["name"]
    if role == "edge":
        codes = np.concatenate([reference.run(None, {name: inputs[i:i + 250]})[0] for i in range(0, 1000, 250)])
        assert (codes != run.edge_half.codes(inputs)).mean() <= 0.01  # a value on a rounding boundary may differ
        independent = top1(run.cloud_half.logits(codes))
    else:
        codes = run.edge_half.codes(inputs).astype(np.float32)
        independent = top1(np.concatenate([reference.run(None, {name: codes[i:i + 250]})[0]
                                           for i in range(0, 1000, 250)]))
    # the default's 4-bit learned codes sit closer to rounding boundaries than int8 codes: two images of 1000
    assert abs(int((verified == labels).sum()) - int((independent == labels).sum())) <= 2
    assert (verified == independent).mean() >= 0.996


@pytest.mark.parametrize("op,image,weights,attributes", [
    ("Conv", (4, 6, 9, 8), (10, 6, 3, 3), dict(pads=[1, 1, 1, 1])),
    ("Conv", (4, 6, 9, 8), (10, 3, 3, 3), dict(pads=[1, 0, 2, 1], strides=[2, 2], group=2)),
    ("Conv", (4, 6, 9, 8), (6, 1, 3, 3), dict(pads=[1, 1, 1, 1], strides=[2, 1], group=6)),
    ("ConvTranspose", (4, 6, 5, 4), (6, 3, 4, 4), dict(pads=[1, 1, 1, 1], strides=[2, 2])),
    ("ConvTranspose", (4, 6, 5, 4), (6, 3, 3, 3), dict(pads=[0, 1, 1, 0], strides=[2, 3], output_padding=[1, 1])),
])
def test_the_numpy_convolutions_compute_what_the_reference_kernels_do(op, image, weights, attributes):
    from onnx.reference import ReferenceEvaluator

    random = np.random.default_rng(0)
    outputs = weights[0] if op == "Conv" else weights[1]
    initializers = [helper.make_tensor(name, TensorProto.FLOAT, shape, random.standard_normal(shape).ravel())
                    for name, shape in (("w", weights), ("b", [outputs]))]
    graph = helper.make_graph([helper.make_node(op, ["x", "w", "b"], ["y"], **attributes)], "one",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    x = random.standard_normal(image).astype(np.float32)
    expected = ReferenceEvaluator(model).run(None, {"x": x})[0]
    np.testing.assert_allclose(ReferenceEvaluator(model, new_ops=numpy_convolutions.OPS).run(None, {"x": x})[0],
                               expected, atol=1e-4)


RTX_BUILD = """
import json, sys
from pathlib import Path
import tensorrt_rtx
from runtime.backends.tensorrt.engine import build_plan
from runtime.errors import BundleError
device = {"tensorrt": "RTX " + tensorrt_rtx.__version__, "gpu": "CPU", "compute_capability": ""}
bundle = Path(sys.argv[1])
for role, entry in json.loads((bundle / "manifest.json").read_text())["artefacts"].items():
    try:
        print(json.dumps([role, len(build_plan(bundle / entry["file"], entry["engine"]["recipe"], device)[0])]))
    except BundleError as error:
        print(json.dumps([role, str(error)]))
"""


def test_tensorrt_rtx_builds_every_produced_onnx(trt_bundle):
    """TensorRT-RTX's builder runs without a GPU (strongly typed, as TensorRT 11): an INT8 half builds from its
    Q/DQ, an fp16 one is refused in one line. In a subprocess, as every TensorRT object here."""
    _, report = trt_bundle
    result = subprocess.run([sys.executable, "-c", RTX_BUILD, str(report.bundle)], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    built = dict(json.loads(line) for line in result.stdout.splitlines())
    for role, entry in report.manifest["artefacts"].items():
        if entry["engine"]["recipe"]["precision"] == "fp16":
            assert built[role].startswith("TensorRT RTX ") and "builds strongly typed networks only" in built[role]
        else:
            assert isinstance(built[role], int) and built[role] > 0, built[role]


def test_nano_refuses_int8_and_explains_sm53(tmp_path):
    with pytest.raises(TargetError, match=r"sm_53.*no INT8 kernels.*features on the wire stay int8"):
        build_engines(BuildOptions(target="jetson-nano", precision="int8", output=tmp_path / "nano"))
    with pytest.raises(TargetError, match="cpu's edge half runs on ONNX Runtime, which edgesplit builds in fp32, "
                                          "not fp16"):
        build_engines(BuildOptions(precision="fp16", output=tmp_path / "cpu"))


def test_lint_names_what_a_tensorrt_parser_would_refuse(int8_built, tmp_path):
    problems = lint(int8_built.bundle / "cloud.onnx", DEVICES["jetson-nano"])
    assert "opset 17, jetson-nano needs 13" in problems
    assert any("input 'codes' is uint8" in problem for problem in problems)

    codes = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4, "h", 8])
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4, "h", 8])
    graph = helper.make_graph(
        [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], name="asymmetric"),
         helper.make_node("DequantizeLinear", ["q", "s", "z"], ["d"]),
         helper.make_node("Einsum", ["d"], ["y"], equation="bchw->bchw")],
        "g", [codes], [out], [helper.make_tensor("s", TensorProto.FLOAT, [], [0.1]),
                              helper.make_tensor("z", TensorProto.UINT8, [], [128])])
    path = tmp_path / "bad.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    problems = lint(path, DEVICES["jetson-nano"])
    assert "ops the jetson-nano parser does not import: Einsum" in problems
    assert "QuantizeLinear 'asymmetric' is not symmetric int8 (TensorRT needs int8, zero point 0)" in problems
    assert "input 'x' has dynamic axes [0, 2]; only the batch axis 0 may vary" in problems


def test_a_half_the_nanos_parser_cannot_import_is_refused_before_any_training(tmp_path):
    """Mod (torch.fmod) arrived in TensorRT 8.6's parser: the Nano (8.2) refuses a head holding it, in one line,
    before the exit branch --early-exit asks for is trained; the cloud GPU's TensorRT 10 takes it."""
    model = ["--model", "architectures:sawtooth", "--input-shape", "1,28,28"]
    refused = CliRunner().invoke(main, ["build-engines", *model, "--target", "jetson-nano", "--split", "3",
                                        "--early-exit", "--output", str(tmp_path / "after")])
    assert refused.exit_code == 1 and refused.output.strip() == (
        "error: the edge half at this cut would not build on jetson-nano (TensorRT 8.2, opset 13): ops the "
        "jetson-nano parser does not import: Mod; choose a cut before them (--split) or a device whose TensorRT "
        "imports them")
    built = CliRunner().invoke(main, ["build-engines", *model, "--target", "jetson-nano", "--split", "2", "--output",
                                      str(tmp_path / "before")])
    assert built.exit_code == 0, built.output
    assert "Mod" in {node.op_type for node in onnx.load(str(tmp_path / "before" / "cloud.onnx")).graph.node}


def test_stamps_must_match_the_device():
    stamp = {"tensorrt": "10.3.0", "gpu": "NVIDIA H100", "compute_capability": "9.0"}
    assert stamp_mismatch(stamp, dict(stamp)) == ""
    assert stamp_mismatch(stamp, dict(stamp, tensorrt="8.2.1", compute_capability="5.3")) == (
        "tensorrt 10.3.0 (engine) vs 8.2.1 (here); compute_capability 9.0 (engine) vs 5.3 (here)")


@pytest.mark.skipif("reason" not in DEVICE, reason="this machine can build engines")
def test_running_a_tensorrt_half_without_a_gpu_is_a_clear_error(trt_bundle):
    target_name, report = trt_bundle
    bundle = load_bundle(report.bundle)
    with pytest.raises(BundleError, match="cannot build or run the TensorRT artefact .*" + DEVICE["reason"][:20]):
        bundle.open_runner(ENGINE_ROLE[target_name])


@needs_gpu
def test_engine_builds_and_agrees_with_onnx_runtime(tmp_path, monkeypatch, holdout):
    import runtime.backends.tensorrt.engine as engine

    monkeypatch.setattr(engine, "ENGINE_CACHE", tmp_path / "cache")
    report = build_engines(BuildOptions(target="cpu", cloud="cloud-gpu", output=tmp_path / "gpu"))
    entry = report.manifest["artefacts"]["cloud"]["engine"]
    assert entry["plan"] == "cloud.plan" and entry["stamp"]["gpu"] == DEVICE["gpu"]
    bundle = load_bundle(report.bundle)
    codes = SplitInference(bundle).edge_half.codes(to_model_input(holdout.images[:256], INPUT_SHAPE))
    on_gpu = CloudHalf(bundle).logits(codes)
    on_cpu = CloudHalf(bundle, verified=True).logits(codes)
    assert (on_gpu.argmax(1) == on_cpu.argmax(1)).mean() >= 0.99


@needs_gpu
def test_a_cached_engine_from_another_device_is_refused(tmp_path, monkeypatch, trt_bundle):
    import runtime.backends.tensorrt.engine as engine

    monkeypatch.setattr(engine, "ENGINE_CACHE", tmp_path / "cache")
    target_name, report = trt_bundle
    bundle = load_bundle(report.bundle)
    role = ENGINE_ROLE[target_name]
    bundle.open_runner(role)  # builds into the cache
    stamp_path = next((tmp_path / "cache").glob("*.plan.json"))
    stamp_path.write_text(json.dumps(dict(json.loads(stamp_path.read_text()), gpu="another GPU")))
    with pytest.raises(BundleError, match="was built elsewhere: gpu another GPU"):
        bundle.open_runner(role)


@pytest.mark.skipif("reason" not in DEVICE, reason="this machine can build engines")
def test_build_engines_for_a_bundle_on_a_machine_without_gpu_says_why(trt_bundle):
    target_name, report = trt_bundle
    result = subprocess.run([sys.executable, "-m", "edgesplit", "build-engines", "--bundle", str(report.bundle)],
                            capture_output=True, text=True, timeout=300)
    first = next(role for role in ("edge", "cloud") if "engine" in report.manifest["artefacts"][role])
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: cannot build or run the TensorRT artefact {first}.onnx: {DEVICE['reason']}")
