"""Reliability under attack: each fault an adversarial review found (issue 20), reproduced against
`edgesplit serve` / `verify-bundle` in their own processes, with what it costs now.

    python -m benchmarks reliability [--quick] [--output benchmarks/results/reliability]

1. A key holder sends tiny frames as fast as the server takes them and never reads a reply: the
   server's RSS before and after, how many frames it took before it stopped reading, and whether
   it closed the connection at its write timeout.
2. SIGTERM while that client is connected: seconds until the server has exited.
3. A bystander edge at 10 fps, alone and beside a greedy client that keeps 256 frames in flight:
   its p99 latency (the batcher serves connections round-robin).
4. A guessing client: wrong keys per second it gets to try, and what the server says once refused.
5. Bundle bombs through `edgesplit verify-bundle`: a 3 GiB sparse tar member and a .tar.gz of
   600 MB of zeros; the verifier's peak RSS, and what is left in the temporary directory.
6. A manifest with an absurd wire shape, and a cloud half with two classes swapped and every hash
   recomputed, checked with and without a trusted key.
7. Issue 29's attack run, through `edgesplit edge` (benchmarks/hostile.py): 16 keyless sockets reopened as
   they close against `--max-connections 16`; a path that goes silent after READY; RESULTs of NaN, of
   half the bundle's values, or for ids never sent; an image folder with a truncated JPEG, a text file named
   .png and a 12000x12000 PNG. Bundle bombs add a 512 MB long name, 200,000 members and an unsigned
   1 GiB member under `--trust`.

results.csv / summary.json / RESULTS.md; the figure compares the bystander's latencies.
"""

from __future__ import annotations

import asyncio
import gzip
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.progress import Progress

from benchmarks.common import (ROOT, add_bundle_option, cpu_name, free_port,
                               int8_bundle, parse_arguments, table, write_csv)
from benchmarks.hostile import (RESULT_FAULTS, FaultyServer, KeylessFlood, SilentPath, image_folder, read_exactly,
                               run_edge)
from benchmarks.runtime import synthetic_edge
from calibration_data import DEFAULT_CALIBRATION
from runtime import protocol
from runtime.bundle import compute_bundle_id, file_sha256, load_bundle
from runtime.images import open_source
from runtime.local import CloudHalf, EdgeHalf, reply_values
from runtime.wire import encode_frame

KEY = "a key for the reliability suite, 256 bits of it......"
GREEDY_IN_FLIGHT = 256
# frames a flooded connection may cost: those in flight on it when it is abandoned (the edge's default 8) and
# as many produced while the edge reconnects; a fixed cost, whatever the run's length
UNSENT_LOSS = 16
BYSTANDER_FPS = 10.0


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def start_serve(bundle_dir: Path, *options: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "runtime.cli", "serve", "--bundle", str(bundle_dir), "--port",
                                str(port), *options], cwd=str(ROOT), env=dict(os.environ, EDGESPLIT_KEY=KEY),
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    if "serving bundle" not in process.stdout.readline():
        raise RuntimeError("edgesplit serve did not start")
    return process, port


def authenticated(address, bundle_id: bytes, key: bytes = KEY.encode(), receive_buffer=None) -> socket.socket:
    """A raw connection (to a port on this host, or a (host, port)) past the handshake, or refused: the
    ERROR frame's message raised."""
    sock = socket.socket()
    if receive_buffer is not None:  # before connecting: a window shrunk later stalls the kernel's own ACKs
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", address) if isinstance(address, int) else tuple(address))

    def receive() -> protocol.Frame:  # unbuffered: whatever follows READY stays in the socket
        return protocol.read_frame(lambda size: read_exactly(sock, size), protocol.Handshake,
                                   protocol.HANDSHAKE_LIMITS)

    nonce = protocol.new_nonce()
    sock.sendall(protocol.Handshake.encode(protocol.Frame(protocol.HELLO, bundle_id=bundle_id, payload=nonce)))
    challenge = receive()
    if challenge.type == protocol.READY:  # a server started with --no-auth
        return sock
    if challenge.type == protocol.ERROR:
        raise ConnectionRefusedError(protocol.error_details(challenge)[1])
    sock.sendall(protocol.Handshake.encode(protocol.Frame(protocol.AUTH, bundle_id=bundle_id, payload=protocol.client_proof(
        key, challenge.payload, nonce, bundle_id))))
    ready = receive()
    if ready.type != protocol.READY:
        raise ConnectionRefusedError(protocol.error_details(ready)[1])
    return sock


