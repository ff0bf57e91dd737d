"""The edge client: run the head, send its codes to the cloud server, match the replies.

Python 3.6 with numpy and threads (JetPack 4.6 ships 3.6): the caller's thread runs the edge
half and submits frames, a sender thread writes them (through the emulated link when one is
set), a receiver thread per connection reads the replies, a connector thread reconnects with
backoff. Every submitted frame ends in exactly one Outcome: a cloud answer, an edge answer,
or an explicit error (cloud unreachable, refused, no reply in time).
"""

import logging
import queue
import random
import socket
import ssl
import threading
import time
from typing import Iterable, Iterator, List, NamedTuple, Optional

import numpy as np

from runtime import protocol
from runtime.bundle import Bundle
from runtime.errors import ProtocolError
from runtime.images import SourceFrame
from runtime.link import EmulatedLink
from runtime.local import EdgeHalf, class_output, output_sizes, softmax_entropy, split_values
from runtime.wire import encode_frame, frames_of

log = logging.getLogger("edgesplit.edge")

CLOUD, EDGE, ERROR = "cloud", "edge", "error"
REPLY_LIMITS = protocol.Limits(max_payload=1 << 20, max_elements=1 << 18)
CLOUD_FAILURES = (protocol.INTERNAL, protocol.TIMEOUT)  # per-frame errors that are the cloud's, not the frame's
TRANSIENT_REFUSALS = (protocol.BUSY,)  # a handshake refused for now: retried with backoff like an unreachable server


class Outcome(NamedTuple):
    index: int
    answered_by: str  # CLOUD, EDGE or ERROR
    logits: Optional[np.ndarray]  # the classification output (the first, unless the manifest says otherwise)
    error: str
    latency_s: float  # frame taken from the source → outcome
    label: Optional[int]
    outputs: Optional[List[np.ndarray]] = None  # every output the answer carries, in the manifest's order


class ClientConfig(NamedTuple):
    host: str
    port: int
    key: bytes = b""
    ssl_context: object = None  # an ssl.SSLContext for TLS
    server_hostname: Optional[str] = None
    in_flight: int = 8
    reply_timeout_s: float = 10.0
    connect_timeout_s: float = 5.0
    backoff_s: float = 0.1
    backoff_max_s: float = 5.0
    link: Optional[EmulatedLink] = None
    exit_threshold: Optional[float] = None  # overrides the bundle's; None: the bundle's (None there: never exit)


class ClientStats:
    """Counts every frame's outcome and every byte, for the summary and for tests."""

    def __init__(self):
        self.frames = 0
        self.outcomes = {CLOUD: 0, EDGE: 0, ERROR: 0}
        self.bytes_sent = 0
        self.bytes_received = 0
        self.payload_bytes = 0
        self.connects = 0
        self.late_replies = 0

    def as_dict(self) -> dict:
        return {"frames": self.frames, "cloud_answers": self.outcomes[CLOUD], "edge_answers": self.outcomes[EDGE],
                "errors": self.outcomes[ERROR], "bytes_sent": self.bytes_sent, "bytes_received": self.bytes_received,
                "payload_bytes": self.payload_bytes, "connects": self.connects, "late_replies": self.late_replies}


class _InFlight(NamedTuple):
    index: int
    label: Optional[int]
    started: float
    deadline: float
    connection: "_Connection"
    exit_logits: Optional[np.ndarray]  # the edge's own answer if the cloud's never comes


class _Connection:
    """One authenticated TCP (or TLS) connection to the server."""

    def __init__(self, sock):
        self.sock = sock
        self.stream = sock.makefile("rb")
        self.alive = True

    def read_exactly(self, size: int) -> bytes:
        data = self.stream.read(size)
        if len(data) != size:
            raise ConnectionError("server closed the connection")
        return data

    def read_frame(self, limits: protocol.Limits) -> protocol.Frame:
        return protocol.read_frame(self.read_exactly, limits)

    def close(self) -> None:
        self.alive = False
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.stream.close()
        self.sock.close()


