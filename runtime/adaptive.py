"""Following the uplink: estimate its rate from what the edge observes, and pick the bundle's operating point.

An adaptive bundle (runtime/bundle.py) holds several operating points and a table: from which uplink rate each
one runs. The edge client asks `Switcher.choose` before each frame; the switcher reads an estimate of the rate and
moves along the table with hysteresis. Two estimates: `UplinkEstimate`, from nothing but the edge's own frames
(what a real device has), and `KnownRate`, an oracle that reads the link's future from a trace file (for
benchmarks). Python 3.6 stdlib only.
"""

import bisect
import collections
import csv
import threading
import time
from typing import List, NamedTuple, Optional, Tuple

BASE_WINDOW_S = 30.0  # the path's least reply time is kept this long: longer than the traces' outages
FLOOR_BPS = 1000.0  # the least an estimate starts or probes from (an outage takes it to 0)
QUEUE_S = 0.05  # how long a frame may wait beyond the least reply time before the uplink counts as queueing


class UplinkEstimate:
    """The uplink's rate in bits/s as the edge sees it, from the frames it sends and the replies it gets.

    A frame's reply time, less the least one of the last BASE_WINDOW_S (the round trip and the cloud's time with no
    queue), is time it spent queued behind the uplink. Once a frame in flight has waited `queue_s` beyond that
    base, the link carries less than is offered, and the estimate falls at once to what it delivered: over the
    last `window_s`, the bytes of the frames answered that had queued over the time between their replies (the
    link was busy then; the first one's bytes left before), or with fewer than two such, every frame answered in
    the window over the window. A step down shows within a frame of being observable; while frames stay queued
    the estimate keeps falling, by `growth` per second (a table that puts a point at a rate its frames do not fit
    in at this camera's rate is left all the same). With no queue, the link carries at least what is sent and may
    carry more: the estimate grows by `growth` per second from at least FLOOR_BPS, up to `ceiling_bps` (a probe:
    the next point up is tried, and left as soon as its frames queue). A point that sends nothing (the whole model
    on the device) observes nothing: it probes.
    """

    def __init__(self, initial_bps: float, ceiling_bps: float, queue_s: float = QUEUE_S, growth: float = 2.0,
                 window_s: float = 1.0):
        self.ceiling = ceiling_bps
        self.queue_s = queue_s
        self.growth = growth
        self.window_s = window_s
        self._rate = min(max(initial_bps, FLOOR_BPS), ceiling_bps)
        self._updated = None
        self._lock = threading.Lock()
        self._in_flight = collections.OrderedDict()  # request id -> (sent at, wire bytes), oldest first
        self._delivered = collections.deque()  # (answered at, wire bytes, whether it queued) within window_s
        self._latencies = collections.deque()  # (answered at, reply time) within BASE_WINDOW_S, rising times

    def sent(self, request_id: int, wire_bytes: int, at: float) -> None:
        with self._lock:
            self._in_flight[request_id] = (at, wire_bytes)

    def replied(self, request_id: int, at: float) -> None:
        with self._lock:
            sent = self._in_flight.pop(request_id, None)
            if sent is None:
                return
            latency = at - sent[0]
            self._delivered.append((at, sent[1], latency > self._base(at) + self.queue_s))
            while self._latencies and self._latencies[-1][1] >= latency:  # a rising deque: its head is the least
                self._latencies.pop()
            self._latencies.append((at, latency))

    def dropped(self, request_id: int) -> None:
        """A frame that got its outcome without a reply (a timeout, a lost connection): no sample."""
        with self._lock:
            self._in_flight.pop(request_id, None)

    def _base(self, now: float) -> float:
        while self._latencies and self._latencies[0][0] < now - BASE_WINDOW_S:
            self._latencies.popleft()
        return self._latencies[0][1] if self._latencies else 0.0

    def _queued(self, now: float) -> bool:
        """Whether the oldest frame in flight has waited `queue_s` beyond the path's least reply time."""
        oldest = next(iter(self._in_flight.values()), None)
        return oldest is not None and now - oldest[0] > self._base(now) + self.queue_s

    def _delivery(self) -> float:
        """Bits/s the link delivered over the window: while busy if two replies show it, else on average."""
        busy = [(at, size) for at, size, queued in self._delivered if queued]
        if len(busy) >= 2 and busy[-1][0] > busy[0][0]:
            return 8.0 * sum(size for _, size in busy[1:]) / (busy[-1][0] - busy[0][0])
        return 8.0 * sum(size for _, size, _ in self._delivered) / self.window_s

    def rate(self, now: Optional[float] = None) -> float:
        now = time.monotonic() if now is None else now
        with self._lock:
            while self._delivered and self._delivered[0][0] < now - self.window_s:
                self._delivered.popleft()
            elapsed = 0.0 if self._updated is None else now - self._updated
            self._updated = now
            if self._queued(now):  # and while frames stay queued, it keeps falling: the point above may not fit
                self._rate = min(self._rate, self._delivery()) / self.growth ** elapsed
            else:
                self._rate = min(self.ceiling, max(self._rate, FLOOR_BPS) * self.growth ** elapsed)
            return self._rate


