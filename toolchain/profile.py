"""Device profiles: BBNet's TM_i (edge time) and TC_i (cloud time) measured, not modelled.

For every candidate split (and codec) a real bundle is built for the deployment (edge device,
cloud device) and its halves are timed one frame at a time on those devices' own backends, as a
camera delivers frames.
Two baselines complete the picture (BBNet's i = 0 and i = N): the whole model on the edge
backend ("edge-only") and on the cloud backend with the image sent as raw pixels, PNG or
JPEG ("cloud-only"). The JSON written here is what `edgesplit plan` reads; profiles
measured on other devices are just as good, as long as they describe the same model.
"""

from __future__ import annotations

import math
import platform
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from calibration_data import DEFAULT_CALIBRATION
from runtime.bundle import open_bundle
from runtime.local import CloudHalf, EdgeHalf
from runtime.protocol import frame_bytes
from targets import ROLES, Deployment, deployment
from toolchain.backends import WholeModel, check_precision, exporter
from toolchain.build import BuildOptions, build_engines
from toolchain.data import load_images
from toolchain.errors import EdgesplitError
from toolchain.evaluate import reference_outputs
from toolchain.image_formats import decode_image, encode_image, formats_for, to_pixels
from toolchain.load import InputOptions, LoadedModel, load_model
from toolchain.planning import PROFILE_FORMAT
from toolchain.results import cpu_name
from toolchain.split import SplitPoint, candidate_points, output_names, resolve_point, trace
from toolchain.train import accuracy

WARMUP_FRAMES = 10


class ProfileOptions(NamedTuple):
    target: str = "cpu"  # the edge device
    cloud: str | None = None  # the cloud device; default: the edge device's
    model: str | None = None
    weights: Path | None = None
    inputs: InputOptions = InputOptions()
    splits: tuple[str, ...] | None = None  # default: the end of every top-level module
    codecs: tuple[str, ...] = ("int8",)
    lossless: str = "none"
    calib: str | None = None
    holdout_frames: int | None = None  # held-out images the accuracies are measured on, drawn at random (all)
    frames: int = 200  # frames timed per half
    calibration_frames: int = 512  # images the bundles and the whole models are calibrated on
    threads: int | None = None
    keep: Path | None = None  # keep the bundles (their paths are in the profile) and whole-model files here


def default_points(points: list[SplitPoint]) -> list[SplitPoint]:
    """The last node of each top-level module (layer1, layer2, pool, ...): the points users name."""
    return [p for p in points if p.module and "." not in p.module]


def time_per_frame(call: Callable[[int], object], frames: int) -> dict:
    """Milliseconds per call of `call(i)` for i in 0..frames-1, after a warm-up: p50, p90 and mean."""
    for i in range(min(WARMUP_FRAMES, frames)):
        call(i)
    times = []
    for i in range(frames):
        started = time.perf_counter()
        call(i)
        times.append(1000 * (time.perf_counter() - started))
    return {"ms": float(np.median(times)), "p90_ms": float(np.percentile(times, 90)), "mean_ms": float(np.mean(times))}


