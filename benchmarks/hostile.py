"""Hostile peers and paths, as issue 29's attack run used them against the real commands: keyless sockets that
hold every slot, a path that goes silent after the handshake, a server whose RESULTs are faulty, and an
image folder with broken files. The reliability suite measures with them; the tests assert with them.
"""

from __future__ import annotations

import csv
import ipaddress
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import NamedTuple

import numpy as np

from benchmarks.common import ROOT
from runtime import protocol
from runtime.errors import ProtocolError


class KeylessFlood:
    """`count` connections that never send a byte (they hold a place until the server closes them), each reopened
    as soon as it is closed, from `source`: one loopback address, or with `spread` each from its own (127.0.0.2,
    127.0.0.3, ...). A context manager; `opened` counts the connections."""

    def __init__(self, address: tuple, count: int = 16, source: str = "127.0.0.2", spread: bool = False):
        first = ipaddress.ip_address(source)
        self.address, self.opened = tuple(address), 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._hold, args=(str(first + spread * n),), daemon=True)
                         for n in range(count)]

    def __enter__(self) -> "KeylessFlood":
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(10)

    def _hold(self, source: str) -> None:
        while not self._stop.is_set():
            with socket.socket() as sock:
                sock.bind((source, 0))
                sock.settimeout(0.5)
                try:
                    sock.connect(self.address)
                    self.opened += 1
                    while not self._stop.is_set() and self._open(sock):
                        pass
                except OSError:
                    pass

    @staticmethod
    def _open(sock: socket.socket) -> bool:
        try:
            return bool(sock.recv(4096))
        except socket.timeout:
            return True


class Listener:
    """A loopback listener whose accepted connections go to `take(sock, number)` on a thread each (numbered from
    1); `close` stops it."""

    def __init__(self):
        self.connections = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = self.listener.getsockname()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self.take, args=(sock, self.connections), daemon=True).start()

    def take(self, sock: socket.socket, number: int) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.listener.close()


class SilentPath(Listener):
    """A relay to `server` whose first `silent` connections go silent once the edge's AUTH has passed: what
    follows is swallowed (a hung server, a black-holing path, a lost NAT entry), while the connection stays
    open. Later connections are relayed whole."""

    def __init__(self, server: tuple, silent: int = 1):
        self.server, self.silent = tuple(server), silent
        super().__init__()

    def take(self, edge: socket.socket, number: int) -> None:
        """Server → edge whole; edge → server whole, or (silent) the HELLO and AUTH frames, then nothing."""
        try:
            upstream = socket.create_connection(self.server)
        except OSError:
            edge.close()
            return
        threading.Thread(target=relay, args=(upstream, edge), daemon=True).start()
        if number > self.silent:
            relay(edge, upstream)
            return
        try:
            for _ in range(2):
                upstream.sendall(protocol.Handshake.encode(protocol.read_frame(
                    lambda count: read_exactly(edge, count), protocol.Handshake, protocol.HANDSHAKE_LIMITS)))
            while edge.recv(65536):
                pass
        except (OSError, ProtocolError):
            pass


