"""Uplink capacity traces played on the testbed's link.

A trace is a CSV of `ms,kbit_s` rows, one per step (the cellular traces in ../shared/traces: 100 ms steps,
recorded while driving; their README says where they come from). `TracePlayer` sets the link's tbf to each
step's rate at its time, in place, never under a floor: tbf takes no rate of 0, so an outage is the floor
(10 kbit/s, the least the link shapes), and says so in its record.
"""

from __future__ import annotations

import csv
import threading
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np

from benchmarks.testbed.devices import TestbedError
from benchmarks.testbed.link import RATES

TRACES = Path(__file__).resolve().parents[3] / "shared" / "traces"  # beside the checkout
FLOOR_BPS = RATES[0]


class Trace(NamedTuple):
    name: str
    ms: np.ndarray  # start of each step from the trace's beginning, increasing
    bps: np.ndarray  # the link's capacity during it

    @property
    def step_s(self) -> float:
        return float(self.ms[1] - self.ms[0]) / 1000 if len(self.ms) > 1 else 0.1

    def window(self, start_s: float, seconds: float) -> "Trace":
        """The steps from `start_s` for `seconds`, their times from 0."""
        first, end = round(1000 * start_s), round(1000 * (start_s + seconds))
        chosen = (self.ms >= first) & (self.ms < end)
        return Trace(self.name, self.ms[chosen] - self.ms[chosen][0], self.bps[chosen])

    def liveliest(self, seconds: float) -> float:
        """The start (s) of the `seconds`-long window whose per-second rates vary most: thin and fat seconds both,
        what a planner for one rate gets wrong."""
        steps = max(1, round(1 / self.step_s))  # steps per second
        per_second = self.bps[:len(self.bps) // steps * steps].reshape(-1, steps).mean(1)
        width = int(seconds)
        if len(per_second) <= width:
            return 0.0
        return float(np.argmax([per_second[start:start + width].std() for start in range(len(per_second) - width)]))

    def rate_at(self, seconds: float) -> float:
        """The capacity at `seconds` from the start (the last step's after the end)."""
        index = int(np.searchsorted(self.ms, 1000 * seconds, side="right")) - 1
        return float(self.bps[min(max(index, 0), len(self.bps) - 1)])


def read_trace(path: Path) -> Trace:
    """A trace file, or one line saying what is wrong with it."""
    try:
        with open(path, newline="") as stream:
            rows = list(csv.reader(stream))
    except OSError as error:
        raise TestbedError(f"trace {path}: {error.strerror}") from None
    if not rows or [cell.strip() for cell in rows[0]] != ["ms", "kbit_s"]:
        raise TestbedError(f"trace {path}: expected a header 'ms,kbit_s', got {','.join(rows[0]) if rows else 'nothing'}")
    try:
        values = np.array([[float(cell) for cell in row] for row in rows[1:] if row], dtype=np.float64)
    except ValueError as error:
        raise TestbedError(f"trace {path}: {error}") from None
    if values.ndim != 2 or values.shape[1] != 2 or len(values) < 2:
        raise TestbedError(f"trace {path}: expected at least two rows of two numbers (ms, kbit/s)")
    if not np.isfinite(values).all() or (values[:, 1] < 0).any() or (np.diff(values[:, 0]) <= 0).any():
        raise TestbedError(f"trace {path}: times must increase and rates be finite and >= 0")
    return Trace(path.stem.split(".")[0], values[:, 0] - values[0, 0], values[:, 1] * 1000)


class TracePlayer:
    """Plays `trace` on `link` from `start()` until `stop()` (or the context's end): each step's rate at its
    time, at least FLOOR_BPS. `applied` records (seconds from the start, rate set, the trace's own rate)."""

    def __init__(self, link, trace: Trace):
        self.link, self.trace = link, trace
        self.applied: list[tuple[float, float, float]] = []
        self.started = 0.0
        self.started_unix = 0.0  # the same moment on the wall clock, which other processes share
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._play, daemon=True)

    def __enter__(self) -> "TracePlayer":
        self.start()
        return self

    def __exit__(self, *_) -> None:
        self.stop()

    def start(self) -> None:
        self.link.shape(max(FLOOR_BPS, float(self.trace.bps[0])))
        self.started, self.started_unix = time.monotonic(), time.time()
        self.applied.append((0.0, max(FLOOR_BPS, float(self.trace.bps[0])), float(self.trace.bps[0])))
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _play(self) -> None:
        current = self.applied[-1][1]
        for ms, bps in zip(self.trace.ms[1:], self.trace.bps[1:]):
            if self._stop.wait(max(0.0, self.started + ms / 1000 - time.monotonic())):
                return
            rate = max(FLOOR_BPS, float(bps))
            if rate != current:
                self.link.shape(rate)
                current = rate
                self.applied.append((round(time.monotonic() - self.started, 3), rate, float(bps)))
