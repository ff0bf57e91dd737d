"""The cloud core of `edgesplit serve`: one bundle's cloud half behind a batcher, its metrics, a graceful shutdown.

It knows no transport. A transport's server (runtime/transports/<name>/server.py: TCP for edgesplit's own
protocol) listens, admits and authenticates edges, reads their frames and hands each payload to `answer`;
a single batcher feeds the cloud backend in a worker thread, taking frames round-robin across connections so
one busy edge cannot starve the others. Shutdown stops reading new frames and answers every frame already
accepted, then closes what is left at its deadline.
"""

import asyncio
import collections
import errno
import logging
import math
import os
import socket
import ssl
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, NamedTuple, Optional

import numpy as np

from runtime import protocol
from runtime.bundle import ADAPTIVE, Bundle
from runtime.errors import EdgesplitError, ProtocolError, WireError
from runtime.local import CloudHalf
from runtime.metrics import ServerMetrics
from runtime.transports import DEFAULT_TRANSPORT, server_class

log = logging.getLogger("edgesplit.cloud")

class ServerConfig(NamedTuple):
    host: str = "127.0.0.1"
    port: int = 0
    key: bytes = b""  # shared HMAC key; b"" only together with allow_unauthenticated
    allow_unauthenticated: bool = False
    max_batch: int = 32
    max_wait_ms: float = 2.0
    max_in_flight: int = 256  # per connection; at the cap the connection is not read until a reply goes out
    handshake_timeout_s: float = 5.0  # from accepting to READY, the TLS handshake included
    frame_timeout_s: float = 10.0  # a frame must arrive whole within this of its first byte (slow-sender guard)
    idle_timeout_s: float = 300.0  # a connection that sends no frame for this long is closed
    write_timeout_s: float = 10.0  # a reply the edge does not take within this closes its connection
    shutdown_timeout_s: float = 10.0  # after this, shutdown closes the connections still answering
    batch_timeout_s: float = 30.0  # watchdog: a batch the backend has not answered by then gets TIMEOUT errors
    max_connections: int = 1024  # more are refused (BUSY); kept below the process's file limit
    max_handshakes: int = 64  # connections not yet authenticated, at most a quarter of max_connections
    max_handshakes_per_address: int = 16  # of those, from one address (a NAT's edges reconnecting share one)
    auth_failures: int = 10  # failed key proofs per address per minute before it is refused outright
    threads: Optional[int] = None
    ssl_context: Optional[ssl.SSLContext] = None
    metrics_port: Optional[int] = None  # Prometheus text at http://metrics_host:port/metrics
    metrics_host: str = "127.0.0.1"  # loopback unless asked: metrics say how busy the server is


METRICS_REQUEST_BYTES = 8192  # a GET line and its headers
METRICS_DEADLINE_S = 5.0  # for the whole request, however it is dripped
ACCEPT_LOG_INTERVAL_S = 10.0  # accept() failing at the file limit is logged once per interval

def check_limits(config: ServerConfig) -> None:
    """Every timeout a positive finite number of seconds, every count at least 1: one line naming the first
    that is not (a timeout of 0 or NaN would close every edge, a cap of 0 would mean none)."""
    if not (math.isfinite(config.max_wait_ms) and config.max_wait_ms >= 0):
        raise ProtocolError("max_wait_ms must be a finite number of milliseconds >= 0, got {}".format(
            config.max_wait_ms))
    for name in ("handshake_timeout_s", "frame_timeout_s", "idle_timeout_s", "write_timeout_s", "shutdown_timeout_s",
                 "batch_timeout_s"):
        value = getattr(config, name)
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ProtocolError("{} must be a positive number of seconds, got {}".format(name, value))
    for name in ("max_batch", "max_in_flight", "max_connections", "auth_failures", "max_handshakes",
                 "max_handshakes_per_address"):
        if getattr(config, name) < 1:
            raise ProtocolError("{} must be at least 1, got {}".format(name, getattr(config, name)))


class _Pending(NamedTuple):
    codes: np.ndarray
    future: asyncio.Future


