"""The edge client: run the head, send its codes to the cloud, match the replies.

Python 3.6 with numpy and threads (JetPack 4.6 ships 3.6): the caller's thread runs the edge
half and submits frames, a sender thread hands them to the transport (through the emulated link
when one is set), the transport's own threads report replies, a connector thread reconnects with
backoff. Every submitted frame ends in exactly one Outcome: a cloud answer, an edge answer,
or an explicit error (cloud unreachable, refused, no reply in time). How the cloud is reached —
edgesplit's TCP protocol or Triton's gRPC — is the transport's (runtime/transports/); this module
is the policy.
"""

import logging
import queue
import random
import ssl
import threading
import time
import weakref
from typing import Iterable, Iterator, List, NamedTuple, Optional, Union

import numpy as np

from runtime import protocol
from runtime.adaptive import FLOOR_BPS, Switcher, UplinkEstimate
from runtime.bundle import ADAPTIVE, Bundle
from runtime.errors import ProtocolError
from runtime.images import SourceFrame
from runtime.link import EmulatedLink
from runtime.local import (WholeModelHalf, class_output, edge_half, output_sizes, reply_values, softmax_entropy,
                           split_values)
from runtime.transports import DEFAULT_TRANSPORT, Channel, Replies, Server, Tls, open_transport

log = logging.getLogger("edgesplit.edge")

CLOUD, EDGE, ERROR = "cloud", "edge", "error"
CLOUD_FAILURES = (protocol.INTERNAL, protocol.TIMEOUT)  # per-frame errors that are the cloud's, not the frame's
TRANSIENT_REFUSALS = (protocol.BUSY,)  # a handshake refused for now: retried with backoff like an unreachable server
SILENT_TIMEOUTS = 3  # frames timed out with nothing heard since they were sent: the connection is replaced
UNMATCHED_SLACK = 16  # replies matching no frame in flight, beyond one per frame that timed out, before the loss


class Outcome(NamedTuple):
    index: int
    answered_by: str  # CLOUD, EDGE or ERROR
    logits: Optional[np.ndarray]  # the classification output (the first, unless the manifest says otherwise)
    error: str
    latency_s: float  # frame taken from the source (paced: from its capture) → outcome
    label: Union[int, np.ndarray, None]  # a class index, or one per pixel
    outputs: Optional[List[np.ndarray]] = None  # every output the answer carries, in the manifest's order
    point: int = 0  # the operating point it ran at (an adaptive bundle's index; 0 for any other bundle)


class ClientConfig(NamedTuple):
    host: str
    port: int
    key: bytes = b""  # the TCP transport's shared key (Triton's gRPC authenticates with TLS instead)
    tls: Optional[Tls] = None
    in_flight: int = 8
    reply_timeout_s: float = 10.0
    connect_timeout_s: float = 5.0
    backoff_s: float = 0.1
    backoff_max_s: float = 5.0
    link: Optional[EmulatedLink] = None
    exit_threshold: Optional[float] = None  # overrides the bundle's; None: the bundle's (None there: never exit)
    transport: str = DEFAULT_TRANSPORT  # a runtime.transports.TRANSPORTS key
    model: str = ""  # grpc: the Triton ensemble to call ("" for the default)
    rate: Optional[object] = None  # an adaptive bundle's rate source (runtime.adaptive); None: UplinkEstimate
    point: Optional[int] = None  # an adaptive bundle's point to hold to, not switching; None: follow the uplink

    @property
    def server(self) -> Server:
        return Server(self.transport, self.host, self.port, self.model)


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
        self.abandoned = 0  # connections given up on for silence or for replies to frames never sent

    def as_dict(self) -> dict:
        return {"frames": self.frames, "cloud_answers": self.outcomes[CLOUD], "edge_answers": self.outcomes[EDGE],
                "errors": self.outcomes[ERROR], "bytes_sent": self.bytes_sent, "bytes_received": self.bytes_received,
                "payload_bytes": self.payload_bytes, "connects": self.connects, "late_replies": self.late_replies,
                "abandoned_connections": self.abandoned}


