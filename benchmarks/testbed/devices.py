"""Emulated edge devices: a process confined to a CPU quota that makes it as slow as the device.

The factor is calibrated, not guessed: a reference model with a published time on the device (targets/
name it; toolchain/device_speed.py builds and times it) is timed here on the backend the emulated edge runs (ONNX Runtime for the Jetson Nano, whose TensorRT
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
from typing import NamedTuple

from targets import DEVICES

PERIOD_US = 10_000  # short periods keep per-frame timings smooth (a 47 ms frame spans ~5 periods)
MIN_QUOTA_US = 1_000  # the kernel refuses a smaller cpu.cfs_quota_us
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
    published_ms: float  # per image, on the device, of the reference model targets/ name
    source: str
    target: str  # the edgesplit target whose edge halves the emulated device runs here


# every device whose speed reference targets/ give (toolchain/device_speed.py builds and times the models)
REFERENCES = {name: Reference(name, device.speed.published_ms, device.speed.source, device.speed.stand_in)
              for name, device in sorted(DEVICES.items()) if device.speed is not None}


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
    from targets import get_device
    from toolchain.device_speed import export_reference as export

    reference(device)
    return export(get_device(device, "edge"), work)


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
        from toolchain.device_speed import time_artefact

        print(json.dumps({"ms": time_artefact(args.artefact, args.backend, args.frames, args.threads)}))
    else:
        with one_line_errors(), tempfile.TemporaryDirectory() as scratch:
            print(json.dumps(calibrate(args.device, args.work or Path(scratch)).as_dict(), indent=1))


if __name__ == "__main__":
    main()