def flood(port: int, bundle, seconds: float, until_stalled: bool = False) -> dict:
    """Tiny frames into a connection whose replies are never read, for `seconds`, until it is closed, or
    (`until_stalled`) until the server has taken nothing for a second: it stopped reading."""
    bundle_id = protocol.bundle_id_bytes(bundle.bundle_id)
    tiny = protocol.Stream.encode(protocol.features_frame(1, bytes(100)))
    sock = authenticated(port, bundle_id, receive_buffer=4096)
    sock.settimeout(0.2)
    sent, closed, started, progress, unsent = 0, False, time.monotonic(), time.monotonic(), b""
    while time.monotonic() - started < seconds and not closed:
        try:
            unsent = unsent or tiny * 64
            count = sock.send(unsent)  # a partial send continues where it stopped: frames stay whole
            unsent, sent = unsent[count:], sent + count / len(tiny)
            progress = time.monotonic()
        except socket.timeout:
            if until_stalled and time.monotonic() - progress > 1.0:
                break
        except OSError:
            closed = True
    return {"socket": sock, "frames_sent": int(sent), "closed_by_server": closed,
            "stalled": time.monotonic() - progress > 1.0, "seconds": time.monotonic() - started}


def non_reading_client(bundle, seconds: float) -> list[dict]:
    process, port = start_serve(bundle.directory)
    try:
        before = rss_mb(process.pid)
        flooded = flood(port, bundle, seconds)
        after, peak = rss_mb(process.pid), rss_mb(process.pid, "VmHWM")
        flooded["socket"].close()
    finally:
        stopped(process)
    return [{"fault": "tiny frames, replies never read", "measure": "server RSS growth (MB)",
             "value": round(after - before, 1), "goal": "<= 30",
             "detail": f"{flooded['frames_sent']:,} frames sent in {flooded['seconds']:.1f} s; peak RSS {peak:.0f} MB; "
                       f"connection closed by the server: {flooded['closed_by_server']}"}]


def sigterm_with_stalled_client(bundle) -> list[dict]:
    process, port = start_serve(bundle.directory, "--shutdown-timeout", "5")
    flooded = flood(port, bundle, 60.0, until_stalled=True)  # the server cannot write to it, nor reads it
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    try:
        code = process.wait(60)
    except subprocess.TimeoutExpired:
        process.kill()
        code = "killed after 60 s"
    flooded["socket"].close()
    return [{"fault": "SIGTERM with a stalled client", "measure": "seconds to exit (deadline 5 s)",
             "value": round(time.monotonic() - started, 2), "goal": "<= 5 + 1",
             "detail": f"exit status {code}; the server had stopped reading the client: {flooded['stalled']} "
                       f"(after {flooded['frames_sent']:,} frames, {flooded['seconds']:.1f} s)"}]


async def greedy(port: int, bundle_id: bytes, payload: bytes, outputs: int, stop_at: float) -> int:
    """Keeps GREEDY_IN_FLIGHT frames in flight: a new one for every reply."""
    sock = await asyncio.get_running_loop().run_in_executor(None, authenticated, port, bundle_id)
    sock.setblocking(False)
    reader, writer = await asyncio.open_connection(sock=sock)

    def frame(request_id: int) -> bytes:
        return protocol.Stream.encode(protocol.features_frame(request_id, payload))

    for request_id in range(1, GREEDY_IN_FLIGHT + 1):
        writer.write(frame(request_id))
    answered, next_id = 0, GREEDY_IN_FLIGHT + 1
    while time.monotonic() < stop_at:
        await protocol.read_frame_async(reader.readexactly, protocol.Stream, protocol.edge_limits(outputs))
        answered += 1
        writer.write(frame(next_id))
        next_id += 1
    writer.close()
    return answered


