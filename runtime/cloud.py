"""The cloud server: many edges over TCP (or TLS), one tail half, batches formed across edges.

asyncio accepts and reads; frames are authenticated, checked against the bundle and decoded
per connection, then a single batcher feeds the cloud backend in a worker thread, taking frames
round-robin across connections so one busy edge cannot starve the others. A bad frame costs its
own connection at most: other edges keep being served. Nothing grows with what a peer sends: a
connection at its in-flight cap is not read until a reply goes out, a reply that cannot be written
within the write timeout closes its connection, and connections are capped. Shutdown stops reading
new frames and answers every frame already accepted, then closes what is left at its deadline.
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
from runtime.bundle import Bundle
from runtime.errors import EdgesplitError, ProtocolError, WireError
from runtime.local import CloudHalf
from runtime.metrics import ServerMetrics

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
    auth_failures: int = 10  # failed key proofs per address per AUTH_WINDOW_S before it is refused outright
    threads: Optional[int] = None
    ssl_context: Optional[ssl.SSLContext] = None
    metrics_port: Optional[int] = None  # Prometheus text at http://metrics_host:port/metrics
    metrics_host: str = "127.0.0.1"  # loopback unless asked: metrics say how busy the server is


AUTH_WINDOW_S = 60.0
METRICS_REQUEST_BYTES = 8192  # a GET line and its headers
METRICS_DEADLINE_S = 5.0  # for the whole request, however it is dripped
ACCEPT_LOG_INTERVAL_S = 10.0  # accept() failing at the file limit is logged once per interval
WRITE_BUFFER_BYTES = 64 * 1024  # replies buffered per connection before a write waits (then times out)
MAX_TRACKED_ADDRESSES = 10000  # failed-auth memory is bounded too
RESERVED_FILES = 64  # descriptors kept for the bundle, logs and the metrics endpoint


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


def connection_cap(requested: int) -> int:
    """`requested`, lowered to what the process's file limit allows: at that limit accept() fails in a loop."""
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ImportError, ValueError):
        return requested
    return requested if soft == resource.RLIM_INFINITY else max(1, min(requested, soft - RESERVED_FILES))


class AuthThrottle:
    """Failed key proofs per peer address in the last AUTH_WINDOW_S; an address over the limit is refused
    before its handshake, so guessing keys costs a connection per guess and stops at the limit."""

    def __init__(self, limit: int, window_s: float = AUTH_WINDOW_S):
        self.limit, self.window_s = limit, window_s
        self.failures = collections.OrderedDict()  # address -> deque of failure times, oldest address first

    def _recent(self, address: str, now: float) -> collections.deque:
        times = self.failures.get(address, collections.deque())
        while times and now - times[0] > self.window_s:
            times.popleft()
        return times

    def refused_for(self, address: str) -> float:
        """Seconds until `address` may try again; 0 if it may now."""
        now = time.monotonic()
        times = self._recent(address, now)
        return self.window_s - (now - times[0]) if len(times) >= self.limit else 0.0

    def failed(self, address: str) -> None:
        now = time.monotonic()
        times = self._recent(address, now)
        times.append(now)
        self.failures[address] = times
        self.failures.move_to_end(address)
        while len(self.failures) > MAX_TRACKED_ADDRESSES:
            self.failures.popitem(last=False)


