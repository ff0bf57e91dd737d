"""Emulated edge devices: a process confined to a CPU quota that makes it as slow as the device.

The factor is calibrated, not guessed: a reference model with a published time on the device is
timed here on the backend the emulated edge runs (ONNX Runtime for the Jetson Nano, whose TensorRT
needs its GPU; TFLite for the Raspberry Pi), with the one thread the edge uses, and

    factor K = published ms per image on the device / ms per image here
    quota    = period / K of one core      (cgroup CPU bandwidth control)

K is corrected by the reference's time under that quota (scheduling at period edges costs a little)
until the reference model, run under the quota, takes the device's published time within 10 % —
which `calibrate` reports beside the target, or refuses with the time it got. Each time is the median
of three processes; on a shared machine one process's time differs from the next by up to ~15 %, and
the machine's speed drifts over minutes, so a correction may take a few rounds. Timings of other
models under the quota are then what that device would take if it were K times slower than this CPU
at everything.
That is the assumption, and every result measured this way names it.

`python -m benchmarks.testbed.devices time FILE --backend NAME` times one artefact at batch 1 (the
child process `calibrate` confines).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, NamedTuple

PERIOD_US = 10_000  # short periods keep per-frame timings smooth (a 47 ms frame spans ~5 periods)
MIN_QUOTA_US = 1_000  # the kernel refuses a smaller cpu.cfs_quota_us
WARMUP_FRAMES = 5
RUNS = 3  # processes per calibration time, whose median is taken
SETTLED = 0.10  # the reference's time under the quota within 10 % of the published one
CALIBRATION_ROUNDS = 8


class TestbedError(Exception):
    """A testbed step that cannot go on; its message is the one line users see."""


@contextmanager
def one_line_errors():
    """A testbed command's failures as one line on stderr (exit 1), root checked first; Ctrl-C exits 130
    after the context managers inside have cleaned up."""
    from benchmarks.testbed import interrupt_on_sigterm, missing_root

    interrupt_on_sigterm()
    try:
        reason = missing_root()
        if reason:
            raise TestbedError(reason)
        yield
    except (TestbedError, ValueError, OSError) as error:
        sys.exit(f"error: {error}")
    except KeyboardInterrupt:
        sys.exit(130)


class Reference(NamedTuple):
    device: str  # the edge target it stands for
    model: str
    build: Callable  # () -> torch module, weights irrelevant to its time
    input_shape: tuple[int, ...]
    published_ms: float  # per image, on the device
    source: str
    target: str  # the edgesplit target whose edge halves the emulated device runs here
    export: Callable  # (module, example NCHW array, path): the reference as the published run had it


def _cifar_resnet18():
    from toolchain.models import CifarResNet18

    return CifarResNet18(width=1.0, in_channels=3)


def _mobilenet_v1():
    from toolchain.models import MobileNetV1

    return MobileNetV1()


def _onnx(module, example, path: Path) -> None:
    import torch

    from toolchain.export import export_onnx

    export_onnx(module, (torch.from_numpy(example),), path, 17, ("image",), ("logits",), {})


def _float_tflite(module, example, path: Path) -> None:
    from toolchain.backends.tflite import convert_float
    from toolchain.quiet import quiet

    with quiet():
        convert_float(module, example, path)


REFERENCES = {
    "jetson-nano": Reference(
        "jetson-nano", "CIFAR ResNet-18 (3x3 stem, 3x32x32)", _cifar_resnet18, (3, 32, 32), 47.436,
        "BBNet (Zhou et al., Sensors 2021, 21(13):4494), Table 4: Jetson Nano alone, "
        "4.7436 s per 100 CIFAR-10 images", "cpu", _onnx),
    "raspberry-pi": Reference(
        "raspberry-pi", "MobileNet v1 1.0 224 (float TFLite, 3x224x224)", _mobilenet_v1, (3, 224, 224), 87.0,
        "TildAlice, \"MobileNet vs EfficientNet-Lite: Pi 4 First Model 38ms Gap\" (dev.to/tildalice.io, 2026): "
        "Raspberry Pi 4 CPU, TFLite, MobileNet v1 1.0_224 87 ms per image",
        "raspberry-pi", _float_tflite),
}


class Calibration(NamedTuple):
    device: str
    factor: float
    here_ms: float  # the reference model, this machine, unconfined
    published_ms: float
    confined_ms: float  # the reference model under the quota: should be published_ms
    period_us: int
    quota_us: int
    threads: int
    source: str

    def words(self) -> str:
        return f"emulated {self.device}, factor {self.factor:.2f}, calibrated from {self.source}"

    def as_dict(self) -> dict:
        return dict(self._asdict(), words=self.words())

    @classmethod
    def read(cls, path: Path, device: str) -> "Calibration":
        """A calibration written before: what `calibrate` prints, or a bandwidth summary.json holding one."""
        try:
            entry = json.loads(Path(path).read_text())
            entry = entry.get("calibration", entry)
            calibration = cls(**{field: entry[field] for field in cls._fields})
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            raise TestbedError(f"{path} holds no calibration ({type(error).__name__}: {error}); expected the JSON "
                               "that `python -m benchmarks.testbed.devices calibrate DEVICE` prints") from None
        if calibration.device != device:
            raise TestbedError(f"{path} calibrates {calibration.device}, not {device}")
        return calibration


def reference(device: str) -> Reference:
    if device not in REFERENCES:
        raise TestbedError(f"no published reference time for {device!r}; emulated devices: {', '.join(REFERENCES)}")
    return REFERENCES[device]


def slowdown(published_ms: float, here_ms: float, device: str = "the device") -> float:
    """K: how many times slower the device is than this machine on the reference model."""
    if here_ms <= 0 or published_ms <= 0:
        raise TestbedError(f"times must be positive, got {published_ms} ms published and {here_ms} ms here")
    factor = published_ms / here_ms
    if factor < 1:
        raise TestbedError(f"this machine takes {here_ms:.1f} ms for the reference model, slower than {device}'s "
                           f"published {published_ms:.1f} ms: a quota can only slow a process down")
    return factor


def quota_for(factor: float, cores: float = 1.0) -> tuple[int, int]:
    """(period, quota) in microseconds giving `cores / factor` of the CPU, the quota above the kernel's minimum."""
    period = max(PERIOD_US, math.ceil(MIN_QUOTA_US * factor / cores))
    return period, round(period * cores / factor)


