"""`edgesplit optimize`: from a model, its data, two devices and uplink rates to the deployment that wins.

Operating points: the whole model on the edge device (edge-only), the image sent raw / PNG / JPEG
(cloud-only), and every split x head pruning ratio x codec x exit threshold. Each piece is trained on the
output of what precedes it: a head is pruned (and fine-tuned by distillation from the unpruned model) first;
the learned codecs and the exit branch are then trained on that pruned head's own features. Every
point is built as a bundle and measured here, on the edge device's backend where it runs here and else
on its stand-in's (targets/), one thread, one frame at a time; a measured time times the device's factor
(toolchain/device_speed.py) is the device's. Accuracy is measured on held-out images: exit thresholds are
picked on one half and scored on the other.

Per rate, every point is predicted as the bandwidth benchmark measures (100 frames streamed with 8 in
flight: the first frame's latency, then one frame per slowest stage), its upload counting the protocol's
frame and TCP/IP headers, an exit as the share of frames it still sends. The fastest within --max-loss
wins, and each winning split is built for the real devices.

Trained pieces and measured points are stored under the cache folder by the content they come from (the
model, the data, the options that shape them, edgesplit's code), so an interrupted run resumes and a second
run costs only what changed. The search stops starting new work when what is left of --budget would not
cover the builds of the winners; the report names what it did not try.
"""

from __future__ import annotations

import functools
import math
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np

from calibration_data import DEFAULT_CALIBRATION
from targets import Deployment, deployment, get_device
from toolchain import cache
from toolchain.adaptive import compose_winners
from toolchain.backends import exporter
from toolchain.errors import EdgesplitError
from toolchain.load import InputOptions, LoadedModel, load_model
from toolchain.planning import PlanOption, link_bytes, loss_points, within

STREAM_FRAMES, IN_FLIGHT = 100, 8  # as the bandwidth benchmark streams them
EXIT_LOSSES = (0.1, 0.25, 0.5, 1.0)  # accuracy points exits may cost on the selection half: one threshold each
DEFAULT_RATIOS = (0.0, 0.3, 0.5)
CODE_BITS = 4
REPORT_FORMAT = "edgesplit-optimize/1"
BUILD_ATTEMPTS = 3  # points built per rate before its best baseline is taken
NEAR_CHANCE = 1.5  # times 1 / classes: a float model this close to guessing is refused (check_float_accuracy)
POINT_HOLDOUT_FRAMES = 200  # a candidate's build checks this many; the winner's, every held-out image
TIMING_ROUND = 10  # frames an edge half and the whole model take turns timing


class OptimizeOptions(NamedTuple):
    model: str | None = None
    weights: Path | None = None
    inputs: InputOptions = InputOptions()
    train_data: str | None = None  # labeled images the pieces train on (default: a bundled model's dataset)
    calib: str | None = None  # calibration and held-out images (default: the bundled Fashion-MNIST slice)
    target: str = "cpu"  # the edge device
    cloud: str | None = None
    uplinks: tuple[float, ...] = (20e3, 100e3, 1e6)  # bits per second
    max_loss: float = 1.0  # accuracy points against the float model, exits included
    budget_s: float = 1800.0
    splits: tuple[str, ...] | None = None  # default: the end of every top-level module
    ratios: tuple[float, ...] = DEFAULT_RATIOS  # shares of the head's prunable channels removed (0: unpruned)
    criterion: str = "feature-bias"  # SAFBMP's; bn-scale is BBNet's network slimming
    codecs: tuple[str, ...] | None = None  # default: int8 and learned codecs sized to each split (learned_grid)
    early_exit: bool = True
    train_frames: int | None = 20_000
    epochs: int = 2  # of fine-tuning, codec and exit training each
    holdout_frames: int | None = 2000
    frames: int = 100  # timed per point
    rtt_ms: float = 0.0
    edge_factor: float | None = None  # the device's speed factor measured elsewhere (the testbed's calibration)
    profile_edge: Path | None = None  # `edgesplit profile` run on the device: its edge-only time sets the factor
    output: Path = Path("optimized")
    cache_dir: Path | None = None  # default: <output>/cache
    build: bool = True  # build each winning split for the real devices


class Head(NamedTuple):
    """The model a point's bundle is built from: the original, or one pruned before `split`."""
    split: str  # as users name it (module path)
    ratio: float
    model: str | None
    weights: Path | None
    inputs: InputOptions
    loaded: LoadedModel
    node: str  # the split's fx node in this model
    shape: tuple[int, ...]  # of the split tensor


