"""`build-engines`: load → split → calibrate codec → export → evaluate → bundle, with progress."""

from __future__ import annotations

import math
import time
from importlib import metadata
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from torch import nn

from calibration_data import DEFAULT_CALIBRATION
from runtime.bundle import ROLES, SCHEMA_VERSION, Bundle
from runtime.local import EdgeHalf, SplitInference
from targets import Target, get_target
from toolchain.bundle import finish_bundle, staging_directory
from runtime.wire import WireFormat
from toolchain.codec_training import load_checkpoint, prepare_training, train_codec
from toolchain.codecs import DEFAULT_CODEC, FeatureCodec, make_codec, parse_codec_spec
from toolchain.data import ImageSet, load_images, to_model_input
from toolchain.errors import EdgesplitError, TargetError
from toolchain.exit_branch import EXIT_OUTPUT, EdgeWithExit, ExitBranch, load_exit, train_exit
from toolchain.export import compare_with_torch, export_onnx
from toolchain.lint import lint_onnx
from toolchain.load import LoadedModel, load_model
from toolchain.quantize import quantize_qdq
from toolchain.split import SplitPoint, default_point, split_model, trace
from toolchain.train import predict

ENGINE_WORKSPACE_MIB = 1024
ARTEFACT_FILES = {"edge": "edge.onnx", "cloud": "cloud.onnx"}
TFLITE_EDGE_FILE = "edge.tflite"
TFLITE_TOOLS = ("litert-torch", "ai-edge-quantizer", "ai-edge-litert")
IMAGE, CODES, LOGITS = "image", "codes", "logits"
EXPORT_CHECK_FRAMES = 64
MAX_CODE_ERROR = 1  # ONNX Runtime and PyTorch may round a value on a code boundary differently
MAX_LOGIT_ERROR = 1e-3


class BuildOptions(NamedTuple):
    model: str | None = None
    weights: Path | None = None
    input_shape: tuple[int, int, int] | None = None
    target: str = "cpu"
    split: str | None = None
    codec: str = DEFAULT_CODEC
    codec_weights: Path | None = None  # a train-codec checkpoint for a learned codec
    lossless: str = "none"
    train_data: str | None = None  # where a learned codec without weights is trained
    codec_epochs: int = 2
    calib: str | None = None
    output: Path | None = None
    max_loss: float = 1.0  # accuracy points the bundle may lose against the float model
    calibration_frames: int = 512
    tar: bool = False
    precision: str | None = None  # of the TensorRT halves; default: the target's
    early_exit: bool = False  # add an exit branch to the edge half (trained here unless exit_weights)
    exit_weights: Path | None = None  # an exit branch checkpoint (implies early_exit)
    exit_epochs: int = 2
    exit_threshold: float | None = None  # entropy under which the edge answers; None: calibrate-exit sets it


class BuildReport(NamedTuple):
    bundle: Path
    manifest: dict
    seconds: float


def role_precisions(target: Target, requested: str | None) -> dict[str, str]:
    """Precision per role; `--precision` sets the TensorRT halves' and is refused where the device cannot."""
    precisions = {"edge": target.edge_precision, "cloud": target.cloud_precision}
    engine_roles = [role for role in ROLES if backend_of(target, role) == "tensorrt"]
    if requested is None:
        return precisions
    if requested not in ("fp32", "fp16", "int8"):
        raise TargetError(f"--precision must be fp32, fp16 or int8, got {requested!r}")
    if not engine_roles:
        raise TargetError(f"--precision sets TensorRT halves; target {target.name!r} has none")
    if requested in target.refused_precisions:
        raise TargetError(f"--precision {requested} is refused for {target.name}: {target.refused_precisions[requested]}")
    return {role: requested if role in engine_roles else precision for role, precision in precisions.items()}


def backend_of(target: Target, role: str) -> str:
    return target.edge_backend if role == "edge" else target.cloud_backend


