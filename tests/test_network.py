"""Edge client and cloud server over real TCP on 127.0.0.1, with the default bundle."""

import collections
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from runtime import protocol
from runtime.bundle import load_bundle
from runtime.cloud import BackgroundServer, ServerConfig
from runtime.edge import CLOUD, ERROR, ClientConfig, EdgeClient
from runtime.errors import ProtocolError
from runtime.images import open_source
from runtime.local import SplitInference
from runtime.transports import Tls

from benchmarks.hostile import read_exactly, relay
from benchmarks.reliability import authenticated
from calibration_data import DEFAULT_CALIBRATION

KEY = b"a test key of 128 bits"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bundle(int8_built):
    return load_bundle(int8_built.bundle)


@pytest.fixture(scope="module")
def frames(bundle):
    return list(open_source(str(DEFAULT_CALIBRATION), bundle.input_spec()))[:320]


@pytest.fixture(scope="module")
def reference(bundle, frames):
    """In-process logits of the same bundle: what the network must reproduce."""
    return SplitInference(bundle)(np.stack([frame.image for frame in frames]))


@pytest.fixture()
def server(bundle):
    with BackgroundServer(bundle, ServerConfig(key=KEY, max_batch=32, max_wait_ms=5.0, frame_timeout_s=0.5,
                                               metrics_port=0)) as running:
        yield running


def client(bundle, address, **options):
    options.setdefault("key", KEY)
    return EdgeClient(bundle, ClientConfig(address[0], address[1], **options))


def assert_matches(outcomes, reference):
    assert all(o.answered_by == CLOUD for o in outcomes), [o.error for o in outcomes if o.error][:3]
    logits = np.stack([o.logits for o in outcomes])
    expected = reference[[o.index for o in outcomes]]
    np.testing.assert_allclose(logits, expected, atol=1e-4)
    assert (logits.argmax(1) == expected.argmax(1)).all()


def test_one_edge_gets_the_in_process_results_byte_for_byte_on_the_wire(bundle, frames, reference, server):
    with client(bundle, server.address, in_flight=8) as edge:
        outcomes = edge.run_all(frames[:64])
        stats = edge.stats.as_dict()
    assert [o.index for o in outcomes] == list(range(64))
    assert_matches(outcomes, reference)
    assert stats["bytes_sent"] == 64 * (16384 + 10)  # type and flags, id, a 3-byte length, CRC-32
    assert stats["bytes_received"] == 64 * (40 + 8)  # ten float32 logits
    assert stats["payload_bytes"] == 64 * 16384
    assert server.server.metrics.value("edgesplit_frames_total", outcome="answered") == 64