class _InFlight(NamedTuple):
    index: int
    label: Union[int, np.ndarray, None]
    started: float
    deadline: float
    channel: Optional[Channel]
    exit_logits: Optional[np.ndarray]  # the edge's own answer if the cloud's never comes
    point: int = 0  # the operating point the frame ran at


class _Point:
    """One operating point on the edge: what runs on each image (the head and encoder, the image's coder, or for
    edge-only the whole model) and the byte a frame it sends starts with (an adaptive bundle's point index)."""

    def __init__(self, bundle: Bundle, prefix: bytes, exit_threshold: Optional[float], threads: Optional[int]):
        self.whole = WholeModelHalf(bundle, threads) if bundle.strategy == "edge-only" else None
        self.edge = None if self.whole else edge_half(bundle, threads)
        bundle_threshold = (bundle.manifest.get("exit") or {}).get("threshold")
        self.exit_threshold = bundle_threshold if exit_threshold is None else exit_threshold
        self.prefix = prefix

    def process(self, image: np.ndarray):
        """One image → (its answer here or None, the payload to send or None, the exit branch's logits or None):
        the whole model's outputs, or the exit's answer when it is sure enough, or codes for the cloud."""
        if self.whole is not None:
            return [output[0] for output in self.whole.outputs_of(image[None])], None, None
        codes, exit_logits = self.edge.codes_and_exit(image[None])
        exit_logits = None if exit_logits is None else exit_logits[0]
        if exit_logits is not None and self.exit_threshold is not None and \
                softmax_entropy(exit_logits[None])[0] < self.exit_threshold:
            return exit_logits, None, exit_logits
        return None, self.prefix + self.edge.coding.encode(self.edge.coding.frames(codes)[0]), exit_logits


def switcher(bundle: Bundle, config: "ClientConfig") -> Optional[Switcher]:
    """An adaptive bundle's: its table, followed on `config.rate` or on the edge's own estimate of its uplink;
    None for a bundle of one point, or with `config.point` held."""
    if bundle.strategy != ADAPTIVE or config.point is not None:
        return None
    if config.rate is not None:
        return Switcher(bundle.table, config.rate)
    rates = [rate for rate, _ in bundle.table]  # it starts at the second row: the first point sending the least
    return Switcher(bundle.table, UplinkEstimate(rates[min(1, len(rates) - 1)], 2 * max(rates[-1], FLOOR_BPS)))


class _Health:
    """What the client watches of a channel: frames that timed out with nothing heard on it since they were sent
    (silence, not a slow or partial answer), and replies that matched no frame against the frames that timed out
    (each of those may still be answered, late, once)."""

    def __init__(self):
        self.heard = 0.0  # when the last reply of any kind arrived
        self.silent_timeouts = 0
        self.timeouts = 0
        self.unmatched = 0
        self.verdict = ""  # why the channel is to be abandoned, once decided


