"""User-space emulation of a constrained uplink, for benchmarks: a token bucket plus delay.

Emulation, not a network: the edge client holds each frame until the bucket (rate, burst, as
`tc qdisc ... tbf` shapes) would have let it through, plus half the round-trip time, and holds
each reply another half. For a real kernel-shaped link use `tc` on the interface (see
benchmarks/README.md). Python 3.6 stdlib only.
"""

import re
import threading
import time

RATE_UNITS = {"bit": 1, "kbit": 1e3, "mbit": 1e6, "gbit": 1e9,  # tc's units: bits and bytes per second
              "bps": 8, "kbps": 8e3, "mbps": 8e6, "gbps": 8e9}
DURATION_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "min": 60.0, "h": 3600.0}


def _parse(text: str, units: dict, what: str, example: str) -> float:
    match = re.fullmatch(r"\s*([-+]?[0-9]*\.?[0-9]+)\s*([a-zA-Z]+)\s*", text)
    if not match or match.group(2).lower() not in units:
        raise ValueError("{} must look like {} (units: {}), got {!r}".format(what, example, ", ".join(units), text))
    return float(match.group(1)) * units[match.group(2).lower()]


def parse_rate(text: str) -> float:
    """'1mbit' → 1e6 bits per second (tc's convention: 'kbps' means kilobytes per second)."""
    rate = _parse(text, RATE_UNITS, "a rate", "1mbit")
    if rate <= 0:
        raise ValueError("a rate must be positive, got {!r}".format(text))
    return rate


def parse_duration(text: str) -> float:
    """'20ms' → 0.02 seconds."""
    duration = _parse(text, DURATION_UNITS, "a duration", "20ms")
    if duration < 0:
        raise ValueError("a duration cannot be negative, got {!r}".format(text))
    return duration


class EmulatedLink:
    def __init__(self, rate_bits_per_s=None, rtt_s: float = 0.0, burst_bytes: int = 4096):
        self.rate = None if rate_bits_per_s is None else rate_bits_per_s / 8.0  # bytes per second
        self.one_way_s = rtt_s / 2.0
        self.burst = float(burst_bytes)
        self._tokens = self.burst
        self._refilled_at = None
        self._free_at = 0.0
        self._lock = threading.Lock()

    def uplink_arrival(self, size: int, now: float) -> float:
        """When a frame of `size` bytes offered at `now` has crossed the uplink.

        Frames leave in order; each waits until the bucket holds its size (it may hold less than
        a large frame: the frame then leaves when the debt is repaid, as tbf's does).
        """
        with self._lock:
            if self.rate is None:
                return now + self.one_way_s
            start = max(now, self._free_at)
            if self._refilled_at is None:
                self._refilled_at = start
            self._tokens = min(self.burst, self._tokens + (start - self._refilled_at) * self.rate)
            self._refilled_at = start
            self._tokens -= size
            self._free_at = start + max(0.0, -self._tokens / self.rate)
            return self._free_at + self.one_way_s

    def wait_downlink(self) -> None:
        """Hold a reply for the downlink half of the round trip (replies are small: no rate)."""
        if self.one_way_s > 0:
            time.sleep(self.one_way_s)