def test_twenty_concurrent_edges_are_batched_together_and_all_correct(bundle, frames, reference, server):
    results, failures = {}, []

    def one_edge(number):
        try:
            with client(bundle, server.address, in_flight=4) as edge:
                results[number] = edge.run_all(frames[number * 16:(number + 1) * 16])
        except Exception as error:  # surfaced below with the edge's number
            failures.append((number, error))

    threads = [threading.Thread(target=one_edge, args=(n,)) for n in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not failures
    outcomes = [o for n in range(20) for o in results[n]]
    assert sorted(o.index for o in outcomes) == list(range(320))
    assert_matches(outcomes, reference)
    metrics = server.server.metrics
    assert metrics.value("edgesplit_batch_size_sum") == 320
    assert metrics.value("edgesplit_batch_size_count") < 320  # some backend calls served several edges


def test_wrong_bundle_id_is_refused_without_telling_the_peer_the_served_one(bundle, server):
    other = load_bundle(bundle.directory)
    other.manifest = dict(other.manifest, bundle_id="0" * 32)
    with pytest.raises(ProtocolError, match="this server does not serve bundle 0{32}") as raised:
        client(other, server.address).start()
    assert raised.value.code == protocol.BUNDLE_MISMATCH
    assert bundle.bundle_id not in str(raised.value)  # with --no-auth the id is all a peer needs


@pytest.mark.parametrize("key, bits", [(b"short key", "72 bits (9 bytes)"),
                                       (b"0123456789abcdef", "64 bits (16 bytes, hex digits)"),  # token_hex(8)
                                       (b"x" * 29, "0 bits (29 bytes)")])
def test_keys_under_128_bits_are_refused_with_how_to_make_one(bundle, key, bits):
    for make in (lambda: BackgroundServer(bundle, ServerConfig(key=key)),
                 lambda: EdgeClient(bundle, ClientConfig("127.0.0.1", 9, key=key))):
        with pytest.raises(ProtocolError, match=rf"the shared key holds at most {re.escape(bits)}; at least 128 are "
                                                r"needed: make one with python3 -c 'import secrets"):
            make()


@pytest.mark.parametrize("option, value, message", [
    ("idle_timeout_s", 0, "idle_timeout_s must be a positive number of seconds, got 0"),
    ("shutdown_timeout_s", float("nan"), "shutdown_timeout_s must be a positive number of seconds, got nan"),
    ("max_connections", 0, "max_connections must be at least 1, got 0"),
])
def test_nonsense_limits_are_refused_in_one_line(bundle, option, value, message):
    with pytest.raises(ProtocolError, match=re.escape(message)):
        BackgroundServer(bundle, ServerConfig(key=KEY, **{option: value}))


def test_an_address_guessing_keys_is_refused_after_the_limit(bundle, frames, reference):
    with BackgroundServer(bundle, ServerConfig(key=KEY, auth_failures=3)) as running:
        for _ in range(3):
            with pytest.raises(ProtocolError, match="edge and server hold different keys"):
                client(bundle, running.address, key=b"a guessed key of 128 bits").start()
        for key in (b"a guessed key of 128 bits", KEY):  # refused before its handshake, the right key too
            with pytest.raises(ProtocolError, match=r"too many failed key proofs from 127.0.0.1; try again in \d+ s"):
                client(bundle, running.address, key=key).start()
        # the refusal costs no handshake: it is not counted as another failure, and other state is untouched
        assert len(running.server.listener.throttle.failures["127.0.0.1"]) == 3


def test_wrong_or_missing_key_is_refused(bundle, server):
    with pytest.raises(ProtocolError, match="edge and server hold different keys") as raised:
        client(bundle, server.address, key=b"another key of 128 bits").start()
    assert raised.value.code == protocol.AUTH_FAILED
    with pytest.raises(ProtocolError, match="the server requires a shared key"):
        client(bundle, server.address, key=b"").start()
    assert server.server.metrics.value("edgesplit_refused_connections_total",
                                       reason="authentication failed") == 1


def test_an_edge_with_a_key_refuses_a_server_without_authentication(bundle, frames):
    with BackgroundServer(bundle, ServerConfig(allow_unauthenticated=True)) as open_server:
        with pytest.raises(ProtocolError, match="refusing an unauthenticated server"):
            client(bundle, open_server.address).start()
        with client(bundle, open_server.address, key=b"") as edge:
            assert [o.answered_by for o in edge.run_all(frames[:2])] == [CLOUD, CLOUD]


def test_a_server_without_key_must_be_told_to_skip_authentication(bundle):
    with pytest.raises(ProtocolError, match="--no-auth"):
        BackgroundServer(bundle, ServerConfig())


class RawConnection:
    """A hand-driven client that completes the handshake and then sends whatever a test wants."""

    def __init__(self, address, bundle_id, receive_buffer=None):
        self.sock = authenticated(address, bundle_id, KEY, receive_buffer)
        self.stream = self.sock.makefile("rb")
        self.bundle_id = bundle_id

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def receive(self) -> protocol.Frame:
        def read_exactly(size):
            data = self.stream.read(size)
            if len(data) != size:
                raise ConnectionError("closed")
            return data
        return protocol.read_frame(read_exactly, protocol.Stream, protocol.edge_limits(10))

    def closed_by_server(self) -> bool:
        return self.stream.read(1) == b""


def stream_header(payload_length: int = 16384, kind: int = protocol.FEATURES << 4) -> bytes:
    """A stream frame's header as a peer might send it (its CRC zero)."""
    return protocol.Stream.HEAD.pack(kind, 1) + protocol.length_field(payload_length) + bytes(4)


@pytest.mark.parametrize("name, data, code, message", [
    ("garbage", b"GET / HTTP/1.1\r\n" + bytes(range(36)), protocol.BAD_FRAME, "unknown flags 0x7 in a READY frame"),
    ("oversized", stream_header(1 << 27), protocol.BAD_FRAME, "FEATURES payload of 134217728 bytes is over the limit"),
    ("result from an edge", stream_header(40, protocol.RESULT << 4), protocol.BAD_FRAME, "unexpected RESULT frame"),
    ("truncated", stream_header() + bytes(100), protocol.TIMEOUT, "is truncated"),
    ("corrupted", None, protocol.BAD_FRAME, "fails its CRC-32"),
])
def test_broken_frames_get_an_error_and_the_server_keeps_serving_others(
        bundle, frames, reference, server, name, data, code, message):
    bundle_id = protocol.bundle_id_bytes(bundle.bundle_id)
    with client(bundle, server.address, in_flight=2) as bystander:
        first = bystander.run_all(frames[:8])
        raw = RawConnection(server.address, bundle_id)
        if data is None:
            good = protocol.Stream.encode(protocol.features_frame(3, bytes(16384)))
            data = good[:-1] + bytes([good[-1] ^ 1])
        raw.send(data)
        reply = raw.receive()
        assert reply.type == protocol.ERROR and reply.flags & protocol.FLAG_FINAL
        assert protocol.error_details(reply)[0] == code
        assert message in protocol.error_details(reply)[1]
        assert raw.closed_by_server()
        second = bystander.run_all(frames[8:16])
    assert_matches(first + second, reference)
    with client(bundle, server.address) as newcomer:
        assert_matches(newcomer.run_all(frames[16:18]), reference)


def test_a_payload_that_does_not_fit_the_bundle_is_refused_and_the_connection_stays(bundle, frames, server):
    raw = RawConnection(server.address, protocol.bundle_id_bytes(bundle.bundle_id))
    for request_id, payload in ((1, bytes(100)), (2, bytes(8192)), (3, bytes(16384))):
        raw.send(protocol.Stream.encode(protocol.features_frame(request_id, payload)))
    replies = {reply.request_id: reply for reply in (raw.receive() for _ in range(3))}
    assert protocol.error_details(replies[1]) == (protocol.BAD_REQUEST,
                                                  "payload has 100 bytes, the bundle's wire format needs 16384")
    assert "8192 bytes" in protocol.error_details(replies[2])[1]
    assert replies[3].type == protocol.RESULT and protocol.result_values(replies[3], 10).shape == (10,)


def test_an_edge_of_protocol_version_1_is_told_in_one_line(bundle, server):
    """Version 1's header (52 bytes, magic and version where version 2 has them) gets UNSUPPORTED_VERSION."""
    hello = (protocol.MAGIC + bytes([1, protocol.HELLO]) + bytes(2 + 8) + protocol.bundle_id_bytes(bundle.bundle_id)
             + bytes(12) + (32).to_bytes(4, "big") + bytes(4) + protocol.new_nonce())
    with socket.create_connection(server.address, timeout=10) as raw:
        raw.sendall(hello)
        reply = protocol.read_frame(lambda count: read_exactly(raw, count), protocol.Handshake,
                                    protocol.HANDSHAKE_LIMITS)
    assert reply.flags & protocol.FLAG_FINAL and protocol.error_details(reply) == (
        protocol.UNSUPPORTED_VERSION, "protocol version 1 is not supported (this side speaks 2): run the same "
                                      "edgesplit release on the edge and the server")


def test_shutdown_answers_every_accepted_frame_then_says_closing(bundle):
    config = ServerConfig(key=KEY, max_batch=256, max_wait_ms=300.0)
    running = BackgroundServer(bundle, config)
    bundle_id = protocol.bundle_id_bytes(bundle.bundle_id)
    raw = RawConnection(running.address, bundle_id)
    for request_id in range(1, 41):
        raw.send(protocol.Stream.encode(protocol.features_frame(request_id, bytes(16384))))
    deadline = time.monotonic() + 10
    while running.server.metrics.value("edgesplit_received_bytes_total") < 40 * 16448 and time.monotonic() < deadline:
        time.sleep(0.01)
    running.close()  # the batch is still waiting for more frames when shutdown starts
    replies = [raw.receive() for _ in range(41)]
    assert sorted(r.request_id for r in replies[:40]) == list(range(1, 41))
    assert all(r.type == protocol.RESULT for r in replies[:40])
    assert replies[40].type == protocol.CLOSING
    assert raw.closed_by_server()


def test_metrics_endpoint_serves_prometheus_text(bundle, frames, server):
    with client(bundle, server.address) as edge:
        edge.run_all(frames[:5])
    host, port = server.server.metrics_address
    text = urllib.request.urlopen("http://{}:{}/metrics".format(host, port), timeout=10).read().decode()
    assert 'edgesplit_frames_total{outcome="answered"} 5.0' in text
    assert "edgesplit_latency_seconds_bucket" in text and "edgesplit_batch_size_count" in text
    with pytest.raises(urllib.error.HTTPError, match="404"):
        urllib.request.urlopen("http://{}:{}/other".format(host, port), timeout=10)


def test_tls_with_a_self_signed_certificate(bundle, frames, reference, tmp_path):
    import ssl

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost"],
                   check=True, capture_output=True)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(str(cert), str(key))
    with BackgroundServer(bundle, ServerConfig(key=KEY, ssl_context=server_context)) as tls_server:
        with client(bundle, tls_server.address, tls=Tls(ca=str(cert), server_name="localhost")) as edge:
            assert_matches(edge.run_all(frames[:8]), reference)
        with pytest.raises(ProtocolError, match="TLS with .* certificate verify failed"):
            client(bundle, tls_server.address, tls=Tls(server_name="localhost")).start()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_serve_process(bundle_dir, port, *options, log=subprocess.DEVNULL):
    command = [sys.executable, "-m", "runtime.cli", "serve", "--bundle", str(bundle_dir), "--port", str(port),
               *options]
    process = subprocess.Popen(command, cwd=str(ROOT), env=dict(os.environ, EDGESPLIT_KEY=KEY.decode()),
                               stdout=subprocess.PIPE, stderr=log, text=True)
    assert "serving bundle" in process.stdout.readline()
    return process