def cgroup_root() -> Path | None:
    """The cpu controller's directory: cgroup v1's /sys/fs/cgroup/cpu, or the v2 root when it offers cpu."""
    v1 = Path("/sys/fs/cgroup/cpu")
    if (v1 / "cpu.cfs_quota_us").exists():
        return v1
    v2 = Path("/sys/fs/cgroup")
    controllers = v2 / "cgroup.controllers"
    if controllers.exists() and "cpu" in controllers.read_text().split():
        return v2
    return None


class CpuQuota:
    """A cgroup whose processes share `quota_us` of CPU time per `period_us`; removed on exit."""

    def __init__(self, name: str, period_us: int, quota_us: int) -> None:
        root = cgroup_root()
        if root is None:
            raise TestbedError("no writable cgroup cpu controller (/sys/fs/cgroup/cpu or cgroup v2 with cpu.max)")
        self.v1 = root.name == "cpu"
        self.path = root / f"edgesplit-{name}"
        self.period_us, self.quota_us = period_us, quota_us

    def __enter__(self) -> "CpuQuota":
        self.path.mkdir(exist_ok=True)
        if self.v1:
            (self.path / "cpu.cfs_period_us").write_text(str(self.period_us))
            (self.path / "cpu.cfs_quota_us").write_text(str(self.quota_us))
        else:
            (self.path.parent / "cgroup.subtree_control").write_text("+cpu")
            (self.path / "cpu.max").write_text(f"{self.quota_us} {self.period_us}")
        return self

    def wrap(self, command: list[str]) -> list[str]:
        """`command` started inside the cgroup (the shell joins it, then becomes the command)."""
        tasks = self.path / ("tasks" if self.v1 else "cgroup.procs")
        return ["sh", "-c", f'echo $$ > "{tasks}" && exec "$@"', "confined", *command]

    def __exit__(self, *_) -> None:
        for _ in range(50):  # the last task may still be exiting
            try:
                self.path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.1)