def greedy_process(port: int, bundle_id: bytes, payload: bytes, outputs: int, seconds: float, answered) -> None:
    """The greedy client in a process of its own, so that its traffic does not delay the bystander's own loop."""
    stop_at = time.monotonic() + seconds
    answered.value = asyncio.run(greedy(port, bundle_id, payload, outputs, stop_at))


async def bystander_run(port: int, bundle, payloads, expected, seconds: float) -> dict:
    bundle_id = protocol.bundle_id_bytes(bundle.bundle_id)
    now = time.monotonic()
    warm_until, stop_at = now + 1.0, now + 1.0 + seconds
    latencies, counts = [], {"sent": 0, "errors": 0, "unanswered": 0, "wrong": 0}
    await synthetic_edge(port, bundle_id, payloads, expected, reply_values(bundle), BYSTANDER_FPS, now,
                         warm_until, stop_at, latencies, counts)
    milliseconds = np.array(latencies) * 1000
    return {"p50": float(np.median(milliseconds)), "p99": float(np.percentile(milliseconds, 99)),
            "answered": len(latencies), **counts}


def bystander(bundle, payloads, expected, seconds: float) -> tuple[list[dict], dict]:
    import multiprocessing

    runs = {}
    for with_greedy in (False, True):
        process, port = start_serve(bundle.directory, "--no-auth")  # the synthetic edge skips the key
        answered = multiprocessing.Value("q", 0)
        rival = multiprocessing.Process(target=greedy_process, args=(
            port, protocol.bundle_id_bytes(bundle.bundle_id), payloads[0], reply_values(bundle), seconds + 1.5,
            answered))
        try:
            if with_greedy:
                rival.start()
                time.sleep(0.5)  # its 256 frames are in flight before the bystander starts
            runs[with_greedy] = dict(asyncio.run(bystander_run(port, bundle, payloads, expected, seconds)))
            if with_greedy:
                rival.join(30)
            runs[with_greedy]["greedy_answered"] = answered.value
        finally:
            stopped(process)
    alone, crowded = runs[False], runs[True]
    row = {"fault": f"a client keeping {GREEDY_IN_FLIGHT} frames in flight", "measure": "bystander p99 with / alone",
           "value": round(crowded["p99"] / alone["p99"], 2), "goal": "<= 3",
           "detail": f"bystander at {BYSTANDER_FPS:g} fps: p99 {alone['p99']:.1f} ms alone, {crowded['p99']:.1f} ms "
                     f"beside the greedy client ({crowded['greedy_answered']:,} of its frames answered meanwhile); "
                     f"errors {crowded['errors']}, wrong {crowded['wrong']}"}
    return [row], {"alone": alone, "beside a greedy client": crowded}


def key_guessing(bundle, seconds: float) -> list[dict]:
    process, port = start_serve(bundle.directory)
    bundle_id = protocol.bundle_id_bytes(bundle.bundle_id)
    tried, refusal, started = 0, "", time.monotonic()
    try:
        while time.monotonic() - started < seconds:
            try:
                authenticated(port, bundle_id, os.urandom(32)).close()
            except ConnectionRefusedError as error:
                refusal = str(error)
                if "too many failed" in refusal:
                    break
                tried += 1
    finally:
        stopped(process)
    return [{"fault": "guessing keys from one address", "measure": "wrong keys tried before refusal",
             "value": tried, "goal": "<= 10 per minute", "detail": f"then: {refusal}"}]