def tool_versions() -> dict[str, str]:
    names = ("edgesplit", "torch", "onnx", "onnxsim", "onnxruntime", "numpy")
    return {name: metadata.version(name) for name in names}


def tensor_spec(name: str, shape: tuple[int, ...], dtype: str) -> dict:
    layout = {3: "NCHW", 1: "NC"}.get(len(shape), "unspecified")
    return {"name": name, "shape": ["batch", *shape], "dtype": dtype, "layout": layout}


# How a TensorRT half is run on a CPU to check it: Q/DQ kept as separate ops, i.e. fake quantization
# in float, which is how TensorRT's int8 arithmetic behaves; ONNX Runtime's fused int8 kernels would
# measure the build host's CPU instead (they saturate on AVX2 without VNNI).
TENSORRT_VERIFICATION = {"backend": "onnxrt", "options": {"graph_optimization": "disabled"},
                         "arithmetic": "ONNX Runtime with graph optimizations off: Q/DQ as separate "
                                       "quantize/dequantize ops (fake quantization), as TensorRT computes"}


def evaluate(bundle: Bundle, model: nn.Module, holdout: ImageSet, inputs: np.ndarray) -> dict:
    """Float model vs the bundle run as deployed (edge → bytes → cloud), each half the way its
    manifest entry says it is verified (TensorRT halves: their Q/DQ ONNX as fake quantization)."""
    reference = predict(model, inputs).argmax(1)
    run = SplitInference(bundle, verified=True)
    payloads = [run.edge(inputs[i:i + 500]) for i in range(0, len(inputs), 500)]
    deployed = np.concatenate([run.cloud(batch) for batch in payloads]).argmax(1)
    checks = {"holdout_frames": len(inputs), "top1_agreement": float((deployed == reference).mean()),
              "mean_payload_bytes": float(np.mean([len(p) for batch in payloads for p in batch]))}
    if holdout.labels is not None:
        checks["float_accuracy"] = float((reference == holdout.labels).mean())
        checks["bundle_accuracy"] = float((deployed == holdout.labels).mean())
    return checks


