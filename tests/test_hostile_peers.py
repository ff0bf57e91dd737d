"""Issue 29's attack run, each row against the real commands: keyless sockets holding every place, a path
that goes silent after the handshake, broken and huge files in an image folder, faulty RESULTs, and the
slow or oversized requests the server used to hold until its idle timeout (or log as tracebacks)."""

import signal
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from benchmarks.hostile import FaultyServer, KeylessFlood, SilentPath, image_folder, read_exactly, run_edge
from benchmarks.reliability import KEY, authenticated, start_serve
from calibration_data import DEFAULT_CALIBRATION
from runtime import protocol
from runtime.bundle import load_bundle
from runtime.cloud import BackgroundServer, ServerConfig
from runtime.edge import UNMATCHED_SLACK


@pytest.fixture(scope="module")
def bundle(int8_built):
    return load_bundle(int8_built.bundle)


@pytest.fixture(scope="module")
def serve(int8_built):
    """`edgesplit serve` on the int8 bundle, in its own process: its port."""
    process, port = start_serve(int8_built.bundle)
    yield port
    process.send_signal(signal.SIGTERM)
    process.wait(30)


def edge(int8_built, address, tmp_path, *options, source=DEFAULT_CALIBRATION):
    return run_edge(int8_built.bundle, address, source, tmp_path, *options, key=KEY)


@pytest.mark.slow  # seconds of flood and a server of its own: CI runs it, the quick tier leaves it out
@pytest.mark.parametrize("spread", [False, True], ids=["from one address", "each from its own address"])
def test_keyless_sockets_reopened_as_they_close_do_not_lock_out_an_edge_with_the_key(int8_built, tmp_path, spread):
    process, port = start_serve(int8_built.bundle, "--max-connections", "16")
    try:
        with KeylessFlood(("127.0.0.1", port), count=16, source="127.0.0.2", spread=spread) as flood:
            time.sleep(1.0)  # every place the server has, taken
            run = edge(int8_built, ("127.0.0.1", port), tmp_path, "--limit", "150")
        assert flood.opened > 16  # the flood kept reopening what the server closed
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)
    assert run.returncode == 0, run.stderr
    assert run.summary["cloud_answers"] >= 135, run.summary  # 90 %


@pytest.mark.slow  # 100 frames at 20 fps
def test_an_edge_abandons_a_connection_gone_silent_and_reconnects(int8_built, serve, tmp_path):
    path = SilentPath(("127.0.0.1", serve), silent=1)
    try:
        run = edge(int8_built, path.address, tmp_path, "--limit", "100", "--fps", "20", "--timeout", "2")
    finally:
        path.close()
    assert run.returncode == 0, run.stderr
    assert run.summary["cloud_answers"] >= 50, run.summary
    assert run.summary["abandoned_connections"] == 1 and path.connections == 2
    assert len(run.rows) == 101  # every frame one outcome
    silent = [row for row in run.rows[1:] if row[1] == "error"]
    assert silent and all("no reply" in row[5] or "the connection is silent" in row[5] for row in silent)


@pytest.mark.slow  # 40 frames at 20 fps
def test_a_server_answering_every_other_frame_is_lossy_not_silent_and_keeps_its_connection(int8_built, bundle,
                                                                                           tmp_path):
    server = FaultyServer(bundle, KEY.encode(), "every other")
    try:
        run = edge(int8_built, server.address, tmp_path, "--limit", "40", "--fps", "20", "--timeout", "1")
    finally:
        server.close()
    assert run.summary["abandoned_connections"] == 0 and server.connections == 1, run.summary
    assert run.summary["cloud_answers"] == 20 and run.summary["errors"] == 20


def test_a_send_the_kernel_cannot_take_fails_within_its_deadline(bundle):
    """A server that stops reading: the edge's send gives up at its deadline instead of blocking its sender."""
    from runtime.transports.tcp.edge import send_deadline

    listener = socket.create_server(("127.0.0.1", 0))
    sock = socket.create_connection(listener.getsockname())
    peer, _ = listener.accept()  # never reads
    send_deadline(sock, 0.5)
    started = time.monotonic()
    with pytest.raises(OSError):
        while True:
            sock.sendall(bytes(1 << 20))
    assert time.monotonic() - started < 5
    for s in (sock, peer, listener):
        s.close()


def test_broken_and_huge_files_in_an_image_folder_are_error_rows_and_the_run_goes_on(int8_built, serve, tmp_path):
    from runtime.images import MAX_PIXELS

    images = np.load(DEFAULT_CALIBRATION)["test_images"][:12]
    clean = tmp_path / "clean"
    image_folder(clean, images, huge=8)
    for path in clean.glob("*-*"):
        path.unlink()
    folder = tmp_path / "folder"
    broken = image_folder(folder, images, huge=12000)
    baseline = edge(int8_built, ("127.0.0.1", serve), tmp_path, source=clean)
    run = edge(int8_built, ("127.0.0.1", serve), tmp_path, source=folder)
    assert baseline.returncode == 0 and run.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr
    assert len(run.rows) == 1 + 12 + 5 and run.summary["cloud_answers"] == 12 and run.summary["errors"] == 5
    errors = {Path(row[5].split(" ")[0]).name: row[5] for row in run.rows[1:] if row[1] == "error"}
    assert set(errors) == {path.name for path in broken.values()}
    assert "is not a readable image" in errors[broken["truncated"].name]
    assert "is not a readable image: cannot identify image file" in errors[broken["text"].name]
    assert f"declares 12000x12000 pixels, over the {MAX_PIXELS} a frame may have" in errors[broken["huge"].name]
    assert f"pixels, over the {MAX_PIXELS} a frame may have" in errors[broken["bomb"].name]
    assert errors[broken["gone"].name].endswith("-gone.png is not a regular file")
    assert run.peak_mb <= baseline.peak_mb + 100, (run.peak_mb, baseline.peak_mb)