def read_exactly(sock: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            raise ConnectionError("the server closed the connection")
        data += chunk
    return data


def relay(source: socket.socket, target: socket.socket) -> None:
    """Bytes from `source` to `target` until either ends; then both are shut down."""
    try:
        while True:
            data = source.recv(65536)
            if not data:
                break
            target.sendall(data)
    except OSError:
        pass
    for sock in (source, target):
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


RESULT_FAULTS = ("nan", "short", "unsent")
FAULTS = RESULT_FAULTS + ("every other",)
FEATURE_LIMITS = {protocol.FEATURES: 1 << 20, protocol.CLOSING: 0}


class FaultyServer(Listener):
    """An edgesplit server holding the key whose RESULTs are faulty: `nan` (logits of NaN and infinity),
    `short` (half the bundle's values), or `unsent` (after READY,
    `unsent_replies` RESULTs for request ids the edge never sent, then correct answers: logits of zeros), or
    `every other` (correct zeros for even request ids, nothing for odd ones: a lossy server, not a silent one).
    With `first_only`, connections after the first are answered with correct zeros."""

    def __init__(self, bundle, key: bytes, fault: str, first_only: bool = False, unsent_replies: int = 100000):
        if fault not in FAULTS:
            raise ValueError(f"fault must be one of {FAULTS}, got {fault!r}")
        self.bundle_id = protocol.bundle_id_bytes(bundle.bundle_id)
        self.values = sum(int(np.prod(t["shape"][1:])) for t in bundle.artefact("cloud")["outputs"])
        self.key, self.fault, self.first_only, self.unsent_replies = key, fault, first_only, unsent_replies
        super().__init__()

    def take(self, sock: socket.socket, number: int) -> None:
        fault = self.fault if number == 1 or not self.first_only else None
        with sock:
            try:
                self._handshake(sock)
                if fault == "unsent":
                    self._send_unsent(sock)
                while True:
                    frame = protocol.read_frame(lambda count: read_exactly(sock, count), protocol.Stream,
                                                FEATURE_LIMITS)
                    if frame.type == protocol.FEATURES and not (fault == "every other" and frame.request_id % 2):
                        sock.sendall(protocol.Stream.encode(self._reply(frame.request_id, fault)))
            except (OSError, ProtocolError):
                pass

    def _handshake(self, sock: socket.socket) -> None:
        def receive() -> protocol.Frame:
            return protocol.read_frame(lambda count: read_exactly(sock, count), protocol.Handshake,
                                       protocol.HANDSHAKE_LIMITS)

        hello = receive()
        nonce = protocol.new_nonce()
        sock.sendall(protocol.Handshake.encode(protocol.Frame(protocol.CHALLENGE, bundle_id=self.bundle_id,
                                                              payload=nonce)))
        receive()  # AUTH: this server does not check the edge's proof, only proves its own
        proof = protocol.server_proof(self.key, nonce, hello.payload, self.bundle_id)
        sock.sendall(protocol.Handshake.encode(protocol.Frame(protocol.READY, bundle_id=self.bundle_id,
                                                              payload=proof)))

    def _send_unsent(self, sock: socket.socket) -> None:
        never_sent = protocol.Stream.encode(self._reply(0xFFFF, None))  # before any frame: an id the edge never sent
        for _ in range(self.unsent_replies):
            sock.sendall(never_sent)

    def _reply(self, request_id: int, fault) -> protocol.Frame:
        if fault == "nan":
            values = np.full(self.values, np.nan, np.float32)
            values[1] = np.inf
            return protocol.result_frame(request_id, values)
        if fault == "short":
            return protocol.result_frame(request_id, np.zeros(self.values // 2, np.float32))
        return protocol.result_frame(request_id, np.zeros(self.values, np.float32))


class EdgeRun(NamedTuple):
    returncode: int
    stdout: str
    stderr: str
    summary: dict | None  # --summary-json, when the run wrote it
    rows: list[list[str]]  # --output's CSV, header first
    peak_mb: float  # the process's peak RSS


def run_edge(bundle_path: Path, address: tuple, source: Path | str, output: Path, *options: str, key: str,
             timeout: float = 180) -> EdgeRun:
    """`edgesplit edge` as a user runs it, writing its summary and CSV into `output`."""
    summary_path, rows_path = output / "summary.json", output / "frames.csv"
    for path in (summary_path, rows_path):
        path.unlink(missing_ok=True)
    command = [sys.executable, "-m", "edgesplit", "edge", "--bundle", str(bundle_path), "--server",
               "{}:{}".format(*address), "--source", str(source), "--summary-json", str(summary_path), "--output",
               str(rows_path), *options]
    with tempfile.TemporaryFile("w+") as stdout, tempfile.TemporaryFile("w+") as stderr:
        process = subprocess.Popen(command, cwd=str(ROOT), env=dict(os.environ, EDGESPLIT_KEY=key), stdout=stdout,
                                   stderr=stderr, text=True)
        timer = threading.Timer(timeout, process.kill)
        timer.start()
        _, status, usage = os.wait4(process.pid, 0)  # the child's own peak RSS, which communicate() would lose
        timer.cancel()
        stdout.seek(0)
        stderr.seek(0)
        return EdgeRun(os.waitstatus_to_exitcode(status), stdout.read(), stderr.read(),
                       json.loads(summary_path.read_text()) if summary_path.exists() else None,
                       list(csv.reader(rows_path.open())) if rows_path.exists() else [], usage.ru_maxrss / 1024)


def image_folder(folder: Path, images: np.ndarray, huge: int = 12000) -> dict[str, Path]:
    """`images` (uint8, N x H x W or N x H x W x 3) as 000.png, 001.png, ... and among them the broken files issue 29
    found ending a run: a truncated JPEG, a text file named .png, a `huge` x `huge` PNG (kilobytes of zlib,
    `huge`² bytes decoded), a PNG header declaring 30000 x 30000, and a dangling link. Returns them by kind."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for index, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{index:03d}.png")
    middle = len(images) // 2
    jpeg = folder / f"{middle:03d}-truncated.jpg"
    Image.fromarray(images[0]).resize((256, 256)).save(jpeg, quality=90)
    jpeg.write_bytes(jpeg.read_bytes()[: jpeg.stat().st_size // 2])
    text = folder / f"{middle:03d}-notes.png"
    text.write_text("not an image\n")
    big = folder / f"{middle:03d}-huge.png"
    Image.new(Image.fromarray(images[0]).mode, (huge, huge)).save(big, compress_level=9)
    bomb = folder / f"{middle:03d}-bomb.png"  # its header alone: 30000 x 30000, past Pillow's own refusal
    bomb.write_bytes(_png_header(30000, 30000))
    gone = folder / f"{middle:03d}-gone.png"
    gone.symlink_to(folder / "no such file")
    return {"truncated": jpeg, "text": text, "huge": big, "bomb": bomb, "gone": gone}


def _png_header(width: int, height: int) -> bytes:
    """A PNG that declares its size and holds no pixels."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)) + \
        chunk(b"IEND", b"")
