"""The cloud server: many edges over TCP (or TLS), one tail half, batches formed across edges.

asyncio accepts and reads; frames are authenticated, checked against the bundle and decoded
per connection, then a single batcher feeds the cloud backend in a worker thread. A bad frame
costs its own connection at most: other edges keep being served. Shutdown stops reading new
frames and answers every frame already accepted before closing.
"""

import asyncio
import logging
import os
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
    max_in_flight: int = 256  # per connection; more gets TOO_MANY_IN_FLIGHT for the extra frames
    handshake_timeout_s: float = 5.0
    frame_timeout_s: float = 10.0  # a frame's body must follow its header within this (slow-sender guard)
    threads: Optional[int] = None
    ssl_context: Optional[ssl.SSLContext] = None
    metrics_port: Optional[int] = None  # Prometheus text at http://host:port/metrics


class _Pending(NamedTuple):
    codes: np.ndarray
    future: asyncio.Future


class Batcher:
    """Collects decoded frames from all connections into batches of at most `max_batch`.

    The first frame opens a batch; more join until the batch is full or `max_wait_ms` passed.
    While the backend runs a batch, the next one fills up in the queue. With one edge connected
    no batch waits: nobody else could join it, what that edge has queued already goes along.
    """

    def __init__(self, infer, max_batch: int, max_wait_ms: float, metrics: ServerMetrics,
                 others_connected: Callable[[], bool] = lambda: True):
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.infer = infer
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.metrics = metrics
        self.others_connected = others_connected
        self.queue = asyncio.Queue()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="edgesplit-backend")

    def submit(self, codes: np.ndarray) -> asyncio.Future:
        future = asyncio.get_running_loop().create_future()
        self.queue.put_nowait(_Pending(codes, future))
        return future

    async def _collect(self) -> list:
        batch = [await self.queue.get()]
        deadline = time.monotonic() + (self.max_wait if self.others_connected() else 0.0)
        while len(batch) < self.max_batch:
            if not self.queue.empty():
                batch.append(self.queue.get_nowait())
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self.queue.get(), remaining))
            except asyncio.TimeoutError:
                break
        return batch

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            self.metrics.batch_size.observe(len(batch))
            try:
                rows = await loop.run_in_executor(self.executor, self.infer, [p.codes for p in batch])
            except Exception as error:  # a backend failure answers this batch with errors, not a dead server
                log.exception("cloud backend failed on a batch of %d", len(batch))
                for pending in batch:
                    if not pending.future.done():
                        pending.future.set_exception(ProtocolError(
                            "cloud backend failed: {}".format(error), protocol.INTERNAL))
                continue
            for pending, row in zip(batch, rows):
                if not pending.future.done():
                    pending.future.set_result(row)

    def close(self) -> None:
        self.executor.shutdown(wait=True)


class _Connection:
    """One edge: its stream, a write lock (replies come from many tasks) and its frames in flight."""

    def __init__(self, reader, writer, peer):
        self.reader = reader
        self.writer = writer
        self.peer = peer
        self.write_lock = asyncio.Lock()
        self.answering = set()

    async def read_exactly(self, size: int) -> bytes:
        return await self.reader.readexactly(size)

    async def read_frame(self, limits: protocol.Limits, body_timeout_s: float) -> protocol.Frame:
        header = protocol.parse_header(await self.read_exactly(protocol.HEADER_BYTES), limits)
        try:
            body = await asyncio.wait_for(self.read_exactly(header.body_bytes), body_timeout_s)
        except asyncio.TimeoutError:
            raise ProtocolError("{} frame {} is truncated: its {} body bytes did not arrive within {} s".format(
                header.frame.type_name, header.frame.request_id, header.body_bytes, body_timeout_s),
                protocol.TIMEOUT) from None
        return protocol.finish_frame(header, body, limits)

    async def send(self, frame: protocol.Frame) -> int:
        data = protocol.encode(frame)
        async with self.write_lock:
            self.writer.write(data)
            await self.writer.drain()
        return len(data)