def build_engines(options: BuildOptions, show_progress: bool = True) -> BuildReport:
    """`show_progress=False` for callers that build many bundles under their own progress bar."""
    started = time.perf_counter()
    target = get_target(options.target)
    precisions = role_precisions(target, options.precision)
    stages = ["load model", "load calibration data", "split", "calibrate codec",
              "export ONNX", "evaluate bundle", "write bundle"]
    with Progress(SpinnerColumn(), TextColumn("[bold]{task.description}"), TimeElapsedColumn(),
                  disable=not show_progress) as progress:
        task = progress.add_task(stages[0], total=len(stages))

        def next_stage() -> None:
            progress.advance(task)
            done = int(progress.tasks[0].completed)
            progress.update(task, description=stages[done] if done < len(stages) else "done")

        loaded = load_model(options.model, options.weights, options.input_shape)
        next_stage()

        source = options.calib or str(DEFAULT_CALIBRATION)
        calibration = load_images(source, "train").take(options.calibration_frames)
        holdout = load_images(source, "test")
        input_shape = loaded.input_shape or tuple(calibration.images.shape[1:])
        calibration_inputs = to_model_input(calibration.images, input_shape)
        holdout_inputs = to_model_input(holdout.images, input_shape)
        next_stage()

        graph = trace(loaded.module, input_shape)
        split_name = options.split or loaded.default_split or default_point(graph).node
        halves = split_model(graph, split_name, input_shape)
        next_stage()

        codec = prepare_codec(options, loaded, halves.point, input_shape)
        branch = prepare_exit(options, loaded, split_name, input_shape)
        with torch.no_grad():
            codec.calibrate(halves.head(torch.from_numpy(calibration_inputs)))
        wire = codec.wire_format(options.lossless)
        next_stage()

        output = options.output or Path("bundles") / f"{loaded.name}-{target.name}"
        staging = staging_directory(output)
        integer_edge = None
        if target.edge_backend == "tflite":
            from toolchain.tflite import convert_int8

            edge_float = nn.Sequential(halves.head, codec.pre_quantization()) if branch is None else \
                EdgeWithExit(halves.head, codec.pre_quantization(), branch)
            integer_edge = convert_int8(edge_float, calibration_inputs, staging / TFLITE_EDGE_FILE)
            code_mapping = codec.map_int8_output(*integer_edge.output_quantization)  # may adopt its scale
        with torch.no_grad():
            output_shape = tuple(halves.tail(halves.head(torch.zeros(1, *input_shape))).shape[1:])
        manifest = describe_bundle(loaded, halves.point, split_name, codec, wire, target, input_shape, output_shape,
                                   precisions)
        if integer_edge is not None:
            manifest["artefacts"]["edge"] = tflite_edge_entry(integer_edge, code_mapping, target)
            manifest["tools"].update({name: metadata.version(name) for name in TFLITE_TOOLS})
        encoder = codec.encoder(getattr(torch, target.code_dtype))
        if branch is None:
            edge, edge_outputs = nn.Sequential(halves.head, encoder).eval(), CODES
        else:
            edge, edge_outputs = EdgeWithExit(halves.head, encoder, branch).eval(), (CODES, EXIT_OUTPUT)
            if integer_edge is None:
                manifest["artefacts"]["edge"]["outputs"].append(tensor_spec(EXIT_OUTPUT, (branch.classes,), "float32"))
            exit_name = EXIT_OUTPUT if integer_edge is None else integer_edge.exit_output[0]
            manifest["exit"] = {"output": exit_name, "threshold": options.exit_threshold, "classes": branch.classes,
                                "branch": {"width": branch.width}}
        cloud = nn.Sequential(codec.decoder(), halves.tail).eval()
        sample = torch.from_numpy(holdout_inputs[:EXPORT_CHECK_FRAMES])
        checks = {}
        with torch.no_grad():
            codes_only = nn.Sequential(halves.head, encoder).eval()
            onnx_roles = [("cloud", cloud, codes_only(sample), (CODES, LOGITS))]
        if integer_edge is None:
            onnx_roles.insert(0, ("edge", edge, sample, (IMAGE, edge_outputs)))
        else:  # int8 all through the head: no bound on codes, the accuracy gate below decides
            deployed = EdgeHalf(Bundle(staging, manifest)).codes(sample.numpy()).astype(np.int16)
            difference = np.abs(deployed - codes_only(sample).numpy().astype(np.int16))
            checks["edge_max_abs_error"] = float(difference.max())
            checks["edge_mismatched_fraction"] = float((difference > 0).mean())
        engines = {}
        for role, module, example, names in onnx_roles:
            path = staging / ARTEFACT_FILES[role]
            export_onnx(module, example, path, target.onnx_opset, *names,
                        metadata=artefact_metadata(manifest, role))
            limit = MAX_CODE_ERROR if role == "edge" else MAX_LOGIT_ERROR
            if backend_of(target, role) == "tensorrt":
                if precisions[role] == "int8":
                    with torch.no_grad():
                        samples = torch.from_numpy(calibration_inputs)
                        samples = samples if role == "edge" else codes_only(samples)
                    float_path = path.with_suffix(".float.onnx")
                    path.rename(float_path)
                    quantize_qdq(float_path, path, samples.numpy())
                    float_path.unlink()
                    limit = math.inf  # int8 inside: the accuracy gate below decides
                problems = lint_onnx(path, target)
                if problems:
                    raise EdgesplitError(f"{role} ONNX would not build on {target.name}: {'; '.join(problems)}")
                engines[role] = engine_entry(path, role, target, precisions[role], example)
                manifest["artefacts"][role]["engine"] = engines[role]
                manifest["artefacts"][role]["verification"] = TENSORRT_VERIFICATION
            for name, check, check_limit in zip((role, "exit"), compare_with_torch(module, path, example),
                                                (limit, MAX_LOGIT_ERROR if math.isfinite(limit) else limit)):
                if check.max_abs_error > check_limit:
                    raise EdgesplitError(f"{name} output of the {role} ONNX differs from PyTorch by "
                                         f"{check.max_abs_error:g} (limit {check_limit:g})")
                checks[f"{name}_max_abs_error"] = check.max_abs_error
                checks[f"{name}_mismatched_fraction"] = check.mismatched_fraction
        next_stage()

        checks.update(evaluate(Bundle(staging, manifest), loaded.module, holdout, holdout_inputs))
        manifest["checks"] = checks
        loss_points = 100 * (checks.get("float_accuracy", 0) - checks.get("bundle_accuracy", 0))
        if loss_points > options.max_loss:
            raise EdgesplitError(f"the bundle loses {loss_points:.2f} accuracy points on the held-out set "
                                 f"(limit --max-loss {options.max_loss}); nothing was written to {output}")
        next_stage()

        if engines:
            build_engines_here(staging, manifest, engines)
        manifest = finish_bundle(staging, output, manifest, options.tar)
        next_stage()
    return BuildReport(output, manifest, time.perf_counter() - started)