class KnownRate:
    """An oracle: the least rate the link will have over the next `lookahead_s`, read from the trace it plays
    (rows of `ms,kbit_s`, as benchmarks/testbed/trace.py writes them), started at `started` (time.time())."""

    def __init__(self, steps: List[Tuple[float, float]], started: float, lookahead_s: float = 1.0):
        self.times = [at for at, _ in steps]  # seconds from the start, rising
        self.rates = [bps for _, bps in steps]
        self.started = started
        self.lookahead_s = lookahead_s
        self.offset = time.time() - time.monotonic()  # the trace's clock is the wall's; frames use monotonic

    def rate(self, now: Optional[float] = None) -> float:
        now = time.monotonic() if now is None else now
        begin = now + self.offset - self.started
        current = bisect.bisect_right(self.times, begin) - 1  # the step in force (-1: before the trace)
        end = bisect.bisect_left(self.times, begin + self.lookahead_s)
        return min(self.rates[max(current, 0):end] or self.rates[:1])


def read_steps(path: str) -> List[Tuple[float, float]]:
    """A trace file's (seconds, bits/s) steps; ValueError naming what is wrong."""
    steps = []
    try:
        with open(path, newline="") as stream:
            for number, row in enumerate(csv.reader(stream), 1):
                try:
                    step = (float(row[0]) / 1000, float(row[1]) * 1000)
                except (IndexError, ValueError):
                    step = None
                if step is not None and len(row) == 2 and all(0 <= value < float("inf") for value in step):
                    steps.append(step)
                elif number > 1 or not row or [cell.strip().lower() for cell in row] != ["ms", "kbit_s"]:
                    raise ValueError("{} line {}: expected `ms,kbit_s` (two numbers >= 0), got {!r}".format(
                        path, number, ",".join(row)))
    except UnicodeDecodeError:
        raise ValueError("{} is not a text file of `ms,kbit_s` rows".format(path)) from None
    if not steps or any(b[0] <= a[0] for a, b in zip(steps, steps[1:])):
        raise ValueError("{} holds no `ms,kbit_s` rows with rising times".format(path))
    return steps


class Switch(NamedTuple):
    """One change of operating point: when, from which point to which, at what estimated rate."""
    at: float
    old: int
    new: int
    rate_bps: float


class Switcher:
    """The table row for the estimated rate, with hysteresis: down at once (the link cannot carry the point
    running), up only when the estimate clears the row's rate by `margin` and the last switch is old enough:
    `hold_s`, doubled (up to MAX_HOLD_S) each time a move up had to be undone within twice that, so a link that
    cannot carry the point above is probed ever less often."""

    MAX_HOLD_S = 32.0

    def __init__(self, table: List[Tuple[float, int]], source, hold_s: float = 1.0, margin: float = 1.25):
        self.table = table
        self.source = source  # UplinkEstimate or KnownRate: its rate(now) in bits/s
        self.hold_s = hold_s
        self.margin = margin
        self.switches = []  # Switch, in order
        now = time.monotonic()
        self.row = self._row(source.rate(now))
        self._since = now
        self._hold = hold_s
        self._went_up = False

    def _row(self, rate: float) -> int:
        rows = [index for index, (lowest, _) in enumerate(self.table) if lowest <= rate]
        return rows[-1] if rows else 0

    @property
    def point(self) -> int:
        return self.table[self.row][1]

    def choose(self, now: Optional[float] = None) -> int:
        """The point the next frame runs at."""
        now = time.monotonic() if now is None else now
        rate = self.source.rate(now)
        wanted = self._row(rate)
        if wanted > self.row:  # up: past the margin, and not straight after a switch
            wanted = max(self.row, self._row(rate / self.margin)) if now - self._since >= self._hold else self.row
        if wanted != self.row:
            if wanted < self.row:  # a move up undone soon after was a failed probe: wait longer before the next
                failed = self._went_up and now - self._since < 2 * self._hold
                self._hold = min(self.MAX_HOLD_S, 2 * self._hold) if failed else self.hold_s
            old, self._went_up = self.point, wanted > self.row
            self.row, self._since = wanted, now
            if self.point != old:
                self.switches.append(Switch(now, old, self.point, rate))
        return self.point