def stopped(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    process.wait(30)


def keyless_flood(bundle, scratch: Path, quick: bool) -> list[dict]:
    """16 keyless sockets reopened as they close against `serve --max-connections 16`, all from 127.0.0.2 or each
    from its own address (the harder, and the only one in a quick run); an edge with the key sends 150 frames
    from 127.0.0.1."""
    rows = []
    for spread in (True,) if quick else (False, True):
        process, port = start_serve(bundle.directory, "--max-connections", "16")
        try:
            with KeylessFlood(("127.0.0.1", port), count=16, source="127.0.0.2", spread=spread) as flood:
                time.sleep(1.0)
                run = run_edge(bundle.directory, ("127.0.0.1", port), DEFAULT_CALIBRATION, scratch, "--limit",
                               "150", key=KEY)
        finally:
            stopped(process)
        answered = (run.summary or {}).get("cloud_answers", 0)
        rows.append({"fault": "16 keyless sockets reopened as they close ({}), --max-connections 16".format(
                         "each from its own address" if spread else "from one address"),
                     "measure": "an edge with the key: frames the cloud answered", "value": f"{answered}/150",
                     "goal": ">= 90 %", "detail": f"{flood.opened} keyless connections opened meanwhile"})
    return rows


def silent_server(bundle, scratch: Path) -> list[dict]:
    """A path that swallows everything after the edge's AUTH on the first connection, then relays normally."""
    process, port = start_serve(bundle.directory)
    path = SilentPath(("127.0.0.1", port), silent=1)
    try:
        run = run_edge(bundle.directory, path.address, DEFAULT_CALIBRATION, scratch, "--limit", "100", "--fps", "20",
                       "--timeout", "2", key=KEY)
    finally:
        path.close()
        stopped(process)
    summary = run.summary or {}
    return [{"fault": "the server goes silent after READY (a black-holing path), --fps 20 --timeout 2",
             "measure": "frames the cloud answered", "value": f"{summary.get('cloud_answers', 0)}/100",
             "goal": ">= 50/100", "detail": f"{summary.get('abandoned_connections')} connection abandoned, "
                                            f"{summary.get('frames_per_second')} fps"}]


def faulty_results(bundle, scratch: Path, frames: int) -> list[dict]:
    """A server holding the key whose RESULTs are NaN, half their values, or for ids never sent: `frames` each."""
    rows = []
    for fault in RESULT_FAULTS:
        server = FaultyServer(bundle, KEY.encode(), fault, first_only=fault == "unsent")
        try:
            run = run_edge(bundle.directory, server.address, DEFAULT_CALIBRATION, scratch, "--limit", str(frames),
                           "--fps", "50", key=KEY)
        finally:
            server.close()
        summary = run.summary or {}
        unsent = fault == "unsent"  # then correct answers: they count once the connection was replaced
        rows.append({"fault": f"RESULTs: {fault}" + (" (first connection), then correct" if unsent else ""),
                     "measure": "frames counted as the cloud's answers",
                     "value": f"{summary.get('cloud_answers')}/{frames}",
                     "goal": (f">= {frames - UNSENT_LOSS}/{frames}, the flooded connection abandoned" if unsent
                              else f"0/{frames}"),
                     "detail": f"{summary.get('late_replies')} replies matched no frame, "
                               f"{summary.get('abandoned_connections')} connection(s) abandoned; first: "
                               f"{summary.get('first_error')}"})
    return rows


def image_folder_run(bundle, scratch: Path) -> list[dict]:
    """A folder of 20 images with the broken files of benchmarks.hostile.image_folder among them."""
    process, port = start_serve(bundle.directory)
    images = np.load(DEFAULT_CALIBRATION)["test_images"][:20]
    clean, folder = scratch / "clean-images", scratch / "broken-images"
    image_folder(clean, images, huge=8)
    for path in clean.glob("*-*"):
        path.unlink()
    image_folder(folder, images)
    try:
        baseline = run_edge(bundle.directory, ("127.0.0.1", port), clean, scratch, key=KEY)
        run = run_edge(bundle.directory, ("127.0.0.1", port), folder, scratch, key=KEY)
    finally:
        stopped(process)
    errors = [row for row in run.rows[1:] if row[1] == "error"]
    return [{"fault": "an image folder with a truncated JPEG, a text .png, a 12000x12000 PNG, a 30000x30000 PNG "
                      "header and a dangling link",
             "measure": "edge peak RSS above the same folder without them (MB)",
             "value": round(run.peak_mb - baseline.peak_mb, 1), "goal": "<= 100, every file a row, exit 0",
             "detail": f"exit {run.returncode}, {len(run.rows) - 1} rows, {len(errors)} errors: "
                       + "; ".join(row[5].replace(f"{folder}/", "")[:100] for row in errors)}]


def verify_process(path: Path, *options: str) -> dict:
    """`edgesplit verify-bundle` in its own process: exit status, its last line, peak RSS, bytes it wrote, seconds,
    /tmp leftovers."""
    before = set(Path(tempfile.gettempdir()).iterdir())
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the process that forked this one; wchar: what the
    # process passed to write(), the files it unpacked included
    probe = ("import sys\nfrom edgesplit.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit as "
             "stop:\n    code = stop.code\nelse:\n    code = 0\npeak = next(line.split()[1] for line in "
             "open('/proc/self/status') if line.startswith('VmHWM:'))\nwritten = next(line.split()[1] for line in "
             "open('/proc/self/io') if line.startswith('wchar:'))\nprint('PEAK', peak, written, code, file=sys.stderr)")
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", probe, "verify-bundle", str(path), *options], cwd=str(ROOT),
                          capture_output=True, text=True, timeout=900)
    seconds = time.monotonic() - started
    lines = (done.stdout + done.stderr).strip().splitlines()
    _, peak_kb, written, code = next(line for line in lines if line.startswith("PEAK")).split()
    message = next((line for line in lines if not line.startswith("PEAK")), "")
    left = len(set(Path(tempfile.gettempdir()).iterdir()) - before)
    return {"code": code, "message": message, "peak_mb": int(peak_kb) / 1024, "written_mb": int(written) / 1e6,
            "left_in_tmp": left, "seconds": seconds}