def prepare_codec(options: BuildOptions, loaded: LoadedModel, point: SplitPoint,
                  input_shape: tuple[int, int, int]) -> FeatureCodec:
    """An untrained affine codec, a learned one from --codec-weights, or one trained here."""
    spec = parse_codec_spec(options.codec)
    torch.manual_seed(0)  # a learned codec trained here starts from the same weights every build
    codec = make_codec(spec, point.shape)
    if not codec.learned:
        return codec
    if options.codec_weights is not None:
        trained, state = load_checkpoint(options.codec_weights, point.node, loaded.sha256, point.shape)
        if parse_codec_spec(state["codec"]) != spec:
            raise EdgesplitError(f"--codec-weights {options.codec_weights} hold codec {state['codec']}, "
                                 f"not the requested {spec}")
        return trained
    data = options.train_data or loaded.dataset
    if data is None:
        raise EdgesplitError(f"codec {spec.name!r} must be trained: give --codec-weights from "
                             "`edgesplit train-codec`, or --train-data to train it here")
    frozen = prepare_training(loaded.module, point.node, input_shape, data, test_frames=0)
    train_codec(codec, frozen.tail, frozen.train, options.codec_epochs, seed=0)
    return codec


def prepare_exit(options: BuildOptions, loaded: LoadedModel, split: str,
                 input_shape: tuple[int, int, int]) -> ExitBranch | None:
    """The exit branch from --exit-weights, or trained here on the training data, or None."""
    if options.exit_weights is not None:
        return load_exit(options.exit_weights, split, loaded.sha256)
    if not options.early_exit:
        return None
    data = options.train_data or loaded.dataset
    if data is None:
        raise EdgesplitError("training an exit branch needs labeled images: give --train-data")
    frozen = prepare_training(loaded.module, split, input_shape, data, test_frames=0)
    return train_exit(frozen.train, int(frozen.train.teacher.shape[1]), epochs=options.exit_epochs)