@pytest.mark.parametrize("fault, problem", [("nan", "cloud failed (RESULT holds NaN or infinity"),
                                            ("short", "connection lost: RESULT frame 1 carries 20 bytes, not the "
                                                      "bundle's 10 values")])
def test_a_faulty_result_is_never_an_answer(int8_built, bundle, tmp_path, fault, problem):
    server = FaultyServer(bundle, KEY.encode(), fault)
    try:
        run = edge(int8_built, server.address, tmp_path, "--limit", "20")
    finally:
        server.close()
    assert run.summary["cloud_answers"] == 0 and run.summary["errors"] == 20, run.summary
    assert all(row[5].startswith("cloud failed (") or "connection lost" in row[5] for row in run.rows[1:])
    assert any(problem in row[5] for row in run.rows[1:])
    # a per-frame fault keeps the connection, a reply that breaks the protocol loses it
    assert any("connection lost" in row[5] for row in run.rows[1:]) == (fault != "nan")


def test_replies_for_frames_never_sent_lose_the_connection_past_a_small_bound(int8_built, bundle, tmp_path):
    server = FaultyServer(bundle, KEY.encode(), "unsent", first_only=True)
    try:
        run = edge(int8_built, server.address, tmp_path, "--limit", "100", "--fps", "50")
    finally:
        server.close()
    assert run.returncode == 0, run.stderr
    assert run.summary["abandoned_connections"] == 1 and server.connections == 2, run.summary
    assert run.summary["late_replies"] <= UNMATCHED_SLACK + 1 + 8  # the bound, and what the receiver had buffered
    assert run.summary["cloud_answers"] >= 80  # those sent while it reconnected fell back


def test_the_server_sends_no_non_finite_output_it_answers_internal(bundle):
    with BackgroundServer(bundle, ServerConfig(key=KEY.encode())) as running:
        real = running.server.batchers[0].infer
        running.server.batchers[0].infer = lambda codes: real(codes) * np.float32(np.nan)
        bundle_id = protocol.bundle_id_bytes(bundle.bundle_id)
        sock = authenticated(running.address, bundle_id)
        sock.sendall(protocol.Stream.encode(protocol.features_frame(1, bytes(16384))))
        reply = protocol.read_frame(lambda count: read_exactly(sock, count), protocol.Stream,
                                    protocol.edge_limits(10))
        sock.close()
    assert reply.type == protocol.ERROR and reply.request_id == 1
    assert protocol.error_details(reply) == (protocol.INTERNAL, "the cloud half's outputs for this frame hold NaN "
                                                                "or infinity")


def test_a_header_dripped_after_authentication_is_dropped_within_the_frame_deadline(bundle):
    with BackgroundServer(bundle, ServerConfig(key=KEY.encode(), frame_timeout_s=1.0)) as running:
        bundle_id = protocol.bundle_id_bytes(bundle.bundle_id)
        sock = authenticated(running.address, bundle_id)
        header = protocol.Stream.encode(protocol.features_frame(1, bytes(16384)))

        def drip():  # a byte every 0.2 s: the whole header would take 1.8 s
            try:
                for byte in header[:protocol.frame_bytes(16384) - 16384]:
                    sock.send(bytes([byte]))
                    time.sleep(0.2)
            except OSError:
                pass

        started = time.monotonic()
        threading.Thread(target=drip, daemon=True).start()
        reply = protocol.read_frame(lambda count: read_exactly(sock, count), protocol.Stream,
                                    protocol.edge_limits(10))
        elapsed = time.monotonic() - started
        sock.close()
    assert protocol.error_details(reply) == (protocol.TIMEOUT, "a frame header did not arrive whole within 1.0 s "
                                                               "of its first byte")
    assert elapsed < 1.0 + 2


def test_metrics_requests_are_bounded_in_size_and_time(bundle, monkeypatch):
    import urllib.request

    import runtime.cloud

    monkeypatch.setattr(runtime.cloud, "METRICS_DEADLINE_S", 1.0)
    with BackgroundServer(bundle, ServerConfig(key=KEY.encode(), metrics_port=0)) as running:
        address = running.server.metrics_address
        with socket.create_connection(address, timeout=10) as long_line:
            try:
                long_line.sendall(b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\n\r\n")
            except ConnectionError:
                pass  # closed while the line was still arriving
            assert long_line.recv(4096) == b""  # closed, no answer
        with socket.create_connection(address, timeout=10) as drip:
            started = time.monotonic()
            try:
                for byte in b"GET /metrics HTTP/1.1\r\n":
                    drip.send(bytes([byte]))
                    time.sleep(0.2)
            except ConnectionError:
                pass
            assert drip.recv(4096) == b""
            assert time.monotonic() - started < 1.0 + 2
        page = urllib.request.urlopen("http://{}:{}/metrics".format(*address), timeout=10).read().decode()
    assert "edgesplit_frames_total" in page
