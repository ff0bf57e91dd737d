"""How much slower than this machine an edge device is: its published time on a reference model against the
same model timed here.

A device in targets/ may name a `SpeedReference`: a model with a published time per image on the device and
the target whose edge halves run here in its place (the backend the published run used, or the nearest one
that runs here: ONNX Runtime for a Jetson Nano's TensorRT). Then

    factor = published ms per image on the device / ms per image here (one thread, batch 1)

and a time measured here on the stand-in's backend, times the factor, predicts the device's. That assumes the
device is the same number of times slower at everything; every prediction made this way names the reference.
The testbed (benchmarks/testbed) confines a process to 1 / factor of a core and checks the reference there.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np

from targets import Device
from toolchain.errors import EdgesplitError

WARMUP_FRAMES = 5


def _cifar_resnet18():
    from toolchain.models import CifarResNet18

    return CifarResNet18(width=1.0, in_channels=3)


def _mobilenet_v1():
    from toolchain.models import MobileNetV1

    return MobileNetV1()


def _onnx(module, example: np.ndarray, path: Path) -> None:
    import torch

    from toolchain.export import export_onnx

    export_onnx(module, (torch.from_numpy(example),), path, 17, ("image",), ("logits",), {})


def _float_tflite(module, example: np.ndarray, path: Path) -> None:
    from toolchain.backends.tflite import convert_float
    from toolchain.quiet import quiet

    with quiet():
        convert_float(module, example, path)


class ReferenceModel(NamedTuple):
    words: str
    build: Callable  # () -> torch module; its weights do not matter to its time
    export: Callable  # (module, example NCHW array, path): the model as the published run had it
    suffix: str


# name (as targets/ give it) -> how to make it
REFERENCE_MODELS = {
    "cifar-resnet18": ReferenceModel("CIFAR ResNet-18 (3x3 stem, 3x32x32)", _cifar_resnet18, _onnx, ".onnx"),
    "mobilenet-v1": ReferenceModel("MobileNet v1 1.0 224 (float TFLite, 3x224x224)", _mobilenet_v1, _float_tflite,
                                   ".tflite"),
}


class Speed(NamedTuple):
    device: str
    factor: float  # device ms / ms here
    here_ms: float  # the reference model here, 1 thread
    published_ms: float
    source: str

    def words(self) -> str:
        if self.factor == 1.0 and not self.source:
            return f"{self.device}: this machine"
        if not self.published_ms:
            return f"{self.device} = this machine x {self.factor:g} ({self.source})"
        return f"{self.device} = this machine x {self.factor:.2f} ({self.here_ms:.2f} ms here, {self.published_ms:g} " \
               f"ms on the device: {self.source})"


def stand_in(device: Device) -> str:
    """The target whose edge halves run here for the device: its own where its backend runs here."""
    from toolchain.backends import exporter

    if not exporter(device).unavailable():
        return device.name
    if device.speed is None:
        raise EdgesplitError(f"{device.name}'s backend cannot run here ({exporter(device).unavailable()}) and "
                             "targets/ give no stand-in for it: measure it on the device (--profile-edge)")
    return device.speed.stand_in


def export_reference(device: Device, work: Path) -> Path:
    """The device's reference model as an artefact of its stand-in's backend (written once per folder)."""
    model = REFERENCE_MODELS[device.speed.model]
    work.mkdir(parents=True, exist_ok=True)
    path = work / f"reference-{device.name}{model.suffix}"
    if not path.exists():
        model.export(model.build().eval(), np.zeros((1, *device.speed.input_shape), np.float32), path)
    return path


def random_feed(runner) -> dict:
    """One frame of noise for each of a runner's inputs (a time does not depend on the values)."""
    random = np.random.default_rng(0)
    feed = {}
    for name, dtype, shape in runner.inputs:
        shape = [1, *shape[1:]]
        if np.issubdtype(np.dtype(dtype), np.integer):
            limits = np.iinfo(np.dtype(dtype))
            feed[name] = random.integers(limits.min, limits.max, shape, dtype=dtype, endpoint=True)
        else:
            feed[name] = random.random(shape).astype(dtype)
    return feed


def time_artefact(path: Path, backend: str, frames: int, threads: int) -> float:
    """Milliseconds per image through a runtime backend at batch 1, after a warm-up: the whole run over its
    frames (under a quota single frames fall on either side of a period edge; the mean does not care)."""
    from runtime.backends import open_runner

    with open_runner(backend, path, threads=threads) as runner:
        feed = random_feed(runner)
        for _ in range(WARMUP_FRAMES):
            runner.infer(feed)
        started = time.perf_counter()
        for _ in range(frames):
            runner.infer(feed)
        return 1000 * (time.perf_counter() - started) / frames


def measure_speed(device: Device, work: Path, frames: int = 20, runs: int = 3) -> Speed:
    """The device's factor against this machine, the reference timed here `runs` times (median); 1 for a
    device that names no reference (it is taken to be this machine)."""
    from targets import get_device

    if device.speed is None:
        return Speed(device.name, 1.0, 0.0, 0.0, "")
    backend = get_device(device.speed.stand_in, "edge").backend
    path = export_reference(device, work)
    here_ms = float(np.median([time_artefact(path, backend, frames, threads=1) for _ in range(runs)]))
    if here_ms >= device.speed.published_ms:
        raise EdgesplitError(f"this machine takes {here_ms:.1f} ms on {device.speed.model}, no faster than the "
                             f"{device.speed.published_ms:g} ms published for {device.name}: it cannot stand in")
    return Speed(device.name, device.speed.published_ms / here_ms, here_ms, device.speed.published_ms,
                 device.speed.source)