def metric(port: int, sample: str) -> float:
    text = urllib.request.urlopen("http://127.0.0.1:{}/metrics".format(port), timeout=10).read().decode()
    return float(re.search(r"^{} (\S+)$".format(re.escape(sample)), text, re.M).group(1))


def test_sigterm_exits_within_the_deadline_while_an_edge_never_reads(int8_built, bundle):
    port, metrics_port = free_port(), free_port()
    log = tempfile.TemporaryFile("w+")
    server = start_serve_process(int8_built.bundle, port, "--shutdown-timeout", "1",
                                 "--metrics-port", str(metrics_port), log=log)
    bundle_id = protocol.bundle_id_bytes(bundle.bundle_id)
    raw = RawConnection(("127.0.0.1", port), bundle_id, receive_buffer=4096)
    raw.sock.settimeout(0.2)
    tiny = protocol.Stream.encode(protocol.features_frame(1, bytes(100)))
    started = progress = time.monotonic()
    unsent = b""
    # replies pile up unread until every buffer is full and the server stops reading this edge (a few seconds);
    # its metrics say so, so a server merely slow to start is not mistaken for one that stopped reading
    while time.monotonic() - started < 60:
        try:
            unsent = unsent or tiny * 64
            unsent = unsent[raw.sock.send(unsent):]  # a partial send goes on where it stopped: frames stay whole
            progress = time.monotonic()
        except socket.timeout:
            if time.monotonic() - progress >= 1.0 and metric(metrics_port, "edgesplit_paused_connections") == 1:
                break
    assert metric(metrics_port, "edgesplit_paused_connections") == 1
    started = time.monotonic()
    server.send_signal(signal.SIGTERM)
    assert server.wait(timeout=30) == 0
    assert time.monotonic() - started < 1 + 5  # the deadline, and the time to close
    log.seek(0)
    assert "closing 1 connection(s) still answering after 1.0 s" in log.read()  # the deadline did it