class Handshakes:
    """Connections not yet authenticated, under caps of their own, and what each address's earlier handshakes
    came to: one that ends without authenticating (closed, displaced, timed out, refused) counts against its
    address, and the count fades over UNFINISHED_FADE_S. With the table (or the server) full, a newcomer closes
    the handshake of the address with the most unfinished ones if that count is over its own (or equal, once
    that handshake is SETTLING_S old), else a handshake of its own address SETTLING_S old, else it is refused as
    busy. So keyless sockets, from one address or many,
    displace each other but not an edge with the key from an address whose handshakes finish; and a burst
    from one NAT retries with backoff instead of closing its own handshakes before they can finish."""

    SETTLING_S = 1.0  # two round trips on a slow link
    UNFINISHED_FADE_S = 60.0

    def __init__(self, total: int, per_address: int):
        self.total, self.per_address = total, min(per_address, total)
        self.waiting = collections.OrderedDict()  # connection -> when it was accepted, oldest first
        self.unfinished = collections.OrderedDict()  # address -> (count, when counted), least recent first

    def __len__(self) -> int:
        return len(self.waiting)

    def admission(self, newcomer, server_full: bool) -> tuple:
        """(the handshake the newcomer closes or None, whether the newcomer is refused instead)."""
        own = sum(1 for connection in self.waiting if connection.address == newcomer.address)
        if own < self.per_address and len(self.waiting) < self.total and not server_full:
            return None, False
        now = time.monotonic()
        if own < self.per_address and self.waiting:
            worst = max(self.waiting, key=lambda connection: self.score(connection.address))
            mine, theirs = self.score(newcomer.address), self.score(worst.address)
            if theirs > mine or (theirs == mine and now - self.waiting[worst] >= self.SETTLING_S):
                return worst, False
        settled = next((c for c, since in self.waiting.items()
                        if c.address == newcomer.address and now - since >= self.SETTLING_S), None)
        return settled, settled is None

    def score(self, address: str) -> float:
        count, when = self.unfinished.get(address, (0.0, 0.0))
        return count * math.exp((when - time.monotonic()) / self.UNFINISHED_FADE_S)

    def admit(self, connection) -> None:
        self.waiting[connection] = time.monotonic()

    def finished(self, connection) -> None:
        """Authenticated: it leaves the table."""
        self.waiting.pop(connection, None)

    def unfinished_by(self, address: str) -> None:
        """A handshake from `address` ended without authenticating, or was refused."""
        self.unfinished[address] = (self.score(address) + 1.0, time.monotonic())
        self.unfinished.move_to_end(address)
        while len(self.unfinished) > MAX_TRACKED_ADDRESSES:
            self.unfinished.popitem(last=False)

    def closed(self, connection) -> None:
        """The connection is gone; if it never authenticated, its address is counted."""
        if self.waiting.pop(connection, None) is not None:
            self.unfinished_by(connection.address)


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


class _Connection:
    """One edge: its stream, a write lock (replies come from many tasks) and its frames in flight."""

    def __init__(self, reader, writer, peer, write_timeout_s: float):
        self.reader = reader
        self.writer = writer
        self.peer = peer
        self.address = peer[0] if isinstance(peer, tuple) else str(peer)
        self.write_timeout_s = write_timeout_s
        self.write_lock = asyncio.Lock()
        self.framing = protocol.Handshake  # until READY is sent, then compact stream frames
        self.outgoing = []  # frames queued for the next write: the replies of one batch go out together
        self.written = None  # done once the queued frames are in the transport
        self.answering = set()
        self.broken = False  # a write timed out: nothing more is written, the connection is closing

    def abort(self) -> None:
        self.broken = True
        self.writer.transport.abort()

    async def read_exactly(self, size: int) -> bytes:
        return await self.reader.readexactly(size)

    async def read_frame(self, limits: protocol.Limits, frame_timeout_s: float) -> protocol.Frame:
        """The next frame: its first byte may take as long as the caller waits, the rest of it (header and body)
        must follow within `frame_timeout_s` (a header dripped a byte a second is a slow sender, not idle)."""
        first = await self.read_exactly(1)
        headers, framing = [], self.framing

        async def rest() -> bytes:
            head = first + await self.read_exactly(framing.minimum - 1)
            head += await self.read_exactly(framing.header_bytes(head) - len(head))
            headers.append(framing.parse(head, limits))
            return await self.read_exactly(headers[0].payload_length)

        try:
            body = await asyncio.wait_for(rest(), frame_timeout_s)  # one timer a frame, as a body alone had
        except asyncio.TimeoutError:
            if not headers:
                raise ProtocolError("a frame header did not arrive whole within {} s of its first byte".format(
                    frame_timeout_s), protocol.TIMEOUT) from None
            frame = headers[0].frame
            raise ProtocolError("{} frame {} is truncated: its {} payload bytes did not arrive within {} s of its "
                                "first byte".format(frame.type_name, frame.request_id, headers[0].payload_length,
                                                    frame_timeout_s), protocol.TIMEOUT) from None
        return protocol.finish_frame(headers[0], body)

    async def send(self, frame: protocol.Frame) -> int:
        """Write one frame, in one write with every other frame queued in the same turn of the event loop (the
        replies of one batch: one segment on the link, one ACK from the edge); an edge that does not take it
        within the write timeout loses its connection, so replies it never reads cannot pile up in the server."""
        data = self.framing.encode(frame)
        self.outgoing.append(data)
        if len(self.outgoing) == 1:  # the first of the turn writes for all, after the others have queued
            self.written = asyncio.get_event_loop().create_future()
            try:
                await asyncio.sleep(0)  # the batch's other replies, resumed in this turn, join this write
            finally:
                joined, self.outgoing = b"".join(self.outgoing), []
                if not self.broken:
                    self.writer.write(joined)
                self.written.set_result(None)
        else:
            await asyncio.shield(self.written)  # in the transport before its sender goes on (and maybe closes)
        async with self.write_lock:
            if self.broken:
                raise ConnectionError("the connection was closed: the edge stopped reading replies")
            try:
                await asyncio.wait_for(self.writer.drain(), self.write_timeout_s)
            except asyncio.TimeoutError:
                self.abort()
                raise ConnectionError("the edge took no reply for {} s".format(self.write_timeout_s)) from None
        return len(data)