class EdgeClient(Replies):
    def __init__(self, bundle: Bundle, config: ClientConfig, threads: Optional[int] = None):
        self.config = config
        self.transport = open_transport(bundle, config.server, config.key, config.tls, config.connect_timeout_s,
                                        config.reply_timeout_s)
        adaptive = bundle.strategy == ADAPTIVE
        self.points = [_Point(point, bytes([index]) if adaptive else b"", config.exit_threshold, threads)
                       for index, point in enumerate(bundle.points)]
        if config.point is not None and not 0 <= config.point < len(self.points):
            raise ProtocolError("bundle {} has {} operating point(s), numbered from 0: there is no point {}".format(
                bundle.bundle_id, len(self.points), config.point))
        self.switcher = switcher(bundle, config)
        # what the edge observes of its frames feeds its own estimate (an oracle's rate needs none of it)
        self.observer = self.switcher.source if self.switcher and isinstance(self.switcher.source,
                                                                             UplinkEstimate) else None
        self.held = config.point or 0
        self.output_sizes = output_sizes(bundle)
        self.reply_values = reply_values(bundle)
        self.scored = class_output(bundle)
        self.stats = ClientStats()
        self._lock = threading.Lock()
        self._slots = threading.Semaphore(config.in_flight)
        self._pending = {}  # request id → _InFlight
        self._outcomes = queue.Queue()
        self._outbox = queue.Queue()
        self._channel = None
        self._health = weakref.WeakKeyDictionary()  # channel → _Health, from its first frame or reply
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
            raise ProtocolError("TLS with {} failed: {}".format(self.config.server, error)) from error
        except OSError as error:
            self._connection_failed("cloud server {} unreachable: {}".format(self.config.server, error))
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
            channel, self._channel = self._channel, None
        if channel is not None:
            channel.close()  # its end is expected now: not a loss to recover from
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
            self._expire_overdue()
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
        started = frame.start()
        number = self.switcher.choose() if self.switcher else self.held
        # a frame the source could not give (an unreadable file) has an outcome saying why
        answer, payload, exit_logits = (None, None, None) if frame.error else self.points[number].process(frame.image)
        with self._lock:
            self.stats.frames += 1
            if payload is None:
                self._finish(frame.index, frame.label, started, ERROR if frame.error else EDGE, answer, frame.error,
                             number)
                return
            channel = self._channel
            if channel is None:
                self._finish(frame.index, frame.label, started, *self._fallback(exit_logits), number)
                return
            request_id = next(self._request_ids)
            self._pending[request_id] = _InFlight(frame.index, frame.label, started,
                                                  started + self.config.reply_timeout_s, channel, exit_logits, number)
        size, link = channel.wire_bytes(len(payload)), self.config.link
        if self.observer is not None:
            self.observer.sent(request_id, size, time.monotonic())
        deliver_at = link.uplink_arrival(size, time.monotonic()) if link else 0.0
        self._outbox.put((deliver_at, channel, payload, request_id))

    def _fallback(self, exit_logits, problem: Optional[str] = None, what: str = "cloud unreachable"):
        """(answered_by, logits, note) for a frame the cloud will not answer (unreachable, or its backend failed
        or hung): the exit branch's answer when the bundle has one, else an explicit error."""
        problem = "{} ({})".format(what, problem or self._last_problem)
        if exit_logits is not None:
            return EDGE, exit_logits, problem + "; answered by the edge's exit branch"
        return ERROR, None, problem + "; the bundle has no early exit to answer on the edge"

    def _finish(self, index, label, started, answered_by, outputs, error, point) -> None:
        """Record one frame's outcome (`outputs`: one array, a list of them, or None). The caller holds the
        lock, so that `run` never sees a frame neither pending nor queued."""
        self.stats.outcomes[answered_by] += 1
        outputs = outputs if outputs is None or isinstance(outputs, list) else [outputs]
        # an exit's answer is one array, the class output's own
        logits = None if outputs is None or self.scored is None else outputs[self.scored if len(outputs) > 1 else 0]
        self._outcomes.put(Outcome(index, answered_by, logits, error, time.monotonic() - started, label, outputs,
                                   point))
        self._slots.release()

    def _answer(self, channel: Channel, request_id: int, outcome) -> None:
        """Give the frame a reply names its outcome, `outcome(entry)` → (answered_by, outputs, error); a reply that
        names no frame in flight on `channel` counts against it, and past the bound loses it."""
        with self._lock:
            entry = self._matched(channel, request_id)
            if entry is not None:
                self._finish(entry.index, entry.label, entry.started, *outcome(entry), entry.point)
            problem = self._health_of(channel).verdict
        if problem:
            self._abandon(channel, problem)

    def _matched(self, channel: Channel, request_id: int) -> Optional[_InFlight]:
        """The frame in flight on `channel` a reply answers, popped; None for a late reply (its frame already has
        an outcome) or one for a frame never sent. The caller holds the lock."""
        entry = self._pending.get(request_id)
        health = self._health_of(channel)
        health.heard, health.silent_timeouts = time.monotonic(), 0
        if entry is not None and entry.channel is channel:
            if self.observer is not None:
                self.observer.replied(request_id, time.monotonic())
            return self._pending.pop(request_id)
        self.stats.late_replies += 1
        health.unmatched += 1
        if health.unmatched > health.timeouts + UNMATCHED_SLACK and not health.verdict:
            health.verdict = ("{} replies matched no frame in flight ({} frames had timed out): the server answers "
                              "frames this edge never sent".format(health.unmatched, health.timeouts))
        return None

    def _health_of(self, channel: Channel) -> _Health:
        """The caller holds the lock."""
        health = self._health.get(channel)
        if health is None:
            health = self._health[channel] = _Health()
        return health

    def _malformed(self, values: np.ndarray) -> bool:
        """Not one flat float32 vector of the outputs' size: the server does not speak the protocol."""
        return values.dtype.kind != "f" or values.dtype.itemsize != 4 or values.shape != (self.reply_values,)

    def _faulty(self, values: np.ndarray, malformed: bool) -> Optional[str]:
        """Why a RESULT's values are no answer: malformed, or holding NaN or infinity (this frame's answer is
        broken)."""
        if malformed:
            return "RESULT is {} shaped {}; the bundle's outputs {} are one flat float32 vector of {} values".format(
                values.dtype.name, values.shape, [name for name, _ in self.output_sizes], self.reply_values)
        if not np.isfinite(values).all():
            return "RESULT holds NaN or infinity"
        return None

    def _fail_over(self, request_id: int, problem: str, what: str = "cloud unreachable") -> None:
        with self._lock:
            entry = self._pending.pop(request_id, None)
            if entry is not None:
                if self.observer is not None:
                    self.observer.dropped(request_id)
                self._finish(entry.index, entry.label, entry.started,
                             *self._fallback(entry.exit_logits, problem, what), entry.point)

    def _expire_overdue(self) -> None:
        """Frames past their deadline get their fallback; SILENT_TIMEOUTS of them on a channel that has said
        nothing since they were sent abandon it: a hung server or a black-holing path keeps a connection open,
        silent. (A server answering some frames is slow or lossy, not silent: it keeps its connection.)"""
        now = time.monotonic()
        with self._lock:
            overdue = [(request_id, entry) for request_id, entry in self._pending.items() if entry.deadline < now]
            silent = set()
            for _, entry in overdue:
                health = self._health_of(entry.channel)
                health.timeouts += 1
                if health.heard < entry.started:
                    health.silent_timeouts += 1
                if health.silent_timeouts >= SILENT_TIMEOUTS and entry.channel.alive:
                    silent.add(entry.channel)
        for request_id, _ in overdue:
            self._fail_over(request_id, "no reply within {} s".format(self.config.reply_timeout_s))
        for channel in silent:
            self._abandon(channel, "no reply to {} frames within {} s and nothing else heard: the connection is "
                                   "silent".format(SILENT_TIMEOUTS, self.config.reply_timeout_s))

    def _abandon(self, channel: Channel, problem: str) -> None:
        """Give up on a channel the server may not have given up on: reconnect at once, no backoff."""
        with self._lock:
            if channel.alive:
                self.stats.abandoned += 1
        self.lost(channel, problem)
        with self._lock:
            self._next_attempt = time.monotonic()
        self._wake_connector.set()

    # --- what the transport reports (Replies) -----------------------------------------------

    def result(self, channel: Channel, request_id: int, values: np.ndarray, received_bytes: int) -> None:
        """A RESULT: the frame's answer, or (faulty) its fallback marked as the cloud's failure; a malformed one
        also loses the connection."""
        self._received(received_bytes)
        malformed = self._malformed(values)
        problem = self._faulty(values, malformed)
        if problem is None:
            outputs = split_values(values.astype(np.float32), self.output_sizes)
            self._answer(channel, request_id, lambda entry: (CLOUD, outputs, ""))
            return
        self._answer(channel, request_id, lambda entry: self._fallback(entry.exit_logits, problem, "cloud failed"))
        if malformed:
            self.lost(channel, problem)

    def refused(self, channel: Channel, request_id: int, code: int, message: str, received_bytes: int) -> None:
        self._received(received_bytes)
        if code in CLOUD_FAILURES:  # not the frame's fault: answered like an unreachable cloud
            self._answer(channel, request_id, lambda entry: self._fallback(entry.exit_logits, message, "cloud failed"))
            return
        refusal = "server refused the frame ({}): {}".format(protocol.ERROR_NAMES.get(code, code), message)
        self._answer(channel, request_id, lambda entry: (ERROR, None, refusal))

    def lost(self, channel: Channel, problem: str) -> None:
        """Fail every frame in flight on `channel` over to the fallback, then reconnect."""
        problem = "connection lost: {}".format(problem)
        with self._lock:
            if not channel.alive:
                return  # another thread of this channel got here first
            channel.alive = False
            if self._channel is channel:
                self._channel = None
                self._last_problem = problem  # what a frame submitted from now on is told, with the channel gone
            lost = [request_id for request_id, entry in self._pending.items() if entry.channel is channel]
        channel.close()
        self._connection_failed(problem)
        for request_id in lost:
            self._fail_over(request_id, problem)
        self._wake_connector.set()

    def _received(self, size: int) -> None:
        with self._lock:
            self.stats.bytes_received += size
        if self.config.link is not None:
            self.config.link.wait_downlink()

    # --- threads ---------------------------------------------------------------------------

    def _send_loop(self) -> None:
        while True:
            item = self._outbox.get()
            if item is None:
                return
            deliver_at, channel, payload, request_id = item
            delay = deliver_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            if not channel.alive:
                continue  # its frames were already given outcomes when it died
            try:
                sent = channel.send(request_id, payload)
            except OSError as error:
                self.lost(channel, "send failed: {}".format(error))
                continue
            with self._lock:
                self.stats.bytes_sent += sent
                self.stats.payload_bytes += len(payload)

    def _connect_loop(self) -> None:
        while not self._closed:
            self._wake_connector.wait(timeout=0.05)
            self._wake_connector.clear()
            with self._lock:
                due = self._channel is None and time.monotonic() >= self._next_attempt
            if not due or self._closed:
                continue
            try:
                self._connect()
            except (ProtocolError, OSError, ssl.CertificateError) as error:
                self._connection_failed(str(error))

    # --- connecting ------------------------------------------------------------------------

    def _connect(self) -> None:
        channel = self.transport.open(self)
        with self._lock:
            if not channel.alive:  # lost between its handshake and here: its receiver runs from the start
                raise ConnectionError("connection lost as it opened ({})".format(self._last_problem))
            self._channel = channel
            self.stats.connects += 1
            self._backoff = self.config.backoff_s
        log.info("connected to %s", self.config.server)

    def _connection_failed(self, problem: str) -> None:
        with self._lock:
            self._last_problem = problem
            self._next_attempt = time.monotonic() + self._backoff * random.uniform(0.8, 1.2)
            self._backoff = min(self.config.backoff_max_s, self._backoff * 2)
        log.warning("%s; retrying", problem)


