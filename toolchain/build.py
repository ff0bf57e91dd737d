"""`build-engines`: a short pipeline of stages over one build's state, with progress.

load model → load images → (reuse a bundle built before from the same content, when EDGESPLIT_CACHE is
set) → split → check halves for their devices → codec (+ exit branch) → export edge → export cloud → calibrate exit → evaluate → compile
engines → write bundle. A bundled model built with no split,
codec or exit named gets the codec and exit branch trained for it (toolchain/zoo/): nothing is
trained during that build. Each half goes through its device's exporter
(toolchain/backends/); this module never asks which backend a device has.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Callable, NamedTuple

import torch
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from calibration_data import DEFAULT_CALIBRATION
from runtime.bundle import MANIFEST_NAME, SCHEMA_VERSION, STRATEGIES, Bundle, answering_role, file_sha256
from runtime.local import deployed, edge_half
from runtime.wire import WireFormat
from targets import ROLES, Deployment, deployment
from toolchain import cache
from toolchain.backends import Half, Parts, check_precision, exporter
from toolchain.bundle import finish_bundle, staging_directory
from toolchain.calibration import choose_codec_range
from toolchain.codec_training import epochs_for, load_checkpoint, prepare_training, read_checkpoint, train_codec
from toolchain.codecs import DEFAULT_CODEC, LEARNED, FeatureCodec, make_cut_codec, parse_codec_spec
from toolchain.codecs.pixels import PixelCodec
from toolchain.data import ImageSet, load_images
from toolchain.errors import EdgesplitError
from toolchain.exit_branch import ExitBranch, load_exit, train_exit
from toolchain.exit_calibration import DEFAULT_EXIT_MAX_LOSS, curve, exit_checks, measure, pick
from toolchain.fault import at_fault, describe as describe_half, halves_at_fault, hint as precision_hint
from toolchain.image_formats import mean_image_bytes
from toolchain.load import InputOptions, LoadedModel, load_model
from toolchain.mixed_precision import AtFault, keep_in_higher_precision
from toolchain.lossless import AUTO as AUTO_LOSSLESS, choose as choose_lossless, fit_prior
from toolchain.split import Split, default_point, split_model, trace, unsplit
from toolchain.zoo import ZOO
from toolchain.evaluate import (Bounds, agreement_bound, batched, code_differences, compare_outputs, failed_bound,
                                 output_kinds, reference_outputs)

EXPORT_CHECK_FRAMES = 64
LOG = logging.getLogger("edgesplit.build")


class BuildOptions(NamedTuple):
    strategy: str = "split"  # or the whole model on the edge device (edge-only), or the image sent (cloud-only)
    image_format: str = "raw"  # how cloud-only sends the image: raw, png or jpeg
    model: str | None = None
    weights: Path | None = None
    inputs: InputOptions = InputOptions()  # input shape, resize policy, normalization
    target: str = "cpu"  # the edge device
    cloud: str | None = None  # the cloud device; default: the edge device's default cloud
    split: str | None = None
    codec: str | None = None  # default: a bundled model's shipped codec when nothing else is named, else int8
    codec_weights: Path | None = None  # a train-codec checkpoint for a learned codec
    lossless: str = AUTO_LOSSLESS  # or a stage of runtime.wire.LOSSLESS
    train_data: str | None = None  # where a learned codec or exit branch without weights is trained
    codec_epochs: int | None = None  # when a learned codec is trained during the build; None: by the data's size
    calib: str | None = None
    output: Path | None = None
    max_loss: float = 1.0  # accuracy points the bundle may lose against the float model
    min_agreement: float | None = None  # top-1 agreement with the float model; default: see evaluate.py
    max_relative_error: float = 0.1  # of a regression output against the float model's
    output_kinds: tuple[str, ...] | None = None  # per model output: class or regression (default: class first)
    calibration_frames: int = 512
    holdout_frames: int | None = None  # evaluate on this many held-out images, drawn at random (default: all)
    tar: bool = False
    precision: str | None = None  # of the edge half; default: the edge device's
    cloud_precision: str | None = None  # of the cloud half; default: the cloud device's
    early_exit: bool = False  # add an exit branch to the edge half (trained here unless exit_weights)
    exit_weights: Path | None = None  # an exit branch checkpoint (implies early_exit)
    exit_epochs: int = 2
    exit_threshold: float | None = None  # entropy under which the edge answers; None: calibrated in the build
    exit_max_loss: float | None = None  # accuracy points exits may cost on the calibration images (see exit_stage)
    strict_int8: bool = False  # refuse an INT8 half that misses the bound instead of keeping layers in fp16


class BuildReport(NamedTuple):
    bundle: Path
    manifest: dict
    seconds: float
    reused: bool = False  # copied from a bundle built before from the same content (EDGESPLIT_CACHE)
    stage_seconds: dict | None = None  # per stage, so a caller can tell what grows with the held-out frames


class Build:
    """What one build has found so far; every stage reads it and adds to it."""

    def __init__(self, options: BuildOptions):
        self.options = options
        self.roles = strategy_roles(options)
        self.deployment: Deployment = deployment(options.target, options.cloud)
        self.precisions = {role: check_precision(self.deployment.device(role), role, requested) for role, requested
                           in zip(ROLES, (options.precision, options.cloud_precision)) if role in self.roles}
        self.loaded: LoadedModel | None = None
        self.calibration: ImageSet | None = None
        self.holdout: ImageSet | None = None
        self.input_shape: tuple[int, int, int] | None = None
        self.calibration_inputs = self.holdout_inputs = None
        self.split_name: str = ""
        self.halves: Split | None = None
        self.codec: FeatureCodec | None = None
        self.branch: ExitBranch | None = None
        self.codec_facts: dict = {}
        self.lossless: str = ""
        self.prior = None  # the rans stage's frequencies, fitted to the calibration codes
        self.exit: dict = {}  # threshold and how it was calibrated
        self.output_kinds: tuple[str, ...] = ()
        self.artefacts: dict[str, dict] = {}
        self.checks: dict = {}
        self.output = options.output
        self.staging: Path | None = None
        self.scratch: Path | None = None  # what must not enter the bundle (float halves to quantize again)
        self.manifest: dict = {}
        self.reuse_key: str | None = None
        self.reused = False

    @property
    def parts(self) -> Parts:
        return Parts(self.halves.head, self.codec, self.halves.tail, self.branch, self.halves.outputs)


def load_stage(build: Build) -> None:
    options = build.options
    build.loaded = load_model(options.model, options.weights, options.inputs)
    if options.strategy == "split":
        build.options = with_shipped(options, build.loaded)
    build.output = options.output or Path("bundles") / "-".join(
        [build.loaded.name, build.deployment.name] + ([] if options.strategy == "split" else [options.strategy])
        + ([options.image_format] if options.strategy == "cloud-only" else []))
    build.staging = staging_directory(build.output)
    build.scratch = Path(tempfile.mkdtemp(prefix="edgesplit-build-"))


def images_stage(build: Build) -> None:
    source, spec = build.options.calib or str(DEFAULT_CALIBRATION), build.loaded.spec()
    build.calibration = load_images(source, "train", spec).take(build.options.calibration_frames)
    build.holdout = load_images(source, "test", spec)
    if build.options.holdout_frames is not None:
        build.holdout = build.holdout.sample(build.options.holdout_frames)
    build.input_shape = spec.shape
    build.calibration_inputs, build.holdout_inputs = build.calibration.inputs(), build.holdout.inputs()


def reuse_key(build: Build) -> str | None:
    """Everything the bundle is made from, hashed: options, model, images, checkpoints, code. None where caching
    is off, and for builds that train (their data can be large) or compile engines (those depend on the host's
    GPU): those always run."""
    options = build.options
    trains = (options.codec is not None and parse_codec_spec(options.codec).name in LEARNED
              and options.codec_weights is None) or (options.early_exit and options.exit_weights is None)
    compiles = any(exporter(build.deployment.device(role)).compile is not None for role in build.roles)
    if trains or compiles or cache.folder("bundles") is None:
        return None
    loaded = build.loaded
    return cache.content_key(
        options._replace(output=None, tar=False, target=build.deployment.edge.name,
                         cloud=build.deployment.cloud.name)._asdict(),
        [file_sha256(path) for path in (options.codec_weights, options.exit_weights) if path is not None],
        loaded.name, loaded.sha256, cache.module_code(loaded.module), loaded.spec().to_manifest(),
        build.calibration_inputs, build.holdout_inputs, build.holdout.labels, cache.code_version())


def reuse_stage(build: Build) -> None:
    """With EDGESPLIT_CACHE set, a bundle built before from the same content (`reuse_key`) is written again and
    the stages after this one are skipped (toolchain/cache.py)."""
    build.reuse_key = reuse_key(build)
    stored = build.reuse_key and cache.stored_directory("bundles", build.reuse_key)
    if not stored:
        return
    manifest = json.loads((stored / MANIFEST_NAME).read_text())
    for derived in ("files", "bundle_id"):  # finish_bundle writes them again
        del manifest[derived]
    for path in stored.iterdir():
        if path.name != MANIFEST_NAME:
            shutil.copy2(path, build.staging / path.name)
    build.manifest = finish_bundle(build.staging, build.output, manifest, build.options.tar)
    build.reused = True


def split_stage(build: Build) -> None:
    """A cut named with --split may be crossed by several tensors; the default never is."""
    loaded = build.loaded
    if build.options.strategy != "split":
        build.halves = unsplit(loaded.module, build.input_shape)
        build.split_name = build.halves.point.node
        build.output_kinds = kinds_of(build)
        return
    named = build.options.split is not None  # an empty name is a wrong name, not the default
    build.split_name = build.options.split if named else loaded.default_split or default_point(trace(
        loaded.module, build.input_shape)).node
    build.halves = split_model(loaded.module, build.split_name, build.input_shape, several=bool(build.options.split))
    build.output_kinds = kinds_of(build)


def precheck_stage(build: Build) -> None:
    """Each half's float graph, as its device's exporter would take it (a TensorRT parser's ops and opset)."""
    halves = build.halves
    image = torch.from_numpy(build.calibration_inputs[:1])
    with torch.no_grad():
        features = halves.head.eval()(image)
    for role in build.roles:
        device = build.deployment.device(role)
        check = exporter(device).precheck
        if check is None:
            continue
        if role == "cloud":
            check(role, device, halves.tail, features if isinstance(features, tuple) else (features,))
        else:  # edge-only runs the whole model (the tail of a cut at the input) on the edge
            check(role, device, halves.head if build.options.strategy == "split" else halves.tail, (image,))


def kinds_of(build: Build) -> tuple[str, ...]:
    return output_kinds(build.halves.outputs, build.options.output_kinds,
                        build.parts.output_shapes(build.calibration_inputs))


def codec_stage(build: Build) -> None:
    """The codec (calibrated, or learned and loaded/trained) and the exit branch, if asked for; cloud-only sends
    the image's pixels, edge-only nothing."""
    if build.options.strategy != "split":
        build.lossless, build.codec_facts = "none", {"learned": False}
        if build.options.strategy == "cloud-only":
            build.codec = PixelCodec(build.input_shape, build.options.image_format)
        return
    single = len(build.halves.point.shapes) == 1 and len(build.halves.outputs) == 1
    wants_training = parse_codec_spec(build.options.codec).name in LEARNED or build.options.early_exit \
        or build.options.exit_weights is not None
    if wants_training and not single:
        raise EdgesplitError("learned codecs and exit branches are trained on one crossing tensor of a model with "
                             f"one output; this cut crosses {len(build.halves.point.shapes)} tensor(s) of a model "
                             f"returning {len(build.halves.outputs)}: use int8 or affine, without an exit branch")
    if (build.options.early_exit or build.options.exit_weights is not None) and "class" not in build.output_kinds:
        raise EdgesplitError("an exit branch answers with a class: this model has no class output")
    if build.options.exit_threshold is not None:
        if not (build.options.early_exit or build.options.exit_weights is not None):
            raise EdgesplitError("--exit-threshold is an exit branch's; this build has none: add --early-exit or "
                                 "--exit-weights")
        classes = build.parts.output_shapes(build.calibration_inputs)[0][-1]
        check_exit_threshold(build.options.exit_threshold, classes)
    build.codec, build.codec_facts = prepare_codec(build.options, build.loaded, build.halves)
    build.branch = prepare_exit(build.options, build.loaded, build.halves.point.node)
    features = batched(build.halves.head.eval(), build.calibration_inputs)
    chosen = choose_codec_range(build.codec, features, build.halves.tail)
    if chosen is not None:
        build.checks["codec_range"] = chosen
    build.lossless = build.options.lossless
    if build.lossless in (AUTO_LOSSLESS, "rans"):
        codes = build.parts.codes(build.calibration_inputs, torch.uint8)
        codes = tuple(part.numpy() for part in codes) if isinstance(codes, tuple) else codes.numpy()
        if build.lossless == "rans":
            build.prior = fit_prior(build.codec, codes)
        else:
            wire, build.checks["lossless_measured"] = choose_lossless(build.codec, codes)
            build.lossless, build.prior = wire.lossless, wire.prior


def export_stage(role: str) -> Callable[[Build], None]:
    def export(build: Build) -> None:
        if role not in build.roles:
            return
        device = build.deployment.device(role)
        half = Half(role, device, build.precisions[role], build.parts, build.calibration_inputs,
                    build.holdout_inputs[:EXPORT_CHECK_FRAMES], build.staging, artefact_metadata(build, role),
                    build.scratch)
        build.artefacts[role], checks = exporter(device).export(half)
        build.checks.update(checks)
    return export


def exit_stage(build: Build) -> None:
    """The exit threshold, unless given: the least offloading one whose exits change at most --exit-max-loss %
    of the cloud's answers on the calibration images (each change costs at most one correct answer, so this
    bounds the accuracy exits cost). Not labels: calibration images are mostly training images, on which
    both the model and its exit branch are right more often than in service, so exits would look free."""
    if build.branch is None:
        return
    options = build.options
    if options.exit_threshold is not None:
        build.exit = {"threshold": options.exit_threshold, "calibration": {"given": True}}
        return
    bound = DEFAULT_EXIT_MAX_LOSS if options.exit_max_loss is None else options.exit_max_loss
    points = curve(measure(Bundle(build.staging, describe_bundle(build)), build.calibration_inputs))
    chosen = pick(points, bound)
    build.exit = {"threshold": chosen.threshold, "calibration": {
        "frames": len(build.calibration_inputs), "max_loss_points": bound,
        "changed_answers": 1 - chosen.accuracy, "offload_rate": chosen.offload_rate}}


def evaluate_stage(build: Build) -> None:
    """The bundle measured against the float model; an INT8 half at fault for a missed bound gets its most
    sensitive layers in fp16 (unless --strict-int8); the build fails past its bounds."""
    inputs = build.holdout_inputs
    reference = reference_outputs(build.loaded, inputs)
    bounds = Bounds(build.options.max_loss, agreement_bound(build.options.min_agreement, build.codec_facts),
                    build.options.max_relative_error)
    build.checks["bounds"] = bounds._asdict()
    bundle = measure_bundle(build, inputs, reference)
    problem = failed_bound(build.checks, bounds)
    if problem and not build.options.strict_int8:
        problem = with_layers_in_higher_precision(build, bundle, inputs, reference, bounds)
    if problem:
        raise EdgesplitError(f"{problem}; {at_fault(build, bundle, inputs, reference, bounds)}; nothing was written "
                             f"to {build.output}")


def with_layers_in_higher_precision(build: Build, bundle: Bundle, inputs, reference, bounds: Bounds) -> str:
    """The INT8 halves at fault (one, or both where neither meets the bound alone or each does and the two
    together do not) requantized with their fewest most sensitive layers in higher precision until the bundle
    meets its bounds; what it still misses ('' for nothing)."""
    halves = {}
    for role in halves_at_fault(build, bundle, inputs, reference, bounds):
        load = exporter(build.deployment.device(role)).requantizable
        half = load(build.scratch, role) if load is not None else None
        if half is not None:  # else nothing to quantize again: an fp16 or fp32 half
            halves[role] = AtFault(half, build.staging / build.artefacts[role]["file"], describe_half(build, role))
    if not halves:
        return failed_bound(build.checks, bounds)

    def missed() -> str:
        measure_bundle(build, inputs, reference)
        return failed_bound(build.checks, bounds)
    kept = keep_in_higher_precision(list(halves.values()), missed,
                                    "".join(precision_hint(build, role) for role in halves))
    for (role, entry), described in zip(halves.items(), kept):
        build.checks[f"{role}_higher_precision"] = described
        build.artefacts[role].update(entry.half.entry(entry.path))
    return ""


def measure_bundle(build: Build, inputs, reference: list) -> Bundle:
    """Float model vs the bundle as deployed (edge → wire bytes → cloud, and the edge's own answers below the
    exit threshold), each half run the way its entry says it is verified on a CPU, output by output; the
    bytes of sending the image instead: into build.checks."""
    bundle = Bundle(build.staging, describe_bundle(build))
    run = deployed(bundle, inputs, verified=True)
    checks = build.checks
    checks.update(holdout_frames=len(inputs), holdout_origin=build.holdout.origin,
                  calibration_origin=build.calibration.origin, mean_payload_bytes=float(run.payload_bytes.mean()),
                  image_bytes=mean_image_bytes(inputs))
    checks.update(compare_outputs(build.halves.outputs, build.output_kinds, reference, run.outputs,
                                  build.holdout.labels))
    if build.exit:
        scored = build.output_kinds.index("class")
        checks["exit"] = exit_checks(build.exit["threshold"], run.exit_logits, run.outputs[scored],
                                     reference[scored], build.holdout.labels, run.payload_bytes)
    if "edge_max_abs_error" not in checks and build.codec is not None:  # an integer-only edge, or none: codes
        checks.update(code_differences(  # through the runtime vs PyTorch
            edge_half(bundle, verified=True).codes(inputs[:EXPORT_CHECK_FRAMES]),
            build.parts.codes(inputs[:EXPORT_CHECK_FRAMES], torch.uint8)))
    return bundle


def compile_stage(build: Build) -> None:
    """Engines for the halves whose backend compiles, where this host can (else each entry says why)."""
    for role in build.roles:
        row = exporter(build.deployment.device(role))
        if row.compile is not None:
            row.compile(build.staging, {role: build.artefacts[role]})


def write_stage(build: Build) -> None:
    build.manifest = finish_bundle(build.staging, build.output, describe_bundle(build), build.options.tar)
    if build.reuse_key is not None:
        cache.store_directory("bundles", build.reuse_key, build.output)


STAGES = (("load model", load_stage), ("load images", images_stage), ("reuse a bundle built before", reuse_stage),
          ("split", split_stage), ("check halves for their devices", precheck_stage),
          ("codec", codec_stage), ("export edge half", export_stage("edge")),
          ("export cloud half", export_stage("cloud")), ("calibrate exit", exit_stage),
          ("evaluate bundle", evaluate_stage),
          ("compile engines", compile_stage), ("write bundle", write_stage))


def build_engines(options: BuildOptions, show_progress: bool = True) -> BuildReport:
    """`show_progress=False` for callers that build many bundles under their own progress bar."""
    started = time.perf_counter()
    build, stage_seconds = Build(options), {}
    # transient: a failed build leaves its one error line, not a spinner above it
    with Progress(SpinnerColumn(), TextColumn("[bold]{task.description}"), TimeElapsedColumn(),
                  disable=not show_progress, transient=True) as progress:
        task = progress.add_task(STAGES[0][0], total=len(STAGES))
        try:
            for name, stage in STAGES:
                progress.update(task, description=name)
                stage_started = time.perf_counter()
                stage(build)
                stage_seconds[name] = time.perf_counter() - stage_started
                progress.advance(task)
                if build.reused:
                    break
        finally:
            for folder in (build.staging, build.scratch):  # the staging is gone once the bundle is in place
                if folder is not None:
                    shutil.rmtree(folder, ignore_errors=True)
        progress.update(task, description="done")
    return BuildReport(build.output, build.manifest, time.perf_counter() - started, build.reused, stage_seconds)


SPLIT_OPTIONS = ("split", "codec", "codec_weights", "exit_weights", "exit_threshold", "exit_max_loss", "train_data")


def strategy_roles(options: BuildOptions) -> tuple[str, ...]:
    """The halves the strategy ships; options that describe a cut are refused for a bundle that has none."""
    if options.strategy not in STRATEGIES:
        raise EdgesplitError(f"strategy must be one of {', '.join(STRATEGIES)}, got {options.strategy!r}")
    if options.strategy != "split":
        named = [f"--{name.replace('_', '-')}" for name in SPLIT_OPTIONS if getattr(options, name) is not None]
        named += ["--early-exit"] if options.early_exit else []
        if named:
            raise EdgesplitError(f"{', '.join(named)} {'describes' if len(named) == 1 else 'describe'} a split; "
                                 f"this {options.strategy} bundle has no cut")
    if options.strategy != "split" and options.lossless not in (AUTO_LOSSLESS, "none"):
        raise EdgesplitError(f"--lossless {options.lossless} compresses a split's codes; this {options.strategy} bundle "
                             "sends " + ("nothing" if options.strategy == "edge-only" else "the image (--image-format)"))
    absent = [option for option, role, value in (("--precision", "edge", options.precision),
                                                 ("--cloud-precision", "cloud", options.cloud_precision))
              if value is not None and role not in STRATEGIES[options.strategy]]
    if absent:
        raise EdgesplitError(f"{absent[0]} sets a half this {options.strategy} bundle does not have")
    if options.image_format != "raw" and options.strategy != "cloud-only":
        raise EdgesplitError(f"--image-format is how cloud-only sends the image; this bundle is {options.strategy}")
    return STRATEGIES[options.strategy]


def with_shipped(options: BuildOptions, loaded: LoadedModel) -> BuildOptions:
    """With no split, codec or exit named, a bundled model's shipped codec and exit branch; else int8."""
    named = any(value is not None for value in (options.split, options.codec, options.codec_weights,
                                                options.exit_weights)) or options.early_exit
    if not named and loaded.shipped is None and loaded.name in ZOO and ZOO[loaded.name].shipped is not None:
        LOG.warning("note: %s's shipped codec and exit branch belong to its bundled weights (and no --mean/--std); "
                    "building with int8", loaded.name)
    if named or loaded.shipped is None:
        from_checkpoint = options.codec_weights and read_checkpoint(options.codec_weights)["codec"]
        return options._replace(codec=options.codec or from_checkpoint or DEFAULT_CODEC)
    shipped = loaded.shipped
    return options._replace(codec=shipped.codec, codec_weights=shipped.codec_weights,
                            exit_weights=shipped.exit_weights,
                            exit_max_loss=shipped.exit_max_loss if options.exit_max_loss is None
                            else options.exit_max_loss)


def prepare_codec(options: BuildOptions, loaded: LoadedModel, halves: Split) -> tuple[FeatureCodec, dict]:
    """An untrained affine codec, a learned one from --codec-weights, or one trained here; and what is known
    about it (learned, the top-1 agreement its training measured)."""
    spec, point = parse_codec_spec(options.codec), halves.point
    torch.manual_seed(0)  # a learned codec trained here starts from the same weights every build
    try:
        codec = make_cut_codec(spec, point.shapes)
    except EdgesplitError as error:
        raise EdgesplitError(f"at split {point.node}: {error}") from error
    if not codec.learned:
        if options.codec_weights is not None:
            raise EdgesplitError(f"--codec-weights are a learned codec's; codec {spec} has none to load")
        return codec, {"learned": False}
    if options.codec_weights is not None:
        trained, state = load_checkpoint(options.codec_weights, point.node, loaded.sha256, point.shape)
        if parse_codec_spec(state["codec"]) != spec:
            raise EdgesplitError(f"--codec-weights {options.codec_weights} hold codec {state['codec']}, "
                                 f"not the requested {spec}")
        facts = {"learned": True, "measured_agreement": state.get("agreement")}
        if loaded.shipped is not None and options.codec_weights == loaded.shipped.codec_weights:
            facts["shipped"] = loaded.shipped.card.name
        return trained, facts
    data = options.train_data or loaded.dataset
    if data is None:
        raise EdgesplitError(f"codec {spec.name!r} must be trained: give --codec-weights from "
                             "`edgesplit train-codec`, or --train-data to train it here")
    frozen = prepare_training(loaded.module, point.node, loaded.spec(), data, test_frames=0)
    epochs = options.codec_epochs or epochs_for(len(frozen.train))
    train_codec(codec, frozen.tail, frozen.train, epochs, seed=0)
    return codec, {"learned": True, "trained_here": True, "epochs": epochs, "training_frames": len(frozen.train)}


def check_exit_threshold(threshold: float, classes: int) -> None:
    """An entropy over `classes` lies in [0, ln(classes)]: from ln(classes) up the edge answers every frame, which
    a bundle without a server does better (0 keeps every frame for the cloud, as `edgesplit edge` allows)."""
    largest = math.log(classes)
    if not 0 <= threshold < largest:
        raise EdgesplitError(f"--exit-threshold {threshold:g}: a softmax entropy over {classes} classes lies between "
                             f"0 and ln({classes}) = {largest:.3f}, so the edge would answer "
                             f"{'every' if threshold > 0 else 'no'} frame; expected a threshold from 0 below "
                             f"{largest:.3f}")


def prepare_exit(options: BuildOptions, loaded: LoadedModel, split: str) -> ExitBranch | None:
    """The exit branch from --exit-weights, or trained here on the training data, or None."""
    if options.exit_weights is not None:
        return load_exit(options.exit_weights, split, loaded.sha256)
    if not options.early_exit:
        return None
    data = options.train_data or loaded.dataset
    if data is None:
        raise EdgesplitError("training an exit branch needs labeled images: give --train-data")
    frozen = prepare_training(loaded.module, split, loaded.spec(), data, test_frames=0)
    return train_exit(frozen.train, int(frozen.train.teacher.shape[1]), epochs=options.exit_epochs)


def tool_versions() -> dict[str, str]:
    names = ("edgesplit", "torch", "onnx", "onnxsim", "onnxruntime", "numpy")
    return {name: metadata.version(name) for name in names}


def bundle_wire(build: Build) -> WireFormat:
    if build.lossless == "rans":
        return build.codec.wire_format().entropy_coded(build.prior)
    return build.codec.wire_format(build.lossless)


def describe_bundle(build: Build) -> dict:
    """The manifest: everything the runtime needs, written in this one place."""
    loaded, point, codec = build.loaded, build.halves.point, build.codec
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "strategy": build.options.strategy,
        "source_model": {"name": loaded.name, "sha256": loaded.sha256, "weights": loaded.weights,
                         "input": loaded.spec().to_manifest()},
        "deployment": {role: build.deployment.device(role).describe() for role in ROLES},
        "artefacts": with_output_kinds(build.artefacts, build.output_kinds, answering_role(build.options.strategy)),
        "tools": tool_versions(),
        "checks": build.checks,
    }
    if codec is not None:  # something crosses: the image (cloud-only) or the cut's codes
        manifest.update(split={"requested": build.options.split or build.split_name, "node": point.node,
                               "module": point.module, "shape": list(point.shape),
                               "shapes": [list(shape) for shape in point.shapes], "dtype": point.dtype,
                               "fp32_bytes": point.fp32_bytes},
                        codec={**codec.describe(), **build.codec_facts},
                        wire=bundle_wire(build).to_manifest())
    if build.branch is not None:
        manifest["exit"] = {"output": build.artefacts["edge"]["outputs"][1]["name"],
                            "threshold": build.exit.get("threshold"), "calibration": build.exit.get("calibration"),
                            "classes": build.branch.classes, "branch": {"width": build.branch.width}}
    return manifest