class Batcher:
    """Collects decoded frames from all connections into batches of at most `max_batch`.

    Each connection has its own queue and a batch takes one frame from each in turn (round-robin),
    and while N edges are connected one edge fills at most max_batch / 2N of a batch: an edge with
    256 frames queued delays another edge's frame by one short batch, not by its backlog. The first
    frame opens a batch; more join until the batch is full, every connected edge has a frame in it,
    or `max_wait_ms` passed. While the backend runs a batch, the edges' queues fill up. A lone edge's
    batch never waits: what it has queued goes along.
    """

    def __init__(self, infer, max_batch: int, max_wait_ms: float, metrics: ServerMetrics,
                 connected: Callable[[], int], timeout_s: Optional[float] = None):
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.infer = infer
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.metrics = metrics
        self.connected = connected
        self.timeout_s = timeout_s
        self.queues = collections.OrderedDict()  # source -> deque of _Pending, next to serve first
        self.arrived = asyncio.Event()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="edgesplit-backend")

    def submit(self, codes: np.ndarray, source: object = None) -> asyncio.Future:
        future = asyncio.get_running_loop().create_future()
        self.queues.setdefault(source, collections.deque()).append(_Pending(codes, future))
        self.arrived.set()
        return future

    def _take(self, taken: collections.Counter, share: int) -> Optional[_Pending]:
        """The next frame of the first source in line still under its share of this batch; that source goes
        to the back of the line. None when every queued source has its share."""
        for source in self.queues:
            if taken[source] < share:
                break
        else:
            return None
        waiting = self.queues.pop(source)
        taken[source] += 1
        pending = waiting.popleft()
        if waiting:
            self.queues[source] = waiting
        return pending

    def _share(self, connected: int) -> int:
        """Frames one connection may put in a batch: all of it when alone; else half an even share, so that a
        frame from another edge waits behind a short batch (measured: a 10 fps edge's p99 beside one keeping 256
        frames in flight fell from 3.6-4.7x its p99 alone to 2.4-3.0x; the greedy edge lost ~10 % throughput)."""
        return self.max_batch if connected == 1 else max(1, self.max_batch // (2 * connected))

    async def _arrival(self, timeout: Optional[float]) -> bool:
        self.arrived.clear()
        try:
            await asyncio.wait_for(self.arrived.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    async def _collect(self) -> list:
        while not self.queues:
            await self._arrival(None)
        connected = max(1, self.connected())
        share, taken = self._share(connected), collections.Counter()
        batch = [self._take(taken, share)]
        deadline = time.monotonic() + self.max_wait
        while len(batch) < self.max_batch:
            pending = self._take(taken, share)
            if pending is not None:
                batch.append(pending)
                continue
            remaining = deadline - time.monotonic()
            # once every connected edge has a frame in the batch nobody is left to wait for
            if len(taken) >= connected or remaining <= 0 or not await self._arrival(remaining):
                break
        return batch

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            self.metrics.batch_size.observe(len(batch))
            try:
                running = loop.run_in_executor(self.executor, self.infer, [p.codes for p in batch])
                rows = await asyncio.wait_for(running, self.timeout_s)
            except Exception as error:  # a failed or hung backend answers this batch with errors, not a dead server
                problem = self._problem(error, len(batch))
                for pending in batch:
                    if not pending.future.done():
                        pending.future.set_exception(problem)
                continue
            for pending, row in zip(batch, rows):
                if not pending.future.done():
                    pending.future.set_result(row)

    def _problem(self, error: Exception, size: int) -> ProtocolError:
        if isinstance(error, asyncio.TimeoutError):  # the thread cannot be stopped: later batches queue behind it
            log.error("cloud backend gave no answer for a batch of %d within %.1f s", size, self.timeout_s)
            return ProtocolError("cloud backend gave no answer within {} s".format(self.timeout_s), protocol.TIMEOUT)
        log.exception("cloud backend failed on a batch of %d", size, exc_info=error)
        return ProtocolError("cloud backend failed: {}".format(error), protocol.INTERNAL)

    def close(self) -> None:
        self.executor.shutdown(wait=False)


class CloudServer:
    """The core: `transport`'s server (a TRANSPORTS key) listens and calls `answer` for each frame."""

    def __init__(self, bundle: Bundle, config: ServerConfig, transport: str = DEFAULT_TRANSPORT):
        if bundle.strategy != ADAPTIVE:
            bundle.artefact("cloud")  # an edge-only bundle has nothing to serve: one line says so
        check_limits(config)
        self.bundle = bundle
        self.config = config
        # every operating point's cloud half, by the index an adaptive bundle's frames start with (else 0)
        self.clouds = {index: CloudHalf(point, threads=config.threads) for index, point in enumerate(bundle.points)
                       if "cloud" in point.roles}
        if not self.clouds:
            raise EdgesplitError("no operating point of bundle {} has a cloud half: its edge needs no server".format(
                bundle.bundle_id))
        self.prefix = 1 if bundle.strategy == ADAPTIVE else 0
        largest = max((half.wire for half in self.clouds.values()), key=lambda wire: wire.packed_bytes)
        self.limits = protocol.server_limits(largest, self.prefix)
        self.metrics = ServerMetrics()
        self.listener = server_class(transport)(self, config)
        self.address = None
        self.metrics_address = None
        self.stopping = None  # done once a stop is requested: transports stop reading
        self._closed = False
        self._accept_logged = 0.0

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> tuple:
        self.stopping = asyncio.get_running_loop().create_future()
        self.batchers = {index: Batcher(half.replies, self.config.max_batch, self.config.max_wait_ms, self.metrics,
                                        connected=self.listener.connected, timeout_s=self.config.batch_timeout_s)
                         for index, half in self.clouds.items()}
        asyncio.get_running_loop().set_exception_handler(self._loop_problem)
        self._batcher_tasks = [asyncio.ensure_future(batcher.run()) for batcher in self.batchers.values()]
        self.address = await self.listener.start()
        if self.config.metrics_port is not None:
            self._metrics_server = await listen(self._serve_metrics, self.config.metrics_host,
                                                self.config.metrics_port, limit=METRICS_REQUEST_BYTES)
            self.metrics_address = self._metrics_server.sockets[0].getsockname()[:2]
        log.info("serving bundle %s on %s:%d (batch <= %d, wait <= %.1f ms)", self.bundle.bundle_id,
                 self.address[0], self.address[1], self.config.max_batch, self.config.max_wait_ms)
        return self.address

    def request_stop(self) -> None:
        if not self.stopping.done():
            self.stopping.set_result(None)

    async def shutdown(self) -> None:
        """Stop accepting and reading; answer every accepted frame; close every connection — those still
        answering after `shutdown_timeout_s` (an edge that stopped reading) are closed there."""
        self.request_stop()
        if self._closed:
            return
        self._closed = True
        await self.listener.shutdown(time.monotonic() + self.config.shutdown_timeout_s)
        for task in self._batcher_tasks:
            task.cancel()
        await asyncio.gather(*self._batcher_tasks, return_exceptions=True)
        for batcher in self.batchers.values():
            batcher.close()
        if self.metrics_address is not None:
            self._metrics_server.close()
            await self._metrics_server.wait_closed()
        log.info("stopped after answering %d frames (%d frames refused)", self.metrics.value(
            "edgesplit_frames_total", outcome="answered"), self.metrics.value("edgesplit_frames_total",
                                                                              outcome="rejected"))

    async def serve_until_stopped(self) -> None:
        await asyncio.shield(self.stopping)

    # --- one frame -------------------------------------------------------------------------

    async def answer(self, payload: bytes, source: object) -> np.ndarray:
        """One frame's payload → the cloud half's outputs for it, flat, batched with other sources' frames of its
        operating point (an adaptive bundle's payload names it in its first byte). ProtocolError: BAD_REQUEST when
        the payload is not the bundle's codes, INTERNAL or TIMEOUT when the backend fails, INTERNAL for outputs
        holding NaN or infinity (never sent: the edge would take them)."""
        point = 0
        if self.prefix:
            if not payload:
                raise ProtocolError("an empty FEATURES payload", protocol.BAD_REQUEST)
            point = payload[0]
            if point not in self.clouds:
                raise ProtocolError("no operating point {} with a cloud half in bundle {}: its points with one are "
                                    "{}".format(point, self.bundle.bundle_id, sorted(self.clouds)), protocol.BAD_REQUEST)
        try:
            codes = self.clouds[point].decode(payload[self.prefix:])
        except WireError as error:
            raise ProtocolError(str(error), protocol.BAD_REQUEST) from error
        values = await self.batchers[point].submit(codes, source)
        if not np.isfinite(values).all():
            raise ProtocolError("the cloud half's outputs for this frame hold NaN or infinity", protocol.INTERNAL)
        return values

    # --- metrics endpoint ------------------------------------------------------------------

    async def _serve_metrics(self, reader, writer) -> None:
        """GET /metrics: the request (line and headers) within METRICS_REQUEST_BYTES and METRICS_DEADLINE_S, as a
        whole; anything longer or slower is closed without an answer."""
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), METRICS_DEADLINE_S)
            if request.split(b" ")[:2] == [b"GET", b"/metrics"]:
                body, status = self.metrics.exposition(), b"200 OK"
            else:
                body, status = b"only GET /metrics is served here\n", b"404 Not Found"
            writer.write(b"HTTP/1.1 " + status + b"\r\nContent-Type: text/plain; version=0.0.4\r\n"
                         b"Content-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)
            await asyncio.wait_for(writer.drain(), METRICS_DEADLINE_S)
        except (asyncio.TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            writer.close()

    def _loop_problem(self, loop, context: dict) -> None:
        """asyncio's reports: accept() failing at the file limit (once per connection attempt) is one line per
        ACCEPT_LOG_INTERVAL_S, not a traceback each; everything else as asyncio reports it."""
        error = context.get("exception")
        if isinstance(error, OSError) and error.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
            now = time.monotonic()
            if now - self._accept_logged >= ACCEPT_LOG_INTERVAL_S:
                self._accept_logged = now
                log.warning("cannot accept connections: %s (the process's file limit; connections beyond it wait "
                            "in the kernel's backlog)", os.strerror(error.errno))
            return
        loop.default_exception_handler(context)


async def listen(handler, host: str, port: int, ssl_context=None, tls_timeout_s: Optional[float] = None,
                  **options):
    """A listening server, or one line naming the address that cannot be had (in use, not ours)."""
    tls = {} if ssl_context is None else {"ssl": ssl_context, "ssl_handshake_timeout": tls_timeout_s}
    try:
        return await asyncio.start_server(handler, host, port, **tls, **options)
    except OSError as error:  # a socket.gaierror's errno is a resolver code, not an errno os.strerror knows
        reason = error.strerror if isinstance(error, socket.gaierror) or not error.errno else os.strerror(error.errno)
        raise EdgesplitError("cannot listen on {}:{}: {}".format(host, port, reason)) from error


class BackgroundServer:
    """A CloudServer on its own event loop in a daemon thread: for embedding, tests and benchmarks."""

    def __init__(self, bundle: Bundle, config: ServerConfig, transport: str = DEFAULT_TRANSPORT):
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="edgesplit-server", daemon=True)
        self._thread.start()
        self.server = CloudServer(bundle, config, transport)
        self.address = self.call(self.server.start())

    def call(self, coroutine, timeout: float = 60.0):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def close(self) -> None:
        self.call(self.server.shutdown())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()

    def __enter__(self) -> "BackgroundServer":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def serve_forever(bundle: Bundle, config: ServerConfig, on_ready=None) -> None:
    """Run a server until SIGINT/SIGTERM, then shut down gracefully."""
    import signal

    async def main():
        server = CloudServer(bundle, config)
        await server.start()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, server.request_stop)
        if on_ready is not None:
            on_ready(server)
        await server.serve_until_stopped()
        await server.shutdown()

    asyncio.run(main())