class Search(NamedTuple):
    """What the whole search shares: devices, data, the store and the clock."""
    options: OptimizeOptions
    devices: Deployment  # the real ones
    measured_on: Deployment  # where each half is timed here (stand-ins for backends that cannot run here)
    speed: object  # device_speed.Speed
    loaded: LoadedModel
    graph: object  # the model's fx graph with shapes (toolchain.split.trace)
    data: str
    train: object  # ImageSet
    calibration: np.ndarray
    select: object  # ImageSet: picks exit thresholds
    evaluate: object  # ImageSet: scores every point
    float_predictions: np.ndarray  # the float model on `evaluate`
    float_accuracy: float
    store: Path
    work: Path
    started: float
    runners: dict  # the whole model on the edge's backend here, made once (whole_on_edge)
    whole_ms: float = 0.0  # the whole model's edge time here, as the baselines measured it
    client_ms: float = 0.0  # CPU time here the edge client spends per frame, beyond the model


def learned_grid(shape: tuple[int, ...]) -> list[str]:
    """BBNet codecs for a C,H,W split tensor: a quarter and a sixteenth of its channels at the largest stride
    up to 4 that divides its height and width, 4-bit codes (the zoo's 64-byte codec at layer3 is one)."""
    if len(shape) != 3:
        return []
    channels, height, width = shape
    stride = next(s for s in (4, 2, 1) if height % s == 0 and width % s == 0)
    widths = sorted({max(1, channels // 4), max(1, channels // 16)}, reverse=True)
    return [f"bbnet:bits={CODE_BITS},c={c},s={stride}" for c in widths]


def check_options(options: OptimizeOptions) -> None:
    from toolchain.codecs import parse_codec_spec
    from toolchain.pruning import CRITERIA, check_ratio

    if not options.uplinks or any(rate <= 0 for rate in options.uplinks):
        raise EdgesplitError("--uplink needs one or more positive rates, e.g. 20kbit,100kbit,1mbit")
    for ratio in options.ratios:
        if ratio != 0:
            check_ratio(ratio)
    if options.criterion not in CRITERIA:
        raise EdgesplitError(f"unknown pruning criterion {options.criterion!r}; criteria: {', '.join(CRITERIA)}")
    for name, value, least in (("--budget", options.budget_s, 1e-9), ("--max-loss", options.max_loss, 0),
                               ("--frames", options.frames, 1), ("--epochs", options.epochs, 0)):
        if not least <= value < math.inf:
            raise EdgesplitError(f"{name} must be at least {least:g} and finite, got {value:g}")
    for codec in options.codecs or ():
        parse_codec_spec(codec)  # an unknown codec or parameter: one line, before anything is trained
    if options.edge_factor is not None and options.profile_edge is not None:
        raise EdgesplitError("give --edge-factor or --profile-edge, not both: each sets how slow the device is")
    if options.edge_factor is not None and not 0 < options.edge_factor < math.inf:
        raise EdgesplitError(f"--edge-factor is how many times slower than this machine the device is, a positive "
                             f"number; got {options.edge_factor}")


def stand_ins(devices: Deployment) -> Deployment:
    """Where each half is timed here: the device itself where its backend runs here, else its stand-in
    (the edge: targets/ name one; the cloud: this CPU, a lower bound on a GPU server's speed)."""
    from toolchain.device_speed import stand_in

    cloud = devices.cloud if not exporter(devices.cloud).unavailable() else get_device("cpu", "cloud")
    return Deployment(get_device(stand_in(devices.edge), "edge"), cloud)


def prepare(options: OptimizeOptions, progress_note: Callable[[str], None]) -> Search:
    from toolchain.data import load_images
    from toolchain.device_speed import Speed
    from toolchain.evaluate import reference_outputs
    from toolchain.split import trace

    started = time.monotonic()  # the budget counts loading and evaluating the model too
    check_options(options)
    devices = deployment(options.target, options.cloud)
    measured_on = stand_ins(devices)
    loaded = load_model(options.model, options.weights, options.inputs)
    graph = trace(loaded.module, loaded.spec().shape)  # a model that does not take the input shape: one line
    data, train, (select, evaluate) = labeled_images(options, loaded)
    store = options.cache_dir or options.output / "cache"
    work = options.output / "work"
    work.mkdir(parents=True, exist_ok=True)
    if options.profile_edge is not None:
        speed = None  # set from the profile's edge-only time once the whole model is timed here (with_profile)
    elif options.edge_factor is not None:
        speed = Speed(devices.edge.name, options.edge_factor, 0.0, 0.0, "--edge-factor")
    else:
        progress_note(f"timing {devices.edge.name}'s speed reference here")
        speed = device_speed(devices.edge, store)
    outputs = reference_outputs(loaded, evaluate.inputs())[0]
    if outputs.ndim != 2:
        raise EdgesplitError(f"optimize ranks deployments by top-1 accuracy; the model's first output is "
                             f"{'x'.join(map(str, outputs.shape[1:]))} per image, not one score per class")
    float_predictions = outputs.argmax(1)
    float_accuracy = float((float_predictions == evaluate.labels).mean())
    check_float_accuracy(float_accuracy, outputs.shape[1], evaluate.origin)
    calibration = load_images(options.calib or str(DEFAULT_CALIBRATION), "train", loaded.spec()).take(512).inputs()
    return Search(options, devices, measured_on, speed, loaded, graph, data, train, calibration, select, evaluate,
                  float_predictions, float_accuracy, store, work, started, {})


def check_float_accuracy(accuracy: float, classes: int, origin: str) -> None:
    """Points are scored against the labels: a float model near chance on them means the labels are not its
    classes (a folder's classes are sorted by name) or its weights are not trained ones."""
    if accuracy <= NEAR_CHANCE / classes:
        raise EdgesplitError(f"the model answers {accuracy:.1%} of the held-out images in {origin} right, near "
                             f"chance for {classes} classes: are its weights given (--weights), and are the labels "
                             "its classes (class folders are numbered in name order)?")


def labeled_images(options: OptimizeOptions, loaded: LoadedModel):
    """The training source, its training images, and the held-out images in two halves: one picks exit
    thresholds, the other scores every point."""
    from toolchain.data import ImageSet, load_images

    spec = loaded.spec()
    data = options.train_data or loaded.dataset
    if data is None:
        raise EdgesplitError("optimize trains codecs, exit branches and pruned heads: give --train-data, labeled "
                             "images")
    train = load_images(data, "train", spec)
    train = train if options.train_frames is None else train.take(options.train_frames)
    if train.labels is None:
        raise EdgesplitError(f"{data} has no labels: pruned heads, codecs and exits are scored by accuracy")
    source = options.calib or str(DEFAULT_CALIBRATION)
    holdout = load_images(source, "test", spec)
    holdout = holdout if options.holdout_frames is None else holdout.sample(options.holdout_frames)
    if holdout.labels is None or len(holdout) < 20:
        raise EdgesplitError(f"optimize needs at least 20 labeled held-out images in {source} (its test split, or "
                             f"every 5th image of a source with one set); it has {len(holdout)}"
                             f"{'' if holdout.labels is not None else ', unlabeled'}")
    return data, train, [ImageSet(holdout.images[part::2], holdout.labels[part::2], holdout.origin)
                         for part in (0, 1)]


def device_speed(device, store: Path):
    """The device's factor, measured once per machine and code: a resumed run scales its stored times by the
    factor measured beside them."""
    import json

    from toolchain.device_speed import Speed, measure_speed
    from toolchain.results import cpu_name

    def make(path: Path) -> None:
        path.write_text(json.dumps(measure_speed(device, store / "speed")._asdict()))
    key = cache.content_key("speed", device.name, cpu_name(), cache.code_version())
    return Speed(**json.loads(cache.stored_file(store, "speed", key, ".json", make).read_text()))


def with_profile(search: Search, baselines: list[dict]) -> Search:
    """The device's factor from a profile measured on it: its edge-only time over the whole model's here (same
    model, the device's backend there, the stand-in's here)."""
    from toolchain.device_speed import Speed
    from toolchain.planning import load_profile

    path = search.options.profile_edge
    profile = load_profile(path)
    if profile["model"]["sha256"] != search.loaded.sha256:
        raise EdgesplitError(f"{path} profiles model {profile['model']['name']} (sha256 "
                             f"{profile['model']['sha256'][:12]}…), not {search.loaded.name} "
                             f"({search.loaded.sha256[:12]}…): profile this model on the device")
    if profile["devices"]["edge"] != search.devices.edge.name:
        raise EdgesplitError(f"{path} was measured on {profile['devices']['edge']}, not on the edge device "
                             f"{search.devices.edge.name}")
    device_ms = profile["edge_only"]["ms"]
    here_ms = next(row["edge_ms_here"] for row in baselines if row["strategy"] == "edge-only")
    return search._replace(speed=Speed(search.devices.edge.name, device_ms / here_ms, here_ms, device_ms,
                                       f"the whole model's time in {path}"))


def client_cost(search: Search) -> float:
    """toolchain/client_cost.py's measure, once per machine, code and input."""
    import json

    from toolchain.client_cost import client_ms
    from toolchain.results import cpu_name

    options = search.options
    images = options.calib or str(DEFAULT_CALIBRATION)

    def make(path: Path) -> None:
        path.write_text(json.dumps({"ms": client_ms(options.model, options.weights, options.inputs, images,
                                                    search.work)}))
    key = cache.content_key("client", cpu_name(), cache.code_version(), search.loaded.spec().to_manifest(), images)
    return json.loads(cache.stored_file(search.store, "client", key, ".json", make).read_text())["ms"]


def model_key(loaded: LoadedModel) -> str:
    return cache.content_key(loaded.sha256, cache.module_code(loaded.module))


def head(search: Search, split: str, ratio: float) -> Head:
    """The original model, or one pruned before `split` and fine-tuned (stored as a .pt2 archive)."""
    from toolchain.split import resolve_point, trace

    options, loaded = search.options, search.loaded
    if ratio == 0:
        point = resolve_point(search.graph, split)
        return Head(split, 0.0, options.model, options.weights, options.inputs, loaded, point.node, point.shape)
    key = cache.content_key("pruned", model_key(loaded), split, ratio, options.criterion, options.epochs,
                            search.train.images, search.train.labels, cache.code_version())
    path = cache.stored_file(search.store, "pruned", key, ".pt2", lambda aside: prune_head(search, split, ratio, aside))
    spec = loaded.spec()
    inputs = InputOptions(spec.shape, spec.resize)  # the normalization is inside the archive's graph
    pruned = load_model(str(path), None, inputs)
    point = resolve_point(trace(pruned.module, pruned.input_shape), split)
    return Head(split, ratio, str(path), None, inputs, pruned, point.node, point.shape)


def prune_head(search: Search, split: str, ratio: float, path: Path) -> None:
    import copy

    from toolchain.pruning import fine_tune, head_modules, prune, save_pruned, sparsity_train

    shape, teacher = search.loaded.input_shape, search.loaded.module.eval()
    train_inputs, labels = search.train.inputs(), search.train.labels
    model = copy.deepcopy(teacher)
    if search.options.criterion == "bn-scale":
        sparsity_train(model, head_modules(model, split, shape), train_inputs, labels, search.options.epochs)
    pruned, report = prune(model, split, shape, search.options.criterion, ratio, search.calibration)
    if report.head_params_after == report.head_params_before:
        raise EdgesplitError(f"nothing before {split} can be pruned (its channels are the split tensor's)")
    fine_tune(pruned, teacher, train_inputs, labels, search.options.epochs)
    save_pruned(pruned, shape, path)


def trained_pieces(search: Search, chosen: Head, codecs: list[str]) -> tuple[dict[str, Path | None], Path | None]:
    """Each learned codec's checkpoint and the exit branch's, trained on `chosen`'s own head features."""
    from toolchain.codec_training import prepare_training, save_checkpoint, train_codec
    from toolchain.codecs import LEARNED, make_codec, parse_codec_spec
    from toolchain.exit_branch import save_exit, train_exit

    options = search.options
    base = (model_key(chosen.loaded), chosen.node, options.epochs, search.train.images, search.train.labels,
            cache.code_version())

    @functools.lru_cache(maxsize=None)
    def features():  # the head's outputs on the training images, once, and only if something is trained
        return prepare_training(chosen.loaded.module, chosen.node, chosen.loaded.spec(), search.data,
                                options.train_frames, test_frames=0)

    def codec_weights(spec: str) -> Path | None:
        if parse_codec_spec(spec).name not in LEARNED:
            return None

        def make(path: Path) -> None:
            codec = make_codec(parse_codec_spec(spec), chosen.shape)
            train_codec(codec, features().tail, features().train, options.epochs, seed=0)
            save_checkpoint(path, codec, spec, chosen.node, chosen.loaded.sha256, epoch=options.epochs)
        return cache.stored_file(search.store, "codecs", cache.content_key("codec", spec, *base), ".pt", make)

    def exit_weights(path: Path) -> None:
        cached = features().train
        save_exit(path, train_exit(cached, int(cached.teacher.shape[1]), epochs=max(1, options.epochs)),
                  chosen.node, chosen.loaded.sha256)

    weights = {spec: codec_weights(spec) for spec in codecs}
    # an exit branch reads a C,H,W tensor: a flat one's points go without
    branch = cache.stored_file(search.store, "exits", cache.content_key("exit", *base), ".pt", exit_weights) \
        if options.early_exit and len(chosen.shape) == 3 else None
    return weights, branch


def point_key(search: Search, *parts) -> str:
    options = search.options
    return cache.content_key(*parts, search.measured_on.edge.name, search.measured_on.cloud.name, options.calib,
                             search.select.images, search.evaluate.images, search.evaluate.labels, options.frames,
                             cache.code_version())


def file_hash(path: Path | None) -> str | None:
    from runtime.bundle import file_sha256

    return None if path is None else file_sha256(path)


def measure_point(search: Search, chosen: Head, position: int, codec: str, codec_weights: Path | None,
                  exit_weights: Path | None) -> list[dict]:
    """One bundle (split x pruned head x codec, with its exit branch) built, timed and scored: one row per exit
    threshold. Stored, so a run resumes past it."""
    import json

    key = point_key(search, "point", model_key(chosen.loaded), chosen.node, codec, file_hash(codec_weights),
                    file_hash(exit_weights))

    def make(path: Path) -> None:
        rows = build_and_measure(search, chosen, codec, codec_weights, exit_weights)
        path.write_text(json.dumps([dict(row, position=position) for row in rows]))
    return json.loads(cache.stored_file(search.store, "points", key, ".json", make).read_text())


def build_and_measure(search: Search, chosen: Head, codec: str, codec_weights: Path | None,
                      exit_weights: Path | None) -> list[dict]:
    from runtime.bundle import open_bundle
    from runtime.local import EdgeHalf, SplitInference
    from toolchain.build import BuildOptions, build_engines
    from toolchain.profile import measure_crossing

    options = search.options
    output = search.work / f"{chosen.split}-{chosen.ratio:g}-{codec.replace(':', '_').replace(',', '_')}"
    report = build_engines(BuildOptions(
        model=chosen.model, weights=chosen.weights, inputs=chosen.inputs, target=search.measured_on.edge.name,
        cloud=search.measured_on.cloud.name, split=chosen.node, codec=codec, codec_weights=codec_weights,
        exit_weights=exit_weights, calib=options.calib, holdout_frames=min(POINT_HOLDOUT_FRAMES, len(search.evaluate)),
        output=output, max_loss=math.inf, min_agreement=0.0, max_relative_error=math.inf), show_progress=False)
    timed = search.evaluate.inputs()[:options.frames]
    bundle = open_bundle(output)
    edge, frames = EdgeHalf(bundle, threads=1), [timed[i:i + 1] for i in range(len(timed))]
    timing = measure_crossing(bundle, edge, frames, threads=1)
    edge_ms, edge_p90_ms = edge_beside_whole(search, edge, frames)
    inference = SplitInference(bundle, verified=True)
    select, evaluate = (inference.deployed(part.inputs()) for part in (search.select, search.evaluate))
    shutil.rmtree(output)  # measured: the winner is built again for the real devices
    base = {"strategy": "split", "split": chosen.split, "ratio": chosen.ratio, "codec": codec,
            "payload_bytes": timing["payload_bytes"], "frame_bytes": timing["frame_bytes"],
            "edge_ms_here": edge_ms, "edge_p90_ms_here": edge_p90_ms,
            "cloud_ms": timing["cloud"]["ms"], "build_s": round(report.seconds, 1),
            "evaluate_s": round(report.stage_seconds.get("evaluate bundle", 0.0), 1),  # none when reused
            "evaluated_frames": report.manifest["checks"]["holdout_frames"]}
    return [dict(base, **scored) for scored in exit_rows(search, select, evaluate)]


def whole_on_edge(search: Search) -> Callable[[np.ndarray], np.ndarray]:
    from toolchain.profile import whole_model_runner

    if "edge" not in search.runners:
        search.runners["edge"] = whole_model_runner(search.loaded, search.measured_on, "edge", search.calibration,
                                                    search.work, 1)
    return search.runners["edge"]


def edge_beside_whole(search: Search, edge, frames: list[np.ndarray]) -> tuple[float, float]:
    """The edge half's ms per frame (median and p90) as if timed when the baselines timed the whole model: both
    run in alternating rounds, and the edge's times are scaled by the whole model's then over now, so the
    machine's drift over a long search does not rank points."""
    whole = whole_on_edge(search)
    times = {"edge": [], "whole": []}
    for start in range(0, len(frames), TIMING_ROUND):
        for name, run in (("edge", edge.payloads), ("whole", whole)):
            run(frames[start])  # warm again after the other's round
            for frame in frames[start:start + TIMING_ROUND]:
                began = time.perf_counter()
                run(frame)
                times[name].append(1000 * (time.perf_counter() - began))
    scale = search.whole_ms / float(np.median(times["whole"]))
    return scale * float(np.median(times["edge"])), scale * float(np.percentile(times["edge"], 90))


def exit_rows(search: Search, select, evaluate) -> list[dict]:
    """'Send every frame', then a threshold per EXIT_LOSSES picked on the selection half: each scored on the
    evaluation half (its offload rate, accuracy and agreement with the float model)."""
    from runtime.local import softmax_entropy
    from toolchain.exit_calibration import ExitMeasurement, curve, pick

    thresholds = [0.0]
    if select.exit_logits is not None:
        labels = search.select.labels
        points = curve(ExitMeasurement(softmax_entropy(select.exit_logits), select.exit_logits.argmax(1) == labels,
                                       select.outputs[0].argmax(1) == labels))
        thresholds += sorted({pick(points, max_loss_points=loss).threshold for loss in EXIT_LOSSES} - {0.0})
    cloud = evaluate.outputs[0].argmax(1)
    exits = cloud if evaluate.exit_logits is None else evaluate.exit_logits.argmax(1)
    rows, seen = [], set()
    for threshold in thresholds:
        local = np.zeros(len(cloud), bool) if threshold == 0 else softmax_entropy(evaluate.exit_logits) < threshold
        answers = np.where(local, exits, cloud)
        accuracy = float((answers == search.evaluate.labels).mean())
        if (local.sum(), accuracy) in seen:  # two thresholds that exit the same frames here: one point
            continue
        seen.add((local.sum(), accuracy))
        rows.append({"threshold": threshold, "offload_rate": float(1 - local.mean()), "accuracy": accuracy,
                     "agreement": float((answers == search.float_predictions).mean()),
                     "loss_points": loss_points(search.float_accuracy, accuracy)})
    return rows


def measure_baselines(search: Search) -> list[dict]:
    """The whole model on the edge device, and the image sent raw / PNG / JPEG to the whole model in the cloud."""
    import json

    def make(path: Path) -> None:
        path.write_text(json.dumps(baseline_rows(search)))
    key = point_key(search, "baselines", model_key(search.loaded))
    return json.loads(cache.stored_file(search.store, "baselines", key, ".json", make).read_text())


def baseline_rows(search: Search) -> list[dict]:
    from toolchain.profile import measure_image_formats, measure_whole_model, whole_model_runner

    inputs, labels = search.evaluate.inputs(), search.evaluate.labels
    frames = min(search.options.frames, len(inputs))

    began = time.monotonic()
    edge = measure_whole_model(whole_on_edge(search), inputs, labels, frames)
    # building it as a winner exports the same model and evaluates every held-out image, not only these
    build_s = (time.monotonic() - began) * (len(search.select) + len(search.evaluate)) / len(inputs)
    cloud = measure_whole_model(whole_model_runner(search.loaded, search.measured_on, "cloud", search.calibration,
                                                   search.work, None), inputs, labels, frames)
    rows = [{"strategy": "edge-only", "name": "edge-only", "frame_bytes": 0.0, "payload_bytes": 0.0,
             "offload_rate": 0.0, "edge_ms_here": edge["ms"], "edge_p90_ms_here": edge["p90_ms"], "cloud_ms": 0.0,
             "accuracy": edge["accuracy"], "position": math.inf, "build_s": round(build_s, 2)}]
    for upload in measure_image_formats(search.loaded, inputs, labels, frames):
        rows.append({"strategy": "cloud-only", "name": f"cloud-only {upload['format']}", "format": upload["format"],
                     "frame_bytes": upload["frame_bytes"], "payload_bytes": upload["payload_bytes"],
                     "offload_rate": 1.0, "edge_ms_here": upload["encode"]["ms"],
                     "edge_p90_ms_here": upload["encode"]["p90_ms"],
                     "cloud_ms": upload["decode"]["ms"] + cloud["ms"], "accuracy": upload["accuracy"],
                     "position": -math.inf})
    for row in rows:
        row["loss_points"] = loss_points(search.float_accuracy, row["accuracy"])
    return rows


def point_name(row: dict) -> str:
    if row["strategy"] != "split":
        return row["name"]
    pruned = f" pruned {row['ratio']:g}" if row["ratio"] else ""
    exits = f" exit {row['threshold']:.3g} ({row['offload_rate']:.0%} sent)" if row["threshold"] else ""
    return f"{row['split']}{pruned} {row['codec']}{exits}"


class Choice(NamedTuple):
    rate: float
    options: list[PlanOption]  # every point, predicted at this rate, in the rows' order
    winner: PlanOption
    edge_only: PlanOption
    cloud_only: PlanOption | None  # the fastest image upload within --max-loss

    def seconds(self, option: PlanOption) -> float:
        return stream_ms(option) / 1000

    @property
    def speedup(self) -> float:
        """Over the better baseline."""
        baselines = [self.seconds(o) for o in (self.edge_only, self.cloud_only) if o is not None]
        return min(baselines) / self.seconds(self.winner)


def predict(row: dict, factor: float, rate: float, rtt_ms: float, client_ms: float) -> PlanOption:
    """A measured point at one rate: the edge's time and its client's scaled to the device, an exit as the share it
    sends. The client's time counts for every frame, edge-only's too: each frame is still read, prepared, looped
    over and answered (edge-only through `edgesplit edge` took 8.0 ms a frame on the emulated Pi, its model 6.0);
    the socket's share is not measured apart (for points that send less, an upper bound)."""
    sent = row["offload_rate"]
    upload = sent * (1000 * 8 * link_bytes(row["frame_bytes"]) / rate + rtt_ms) if row["frame_bytes"] else 0.0
    edge_ms = factor * (row["edge_ms_here"] + client_ms)
    return PlanOption(row["strategy"], point_name(row), row["position"], sent * row["frame_bytes"], edge_ms, upload,
                      sent * row["cloud_ms"], row["loss_points"])


def choose(rows: list[dict], factor: float, rate: float, options: OptimizeOptions, client_ms: float = 0.0) -> Choice:
    from toolchain.planning import fastest

    predicted = [predict(row, factor, rate, options.rtt_ms, client_ms) for row in rows]
    edge_only = next(o for o in predicted if o.strategy == "edge-only")
    uploads = [o for o in predicted if o.strategy == "cloud-only" and o.loss_points <= options.max_loss]
    return Choice(rate, predicted, fastest(predicted, options.max_loss, cost=stream_ms), edge_only,
                  min(uploads, key=stream_ms) if uploads else None)


def stream_ms(option: PlanOption) -> float:
    """Predicted ms for STREAM_FRAMES frames streamed with IN_FLIGHT unanswered: what a point is ranked by."""
    return option.stream_ms(STREAM_FRAMES, IN_FLIGHT)


class Result(NamedTuple):
    rows: list[dict]  # every measured point and baseline
    choices: list[Choice]  # one per rate
    not_tried: list[str]  # heads or codecs the budget left out, or that could not be made (with why)
    bundles: dict[str, str]  # winner name -> its bundle's folder
    adaptive: Path | None  # every winner in one bundle, switched by rate (None: one point won every rate)
    refused: dict[str, str]  # point name -> why its build for the real devices refused it
    speed: object  # device_speed.Speed
    search: Search
    seconds: float


def split_names(search: Search) -> list[str]:
    from toolchain.profile import default_points
    from toolchain.split import candidate_points, resolve_point

    if search.options.splits:
        for name in search.options.splits:
            resolve_point(search.graph, name)  # an unknown name is refused here, in one line
        return list(search.options.splits)
    return [point.module or point.node for point in default_points(candidate_points(search.graph))]


class Budget:
    """The search's seconds: a piece of work starts only if, taking MARGIN times as long as the longest of its
    kind so far, it still leaves time to build a winner per rate (a head started near the end overran budgets by
    2-15 %; reckoned at 1x the longest, one run still overran 720 s by 12 s)."""

    MARGIN = 1.25

    def __init__(self, started: float, seconds: float, winners: int):
        self.started, self.seconds, self.winners = started, seconds, winners
        self.longest = {"build": 0.0, "head": 0.0, "point": 0.0}

    def allows(self, *kinds: str) -> bool:
        upcoming = sum(self.longest[kind] for kind in kinds) + self.winners * self.longest["build"]
        return time.monotonic() - self.started + self.MARGIN * upcoming <= self.seconds

    @contextmanager
    def timed(self, kind: str):
        started = time.monotonic()
        yield
        self.record(kind, time.monotonic() - started)

    def record(self, kind: str, seconds: float) -> None:
        self.longest[kind] = max(self.longest[kind], seconds)


def winner_build_s(search: Search, row: dict) -> float:
    """A point's build as a winner: as measured, but evaluated on every held-out image, not POINT_HOLDOUT_FRAMES
    (the ResNet-50-like's edge-only winner, evaluated on 3x the frames, overran a 720 s budget by 28 s)."""
    frames = len(search.select) + len(search.evaluate)
    return row["build_s"] + row["evaluate_s"] * max(0.0, frames / row["evaluated_frames"] - 1)


def optimize(options: OptimizeOptions, progress) -> Result:
    """The whole search under a rich Progress; the winners built unless options.build is False."""
    from toolchain.split import resolve_point

    task = progress.add_task("preparing", total=None)
    search = prepare(options, lambda words: progress.update(task, description=words))
    heads = [(ratio, split) for ratio in options.ratios for split in split_names(search)]
    progress.update(task, total=len(heads) + 1, completed=0, description="baselines: whole model, image uploads")
    rows, not_tried = measure_baselines(search), []
    search = search._replace(whole_ms=next(row["edge_ms_here"] for row in rows if row["strategy"] == "edge-only"))
    if options.profile_edge is not None:
        search = with_profile(search, rows)
    progress.update(task, description="timing the edge client")
    search = search._replace(client_ms=client_cost(search))
    progress.advance(task)
    budget = Budget(search.started, options.budget_s, len(options.uplinks))
    # the whole model on the device is every search's last resort: its build is reserved before any head starts
    budget.record("build", next(row.get("build_s", 0.0) for row in rows if row["strategy"] == "edge-only"))
    for ratio, split in heads:
        progress.update(task, description=f"{split}, pruned {ratio:g}" if ratio else f"{split}, unpruned")
        if not budget.allows("head", "point"):
            not_tried.append(f"{split} pruned {ratio:g}: over the budget" if ratio else f"{split}: over the budget")
            progress.advance(task)
            continue
        try:
            with budget.timed("head"):
                chosen = head(search, split, ratio)
                codecs = list(options.codecs or ["int8", *learned_grid(chosen.shape)])
                weights, branch = trained_pieces(search, chosen, codecs)
                position = resolve_point(search.graph, split).position
            for codec in codecs:
                if not budget.allows("point"):
                    not_tried.append(f"{split} pruned {ratio:g} {codec}: over the budget")
                    continue
                with budget.timed("point"):
                    measured = measure_point(search, chosen, position, codec, weights[codec], branch)
                budget.record("build", max(winner_build_s(search, row) for row in measured))
                rows += measured
        except (EdgesplitError, RuntimeError, ValueError) as error:
            not_tried.append(f"{split} pruned {ratio:g}: {str(error).splitlines()[0]}")
        progress.advance(task)
    # with no split point measured (a budget too short for one) the baselines still compete: the report says why
    choices = [choose(rows, search.speed.factor, rate, options, search.client_ms) for rate in options.uplinks]
    bundles, refused, adaptive = {}, {}, None
    if options.build:
        choices, bundles, refused = build_winners(search, rows, choices, progress)
        adaptive = compose_winners(choices, bundles, options.output / "bundles" / "adaptive")
    shutil.rmtree(search.work, ignore_errors=True)  # the candidates' scratch: what was measured is stored
    progress.update(task, description="done")
    return Result(rows, choices, not_tried, bundles, adaptive, refused, search.speed, search,
                  time.monotonic() - search.started)


def build_winners(search: Search, rows: list[dict], choices: list[Choice],
                  progress) -> tuple[list[Choice], dict[str, str], dict[str, str]]:
    """Per rate, the fastest point within --max-loss built for the real devices (its codec, exit branch and
    threshold). Returns the choices as built, each built point's bundle folder, and why each point its build
    refused (the real devices' precisions, more held-out images) was refused."""
    by_name = {point_name(row): row for row in rows}
    bundles, refused = {}, {}

    def build(option: PlanOption) -> bool:
        if option.name not in bundles and option.name not in refused:
            task = progress.add_task(f"building {option.name}", total=None)
            try:
                bundles[option.name] = build_point(search, by_name[option.name])
            except EdgesplitError as error:
                refused[option.name] = str(error).splitlines()[0]
            progress.update(task, total=1, completed=1)
        return option.name in bundles

    return [built_winner(choice, search.options.max_loss, build) for choice in choices], bundles, refused


def built_winner(choice: Choice, max_loss: float, build: Callable[[PlanOption], bool]) -> Choice:
    """The fastest point within `max_loss` that builds: a split whose build refuses it gives way to the next,
    BUILD_ATTEMPTS splits at most; then the best baseline that builds (edge-only, even beyond `max_loss`, where
    none is within it: the report shows its loss). Baselines are bundles too: the runtime runs whatever wins."""
    ranked = sorted((o for o in choice.options if within(o, max_loss)), key=lambda o: (choice.seconds(o), -o.position))
    attempts = 0
    for option in ranked:
        if option.strategy == "split":
            if attempts == BUILD_ATTEMPTS:
                continue
            attempts += 1
        if build(option):
            return choice._replace(winner=option)
    if choice.edge_only not in ranked:
        build(choice.edge_only)
    return choice._replace(winner=choice.edge_only)


def build_point(search: Search, row: dict) -> str:
    from toolchain.build import BuildOptions, build_engines

    options = search.options
    if row["strategy"] != "split":
        output = options.output / "bundles" / row["name"].replace(" ", "-")
        build_engines(BuildOptions(
            strategy=row["strategy"], image_format=row.get("format", "raw"), model=options.model,
            weights=options.weights, inputs=options.inputs, target=options.target, cloud=options.cloud,
            calib=options.calib, holdout_frames=options.holdout_frames, output=output, max_loss=options.max_loss),
            show_progress=False)
        return str(output)
    chosen = head(search, row["split"], row["ratio"])
    weights, branch = trained_pieces(search, chosen, [row["codec"]])
    output = options.output / "bundles" / "-".join(
        part.replace(":", "_").replace(",", "_").replace("=", "") for part in
        (row["split"], f"pruned{row['ratio']:g}", row["codec"], f"exit{row['threshold']:.3g}"))
    build_engines(BuildOptions(
        model=chosen.model, weights=chosen.weights, inputs=chosen.inputs, target=options.target,
        cloud=options.cloud, split=chosen.node, codec=row["codec"], codec_weights=weights[row["codec"]],
        exit_weights=branch if row["threshold"] else None, exit_threshold=row["threshold"] or None,
        calib=options.calib, holdout_frames=options.holdout_frames, output=output,
        max_loss=options.max_loss), show_progress=False)
    return str(output)