def bombs(scratch: Path, bundle_dir: Path, public_key: Path) -> list[dict]:
    """Archives that cost a careless reader memory, time or disk, each through `verify-bundle`."""
    sparse_dir = scratch / "sparse"
    sparse_dir.mkdir()
    with open(sparse_dir / "cloud.onnx", "wb") as sparse:
        sparse.truncate(3 * 1024 ** 3)
    sparse_tar = scratch / "sparse.tar"
    subprocess.run(["tar", "-S", "-cf", str(sparse_tar), "-C", str(sparse_dir), "cloud.onnx"], check=True)
    gzip_tar = scratch / "zeros.tar.gz"
    with tarfile.open(gzip_tar, "w:gz", compresslevel=1) as archive:
        member = tarfile.TarInfo("cloud.onnx")
        member.size = 600 * 1024 * 1024
        archive.addfile(member, io.BufferedReader(Zeros(member.size), 1 << 20))
    cases = [("tar with a 3 GiB sparse member", sparse_tar, ()), ("tar.gz of 600 MB of zeros", gzip_tar, ()),
             ("tar.gz with a 512 MB long name", long_name_bomb(scratch / "name.tar.gz", 512 * 1024 ** 2), ()),
             ("tar.gz of 200,000 members", many_members(scratch / "many.tar.gz", 200_000), ()),
             ("unsigned tar.gz with a 1 GiB member, trusted key", with_big_member(
                 scratch / "big.tar.gz", [bundle_dir / "manifest.json"], 1024 ** 3), ("--trust", str(public_key)))]
    rows = []
    for name, path, options in cases:
        result = verify_process(path, *options)
        rows.append({"fault": f"{name} ({path.stat().st_size / 1e6:.1f} MB)", "measure": "verify-bundle peak RSS (MB)",
                     "value": round(result["peak_mb"], 1), "goal": "<= 200 and 10 s, nothing left in /tmp",
                     "detail": f"exit {result['code']} after {result['seconds']:.1f} s, {result['written_mb']:.0f} MB "
                               f"written: {result['message']}; left in /tmp: {result['left_in_tmp']}"})
    return rows


def signing_keys(scratch: Path) -> tuple[Path, Path]:
    """An Ed25519 key pair made with openssl, as the README says: (private, public)."""
    private, public = scratch / "signing.pem", scratch / "signing.pub"
    subprocess.run(["openssl", "genpkey", "-algorithm", "ed25519", "-out", str(private)], check=True)
    subprocess.run(["openssl", "pkey", "-in", str(private), "-pubout", "-out", str(public)], check=True)
    return private, public