def edge_backend(target: str) -> str:
    from targets import get_device

    return get_device(target, "edge").backend


def time_command(artefact: Path, backend: str, frames: int, threads: int) -> list[str]:
    return [sys.executable, "-m", "benchmarks.testbed.devices", "time", str(artefact), "--backend", backend,
            "--frames", str(frames), "--threads", str(threads)]


def run_json(command: list[str]) -> dict:
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise TestbedError(f"{' '.join(command[:6])} … failed: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def export_reference(device: str, work: Path) -> Path:
    import numpy as np

    from targets import get_device
    from toolchain.backends import exporter

    ref = reference(device)
    work.mkdir(parents=True, exist_ok=True)
    path = work / f"reference-{device}{exporter(get_device(ref.target, 'edge')).suffix}"
    if not path.exists():
        ref.export(ref.build().eval(), np.zeros((1, *ref.input_shape), np.float32), path)
    return path


def median_ms(command: list[str]) -> float:
    return statistics.median(run_json(command)["ms"] for _ in range(RUNS))


def time_confined(device: str, command: list[str], factor: float) -> float:
    period, quota = quota_for(factor)
    with CpuQuota(f"calibrate-{device}", period, quota) as confined:
        return median_ms(confined.wrap(command))


def calibrate(device: str, work: Path, threads: int = 1, frames: int = 10) -> Calibration:
    """Time the reference here, derive the quota, then correct it by the reference's time under the quota
    until that time is within SETTLED of the published one."""
    ref = reference(device)
    command = time_command(export_reference(device, work), edge_backend(ref.target), frames, threads)
    here_ms = median_ms(command)
    factor = slowdown(ref.published_ms, here_ms, device)
    for _ in range(CALIBRATION_ROUNDS):
        confined_ms = time_confined(device, command, factor)
        if abs(confined_ms / ref.published_ms - 1) <= SETTLED:
            period, quota = quota_for(factor)
            return Calibration(device, factor, here_ms, ref.published_ms, confined_ms, period, quota, threads,
                               ref.source)
        factor = max(1.0, factor * ref.published_ms / confined_ms)
    raise TestbedError(f"the quota for {device} did not settle in {CALIBRATION_ROUNDS} rounds: the reference took "
                       f"{confined_ms:.1f} ms under the last one, published {ref.published_ms:.1f} ms "
                       f"(is something else busy on this machine?)")


def random_feed(runner) -> dict:
    """One frame of noise for each of a runner's inputs (a time does not depend on the values)."""
    import numpy as np

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    timing = commands.add_parser("time", help="Mean ms per image of one artefact at batch 1, as JSON.")
    timing.add_argument("artefact", type=Path)
    timing.add_argument("--backend", required=True, help="The runtime backend that runs it (runtime/backends).")
    timing.add_argument("--frames", type=int, default=40)
    timing.add_argument("--threads", type=int, default=1)
    calibration = commands.add_parser("calibrate", help="Calibrate a device's factor here (root).")
    calibration.add_argument("device", choices=sorted(REFERENCES))
    calibration.add_argument("--work", type=Path, default=None,
                             help="Keep the reference model's artefact here (default: a temporary folder).")
    args = parser.parse_args()
    if args.command == "time":
        print(json.dumps({"ms": time_artefact(args.artefact, args.backend, args.frames, args.threads)}))
    else:
        with one_line_errors(), tempfile.TemporaryDirectory() as scratch:
            print(json.dumps(calibrate(args.device, args.work or Path(scratch)).as_dict(), indent=1))


if __name__ == "__main__":
    main()