class EdgeClient:
    def __init__(self, bundle: Bundle, config: ClientConfig, threads: Optional[int] = None):
        protocol.check_key(config.key)
        self.config = config
        self.edge = EdgeHalf(bundle, threads)
        self.output_sizes = output_sizes(bundle)
        self.reply_values = sum(int(np.prod(shape)) for _, shape in self.output_sizes)
        self.scored = class_output(bundle)
        self.wire = bundle.wire
        self.bundle_id = protocol.bundle_id_bytes(bundle.bundle_id)
        self.quantization = protocol.wire_quantization(bundle.manifest)
        bundle_threshold = (bundle.manifest.get("exit") or {}).get("threshold")
        self.exit_threshold = bundle_threshold if config.exit_threshold is None else config.exit_threshold
        self.stats = ClientStats()
        self._lock = threading.Lock()
        self._slots = threading.Semaphore(config.in_flight)
        self._pending = {}  # request id → _InFlight
        self._outcomes = queue.Queue()
        self._outbox = queue.Queue()
        self._connection = None
        self._last_problem = "not connected yet"
        self._backoff = config.backoff_s
        self._next_attempt = 0.0
        self._wake_connector = threading.Event()
        self._closed = False
        self._request_ids = iter(range(1, 1 << 63))
        self._threads = []

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> "EdgeClient":
        """Connect; a refused handshake (wrong bundle, wrong key) raises, an unreachable or busy server does not."""
        try:
            self._connect()
        except ProtocolError as error:
            if error.code not in TRANSIENT_REFUSALS:
                raise
            self._connection_failed(str(error))
        except (ssl.SSLError, ssl.CertificateError) as error:  # not transient: the certificate is not trusted
            raise ProtocolError("TLS with {}:{} failed: {}".format(self.config.host, self.config.port, error)) \
                from error
        except OSError as error:
            self._connection_failed("cloud server {}:{} unreachable: {}".format(
                self.config.host, self.config.port, error))
        for target, name in ((self._send_loop, "edgesplit-sender"), (self._connect_loop, "edgesplit-connector")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def close(self) -> None:
        self._closed = True
        self._wake_connector.set()
        self._outbox.put(None)
        with self._lock:
            connection, self._connection = self._connection, None
            if connection is not None:
                connection.alive = False  # its end is expected now: not a loss to recover from
        if connection is not None:
            try:
                connection.sock.sendall(protocol.encode(protocol.Frame(protocol.CLOSING, bundle_id=self.bundle_id)))
            except OSError:
                pass
            connection.close()
        for thread in self._threads:
            thread.join(timeout=5)

    def __enter__(self) -> "EdgeClient":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.close()

    # --- frames ----------------------------------------------------------------------------

    def run(self, frames: Iterable[SourceFrame]) -> Iterator[Outcome]:
        """Submit each frame and yield outcomes as they arrive (not in frame order); then the rest."""
        for frame in frames:
            while not self._slots.acquire(timeout=0.05):
                self._expire_overdue()
                for outcome in self._ready_outcomes():
                    yield outcome
            self._submit(frame)
            for outcome in self._ready_outcomes():
                yield outcome
        while True:
            with self._lock:
                waiting = len(self._pending)
            if not waiting and self._outcomes.empty():
                return
            try:
                yield self._outcomes.get(timeout=0.05)
            except queue.Empty:
                self._expire_overdue()

    def run_all(self, frames: Iterable[SourceFrame]) -> List[Outcome]:
        return sorted(self.run(frames), key=lambda outcome: outcome.index)

    def _ready_outcomes(self) -> Iterator[Outcome]:
        while True:
            try:
                yield self._outcomes.get_nowait()
            except queue.Empty:
                return

    def _submit(self, frame: SourceFrame) -> None:
        """Run the edge half on one frame; answer it here when the exit branch is sure enough, else send it.
        The caller holds a slot for it."""
        started = time.monotonic()
        codes, exit_logits = self.edge.codes_and_exit(frame.image[None])
        exit_logits = None if exit_logits is None else exit_logits[0]
        with self._lock:
            self.stats.frames += 1
            if exit_logits is not None and self.exit_threshold is not None and \
                    softmax_entropy(exit_logits[None])[0] < self.exit_threshold:
                self._finish(frame.index, frame.label, started, EDGE, exit_logits, "")
                return
        payload = encode_frame(frames_of(codes, self.wire)[0], self.wire)
        with self._lock:
            self.stats.payload_bytes += len(payload)
            connection = self._connection
            if connection is None:
                self._finish(frame.index, frame.label, started, *self._fallback(exit_logits))
                return
            request_id = next(self._request_ids)
            self._pending[request_id] = _InFlight(frame.index, frame.label, started,
                                                  started + self.config.reply_timeout_s, connection, exit_logits)
        data = protocol.encode(protocol.features_frame(request_id, self.bundle_id, payload, self.wire,
                                                       self.quantization))
        link = self.config.link
        deliver_at = link.uplink_arrival(len(data), time.monotonic()) if link else 0.0
        self._outbox.put((deliver_at, connection, data, request_id))

    def _fallback(self, exit_logits, problem: Optional[str] = None, what: str = "cloud unreachable"):
        """(answered_by, logits, note) for a frame the cloud will not answer (unreachable, or its backend failed
        or hung): the exit branch's answer when the bundle has one, else an explicit error."""
        problem = "{} ({})".format(what, problem or self._last_problem)
        if exit_logits is not None:
            return EDGE, exit_logits, problem + "; answered by the edge's exit branch"
        return ERROR, None, problem + "; the bundle has no early exit to answer on the edge"

    def _finish(self, index, label, started, answered_by, outputs, error) -> None:
        """Record one frame's outcome (`outputs`: one array, a list of them, or None). The caller holds the
        lock, so that `run` never sees a frame neither pending nor queued."""
        self.stats.outcomes[answered_by] += 1
        outputs = outputs if outputs is None or isinstance(outputs, list) else [outputs]
        logits = None if outputs is None else outputs[self.scored if len(outputs) > 1 else 0]
        self._outcomes.put(Outcome(index, answered_by, logits, error, time.monotonic() - started, label, outputs))
        self._slots.release()

    def _complete(self, request_id: int, answered_by: str, logits, error: str = "") -> None:
        with self._lock:
            entry = self._pending.pop(request_id, None)
            if entry is None:  # already given an outcome (timed out, connection lost)
                self.stats.late_replies += 1
                return
            self._finish(entry.index, entry.label, entry.started, answered_by, logits, error)

    def _outputs(self, values: np.ndarray) -> List[np.ndarray]:
        """A reply's values → one array per cloud output; a reply of another size is refused."""
        if values.size != self.reply_values:
            raise ProtocolError("RESULT carries {} values, the bundle's outputs {} hold {}".format(
                values.size, [name for name, _ in self.output_sizes], self.reply_values))
        return split_values(values.reshape(-1), self.output_sizes)

    def _fail_over(self, request_id: int, problem: str, what: str = "cloud unreachable") -> None:
        with self._lock:
            entry = self._pending.pop(request_id, None)
            if entry is not None:
                self._finish(entry.index, entry.label, entry.started,
                             *self._fallback(entry.exit_logits, problem, what))

    def _expire_overdue(self) -> None:
        now = time.monotonic()
        with self._lock:
            overdue = [request_id for request_id, entry in self._pending.items() if entry.deadline < now]
        for request_id in overdue:
            self._fail_over(request_id, "no reply within {} s".format(self.config.reply_timeout_s))

    # --- threads ---------------------------------------------------------------------------

    def _send_loop(self) -> None:
        while True:
            item = self._outbox.get()
            if item is None:
                return
            deliver_at, connection, data, request_id = item
            delay = deliver_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            if not connection.alive:
                continue  # its frames were already given outcomes when it died
            try:
                connection.sock.sendall(data)
            except OSError as error:
                self._connection_lost(connection, "send failed: {}".format(error))
                continue
            with self._lock:
                self.stats.bytes_sent += len(data)

    def _receive_loop(self, connection: _Connection) -> None:
        """Replies until the connection ends. Any fault in a reply loses the connection (its frames get their
        outcomes, the edge reconnects); none ends this thread."""
        while connection.alive:
            try:
                frame = connection.read_frame(REPLY_LIMITS)
                with self._lock:
                    self.stats.bytes_received += protocol.HEADER_BYTES + 4 * len(frame.shape) + len(frame.payload)
                if self.config.link is not None:
                    self.config.link.wait_downlink()
                lost = self._take_reply(frame)
            except Exception as error:  # a malformed reply, a closed socket, or a fault here
                lost = str(error) or type(error).__name__
            if lost:
                self._connection_lost(connection, lost)
                return

    def _take_reply(self, frame) -> Optional[str]:
        """Complete the frame a reply answers; the reason the connection is lost, if it is."""
        if frame.type == protocol.RESULT:
            try:
                self._complete(frame.request_id, CLOUD, self._outputs(protocol.result_values(frame)))
            except ProtocolError as error:
                self._complete(frame.request_id, ERROR, None, str(error))
            return None
        if frame.type == protocol.ERROR and frame.request_id and not frame.flags & protocol.FLAG_FINAL:
            code, message = protocol.error_details(frame)
            if code in CLOUD_FAILURES:  # not the frame's fault: answered like an unreachable cloud
                self._fail_over(frame.request_id, message, "cloud failed")
                return None
            self._complete(frame.request_id, ERROR, None, "server refused the frame ({}): {}".format(
                protocol.ERROR_NAMES.get(code, code), message))
            return None
        if frame.type == protocol.ERROR:
            return "server error: {}".format(protocol.error_details(frame)[1])
        if frame.type != protocol.CLOSING:
            return "unexpected {} frame from the server".format(frame.type_name)
        return "server closed the connection"

    def _connect_loop(self) -> None:
        while not self._closed:
            self._wake_connector.wait(timeout=0.05)
            self._wake_connector.clear()
            with self._lock:
                due = self._connection is None and time.monotonic() >= self._next_attempt
            if not due or self._closed:
                continue
            try:
                self._connect()
            except (ProtocolError, OSError, ssl.CertificateError) as error:
                self._connection_failed(str(error))

    # --- connecting ------------------------------------------------------------------------

    def _connect(self) -> None:
        config = self.config
        sock = socket.create_connection((config.host, config.port), timeout=config.connect_timeout_s)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if config.ssl_context is not None:
                sock = config.ssl_context.wrap_socket(sock, server_hostname=config.server_hostname or config.host)
        except BaseException:
            sock.close()
            raise
        connection = _Connection(sock)
        try:
            self._handshake(connection)
            sock.settimeout(None)
        except BaseException:
            connection.close()
            raise
        with self._lock:
            self._connection = connection
            self.stats.connects += 1
            self._backoff = config.backoff_s
        receiver = threading.Thread(target=self._receive_loop, args=(connection,), name="edgesplit-receiver",
                                    daemon=True)
        receiver.start()
        self._threads.append(receiver)
        log.info("connected to %s:%d", config.host, config.port)

    def _handshake(self, connection: _Connection) -> None:
        key = self.config.key
        client_nonce = protocol.new_nonce()
        connection.sock.sendall(protocol.encode(protocol.Frame(protocol.HELLO, bundle_id=self.bundle_id,
                                                               payload=client_nonce)))
        reply = connection.read_frame(REPLY_LIMITS)
        server_nonce = b""
        if reply.type == protocol.CHALLENGE:
            if not key:
                raise ProtocolError("the server requires a shared key: set EDGESPLIT_KEY or --key-file",
                                    protocol.AUTH_FAILED)
            server_nonce = reply.payload
            connection.sock.sendall(protocol.encode(protocol.Frame(
                protocol.AUTH, bundle_id=self.bundle_id,
                payload=protocol.client_proof(key, server_nonce, client_nonce, self.bundle_id))))
            reply = connection.read_frame(REPLY_LIMITS)
        if reply.type == protocol.ERROR:
            protocol.raise_error_frame(reply, "handshake with {}:{}".format(self.config.host, self.config.port))
        if reply.type != protocol.READY:
            raise ProtocolError("handshake: expected READY, the server sent {}".format(reply.type_name))
        if key and not server_nonce:
            raise ProtocolError("the server skipped authentication (started with --no-auth) but this edge "
                                "holds a key: refusing an unauthenticated server", protocol.AUTH_FAILED)
        if key and not protocol.proofs_match(
                protocol.server_proof(key, server_nonce, client_nonce, self.bundle_id), reply.payload):
            raise ProtocolError("the server's key proof is wrong: it does not hold this edge's key",
                                protocol.AUTH_FAILED)

    def _connection_failed(self, problem: str) -> None:
        with self._lock:
            self._last_problem = problem
            self._next_attempt = time.monotonic() + self._backoff * random.uniform(0.8, 1.2)
            self._backoff = min(self.config.backoff_max_s, self._backoff * 2)
        log.warning("%s; retrying", problem)

    def _connection_lost(self, connection: _Connection, problem: str) -> None:
        """Fail every frame in flight on `connection` over to the fallback, then reconnect."""
        with self._lock:
            if not connection.alive:
                return  # the other thread of this connection got here first
            connection.alive = False
            if self._connection is connection:
                self._connection = None
            lost = [request_id for request_id, entry in self._pending.items() if entry.connection is connection]
        connection.close()
        self._connection_failed("connection lost: {}".format(problem))
        for request_id in lost:
            self._fail_over(request_id, "connection lost: {}".format(problem))
        self._wake_connector.set()