def test_a_burst_past_the_file_limit_costs_one_log_line_and_every_peer_gets_an_outcome(int8_built, bundle, frames,
                                                                                        reference):
    """100 connections queued while the server is stopped, then let in at once with a file limit of 96: accept()
    fails at the limit (one warning, no traceback), the handshake caps turn most away as busy, each peer gets a
    CHALLENGE, BUSY or a close, and afterwards an edge with the key is served."""
    import resource

    port = free_port()
    log = tempfile.TemporaryFile("w+")
    command = [sys.executable, "-m", "runtime.cli", "serve", "--bundle", str(int8_built.bundle), "--port", str(port)]
    server = subprocess.Popen(command, cwd=str(ROOT), env=dict(os.environ, EDGESPLIT_KEY=KEY.decode()),
                              stdout=subprocess.PIPE, stderr=log, text=True,
                              preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (96, 96)))
    try:
        assert "serving bundle" in server.stdout.readline()
        bundle_id = protocol.bundle_id_bytes(bundle.bundle_id)
        server.send_signal(signal.SIGSTOP)  # the kernel queues the connections (asyncio's backlog is 100)
        peers = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(100)]
        for peer in peers:
            peer.sendall(protocol.Handshake.encode(protocol.Frame(protocol.HELLO, bundle_id=bundle_id,
                                                                  payload=protocol.new_nonce())))
        server.send_signal(signal.SIGCONT)
        outcomes = collections.Counter(first_outcome(peer) for peer in peers)
        assert set(outcomes) <= {"CHALLENGE", "BUSY", "closed"} and outcomes["CHALLENGE"] and outcomes["BUSY"], outcomes
        for peer in peers:
            peer.close()
        time.sleep(0.5)
        with client(bundle, ("127.0.0.1", port)) as edge:
            assert_matches(edge.run_all(frames[:4]), reference)
    finally:
        server.send_signal(signal.SIGCONT)
        server.send_signal(signal.SIGTERM)
        server.wait(30)
    log.seek(0)
    text = log.read()
    assert "Traceback" not in text
    assert text.count("cannot accept connections: Too many open files") == 1, text


def first_outcome(peer: socket.socket) -> str:
    """What a peer that sent HELLO heard first: CHALLENGE, an ERROR's code name, or the connection closed."""
    try:
        frame = protocol.read_frame(lambda count: read_exactly(peer, count), protocol.Handshake,
                                    protocol.HANDSHAKE_LIMITS)
    except (ConnectionError, OSError):
        return "closed"
    if frame.type == protocol.ERROR:
        return "BUSY" if protocol.error_details(frame)[0] == protocol.BUSY else protocol.error_details(frame)[1]
    return frame.type_name


