"""A kernel-shaped link: the cloud and the edge in two network namespaces joined by a veth pair.

    [es-edge] es-edge0 10.77.0.2 ──tbf (uplink rate)──▶ es-cloud0 10.77.0.1 [es-cloud]

The edge's side of the veth has a `tbf` qdisc (rate, burst, latency): every byte the edge sends
— frames, TCP/IP headers, ACKs — queues behind the same bottleneck a thin uplink would be.
Replies come back unshaped. `netem` is not in this kernel, so there is no added delay or loss.

`python -m benchmarks.testbed.link rate 1mbit` builds the link, sends a few seconds of data across
and prints the configured and measured rates.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import time

from benchmarks.testbed.devices import TestbedError, one_line_errors, run_json

CLOUD, EDGE = "cloud", "edge"
ADDRESSES = {CLOUD: "10.77.0.1", EDGE: "10.77.0.2"}
BURST_BYTES = 1600  # one full-size packet: the least tbf takes, so an idle link banks as little as it can
RATES = (10e3, 10e9)  # what the link shapes: below, a packet takes seconds; above, tbf's burst overflows
LATENCY = "10s"  # a queue deep enough that a slow link delays, never drops, what the edge has in flight


def _ip(*words: str) -> None:
    done = subprocess.run(["ip", *words], capture_output=True, text=True)
    if done.returncode != 0:
        raise TestbedError(f"ip {' '.join(words)}: {done.stderr.strip()}")


class NamespaceLink:
    """Two namespaces and a veth pair; `shape(rate)` sets the uplink, the context manager removes it all."""

    def __init__(self, prefix: str = "es") -> None:
        self.namespaces = {side: f"{prefix}-{side}" for side in (CLOUD, EDGE)}
        self.devices = {side: f"{prefix}-{side}0" for side in (CLOUD, EDGE)}
        self.rate_bps: float | None = None

    def __enter__(self) -> "NamespaceLink":
        self._remove()
        for side in (CLOUD, EDGE):
            _ip("netns", "add", self.namespaces[side])
        _ip("link", "add", self.devices[EDGE], "type", "veth", "peer", "name", self.devices[CLOUD])
        for side in (CLOUD, EDGE):
            namespace, device = self.namespaces[side], self.devices[side]
            _ip("link", "set", device, "netns", namespace)
            _ip("-n", namespace, "addr", "add", f"{ADDRESSES[side]}/24", "dev", device)
            _ip("-n", namespace, "link", "set", device, "up")
            _ip("-n", namespace, "link", "set", "lo", "up")
        self._fix_neighbours()
        return self

    def _fix_neighbours(self) -> None:
        """Each side knows the other's address for good: a cellular link has no ARP, and an ARP request lost in an
        outage at the floor rate left the edge with 'no route to host' for a whole run."""
        mac = {side: json.loads(subprocess.run(["ip", "-n", self.namespaces[side], "-j", "link", "show", "dev",
                                                self.devices[side]], capture_output=True, text=True, check=True
                                               ).stdout)[0]["address"] for side in (CLOUD, EDGE)}
        for side, other in ((CLOUD, EDGE), (EDGE, CLOUD)):
            _ip("-n", self.namespaces[side], "neigh", "replace", ADDRESSES[other], "lladdr", mac[other], "dev",
                self.devices[side], "nud", "permanent")

    def __exit__(self, *_) -> None:
        self._remove()

    def renew(self) -> None:
        """A new link, unshaped: what an earlier run left (connections still sending, orphaned at its end) is gone
        with its namespaces."""
        self._remove()
        self.__enter__()
        self.rate_bps = None

    def _remove(self) -> None:
        for namespace in self.namespaces.values():  # deleting a namespace deletes its end of the veth
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True)

    def shape(self, rate_bps: float | None) -> None:
        """The uplink's rate (None: unshaped); the burst holds one packet, or 10 ms at the rate where that is
        more (tbf needs at least rate / HZ)."""
        if rate_bps is None:
            subprocess.run(self.inside(EDGE, ["tc", "qdisc", "del", "dev", self.devices[EDGE], "root"]),
                           capture_output=True)
            self.rate_bps = None
            return
        if not RATES[0] <= rate_bps <= RATES[1]:
            raise TestbedError(f"the link shapes {RATES[0] / 1e3:g} kbit/s to {RATES[1] / 1e9:g} gbit/s, "
                               f"got {rate_bps:g} bit/s")
        burst = self.burst_bytes(rate_bps)
        command = ["tc", "qdisc", "replace", "dev", self.devices[EDGE], "root", "tbf", "rate", f"{int(rate_bps)}bit",
                   "burst", str(burst), "latency", LATENCY]
        done = subprocess.run(["ip", "netns", "exec", self.namespaces[EDGE], *command], capture_output=True, text=True)
        if done.returncode != 0:
            raise TestbedError(f"{' '.join(command)}: {done.stderr.strip()}")
        self.rate_bps = rate_bps

    @staticmethod
    def burst_bytes(rate_bps: float) -> int:
        return max(BURST_BYTES, int(rate_bps / 8 / 100))

    def inside(self, side: str, command: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.namespaces[side], *command]

    def uplink_bytes(self) -> int:
        """Bytes the edge's interface has sent (every header included), from the kernel's counters."""
        done = subprocess.run(["ip", "-n", self.namespaces[EDGE], "-s", "-j", "link", "show", "dev",
                               self.devices[EDGE]], capture_output=True, text=True, check=True)
        return int(json.loads(done.stdout)[0]["stats64"]["tx"]["bytes"])

    def measure_rate(self, size: int, port: int = 9000) -> dict:
        """Send `size` bytes edge → cloud over TCP: the goodput the receiver saw and the link rate
        (interface bytes over the same time, less the burst tbf lets through at once)."""
        burst = self.burst_bytes(self.rate_bps) if self.rate_bps else 0
        if size < 10 * burst:
            raise TestbedError(f"measuring needs at least {10 * burst} bytes (ten bursts), got {size}")
        receiver = subprocess.Popen(self.inside(CLOUD, [sys.executable, "-m", "benchmarks.testbed.link", "receive",
                                                        str(port)]), stdout=subprocess.PIPE, text=True)
        try:
            before = self.uplink_bytes()
            sent = run_json(self.inside(EDGE, [sys.executable, "-m", "benchmarks.testbed.link", "send",
                                               ADDRESSES[CLOUD], str(port), str(size)]))
            link_bytes = self.uplink_bytes() - before
            received = json.loads(receiver.communicate(timeout=60)[0])
        finally:
            receiver.kill()
        seconds = sent["seconds"]
        return {"configured_bps": self.rate_bps, "bytes": size, "seconds": round(seconds, 3),
                "goodput_bps": 8 * (received["bytes"] - burst) / seconds, "link_bps": 8 * (link_bytes - burst) / seconds,
                "link_bytes": link_bytes}


def _receive(port: int) -> None:
    with socket.create_server(("0.0.0.0", port)) as server:
        connection, _ = server.accept()
        total = 0
        with connection:
            while chunk := connection.recv(1 << 16):
                total += len(chunk)
    print(json.dumps({"bytes": total}))


def _send(host: str, port: int, size: int) -> None:
    for _ in range(100):  # the receiver may still be starting
        try:
            connection = socket.create_connection((host, port), timeout=60)
            break
        except ConnectionRefusedError:
            time.sleep(0.05)
    else:
        raise TestbedError(f"nothing listens on {host}:{port}")
    started = time.perf_counter()
    with connection:
        connection.sendall(bytes(size))
        connection.shutdown(socket.SHUT_WR)
        connection.recv(1)  # the receiver closes once it has read everything
    print(json.dumps({"seconds": time.perf_counter() - started}))


def main() -> None:
    from runtime.link import parse_rate

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    rate = commands.add_parser("rate", help="Build the link, shape it, measure it (root).")
    rate.add_argument("rate", help="tc units, e.g. 1mbit (10kbit .. 10gbit)")
    rate.add_argument("--seconds", type=float, default=3.0, help="Data to send, in seconds at the rate "
                      "(at least ten bursts).")
    commands.add_parser("receive").add_argument("port", type=int)
    send = commands.add_parser("send")
    send.add_argument("host")
    send.add_argument("port", type=int)
    send.add_argument("size", type=int)
    args = parser.parse_args()
    if args.command == "receive":
        _receive(args.port)
    elif args.command == "send":
        _send(args.host, args.port, args.size)
    else:
        with one_line_errors():
            bits = parse_rate(args.rate)
            with NamespaceLink() as link:
                link.shape(bits)
                size = max(int(bits / 8 * args.seconds), 10 * link.burst_bytes(bits))
                print(json.dumps(link.measure_rate(size), indent=1))


if __name__ == "__main__":
    main()