def long_name_bomb(path: Path, name_bytes: int) -> Path:
    """A .tar.gz whose first header declares a GNU long name of `name_bytes` zeros (then a real member): a few
    hundred KB on disk; a reader that takes the name whole holds `name_bytes` in memory."""
    with gzip.open(path, "wb", compresslevel=9) as stream:
        header = tarfile.TarInfo("././@LongLink")
        header.type, header.size = tarfile.GNUTYPE_LONGNAME, name_bytes
        stream.write(header.tobuf(tarfile.GNU_FORMAT))
        shutil.copyfileobj(io.BufferedReader(Zeros(_blocks(name_bytes)), 1 << 20), stream, 1 << 20)
        member = tarfile.TarInfo("edge.onnx")
        member.size = 1
        stream.write(member.tobuf(tarfile.GNU_FORMAT) + b"x".ljust(tarfile.BLOCKSIZE, b"\0"))
        stream.write(bytes(2 * tarfile.BLOCKSIZE))
    return path


def many_members(path: Path, count: int) -> Path:
    """A .tar.gz of `count` empty members: a reader that lists them all first pays for every one. Headers are
    one template with the name and checksum rewritten (TarInfo.tobuf would take seconds for 200,000)."""
    header = bytearray(tarfile.TarInfo("f0000000").tobuf(tarfile.GNU_FORMAT))
    header[148:156] = b" " * 8  # the checksum counts its own field as spaces
    base = sum(header) - sum(b"f0000000")
    with gzip.open(path, "wb", compresslevel=9) as stream:
        for index in range(count):
            name = b"f%07d" % index
            header[0:8] = name
            header[148:156] = b"%06o\0 " % (base + sum(name))
            stream.write(header)
        stream.write(bytes(2 * tarfile.BLOCKSIZE))
    return path


def with_big_member(path: Path, files: list[Path], size: int) -> Path:
    """`files` as a .tar.gz with one more member of `size` zeros."""
    with tarfile.open(path, "w:gz", compresslevel=9) as archive:
        for file in files:
            archive.add(file, arcname=file.name)
        member = tarfile.TarInfo("padding.bin")
        member.size = size
        archive.addfile(member, io.BufferedReader(Zeros(size), 1 << 20))
    return path