def unused_bounds(manifest: dict, given: set[str]) -> list[str]:
    """The bounds among `given` (BuildOptions names) that no output of the built bundle is held to."""
    kinds = {tensor.get("kind") for artefact in manifest["artefacts"].values() for tensor in artefact["outputs"]}
    return [name for name, kind in (("max_relative_error", "regression"),) if name in given and kind not in kinds]


def with_output_kinds(artefacts: dict, kinds: tuple[str, ...], answering: str) -> dict:
    """The answering half's outputs (the cloud's; edge-only: the edge's) say whether each is a classification or a
    regression (the edge scores the first class)."""
    if answering in artefacts:
        for tensor, kind in zip(artefacts[answering]["outputs"], kinds):
            tensor["kind"] = kind
    return artefacts


def artefact_metadata(build: Build, role: str) -> dict[str, str]:
    """Written into each ONNX file, so an artefact found alone still says what it is."""
    return {
        "edgesplit_version": metadata.version("edgesplit"),
        "edgesplit_role": role,
        "edgesplit_model": build.loaded.name,
        "edgesplit_model_sha256": build.loaded.sha256,
        "edgesplit_split": build.halves.point.node,
        "edgesplit_codec": build.codec.name if build.codec is not None else "none (edge-only)",
        "edgesplit_device": build.deployment.device(role).name,
    }