class CloudServer:
    def __init__(self, bundle: Bundle, config: ServerConfig):
        if not config.key and not config.allow_unauthenticated:
            raise ProtocolError("the server needs a shared key (--key-file or EDGESPLIT_KEY), "
                                "or --no-auth to accept any edge that knows the bundle id")
        self.bundle = bundle
        self.config = config
        self.bundle_id = protocol.bundle_id_bytes(bundle.bundle_id)
        self.wire = bundle.wire
        self.quantization = protocol.wire_quantization(bundle.manifest)
        self.limits = protocol.Limits(max_payload=max(4096, 2 * self.wire.packed_bytes + 1024),
                                      max_elements=self.wire.elements)
        self.cloud = CloudHalf(bundle, threads=config.threads)
        self.metrics = ServerMetrics()
        self.address = None
        self.metrics_address = None
        self._stopping = None
        self._closed = False
        self._connections = set()

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> tuple:
        self._stopping = asyncio.get_running_loop().create_future()
        self.batcher = Batcher(self.cloud.replies, self.config.max_batch, self.config.max_wait_ms, self.metrics,
                               others_connected=lambda: len(self._connections) > 1)
        self._batcher_task = asyncio.ensure_future(self.batcher.run())
        self._server = await _listen(self._serve_connection, self.config.host, self.config.port,
                                     self.config.ssl_context)
        self.address = self._server.sockets[0].getsockname()[:2]
        if self.config.metrics_port is not None:
            self._metrics_server = await _listen(self._serve_metrics, self.config.host, self.config.metrics_port)
            self.metrics_address = self._metrics_server.sockets[0].getsockname()[:2]
        log.info("serving bundle %s on %s:%d (batch <= %d, wait <= %.1f ms)", self.bundle.bundle_id,
                 self.address[0], self.address[1], self.config.max_batch, self.config.max_wait_ms)
        return self.address

    def request_stop(self) -> None:
        if not self._stopping.done():
            self._stopping.set_result(None)

    async def shutdown(self) -> None:
        """Stop accepting and reading; answer every accepted frame; close every connection."""
        self.request_stop()
        if self._closed:
            return
        self._closed = True
        self._server.close()
        await self._server.wait_closed()
        while self._connections:
            await asyncio.gather(*self._connections, return_exceptions=True)
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
        self._connections.add(task)
        connection = _Connection(reader, writer, writer.get_extra_info("peername"))
        self.metrics.connections.inc()
        try:
            await self._converse(connection)
        except Exception:  # isolation: whatever one edge does, the server goes on
            log.exception("connection %s failed", connection.peer)
        finally:
            self.metrics.connections.dec()
            writer.close()
            self._connections.discard(task)

    async def _converse(self, connection: _Connection) -> None:
        try:
            await asyncio.wait_for(self._handshake(connection), self.config.handshake_timeout_s)
        except ProtocolError as error:
            self.metrics.refused.labels(protocol.ERROR_NAMES.get(error.code, "error")).inc()
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
        try:
            await self._read_requests(connection)
        finally:
            # graceful: every accepted frame is answered before the connection closes
            if connection.answering:
                await asyncio.gather(*connection.answering, return_exceptions=True)
            if self._stopping.done():
                await self._send_quietly(connection, protocol.Frame(protocol.CLOSING, bundle_id=self.bundle_id))

    async def _handshake(self, connection: _Connection) -> None:
        hello = await connection.read_frame(protocol.HANDSHAKE_LIMITS, self.config.frame_timeout_s)
        if hello.type != protocol.HELLO or len(hello.payload) != protocol.NONCE_BYTES:
            raise ProtocolError("expected HELLO with a {}-byte nonce, got {} ({} bytes)".format(
                protocol.NONCE_BYTES, hello.type_name, len(hello.payload)))
        if hello.bundle_id != self.bundle_id:
            raise ProtocolError("edge runs bundle {}, this server serves {}".format(
                hello.bundle_id.hex(), self.bundle.bundle_id), protocol.BUNDLE_MISMATCH)
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
            reading = asyncio.ensure_future(connection.read_frame(self.limits, self.config.frame_timeout_s))
            await asyncio.wait({reading, self._stopping}, return_when=asyncio.FIRST_COMPLETED)
            if not reading.done():  # shutting down: a frame not yet fully received was never accepted
                reading.cancel()
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
            if frame.type != protocol.FEATURES:
                await self._send_quietly(connection, protocol.error_frame(
                    protocol.BAD_FRAME, "unexpected {} frame after the handshake".format(frame.type_name),
                    frame.request_id, final=True))
                return
            self._accept(connection, frame, time.monotonic())

    def _accept(self, connection: _Connection, frame: protocol.Frame, received: float) -> None:
        self.metrics.bytes_received.inc(protocol.HEADER_BYTES + 4 * len(frame.shape) + len(frame.payload))
        if len(connection.answering) >= self.config.max_in_flight:
            problem = ProtocolError("more than {} frames in flight on one connection".format(
                self.config.max_in_flight), protocol.TOO_MANY_IN_FLIGHT)
            codes = None
        else:
            try:
                if frame.bundle_id != self.bundle_id:
                    raise ProtocolError("frame is for bundle {}, this server serves {}".format(
                        frame.bundle_id.hex(), self.bundle.bundle_id), protocol.BUNDLE_MISMATCH)
                protocol.check_features(frame, self.wire, self.quantization)
                codes, problem = self.cloud.decode(frame.payload), None
            except (ProtocolError, WireError) as error:
                codes, problem = None, error
        task = asyncio.ensure_future(self._answer(connection, frame.request_id, codes, problem, received))
        connection.answering.add(task)
        task.add_done_callback(connection.answering.discard)

    async def _answer(self, connection, request_id: int, codes, problem, received: float) -> None:
        if problem is None:
            try:
                values = await self.batcher.submit(codes)
            except ProtocolError as error:
                problem = error
        if problem is not None:
            self.metrics.frames.labels("rejected").inc()
            code = getattr(problem, "code", protocol.BAD_REQUEST)
            reply = protocol.error_frame(code if code != protocol.BAD_FRAME else protocol.BAD_REQUEST,
                                         str(problem), request_id, bundle_id=self.bundle_id)
        else:
            self.metrics.frames.labels("answered").inc()
            reply = protocol.result_frame(request_id, self.bundle_id, values)
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
        try:
            request = await asyncio.wait_for(reader.readline(), 5.0)
            while (await asyncio.wait_for(reader.readline(), 5.0)) not in (b"\r\n", b"\n", b""):
                pass
            if request.split(b" ")[:2] == [b"GET", b"/metrics"]:
                body, status = self.metrics.exposition(), b"200 OK"
            else:
                body, status = b"only GET /metrics is served here\n", b"404 Not Found"
            writer.write(b"HTTP/1.1 " + status + b"\r\nContent-Type: text/plain; version=0.0.4\r\n"
                         b"Content-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)
            await writer.drain()
        except (asyncio.TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()


async def _listen(handler, host: str, port: int, ssl_context=None):
    """A listening server, or one line naming the address that cannot be had (in use, not ours)."""
    try:
        return await asyncio.start_server(handler, host, port, ssl=ssl_context)
    except OSError as error:
        reason = os.strerror(error.errno) if error.errno else str(error)
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