def _blocks(size: int) -> int:
    return -(-size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE


class Zeros(io.RawIOBase):
    """`size` zero bytes, read without holding them: the body of an archive bomb."""

    def __init__(self, size: int):
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        count = min(len(buffer), self.left)
        buffer[:count] = bytes(count)
        self.left -= count
        return count


def rewrite_manifest(directory: Path, change) -> None:
    """Edit the manifest and recompute its hashes and id, as an attacker who can write the bundle would."""
    path = directory / "manifest.json"
    manifest = json.loads(path.read_text())
    for name in manifest["files"]:
        manifest["files"][name] = {"sha256": file_sha256(directory / name), "bytes": (directory / name).stat().st_size}
    change(manifest)
    manifest["bundle_id"] = compute_bundle_id(manifest)
    path.write_text(json.dumps(manifest))


def swap_two_classes(path: Path) -> None:
    """Swap the classifier rows of classes 0 and 1 in an ONNX model: it still loads and answers, wrongly."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    weights = [w for w in model.graph.initializer if len(w.dims) == 2 and w.dims[0] == 10][-1]
    array = numpy_helper.to_array(weights).copy()
    array[[0, 1]] = array[[1, 0]]
    weights.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(array), weights.name))
    onnx.save(model, str(path))


def tampering(bundle_dir: Path, scratch: Path, private: Path, public: Path) -> list[dict]:
    absurd = shutil.copytree(bundle_dir, scratch / "absurd")
    rewrite_manifest(absurd, lambda manifest: manifest["wire"].__setitem__("shape", [1000000, 1000000]))
    refused = verify_process(absurd)
    rows = [{"fault": "wire shape [1000000, 1000000], hashes recomputed", "measure": "verify-bundle exit status",
             "value": refused["code"], "goal": "1", "detail": refused["message"]}]
    swapped = shutil.copytree(bundle_dir, scratch / "swapped")
    subprocess.run([sys.executable, "-m", "edgesplit", "sign-bundle", str(swapped), "--key", str(private)],
                   cwd=str(ROOT), check=True, capture_output=True)
    swap_two_classes(swapped / "cloud.onnx")
    rewrite_manifest(swapped, lambda manifest: None)
    for trust in ((), ("--trust", str(public))):
        result = verify_process(swapped, *trust)
        rows.append({"fault": "cloud half with two classes swapped, hashes recomputed" + (", trusted key" if trust
                                                                                           else ", no key"),
                     "measure": "verify-bundle exit status", "value": result["code"], "goal": "1" if trust else "-",
                     "detail": result["message"]})
    return rows


def plot(output: Path, latencies: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    names = list(latencies)
    for offset, key in enumerate(("p50", "p99")):
        axis.bar(np.arange(len(names)) + 0.4 * offset, [latencies[n][key] for n in names], 0.4, label=key)
    axis.set_xticks(np.arange(len(names)) + 0.2, names)
    axis.set_ylabel("bystander latency (ms)")
    axis.set_title(f"a {BYSTANDER_FPS:g} fps edge beside one keeping {GREEDY_IN_FLIGHT} frames in flight")
    axis.legend()
    figure.tight_layout()
    figure.savefig(output / "reliability.png", dpi=120)
    plt.close(figure)


def main() -> None:
    args = parse_arguments(__doc__, "reliability", "Shorter floods and runs (3 s), same faults.", add_bundle_option)

    with tempfile.TemporaryDirectory() as scratch:
        bundle_dir = int8_bundle(args.bundle, Path(scratch))
        keys = signing_keys(Path(scratch))
        bundle = load_bundle(bundle_dir)
        source = list(open_source(str(DEFAULT_CALIBRATION), bundle.input_spec()))[:64]
        codes = EdgeHalf(bundle).codes(np.stack([frame.image for frame in source]))
        payloads = [encode_frame(frame, bundle.wire) for frame in codes]
        expected = CloudHalf(bundle).logits(codes).argmax(1)
        seconds = 3.0 if args.quick else 15.0
        steps = [("non-reading client", lambda: non_reading_client(bundle, seconds)),
                 ("SIGTERM", lambda: sigterm_with_stalled_client(bundle)),
                 ("key guessing", lambda: key_guessing(bundle, seconds)),
                 ("keyless flood", lambda: keyless_flood(bundle, Path(scratch), args.quick)),
                 ("silent server", lambda: silent_server(bundle, Path(scratch))),
                 ("faulty results", lambda: faulty_results(bundle, Path(scratch), 50 if args.quick else 100)),
                 ("broken images", lambda: image_folder_run(bundle, Path(scratch))),
                 ("bundle bombs", lambda: bombs(Path(scratch), bundle_dir, keys[1])),
                 ("tampered bundles", lambda: tampering(bundle_dir, Path(scratch), *keys))]
        rows = []
        with Progress() as progress:
            task = progress.add_task("faults", total=len(steps) + 1)
            progress.update(task, description="greedy client")
            fairness, latencies = bystander(bundle, payloads, expected, seconds)
            rows += fairness
            progress.advance(task)
            for name, step in steps:
                progress.update(task, description=name)
                rows += step()
                progress.advance(task)
    summary = {"quick": args.quick, "machine": cpu_name(), "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d"),
               "bystander": latencies, "rows": rows}
    write_csv(args.output / "results.csv", rows)
    (args.output / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot(args.output, latencies)
    lines = ["# Reliability under attack (issues 20 and 29)", "",
             f"Generated by `python -m benchmarks reliability` on {summary['machine']} ({summary['cpus']} CPUs), "
             f"{summary['date']}; `edgesplit serve` and `verify-bundle` in their own processes, default settings "
             "unless the row says otherwise.", "", table(rows, ["fault", "measure", "value", "goal", "detail"]), "",
             "![bystander latency](reliability.png)"]
    (args.output / "RESULTS.md").write_text("\n".join(lines) + "\n")
    print(table(rows, ["fault", "measure", "value", "goal"]))
    print(f"wrote {args.output}/RESULTS.md")


if __name__ == "__main__":
    main()