def describe_bundle(
    loaded: LoadedModel, point: SplitPoint, requested: str, codec: FeatureCodec, wire: WireFormat, target: Target,
    input_shape: tuple[int, int, int], output_shape: tuple[int, ...], precisions: dict[str, str],
) -> dict:
    return {
        "schema_version": SCHEMA_VERSION,
        "source_model": {"name": loaded.name, "sha256": loaded.sha256,
                         "input": dict(tensor_spec(IMAGE, input_shape, "float32"), range=[0.0, 1.0])},
        "split": {"requested": requested, "node": point.node, "module": point.module,
                  "shape": list(point.shape), "dtype": point.dtype, "fp32_bytes": point.fp32_bytes},
        "codec": codec.describe(),
        "wire": wire.to_manifest(),
        "target": {**target._asdict(), "cannot": list(target.cannot), "parser_ops": sorted(target.parser_ops),
                   "batch_profile": list(target.batch_profile)},
        "artefacts": {
            "edge": {"file": ARTEFACT_FILES["edge"], "backend": target.edge_backend,
                     "precision": precisions["edge"], "opset": target.onnx_opset,
                     "inputs": [tensor_spec(IMAGE, input_shape, "float32")],
                     "outputs": [tensor_spec(CODES, codec.code_shape, target.code_dtype)]},
            "cloud": {"file": ARTEFACT_FILES["cloud"], "backend": target.cloud_backend,
                      "precision": precisions["cloud"], "opset": target.onnx_opset,
                      "inputs": [tensor_spec(CODES, codec.code_shape, target.code_dtype)],
                      "outputs": [tensor_spec(LOGITS, output_shape, "float32")]},
        },
        "tools": tool_versions(),
    }


def engine_entry(path: Path, role: str, target: Target, precision: str, example: torch.Tensor) -> dict:
    """What building this half's TensorRT engine needs: precision, batch profile, workspace."""
    import onnx

    name = onnx.load(str(path)).graph.input[0].name
    sizes = target.batch_profile if role == "cloud" else (1, 1, 1)
    shape = list(example.shape[1:])
    recipe = {"precision": precision, "opset": target.onnx_opset, "workspace_mib": ENGINE_WORKSPACE_MIB,
              "max_batch": sizes[2], "profiles": {name: [[size] + shape for size in sizes]}}
    return {"recipe": recipe, "tensorrt": target.versions.get("tensorrt", ""), "plan": None}


def build_engines_here(staging: Path, manifest: dict, engines: dict) -> None:
    """Build and stamp each TensorRT engine into the bundle when this host has TensorRT and a GPU;
    otherwise say why, and leave the ONNX and recipe for the device to build from."""
    from runtime.backends.tensorrt.engine import build_engine, probe_device

    device = probe_device()
    for role, entry in engines.items():
        if "reason" in device:
            entry["not_built"] = device["reason"]
            continue
        plan = staging / f"{role}.plan"
        entry["stamp"] = build_engine(staging / manifest["artefacts"][role]["file"], plan, entry["recipe"], device)
        entry["plan"] = plan.name
        for leftover in (Path(f"{plan}.json"), Path(f"{plan}.timing")):  # the stamp lives in the manifest
            leftover.unlink()


def tflite_edge_entry(artefact, code_mapping: dict, target: Target) -> dict:
    """The manifest's edge entry for a full-int8 TFLite half (NHWC, batch 1, quantized I/O)."""
    def tensor(name, shape, quantization):
        return {"name": name, "shape": shape, "dtype": "int8", "layout": "NHWC",
                "quantization": {"scale": quantization[0], "zero_point": quantization[1]}}

    outputs = [tensor(artefact.output_name, artefact.output_shape, artefact.output_quantization)]
    if artefact.exit_output is not None:
        outputs.append(dict(tensor(*artefact.exit_output), layout="NC"))
    return {"file": TFLITE_EDGE_FILE, "backend": "tflite", "precision": target.edge_precision,
            "inputs": [tensor(artefact.input_name, artefact.input_shape, artefact.input_quantization)],
            "outputs": outputs,
            "to_codes": code_mapping, "ops": artefact.ops, "float_model_bytes": artefact.float_bytes}


def artefact_metadata(manifest: dict, role: str) -> dict[str, str]:
    """Written into each ONNX file, so an artefact found alone still says what it is."""
    return {
        "edgesplit_version": manifest["tools"]["edgesplit"],
        "edgesplit_role": role,
        "edgesplit_model": manifest["source_model"]["name"],
        "edgesplit_model_sha256": manifest["source_model"]["sha256"],
        "edgesplit_split": manifest["split"]["node"],
        "edgesplit_codec": manifest["codec"]["name"],
        "edgesplit_target": manifest["target"]["name"],
    }