def device_description(devices: Deployment, threads: int | None) -> dict:
    tools = {}
    for name in ("onnxruntime", "ai-edge-litert", "tensorrt"):
        try:
            tools[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return {"host": platform.node(), "cpu": cpu_name(), "machine": platform.machine(), "threads": threads,
            "backends": {role: devices.device(role).backend for role in ROLES}, "tools": tools}


def check_backends_here(devices: Deployment) -> None:
    """A half can only be timed where its backend runs (a TensorRT half: where the GPU is); say so before
    building anything."""
    for role in ROLES:
        device = devices.device(role)
        reason = exporter(device).unavailable()
        if reason:
            raise EdgesplitError(f"profiling times the {role} half on {device.name}'s backend, which cannot run "
                                 f"here: {reason}; run `edgesplit profile` on that device and give the JSON to "
                                 "`edgesplit plan`, or profile another device here (--target / --cloud)")


def candidate(point: SplitPoint, codec: str, lossless: str, bundle: Path, checks: dict, timed: np.ndarray,
              threads: int | None) -> dict:
    """One profile entry: a built bundle's bytes, both halves' time per frame and its accuracy."""
    measured = measure_bundle(bundle, timed, threads)
    return {"split": point.module or point.node, "node": point.node, "position": point.position,
            "shape": list(point.shape), "codec": codec, "lossless": lossless,
            "payload_bytes": measured["payload_bytes"], "frame_bytes": measured["frame_bytes"],
            "edge": measured["edge"], "cloud": measured["cloud"],
            "accuracy": checks.get("bundle_accuracy"), "top1_agreement": checks.get("top1_agreement")}


def measure_bundle(path: Path, inputs: np.ndarray, threads: int | None) -> dict:
    """Edge (head + encoder + wire codec) and cloud (wire decode + decoder + tail) per frame, batch 1."""
    bundle = open_bundle(path)
    edge = EdgeHalf(bundle, threads)
    frames = [inputs[i:i + 1] for i in range(len(inputs))]
    crossing = measure_crossing(bundle, edge, frames, threads)
    return {"edge": time_per_frame(lambda i: edge.payloads(frames[i]), len(frames)), **crossing}


def measure_crossing(bundle, edge: EdgeHalf, frames: list[np.ndarray], threads: int | None) -> dict:
    """What the edge sends for each frame (mean payload and frame bytes) and the cloud's time per frame on it."""
    cloud = CloudHalf(bundle, threads)
    payloads = [edge.payloads(frame)[0] for frame in frames]
    payload_bytes = float(np.mean([len(p) for p in payloads]))
    return {"cloud": time_per_frame(lambda i: cloud.logits(cloud.decode(payloads[i])[None]), len(frames)),
            "payload_bytes": payload_bytes, "frame_bytes": frame_bytes(payload_bytes)}


def whole_model_runner(loaded: LoadedModel, devices: Deployment, role: str, calibration: np.ndarray, work: Path,
                       threads: int | None) -> Callable[[np.ndarray], np.ndarray]:
    """The whole model on a role's device, at its default precision, as images → logits."""
    device = devices.device(role)
    with torch.no_grad():
        outputs = output_names(loaded.module.eval()(torch.from_numpy(calibration[:1])))
    return exporter(device).whole_model(WholeModel(
        loaded.module.eval(), outputs, device, check_precision(device, role, None), calibration, work,
        f"{loaded.sha256[:16]}-{device.name}-{role}", threads))


def measure_whole_model(run: Callable[[np.ndarray], np.ndarray], inputs: np.ndarray, labels: np.ndarray | None,
                        frames: int) -> dict:
    timing = time_per_frame(lambda i: run(inputs[i:i + 1]), frames)
    if labels is not None:
        predictions = np.concatenate([run(inputs[i:i + 1]) for i in range(len(inputs))]).argmax(1)
        timing["accuracy"] = float((predictions == labels).mean())
    return timing


def measure_image_formats(loaded: LoadedModel, inputs: np.ndarray, labels: np.ndarray | None,
                          frames: int) -> list[dict]:
    """Cloud-only uploads: bytes, encode (edge) and decode (cloud) time, and what JPEG costs in accuracy."""
    pixels = to_pixels(inputs)
    shape = pixels.shape[1:]
    results = []
    for image_format in formats_for(shape[0]):
        encoded = [encode_image(p, image_format) for p in pixels]
        entry = {"format": image_format,
                 "payload_bytes": float(np.mean([len(e) for e in encoded])),
                 "encode": time_per_frame(lambda i, f=image_format: encode_image(pixels[i], f), frames),
                 "decode": time_per_frame(lambda i, e=encoded, f=image_format: decode_image(e[i], f, shape), frames)}
        entry["frame_bytes"] = frame_bytes(entry["payload_bytes"])
        if labels is not None:
            decoded = np.stack([decode_image(e, image_format, shape) for e in encoded]).astype(np.float32) / 255
            entry["accuracy"] = accuracy(reference_outputs(loaded, decoded)[0], labels)
        results.append(entry)
    return results


def profile_target(options: ProfileOptions) -> dict:
    """Build and time every candidate for `options.target` on this machine; the profile as a dict."""
    devices = deployment(options.target, options.cloud)
    check_backends_here(devices)
    loaded = load_model(options.model, options.weights, options.inputs)
    spec = loaded.spec()
    source = options.calib or str(DEFAULT_CALIBRATION)
    calibration = load_images(source, "train", spec).take(options.calibration_frames)
    holdout = load_images(source, "test", spec)
    holdout = holdout if options.holdout_frames is None else holdout.sample(options.holdout_frames)
    input_shape = spec.shape
    calibration_inputs, inputs = calibration.inputs(), holdout.inputs()
    timed = inputs[:options.frames]
    graph = trace(loaded.module, input_shape)
    points = ([resolve_point(graph, name) for name in options.splits] if options.splits
              else default_points(candidate_points(graph)))
    float_accuracy = None
    if holdout.labels is not None:
        float_accuracy = accuracy(reference_outputs(loaded, inputs)[0], holdout.labels)

    candidates = []
    steps = len(points) * len(options.codecs) + 3
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns) as progress, tempfile.TemporaryDirectory() as scratch:
        work = options.keep or Path(scratch)
        task = progress.add_task("profiling", total=steps)
        for point in points:
            for codec in options.codecs:
                progress.update(task, description=f"{point.module or point.node} / {codec}")
                output = work / f"{point.node}-{len(candidates)}"
                report = build_engines(BuildOptions(
                    model=options.model, weights=options.weights, inputs=options.inputs,
                    target=devices.edge.name, cloud=devices.cloud.name, split=point.node, codec=codec,
                    lossless=options.lossless, calib=options.calib, holdout_frames=options.holdout_frames,
                    calibration_frames=options.calibration_frames,
                    output=output, max_loss=math.inf), show_progress=False)
                candidates.append(candidate(point, codec, options.lossless, output, report.manifest["checks"], timed,
                                            options.threads))
                if options.keep:
                    candidates[-1]["bundle"] = str(output)
                progress.advance(task)
        progress.update(task, description="whole model on the edge backend")
        edge_only = measure_whole_model(
            whole_model_runner(loaded, devices, "edge", calibration_inputs, work, options.threads),
            inputs, holdout.labels, options.frames)
        progress.advance(task)
        progress.update(task, description="whole model on the cloud backend")
        cloud_only = measure_whole_model(
            whole_model_runner(loaded, devices, "cloud", calibration_inputs, work, options.threads),
            inputs, holdout.labels, options.frames)
        progress.advance(task)
        progress.update(task, description="image uploads (raw, PNG, JPEG)")
        cloud_only["uploads"] = measure_image_formats(loaded, inputs, holdout.labels, options.frames)
        progress.advance(task)
    return {
        "format": PROFILE_FORMAT,
        "target": devices.name,
        "devices": {role: devices.device(role).name for role in ROLES},
        "precisions": {role: devices.device(role).precision for role in ROLES},
        "device": device_description(devices, options.threads),
        "model": {"name": loaded.name, "sha256": loaded.sha256, "input_shape": list(input_shape)},
        "data": {"source": source, "holdout_frames": len(inputs), "timed_frames": len(timed),
                 "float_accuracy": float_accuracy},
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "candidates": candidates,
        "edge_only": edge_only,
        "cloud_only": cloud_only,
    }
