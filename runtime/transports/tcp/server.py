"""edgesplit serve's TCP (or TLS) side: it listens, admits peers (connection caps, handshakes per address, key
guessing throttled), runs the handshake, reads and writes frames, and hands each frame's payload to the cloud
core (runtime/cloud.py), which batches it. A bad frame costs its own connection at most: other edges keep being
served. Nothing grows with what a peer sends: a connection at its in-flight cap is not read until a reply goes
out, a reply that cannot be written within the write timeout closes its connection, and connections are capped.
"""

import asyncio
import collections
import logging
import math
import ssl
import time
from typing import Optional

from runtime import protocol
from runtime.cloud import ServerConfig, listen
from runtime.errors import ProtocolError

log = logging.getLogger("edgesplit.cloud")

AUTH_WINDOW_S = 60.0
WRITE_BUFFER_BYTES = 64 * 1024  # replies buffered per connection before a write waits (then times out)
MAX_TRACKED_ADDRESSES = 10000  # failed-auth memory is bounded too
RESERVED_FILES = 64  # descriptors kept for the bundle, logs and the metrics endpoint

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



class Connection:
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



class TcpServer:
    """The listener of `edgesplit serve` for edgesplit's protocol; `cloud` is the core that answers frames."""

    def __init__(self, cloud, config: ServerConfig):
        if not config.key and not config.allow_unauthenticated:
            raise ProtocolError("the server needs a shared key (--key-file or EDGESPLIT_KEY), "
                                "or --no-auth to accept any edge that knows the bundle id")
        protocol.check_key(config.key)
        self.cloud, self.config, self.metrics = cloud, config, cloud.metrics
        self.bundle_id = protocol.bundle_id_bytes(cloud.bundle.bundle_id)
        self.limits = cloud.limits
        self._connections = {}  # task -> Connection
        self.max_connections = connection_cap(config.max_connections)
        self.throttle = AuthThrottle(config.auth_failures)
        self.handshakes = Handshakes(max(1, min(config.max_handshakes, self.max_connections // 4)),
                                     config.max_handshakes_per_address)

    async def start(self) -> tuple:
        self._server = await listen(self._serve_connection, self.config.host, self.config.port,
                                    self.config.ssl_context, self.config.handshake_timeout_s)
        return self._server.sockets[0].getsockname()[:2]

    def connected(self) -> int:
        """Edges past their handshake: the batcher shares a batch among them."""
        return len(self._connections) - len(self.handshakes)

    async def shutdown(self, deadline: float) -> None:
        """Stop accepting and reading; every accepted frame is answered; connections still answering at
        `deadline` (an edge that stopped reading) are closed there."""
        self._server.close()
        while self._connections and time.monotonic() < deadline:
            await asyncio.wait(list(self._connections), timeout=deadline - time.monotonic())
        if self._connections:
            log.warning("closing %d connection(s) still answering after %.1f s", len(self._connections),
                        self.config.shutdown_timeout_s)
            for connection in self._connections.values():
                connection.abort()
            await asyncio.gather(*self._connections, return_exceptions=True)
        await self._server.wait_closed()

    async def _serve_connection(self, reader, writer) -> None:
        task = asyncio.current_task()
        connection = Connection(reader, writer, writer.get_extra_info("peername"), self.config.write_timeout_s)
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

    def _refusal(self, connection: Connection) -> Optional[ProtocolError]:
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

    async def _converse(self, connection: Connection) -> None:
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
            if self.cloud.stopping.done():
                await self._send_quietly(connection, protocol.Frame(protocol.CLOSING))

    async def _handshake(self, connection: Connection) -> None:
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

    async def _read_requests(self, connection: Connection) -> None:
        while True:
            if len(connection.answering) >= self.config.max_in_flight:  # backpressure: read on once one is answered
                with self.metrics.paused.track_inprogress():
                    await asyncio.wait({*connection.answering, self.cloud.stopping}, return_when=asyncio.FIRST_COMPLETED)
                if self.cloud.stopping.done() or connection.broken:
                    return
                continue
            reading = asyncio.ensure_future(connection.read_frame(self.limits, self.config.frame_timeout_s))
            await asyncio.wait({reading, self.cloud.stopping}, timeout=self.config.idle_timeout_s,
                               return_when=asyncio.FIRST_COMPLETED)
            if not reading.done():  # shutting down, or idle: a frame not yet fully received was never accepted
                reading.cancel()
                if not self.cloud.stopping.done():
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

    def _accept(self, connection: Connection, frame: protocol.Frame, received: float) -> None:
        self.metrics.bytes_received.inc(protocol.frame_bytes(len(frame.payload)))
        task = asyncio.ensure_future(self._answer(connection, frame.request_id, frame.payload, received))
        connection.answering.add(task)
        task.add_done_callback(connection.answering.discard)

    async def _answer(self, connection, request_id: int, payload: bytes, received: float) -> None:
        try:
            values, problem = await self.cloud.answer(payload, connection), None
        except ProtocolError as error:
            problem = error
        if problem is not None:
            self.metrics.frames.labels("rejected").inc()
            code = problem.code if problem.code != protocol.BAD_FRAME else protocol.BAD_REQUEST
            reply = protocol.error_frame(code, str(problem), request_id)
        else:
            self.metrics.frames.labels("answered").inc()
            reply = protocol.result_frame(request_id, values)
        sent = await self._send_quietly(connection, reply)
        self.metrics.bytes_sent.inc(sent)
        self.metrics.latency.observe(time.monotonic() - received)

    async def _send_quietly(self, connection: Connection, frame: protocol.Frame) -> int:
        """Send, ignoring an edge that is already gone (its frames are its client's to account for)."""
        try:
            return await connection.send(frame)
        except (ConnectionError, ssl.SSLError, RuntimeError):
            return 0


SERVER = TcpServer