class CloudServer:
    def __init__(self, bundle: Bundle, config: ServerConfig):
        bundle.artefact("cloud")  # an edge-only bundle has nothing to serve: one line says so
        if not config.key and not config.allow_unauthenticated:
            raise ProtocolError("the server needs a shared key (--key-file or EDGESPLIT_KEY), "
                                "or --no-auth to accept any edge that knows the bundle id")
        protocol.check_key(config.key)
        check_limits(config)
        self.bundle = bundle
        self.config = config
        self.bundle_id = protocol.bundle_id_bytes(bundle.bundle_id)
        self.wire = bundle.wire
        self.limits = protocol.server_limits(self.wire)
        self.cloud = CloudHalf(bundle, threads=config.threads)
        self.metrics = ServerMetrics()
        self.address = None
        self.metrics_address = None
        self._stopping = None
        self._closed = False
        self._connections = {}  # task -> _Connection
        self.max_connections = connection_cap(config.max_connections)
        self.throttle = AuthThrottle(config.auth_failures)
        self.handshakes = Handshakes(max(1, min(config.max_handshakes, self.max_connections // 4)),
                                     config.max_handshakes_per_address)
        self._accept_logged = 0.0

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> tuple:
        self._stopping = asyncio.get_running_loop().create_future()
        self.batcher = Batcher(self.cloud.replies, self.config.max_batch, self.config.max_wait_ms, self.metrics,
                               connected=lambda: len(self._connections) - len(self.handshakes),
                               timeout_s=self.config.batch_timeout_s)
        asyncio.get_running_loop().set_exception_handler(self._loop_problem)
        self._batcher_task = asyncio.ensure_future(self.batcher.run())
        self._server = await _listen(self._serve_connection, self.config.host, self.config.port,
                                     self.config.ssl_context, self.config.handshake_timeout_s)
        self.address = self._server.sockets[0].getsockname()[:2]
        if self.config.metrics_port is not None:
            self._metrics_server = await _listen(self._serve_metrics, self.config.metrics_host,
                                                 self.config.metrics_port, limit=METRICS_REQUEST_BYTES)
            self.metrics_address = self._metrics_server.sockets[0].getsockname()[:2]
        log.info("serving bundle %s on %s:%d (batch <= %d, wait <= %.1f ms)", self.bundle.bundle_id,
                 self.address[0], self.address[1], self.config.max_batch, self.config.max_wait_ms)
        return self.address

    def request_stop(self) -> None:
        if not self._stopping.done():
            self._stopping.set_result(None)

    async def shutdown(self) -> None:
        """Stop accepting and reading; answer every accepted frame; close every connection — those still
        answering after `shutdown_timeout_s` (an edge that stopped reading) are closed there."""
        self.request_stop()
        if self._closed:
            return
        self._closed = True
        self._server.close()
        deadline = time.monotonic() + self.config.shutdown_timeout_s
        while self._connections and time.monotonic() < deadline:
            await asyncio.wait(list(self._connections), timeout=deadline - time.monotonic())
        if self._connections:
            log.warning("closing %d connection(s) still answering after %.1f s", len(self._connections),
                        self.config.shutdown_timeout_s)
            for connection in self._connections.values():
                connection.abort()
            await asyncio.gather(*self._connections, return_exceptions=True)
        await self._server.wait_closed()
        self._batcher_task.cancel()
        await asyncio.gather(self._batcher_task, return_exceptions=True)
        self.batcher.close()
        if self.metrics_address is not None:
            self._metrics_server.close()
            await self._metrics_server.wait_closed()
        log.info("stopped after answering %d frames (%d refused)", self.metrics.value(
            "edgesplit_frames_total", outcome="answered"), self.metrics.value("edgesplit_frames_total",
                                                                              outcome="rejected"))

    async def serve_until_stopped(self) -> None:
        await asyncio.shield(self._stopping)

    # --- one connection --------------------------------------------------------------------

    async def _serve_connection(self, reader, writer) -> None:
        task = asyncio.current_task()
        connection = _Connection(reader, writer, writer.get_extra_info("peername"), self.config.write_timeout_s)
        writer.transport.set_write_buffer_limits(high=WRITE_BUFFER_BYTES)
        refusal = self._refusal(connection)
        if refusal is not None:
            self.metrics.refused.labels(protocol.ERROR_NAMES[refusal.code]).inc()
            await self._send_quietly(connection, protocol.error_frame(refusal.code, str(refusal), final=True))
            writer.close()
            return
        self._connections[task] = connection
        self.handshakes.admit(connection)
        self.metrics.connections.inc()
        try:
            await self._converse(connection)
        except Exception:  # isolation: whatever one edge does, the server goes on
            log.exception("connection %s failed", connection.peer)
        finally:
            self.metrics.connections.dec()
            self.handshakes.closed(connection)
            writer.close()
            self._connections.pop(task, None)

    def _refusal(self, connection: _Connection) -> Optional[ProtocolError]:
        """Why a new connection is refused before its handshake, if it is; a handshake it displaces is closed."""
        wait_s = self.throttle.refused_for(connection.address)
        if wait_s:
            return ProtocolError("too many failed key proofs from {}; try again in {:.0f} s".format(
                connection.address, wait_s), protocol.AUTH_FAILED)
        full = len(self._connections) >= self.max_connections
        displaced, refused = self.handshakes.admission(connection, full)
        if refused:
            self.handshakes.unfinished_by(connection.address)
        if displaced is not None:
            self.handshakes.closed(displaced)
            self.metrics.refused.labels("displaced").inc()
            displaced.abort()
        elif refused and not full:
            return ProtocolError("the server holds its maximum of handshakes in progress ({} in all, {} per address); "
                                 "try again later".format(self.handshakes.total, self.handshakes.per_address),
                                 protocol.BUSY)
        elif full:
            return ProtocolError("the server holds its maximum of {} connections; try again later".format(
                self.max_connections), protocol.BUSY)
        return None

    async def _converse(self, connection: _Connection) -> None:
        try:
            await asyncio.wait_for(self._handshake(connection), self.config.handshake_timeout_s)
        except ProtocolError as error:
            self.metrics.refused.labels(protocol.ERROR_NAMES.get(error.code, "error")).inc()
            if error.code == protocol.AUTH_FAILED:
                self.throttle.failed(connection.address)
            log.warning("refused %s: %s", connection.peer, error)
            await self._send_quietly(connection, protocol.error_frame(error.code, str(error), final=True))
            return
        except asyncio.TimeoutError:
            self.metrics.refused.labels("timeout").inc()
            await self._send_quietly(connection, protocol.error_frame(
                protocol.TIMEOUT, "no handshake within {} s".format(self.config.handshake_timeout_s), final=True))
            return
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            return
        self.handshakes.finished(connection)
        connection.framing = protocol.Stream  # READY went out: what is fixed for the connection leaves the frames
        try:
            await self._read_requests(connection)
        finally:
            # graceful: every accepted frame is answered before the connection closes
            if connection.answering:
                await asyncio.gather(*connection.answering, return_exceptions=True)
            if self._stopping.done():
                await self._send_quietly(connection, protocol.Frame(protocol.CLOSING))

    async def _handshake(self, connection: _Connection) -> None:
        hello = await connection.read_frame(protocol.HANDSHAKE_LIMITS, self.config.frame_timeout_s)
        if hello.type != protocol.HELLO or len(hello.payload) != protocol.NONCE_BYTES:
            raise ProtocolError("expected HELLO with a {}-byte nonce, got {} ({} bytes)".format(
                protocol.NONCE_BYTES, hello.type_name, len(hello.payload)))
        if hello.bundle_id != self.bundle_id:  # the peer is not authenticated: the served id is not said
            raise ProtocolError("this server does not serve bundle {}".format(hello.bundle_id.hex()),
                                protocol.BUNDLE_MISMATCH)
        if not self.config.key:
            await connection.send(protocol.Frame(protocol.READY, bundle_id=self.bundle_id))
            return
        server_nonce = protocol.new_nonce()
        await connection.send(protocol.Frame(protocol.CHALLENGE, bundle_id=self.bundle_id, payload=server_nonce))
        auth = await connection.read_frame(protocol.HANDSHAKE_LIMITS, self.config.frame_timeout_s)
        expected = protocol.client_proof(self.config.key, server_nonce, hello.payload, self.bundle_id)
        if auth.type != protocol.AUTH or not protocol.proofs_match(expected, auth.payload):
            raise ProtocolError("the edge's key proof is wrong: edge and server hold different keys",
                                protocol.AUTH_FAILED)
        await connection.send(protocol.Frame(protocol.READY, bundle_id=self.bundle_id, payload=protocol.server_proof(
            self.config.key, server_nonce, hello.payload, self.bundle_id)))

    async def _read_requests(self, connection: _Connection) -> None:
        while True:
            if len(connection.answering) >= self.config.max_in_flight:  # backpressure: read on once one is answered
                with self.metrics.paused.track_inprogress():
                    await asyncio.wait({*connection.answering, self._stopping}, return_when=asyncio.FIRST_COMPLETED)
                if self._stopping.done() or connection.broken:
                    return
                continue
            reading = asyncio.ensure_future(connection.read_frame(self.limits, self.config.frame_timeout_s))
            await asyncio.wait({reading, self._stopping}, timeout=self.config.idle_timeout_s,
                               return_when=asyncio.FIRST_COMPLETED)
            if not reading.done():  # shutting down, or idle: a frame not yet fully received was never accepted
                reading.cancel()
                if not self._stopping.done():
                    await self._send_quietly(connection, protocol.error_frame(
                        protocol.TIMEOUT, "no frame in {} s: closing an idle connection".format(
                            self.config.idle_timeout_s), final=True))
                return
            try:
                frame = reading.result()
            except ProtocolError as error:  # framing is lost: say why and close this connection only
                self.metrics.frames.labels("bad_frame").inc()
                log.warning("bad frame from %s: %s", connection.peer, error)
                await self._send_quietly(connection, protocol.error_frame(error.code, str(error), final=True))
                return
            except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
                return
            if frame.type == protocol.CLOSING:
                return
            self._accept(connection, frame, time.monotonic())

    def _accept(self, connection: _Connection, frame: protocol.Frame, received: float) -> None:
        self.metrics.bytes_received.inc(protocol.frame_bytes(len(frame.payload)))
        try:
            codes, problem = self.cloud.decode(frame.payload), None
        except WireError as error:
            codes, problem = None, error
        task = asyncio.ensure_future(self._answer(connection, frame.request_id, codes, problem, received))
        connection.answering.add(task)
        task.add_done_callback(connection.answering.discard)

    async def _answer(self, connection, request_id: int, codes, problem, received: float) -> None:
        if problem is None:
            try:
                values = await self.batcher.submit(codes, connection)
                if not np.isfinite(values).all():  # never sent as an answer: the edge would take it for one
                    raise ProtocolError("the cloud half's outputs for this frame hold NaN or infinity",
                                        protocol.INTERNAL)
            except ProtocolError as error:
                problem = error
        if problem is not None:
            self.metrics.frames.labels("rejected").inc()
            code = getattr(problem, "code", protocol.BAD_REQUEST)
            reply = protocol.error_frame(code if code != protocol.BAD_FRAME else protocol.BAD_REQUEST,
                                         str(problem), request_id)
        else:
            self.metrics.frames.labels("answered").inc()
            reply = protocol.result_frame(request_id, values)
        sent = await self._send_quietly(connection, reply)
        self.metrics.bytes_sent.inc(sent)
        self.metrics.latency.observe(time.monotonic() - received)

    async def _send_quietly(self, connection: _Connection, frame: protocol.Frame) -> int:
        """Send, ignoring an edge that is already gone (its frames are its client's to account for)."""
        try:
            return await connection.send(frame)
        except (ConnectionError, ssl.SSLError, RuntimeError):
            return 0

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


async def _listen(handler, host: str, port: int, ssl_context=None, tls_timeout_s: Optional[float] = None,
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

    def __init__(self, bundle: Bundle, config: ServerConfig):
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="edgesplit-server", daemon=True)
        self._thread.start()
        self.server = CloudServer(bundle, config)
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