class LocalClient:
    """An edge-only bundle's client: the whole model answers every frame on the device; nothing is sent, no
    server is needed. The same interface and outcomes as EdgeClient, so `edgesplit edge` runs either."""

    def __init__(self, bundle: Bundle, threads: Optional[int] = None):
        self.model = WholeModelHalf(bundle, threads)
        self.scored = class_output(bundle)
        self.stats = ClientStats()

    def start(self) -> "LocalClient":
        return self

    def close(self) -> None:
        pass

    def __enter__(self) -> "LocalClient":
        return self

    def __exit__(self, *exc_info) -> None:
        pass

    def run(self, frames: Iterable[SourceFrame]) -> Iterator[Outcome]:
        for frame in frames:
            started = frame.start()
            self.stats.frames += 1
            if frame.error:
                self.stats.outcomes[ERROR] += 1
                yield Outcome(frame.index, ERROR, None, frame.error, time.monotonic() - started, frame.label)
                continue
            outputs = [output[0] for output in self.model.outputs_of(frame.image[None])]
            self.stats.outcomes[EDGE] += 1
            logits = None if self.scored is None else outputs[self.scored]
            yield Outcome(frame.index, EDGE, logits, "", time.monotonic() - started, frame.label, outputs)

    def run_all(self, frames: Iterable[SourceFrame]) -> List[Outcome]:
        return list(self.run(frames))


def open_client(bundle: Bundle, config: Optional[ClientConfig], threads: Optional[int] = None):
    """The client a bundle needs: edge-only bundles answer on the device (no `config`); the others reach a server
    as `config` says."""
    if bundle.strategy == "edge-only":
        return LocalClient(bundle, threads)
    if config is None:
        raise ProtocolError("this bundle ({}) sends frames to a cloud server: give its address".format(
            bundle.strategy))
    return EdgeClient(bundle, config, threads)