def test_server_killed_and_restarted_mid_stream_every_frame_has_exactly_one_outcome(int8_built, bundle, frames, reference):
    port = free_port()
    servers = [start_serve_process(int8_built.bundle, port)]

    def restart_later():
        time.sleep(0.3)
        servers.append(start_serve_process(int8_built.bundle, port))

    outcomes, restarter = [], threading.Thread(target=restart_later)
    try:
        with client(bundle, ("127.0.0.1", port), in_flight=4, reply_timeout_s=5.0, backoff_s=0.05,
                    backoff_max_s=0.2) as edge:
            paced = (frame for frame in frames if time.sleep(0.01) is None)
            for outcome in edge.run(paced):
                outcomes.append(outcome)
                if len(outcomes) == 60:
                    servers[0].send_signal(signal.SIGKILL)  # no goodbye: the stream just breaks
                    restarter.start()
            stats = edge.stats.as_dict()
    finally:
        restarter.join()
        for process in servers:
            process.kill()
            process.wait()
    assert sorted(o.index for o in outcomes) == list(range(len(frames)))  # exactly one outcome each
    errors = [o for o in outcomes if o.answered_by == ERROR]
    answered = [o for o in outcomes if o.answered_by == CLOUD]
    assert errors and all("cloud unreachable" in o.error for o in errors)
    assert answered[-1].index > max(o.index for o in errors)  # the edge is back on the restarted server
    assert_matches(answered, reference)
    assert stats["connects"] == 2 and stats["cloud_answers"] + stats["errors"] == len(frames)
    sent = stats["bytes_sent"] // protocol.frame_bytes(bundle.wire.packed_bytes)
    assert stats["payload_bytes"] == sent * bundle.wire.packed_bytes < len(frames) * bundle.wire.packed_bytes


def test_edge_command_end_to_end(int8_built, bundle, frames, reference, server, tmp_path):
    summary_path, rows_path = tmp_path / "summary.json", tmp_path / "frames.csv"
    host, port = server.address
    result = subprocess.run(
        [sys.executable, "-m", "runtime.cli", "edge", "--bundle", str(int8_built.bundle.with_suffix(".tar")), "--server", "{}:{}".format(host, port),
         "--source", str(DEFAULT_CALIBRATION), "--limit", "100", "--rtt", "2ms", "--uplink", "100mbit",
         "--summary-json", str(summary_path), "--output", str(rows_path)],
        cwd=str(ROOT), env=dict(os.environ, EDGESPLIT_KEY=KEY.decode()), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    summary = json.loads(summary_path.read_text())
    assert summary["cloud_answers"] == 100 and summary["errors"] == 0
    expected = (reference[:100].argmax(1) == np.array([f.label for f in frames[:100]])).mean()
    assert summary["accuracy"] == pytest.approx(expected)
    assert summary["payload_bytes_per_frame"] == 16384
    assert len(rows_path.read_text().splitlines()) == 101
    assert "100 frames" in result.stdout and "100 answered by the cloud" in result.stdout


def test_edge_command_reports_a_refusal_in_one_line(int8_built, server):
    host, port = server.address
    result = subprocess.run(
        [sys.executable, "-m", "runtime.cli", "edge", "--bundle", str(int8_built.bundle), "--server",
         "{}:{}".format(host, port), "--source", str(DEFAULT_CALIBRATION)],
        cwd=str(ROOT), env=dict(os.environ, EDGESPLIT_KEY="the wrong key, 128 bits long"), capture_output=True,
        text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("error: handshake with")
    assert "authentication failed" in result.stderr


def test_serve_on_a_port_in_use_is_one_line(int8_built, server):
    host, port = server.address
    result = subprocess.run(
        [sys.executable, "-m", "edgesplit", "serve", "--bundle", str(int8_built.bundle), "--port", str(port)],
        cwd=str(ROOT), env=dict(os.environ, EDGESPLIT_KEY="a key for this test"), capture_output=True, text=True,
        timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [f"error: cannot listen on 127.0.0.1:{port}: Address already in use"]


def test_before_authentication_a_peer_gets_the_control_limit_not_the_feature_limit(bundle, server):
    """A keyless peer opening with a feature-sized frame is refused on its header, before any body is read."""
    bundle_id = protocol.bundle_id_bytes(bundle.bundle_id)
    claimed = 30000  # under this bundle's feature limit (2 x 16,384 + 1,024), far over a control frame's
    for kind, problem in ((protocol.HELLO, f"HELLO payload of {claimed} bytes is over the limit of 1024"),
                          (protocol.FEATURES, "unexpected FEATURES frame")):
        header = protocol.Handshake.HEADER.pack(protocol.MAGIC, protocol.VERSION, kind, 0, bundle_id, claimed, 0)
        with socket.create_connection(server.address, timeout=10) as raw:
            raw.sendall(header)
            reply = protocol.read_frame(lambda count: read_exactly(raw, count), protocol.Handshake,
                                        protocol.HANDSHAKE_LIMITS)
        assert reply.type == protocol.ERROR and reply.flags & protocol.FLAG_FINAL
        assert problem in protocol.error_details(reply)[1]


class InjectingProxy:
    """A man in the middle of a link without TLS: relays edge <-> server and, once, right after the server's
    READY, slips in an ERROR frame too short to hold its code (the edge's receiver used to die on it)."""

    def __init__(self, server_address):
        self.server_address, self.injected = server_address, threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = self.listener.getsockname()
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        while True:
            edge, _ = self.listener.accept()
            upstream = socket.create_connection(self.server_address)
            threading.Thread(target=relay, args=(edge, upstream), daemon=True).start()
            threading.Thread(target=self.replies, args=(upstream, edge), daemon=True).start()

    def replies(self, source, target):
        framing, limits = protocol.Handshake, protocol.HANDSHAKE_LIMITS
        try:
            while True:
                frame = protocol.read_frame(lambda count: read_exactly(source, count), framing, limits)
                target.sendall(framing.encode(frame))
                if frame.type == protocol.READY:
                    framing, limits = protocol.Stream, protocol.edge_limits(10)
                    if not self.injected.is_set():
                        self.injected.set()
                        target.sendall(framing.encode(protocol.Frame(protocol.ERROR, 1, payload=b"x")))
        except (OSError, ProtocolError):
            pass
        target.close()


def test_a_malformed_reply_loses_the_connection_not_the_edges_receiver(bundle, frames, reference, server):
    proxy = InjectingProxy(server.address)
    with client(bundle, proxy.address, reply_timeout_s=5.0) as edge:
        during = edge.run_all(frames[:30])  # sent around the injection: answered, or told the link was lost
        time.sleep(1.0)  # the connector's backoff
        after = edge.run_all(frames[30:60])
        stats = edge.stats.as_dict()
    assert proxy.injected.is_set() and stats["connects"] >= 2
    assert sorted(o.index for o in during) == [f.index for f in frames[:30]]  # exactly one outcome each
    assert all(o.answered_by == CLOUD or "connection lost: malformed ERROR frame" in o.error for o in during), \
        {o.error for o in during}
    assert_matches(after, reference)  # the receiver survived: the reconnected link answers everything


def send_features(raw, request_ids):
    for request_id in request_ids:
        raw.send(protocol.Stream.encode(protocol.features_frame(request_id, bytes(16384))))


def test_a_connection_at_its_in_flight_cap_is_not_read_until_a_reply_goes_out(bundle):
    with BackgroundServer(bundle, ServerConfig(key=KEY, max_in_flight=2)) as running:
        real_infer, most = running.server.batchers[0].infer, []

        def slow_infer(codes):  # holds the first frames in flight while the rest arrive
            most.append(max(len(c.answering) for c in running.server.listener._connections.values()))
            time.sleep(0.2)
            return real_infer(codes)

        running.server.batchers[0].infer = slow_infer
        raw = RawConnection(running.address, protocol.bundle_id_bytes(bundle.bundle_id))
        send_features(raw, range(1, 7))
        replies = {reply.request_id: reply for reply in (raw.receive() for _ in range(6))}
    assert all(replies[i].type == protocol.RESULT for i in range(1, 7))  # every frame answered, none refused
    assert max(most) == 2  # the other frames waited in the socket, not in the server


def test_an_edge_that_never_reads_replies_costs_the_server_at_most_its_cap(bundle, monkeypatch):
    """Tiny frames as fast as the server takes them into a connection whose replies are never read: the
    server holds at most max_in_flight of them, drops the connection at its write timeout once the
    buffers are full, and keeps serving others."""
    import runtime.transports.tcp.server

    monkeypatch.setattr(runtime.transports.tcp.server, "WRITE_BUFFER_BYTES", 4096)  # full in a few hundred replies, not 64 KiB
    config = ServerConfig(key=KEY, max_in_flight=4, write_timeout_s=1.0)
    bundle_id = protocol.bundle_id_bytes(bundle.bundle_id)
    tiny = protocol.Stream.encode(protocol.features_frame(1, bytes(100)))
    with BackgroundServer(bundle, config) as running:
        raw = RawConnection(running.address, bundle_id, receive_buffer=4096)  # small kernel buffers both ways
        for connection in running.server.listener._connections.values():
            connection.writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        raw.sock.settimeout(0.05)
        held, dropped = [], False
        deadline = time.monotonic() + 20
        unsent = b""
        while time.monotonic() < deadline and not dropped:
            try:
                unsent = unsent or tiny
                unsent = unsent[raw.sock.send(unsent):]  # frames stay whole across partial sends
            except socket.timeout:  # the server stopped reading: its socket buffer is full
                pass
            except OSError:
                dropped = True  # the server closed the connection
            held.append(sum(len(c.answering) for c in running.server.listener._connections.values()))
        assert dropped and max(held) <= config.max_in_flight
        with EdgeClient(bundle, ClientConfig(*running.address, key=KEY)) as bystander:
            assert all(o.answered_by == CLOUD for o in bystander.run_all(list(open_source(
                str(DEFAULT_CALIBRATION), bundle.input_spec()))[:4]))


def test_the_batcher_takes_frames_round_robin_across_connections_each_up_to_its_share():
    """A greedy edge's 100 queued frames delay another edge's frame by one place in a short batch, not by 100:
    with two edges connected, each fills at most a quarter of a batch (half its even share)."""
    import asyncio

    from runtime.cloud import Batcher
    from runtime.metrics import ServerMetrics

    batches = []

    def infer(codes):
        batches.append([int(c[0]) for c in codes])
        return codes

    async def scenario():
        batcher = Batcher(infer, max_batch=4, max_wait_ms=0.0, metrics=ServerMetrics(), connected=lambda: 2)
        greedy = [batcher.submit(np.array([1]), "greedy") for _ in range(100)]
        bystander = batcher.submit(np.array([2]), "bystander")
        running = asyncio.ensure_future(batcher.run())
        await bystander
        running.cancel()
        for future in greedy:
            future.cancel()
        batcher.close()

    asyncio.run(scenario())
    assert batches[0] == [1, 2]  # round-robin, the greedy edge stopped at its share of 4 // (2 x 2 edges)


def test_an_idle_connection_is_closed_with_a_timeout(bundle):
    with BackgroundServer(bundle, ServerConfig(key=KEY, idle_timeout_s=0.3)) as running:
        raw = RawConnection(running.address, protocol.bundle_id_bytes(bundle.bundle_id))
        reply = raw.receive()  # nothing sent after READY
        assert protocol.error_details(reply) == (protocol.TIMEOUT, "no frame in 0.3 s: closing an idle connection")
        assert raw.closed_by_server()


def test_connections_over_the_cap_are_refused_as_busy_and_the_edge_retries(bundle, frames, reference):
    with BackgroundServer(bundle, ServerConfig(key=KEY, max_connections=2)) as running:
        first, second = client(bundle, running.address).start(), client(bundle, running.address).start()
        with client(bundle, running.address, backoff_s=0.2) as third:  # busy is for now: it keeps trying
            [refused] = third.run_all(frames[:1])
            assert refused.answered_by == ERROR
            assert "the server holds its maximum of 2 connections; try again later" in refused.error
            assert_matches(first.run_all(frames[1:3]) + second.run_all(frames[3:5]), reference)
            first.close()
            deadline = time.monotonic() + 20
            while third.stats.as_dict()["connects"] < 1 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert_matches(third.run_all(frames[5:9]), reference)  # in once a place was free
        second.close()


def test_the_metrics_endpoint_stays_on_loopback_unless_asked(bundle):
    with BackgroundServer(bundle, ServerConfig(key=KEY, host="0.0.0.0", metrics_port=0)) as running:
        assert running.server.metrics_address[0] == "127.0.0.1"


def test_a_failing_backend_answers_its_batch_with_errors_and_the_server_recovers(bundle, frames, reference, server):
    """Fault injection: the backend raises once; those frames get INTERNAL, later ones are served."""
    real_infer, failures = server.server.batchers[0].infer, []

    def fail_once(codes):
        if not failures:
            failures.append(len(codes))
            raise RuntimeError("injected backend failure")
        return real_infer(codes)

    server.server.batchers[0].infer = fail_once
    raw = RawConnection(server.address, protocol.bundle_id_bytes(bundle.bundle_id))
    send_features(raw, [1])
    code, message = protocol.error_details(raw.receive())
    assert code == protocol.INTERNAL and "injected backend failure" in message
    with client(bundle, server.address) as edge:
        assert_matches(edge.run_all(frames[:4]), reference)


def test_a_batch_waits_only_while_a_connected_edge_has_no_frame_in_it():
    """Waiting lets other edges join a batch: a lone edge's batch, or one holding a frame of every connected
    edge, goes at once; one missing a connected edge waits (here 60 s) for it."""
    import asyncio

    from runtime.cloud import Batcher
    from runtime.metrics import ServerMetrics

    async def collect(connected: int, sources: list[str]) -> int:
        batcher = Batcher(lambda codes: codes, max_batch=8, max_wait_ms=60_000, metrics=ServerMetrics(),
                          connected=lambda: connected)
        try:
            for source in sources:
                batcher.submit(np.zeros(4, dtype=np.uint8), source)
            return len(await asyncio.wait_for(batcher._collect(), 2.0))
        finally:
            batcher.close()

    assert asyncio.run(collect(1, ["a"] * 3)) == 3  # the three queued frames, no 60 s wait
    assert asyncio.run(collect(2, ["a"] * 3 + ["b"])) == 3  # a's share of 8 // (2 x 2), then b's frame
    with pytest.raises(asyncio.TimeoutError):  # b is connected but has sent nothing yet
        asyncio.run(collect(2, ["a"] * 3))


def test_server_addresses_name_their_transport_and_wrong_ones_say_what_was_expected():
    from runtime.transports import Server, parse_server

    assert parse_server("10.0.0.2:9000") == Server("tcp", "10.0.0.2", 9000, "")
    assert parse_server("grpc://triton.local:8001/cams") == Server("grpc", "triton.local", 8001, "cams")
    assert parse_server("grpc://[::1]:8001") == Server("grpc", "::1", 8001, "")
    assert str(parse_server("grpc://h:8001/m")) == "grpc://h:8001/m" and str(parse_server("h:1")) == "h:1"
    with pytest.raises(ValueError, match=r"unknown transport 'http' in 'http://h:80'; transports: grpc, tcp"):
        parse_server("http://h:80")
    for wrong in ("grpc://h", "h:port", ":9000", "h:70000"):
        with pytest.raises(ValueError, match="expected HOST:PORT or grpc://HOST:PORT"):
            parse_server(wrong)
    done = subprocess.run([sys.executable, "-m", "edgesplit", "edge", "--bundle", "b", "--server", "grpc://h",
                           "--source", "s"], cwd=str(ROOT), capture_output=True, text=True)
    assert done.returncode == 2 and "argument --server: expected HOST:PORT or grpc://HOST:PORT[/MODEL], got " \
                                     "'grpc://h'" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("timeout", ["1", "30"])
def test_serve_drops_a_sender_whose_frame_outlasts_its_frame_timeout(int8_built, bundle, timeout):
    """A frame begun and not finished: dropped at --frame-timeout, not before (a large image on a thin uplink
    needs it raised). The frame is the handshake's, whose own deadline (5 s) ends the wait at 30: 3 s of it."""
    port = free_port()
    server = start_serve_process(int8_built.bundle, port, "--frame-timeout", timeout)
    begun = protocol.Handshake.encode(protocol.Frame(protocol.HELLO, payload=protocol.new_nonce()))[:10]
    try:
        sock = socket.create_connection(("127.0.0.1", port))
        sock.settimeout(3)
        sock.sendall(begun)  # the first bytes of a frame header, and then nothing
        started = time.monotonic()
        try:
            sock.recv(1)  # the server's error frame or its close: it gave up on this sender
            closed = True
        except socket.timeout:
            closed = False
        waited = time.monotonic() - started
        sock.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert closed == (timeout == "1"), waited


def test_frames_ready_while_earlier_bytes_are_unacknowledged_go_out_together_within_a_frame_interval():
    from runtime.transports.tcp.edge import Coalescer, unacknowledged

    edge, server = socket.socketpair()  # the server reads nothing until asked: what the edge sent stays unread
    with edge, server:
        coalescer = Coalescer(edge, lambda problem: None)
        coalescer.send(b"first")  # nothing unacknowledged: at once
        assert server.recv(100, socket.MSG_PEEK) == b"first" and unacknowledged(edge) > 0
        time.sleep(0.5)  # the frames' interval: a frame held back waits at most about this long
        coalescer.send(b"second")
        coalescer.send(b"third")  # held with the second, whose interval is not over
        assert server.recv(100, socket.MSG_PEEK) == b"first" and coalescer.pending == [b"second", b"third"]
        time.sleep(0.8)
        assert server.recv(100) == b"firstsecondthird" and not coalescer.pending
        time.sleep(0.01)  # the kernel counts what the server read as taken
        coalescer.send(b"lone")  # nothing unacknowledged again: at once
        assert server.recv(100) == b"lone"
        coalescer.close(b"closing")
        assert server.recv(100) == b"closing"


def test_a_transport_is_its_folder_and_one_line_in_the_registry(bundle, frames, reference, tmp_path, monkeypatch):
    """A transport added as a package with edge.py and server.py and a TRANSPORTS line is what serve listens with
    and what the edge connects through; neither the cloud core nor the edge client names it."""
    from runtime.transports import TRANSPORTS

    package = tmp_path / "mirror"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "edge.py").write_text("from runtime.transports.tcp.edge import TcpTransport\n\n\n"
                                     "class TRANSPORT(TcpTransport):\n    opened = 0\n\n"
                                     "    def open(self, replies):\n        TRANSPORT.opened += 1\n"
                                     "        return super().open(replies)\n")
    (package / "server.py").write_text("from runtime.transports.tcp.server import TcpServer as SERVER  # noqa\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(TRANSPORTS, "mirror", "mirror")
    with BackgroundServer(bundle, ServerConfig(key=KEY), transport="mirror") as running:
        assert type(running.server.listener).__module__ == "runtime.transports.tcp.server"
        with client(bundle, running.address, transport="mirror") as edge:
            assert_matches(edge.run_all(frames[:4]), reference)
    import mirror.edge

    assert mirror.edge.TRANSPORT.opened == 1
