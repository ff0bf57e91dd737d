"""edgesplit wire protocol, version 2: handshake frames, then compact stream frames. Spec: runtime/PROTOCOL.md.

The only module that turns bytes from a socket into values. Every length is checked against a
limit before anything is read or allocated, every frame carries a CRC-32, and anything wrong
raises ProtocolError with the error code to answer with. Python 3.6 + stdlib + numpy.
"""

import hashlib
import hmac
import os
import struct
import zlib
from typing import Callable, Dict, NamedTuple, Tuple

import numpy as np

from runtime.errors import ProtocolError

MAGIC = b"ESPL"
VERSION = 2

HELLO, CHALLENGE, AUTH, READY, FEATURES, RESULT, ERROR, CLOSING = range(1, 9)
FRAME_TYPES = {HELLO: "HELLO", CHALLENGE: "CHALLENGE", AUTH: "AUTH", READY: "READY",
               FEATURES: "FEATURES", RESULT: "RESULT", ERROR: "ERROR", CLOSING: "CLOSING"}

FLAG_FINAL = 0x1  # on ERROR: the sender closes the connection after this frame
KNOWN_FLAGS = FLAG_FINAL

# error codes carried in ERROR frames
BAD_FRAME, UNSUPPORTED_VERSION, BUNDLE_MISMATCH, AUTH_FAILED, BAD_REQUEST, INTERNAL, TIMEOUT, \
    TOO_MANY_IN_FLIGHT, BUSY = range(1, 10)
ERROR_NAMES = {BAD_FRAME: "bad frame", UNSUPPORTED_VERSION: "unsupported version",
               BUNDLE_MISMATCH: "bundle mismatch", AUTH_FAILED: "authentication failed",
               BAD_REQUEST: "bad request", INTERNAL: "internal error",
               TIMEOUT: "timeout", TOO_MANY_IN_FLIGHT: "too many frames in flight", BUSY: "server busy"}

MAX_CONTROL_PAYLOAD = 1024
NONCE_BYTES = 32
MIN_KEY_BYTES = 16  # 128 bits: a shared key shorter than this can be guessed online
BUNDLE_ID_BYTES = 16
RESULT_DTYPE = np.dtype(">f4")  # a RESULT's values: big-endian float32


class Frame(NamedTuple):
    type: int
    request_id: int = 0  # a stream frame carries its low 16 bits (Stream.encode keeps those)
    bundle_id: bytes = bytes(BUNDLE_ID_BYTES)  # handshake frames only
    flags: int = 0
    payload: bytes = b""

    @property
    def type_name(self) -> str:
        return FRAME_TYPES.get(self.type, str(self.type))


Limits = Dict[int, int]  # frame type → the largest payload a receiver takes; other types are refused


def features_limit(wire) -> int:
    """The largest FEATURES payload a server takes from an edge of this wire format: twice its packed size (a
    lossless stage may expand incompressible data a little) plus 1 KiB."""
    return max(4096, 2 * wire.packed_bytes + 1024)


def server_limits(wire, prefix: int = 0) -> Limits:
    """What a server reads after READY from an edge of `wire` (before it: HANDSHAKE_LIMITS, whatever the size);
    `prefix`: bytes before the codes (an adaptive bundle's point index)."""
    return {FEATURES: prefix + features_limit(wire), CLOSING: 0}


def edge_limits(result_values: int) -> Limits:
    """What an edge reads after READY: RESULTs of exactly its bundle's output size (checked again in
    result_values), ERROR and CLOSING."""
    return {RESULT: RESULT_DTYPE.itemsize * result_values, ERROR: MAX_CONTROL_PAYLOAD, CLOSING: 0}


HANDSHAKE_LIMITS = dict.fromkeys((HELLO, CHALLENGE, AUTH, READY, ERROR), MAX_CONTROL_PAYLOAD)


class Header(NamedTuple):
    """A validated header; `payload_length` more bytes follow it."""

    frame: Frame
    payload_length: int
    checksum: int
    raw: bytes  # the header as the CRC covers it


def bundle_id_bytes(bundle_id: str) -> bytes:
    try:
        raw = bytes.fromhex(bundle_id)
    except ValueError:
        raw = b""
    if len(raw) != BUNDLE_ID_BYTES:
        raise ProtocolError("bundle id must be {} hex digits, got {!r}".format(2 * BUNDLE_ID_BYTES, bundle_id))
    return raw


def _checksum(header: bytes, payload: bytes) -> int:
    return zlib.crc32(payload, zlib.crc32(header)) & 0xFFFFFFFF


def _check_type(frame_type: int, flags: int, payload_length: int, limits: Limits) -> None:
    if frame_type not in FRAME_TYPES:
        raise ProtocolError("unknown frame type {}".format(frame_type))
    if flags & ~KNOWN_FLAGS:
        raise ProtocolError("unknown flags 0x{:x} in a {} frame".format(flags, FRAME_TYPES[frame_type]))
    if frame_type not in limits:
        raise ProtocolError("unexpected {} frame".format(FRAME_TYPES[frame_type]))
    if payload_length > limits[frame_type]:
        raise ProtocolError("{} payload of {} bytes is over the limit of {}".format(
            FRAME_TYPES[frame_type], payload_length, limits[frame_type]))


class Handshake:
    """Frames until READY: magic, version, type, flags, bundle id, payload length, CRC-32 (32 bytes), payload.
    Magic and version sit where version 1 had them, so either side names the other's version."""

    HEADER = struct.Struct(">4sBBH16sII")
    minimum = HEADER.size

    @staticmethod
    def header_bytes(head: bytes) -> int:
        return Handshake.HEADER.size

    @staticmethod
    def encode(frame: Frame) -> bytes:
        fields = (MAGIC, VERSION, frame.type, frame.flags, frame.bundle_id, len(frame.payload))
        checksum = _checksum(Handshake.HEADER.pack(*(fields + (0,))), frame.payload)
        return Handshake.HEADER.pack(*(fields + (checksum,))) + frame.payload

    @staticmethod
    def parse(data: bytes, limits: Limits) -> Header:
        if len(data) != Handshake.HEADER.size:
            raise ProtocolError("frame header must be {} bytes, got {}".format(Handshake.HEADER.size, len(data)))
        magic, version, frame_type, flags, bundle_id, payload_length, checksum = Handshake.HEADER.unpack(data)
        if magic != MAGIC:
            raise ProtocolError("not an edgesplit frame (magic {!r}, expected {!r})".format(magic, MAGIC))
        if version != VERSION:
            raise ProtocolError("protocol version {} is not supported (this side speaks {}): run the same edgesplit "
                                "release on the edge and the server".format(version, VERSION), UNSUPPORTED_VERSION)
        _check_type(frame_type, flags, payload_length, limits)
        raw = Handshake.HEADER.pack(magic, version, frame_type, flags, bundle_id, payload_length, 0)
        return Header(Frame(frame_type, 0, bundle_id, flags), payload_length, checksum, raw)


class Stream:
    """Frames after READY: type and flags (1 byte), request id mod 2^16 (2), payload length (LEB128, 1..4
    bytes), CRC-32 of those and the payload (4), payload. 8 bytes for a payload under 128."""

    HEAD = struct.Struct(">BH")
    CHECK = struct.Struct(">I")
    LENGTH_BYTES = 4  # a payload under 2^28 bytes
    minimum = HEAD.size + 1 + CHECK.size

    @staticmethod
    def header_bytes(head: bytes) -> int:
        """From the first `minimum` bytes: how long the whole header is."""
        for index in range(Stream.LENGTH_BYTES):
            if not head[Stream.HEAD.size + index] & 0x80:
                return Stream.HEAD.size + index + 1 + Stream.CHECK.size
        raise ProtocolError("payload length takes over {} bytes".format(Stream.LENGTH_BYTES))

    @staticmethod
    def encode(frame: Frame) -> bytes:
        head = Stream.HEAD.pack(frame.type << 4 | frame.flags, frame.request_id & 0xFFFF)
        head += length_field(len(frame.payload))
        return head + Stream.CHECK.pack(_checksum(head, frame.payload)) + frame.payload

    @staticmethod
    def parse(data: bytes, limits: Limits) -> Header:
        if len(data) < Stream.minimum or len(data) != Stream.header_bytes(data):
            raise ProtocolError("frame header of {} bytes does not hold its payload length".format(len(data)))
        kind, request_id = Stream.HEAD.unpack_from(data)
        raw = data[:-Stream.CHECK.size]
        length_bytes = raw[Stream.HEAD.size:]
        payload_length = sum((byte & 0x7F) << (7 * index) for index, byte in enumerate(length_bytes))
        if len(length_bytes) > 1 and length_bytes[-1] == 0:
            raise ProtocolError("payload length is not in its shortest form")
        _check_type(kind >> 4, kind & 0xF, payload_length, limits)
        checksum = Stream.CHECK.unpack_from(data, len(raw))[0]
        return Header(Frame(kind >> 4, request_id, flags=kind & 0xF), payload_length, checksum, raw)


def length_field(value: int) -> bytes:
    """LEB128: 7 bits a byte, low first, the top bit set on every byte but the last."""
    if value >> (7 * Stream.LENGTH_BYTES):
        raise ProtocolError("a payload of {} bytes is over what a frame carries".format(value))
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def finish_frame(header: Header, payload: bytes) -> Frame:
    """The payload after a header → the whole frame, its CRC checked."""
    if len(payload) != header.payload_length:
        raise ProtocolError("frame payload is {} bytes, the header says {}".format(len(payload), header.payload_length))
    if _checksum(header.raw, payload) != header.checksum:
        raise ProtocolError("{} frame {} fails its CRC-32: corrupted in transit".format(
            header.frame.type_name, header.frame.request_id))
    return header.frame._replace(payload=bytes(payload))


def read_frame(read_exactly: Callable[[int], bytes], framing, limits: Limits) -> Frame:
    """Read one frame through `read_exactly(n)`, which returns n bytes (b"" for 0) or raises at end of stream;
    `framing` is Handshake or Stream."""
    head = read_exactly(framing.minimum)
    head += read_exactly(framing.header_bytes(head) - len(head))
    header = framing.parse(head, limits)
    return finish_frame(header, read_exactly(header.payload_length))


async def read_frame_async(read_exactly, framing, limits: Limits) -> Frame:
    """read_frame for asyncio: `await read_exactly(n)` (StreamReader.readexactly)."""
    head = await read_exactly(framing.minimum)
    head += await read_exactly(framing.header_bytes(head) - len(head))
    header = framing.parse(head, limits)
    return finish_frame(header, await read_exactly(header.payload_length))


def decode(data: bytes, framing, limits: Limits) -> Frame:
    """Exactly one frame's bytes → Frame; anything else raises ProtocolError."""
    data = bytes(data)
    if len(data) < framing.minimum:
        raise ProtocolError("frame is truncated: {} bytes, a header is at least {}".format(len(data), framing.minimum))
    size = framing.header_bytes(data)
    header = framing.parse(data[:size], limits)
    return finish_frame(header, data[size:])


def frame_bytes(payload_bytes: float) -> float:
    """Bytes a stream frame takes on the wire: header and payload (a mean payload gives a mean frame)."""
    return Stream.HEAD.size + len(length_field(int(payload_bytes))) + Stream.CHECK.size + payload_bytes


def wire_request_id(last_sent: int, wire_id: int) -> int:
    """The edge's full request id for a reply's 16 bits: the latest it sent with those bits (frames in flight on
    one connection span far fewer than 2^16 ids)."""
    return last_sent - ((last_sent - wire_id) & 0xFFFF)


# --- tensors -------------------------------------------------------------------------------

def features_frame(request_id: int, payload: bytes) -> Frame:
    """One frame's encoded codes: what they are (codec, shape, bits, quantization) is the bundle's, pinned at
    the handshake."""
    return Frame(FEATURES, request_id, payload=payload)


def result_frame(request_id: int, values: np.ndarray) -> Frame:
    return Frame(RESULT, request_id, payload=np.ascontiguousarray(values, dtype=RESULT_DTYPE).tobytes())


def result_values(frame: Frame, count: int) -> np.ndarray:
    """A RESULT's `count` values (the bundle's output size)."""
    if frame.type != RESULT or len(frame.payload) != count * RESULT_DTYPE.itemsize:
        raise ProtocolError("RESULT frame {} carries {} bytes, not the bundle's {} values".format(
            frame.request_id, len(frame.payload), count))
    return np.frombuffer(frame.payload, dtype=RESULT_DTYPE)


# --- errors --------------------------------------------------------------------------------

def error_frame(code: int, message: str, request_id: int = 0, final: bool = False,
                bundle_id: bytes = bytes(BUNDLE_ID_BYTES)) -> Frame:
    text = message.encode("utf-8", "replace")[:MAX_CONTROL_PAYLOAD - 2]
    return Frame(ERROR, request_id, bundle_id, FLAG_FINAL if final else 0,
                 payload=struct.pack(">H", code) + text)


def error_details(frame: Frame) -> Tuple[int, str]:
    if frame.type != ERROR or len(frame.payload) < 2:
        raise ProtocolError("malformed ERROR frame")
    code = struct.unpack(">H", frame.payload[:2])[0]
    return code, frame.payload[2:].decode("utf-8", "replace")


def raise_error_frame(frame: Frame, context: str) -> None:
    code, message = error_details(frame)
    raise ProtocolError("{}: server answered {} ({}): {}".format(
        context, ERROR_NAMES.get(code, "error {}".format(code)), code, message), code)


# --- handshake -----------------------------------------------------------------------------

def new_nonce() -> bytes:
    return os.urandom(NONCE_BYTES)


def proof(key: bytes, role: bytes, first_nonce: bytes, second_nonce: bytes, bundle_id: bytes) -> bytes:
    """HMAC-SHA256 binding both nonces and the bundle: a reply cannot be replayed or reflected."""
    return hmac.new(key, b"edgesplit/2 " + role + first_nonce + second_nonce + bundle_id, hashlib.sha256).digest()


def client_proof(key: bytes, server_nonce: bytes, client_nonce: bytes, bundle_id: bytes) -> bytes:
    return proof(key, b"edge", server_nonce, client_nonce, bundle_id)


def server_proof(key: bytes, server_nonce: bytes, client_nonce: bytes, bundle_id: bytes) -> bytes:
    return proof(key, b"cloud", client_nonce, server_nonce, bundle_id)


def proofs_match(expected: bytes, received: bytes) -> bool:
    return hmac.compare_digest(expected, received)


HEX_DIGITS = frozenset(b"0123456789abcdefABCDEF")


def check_key(key: bytes) -> bytes:
    """A shared key of at least MIN_KEY_BYTES * 8 bits, or b'' (none); anything weaker is refused with how to make
    one. A key holds at most 4 bits per character if it is hex (as secrets.token_hex writes), else 8 per byte,
    and nothing if it is one repeated byte."""
    hex_key = set(key) <= HEX_DIGITS
    bits = 0 if len(set(key)) < 2 else (4 if hex_key else 8) * len(key)
    if key and bits < 8 * MIN_KEY_BYTES:
        raise ProtocolError("the shared key holds at most {} bits ({} bytes{}); at least {} are needed: make one with "
                            "python3 -c 'import secrets; print(secrets.token_hex(32))' > edgesplit.key".format(
                                bits, len(key), ", hex digits" if hex_key else "", 8 * MIN_KEY_BYTES))
    return key


def read_key(key_file=None, environ=None) -> bytes:
    """The shared key from a file (whitespace stripped) or EDGESPLIT_KEY; b'' when neither is set."""
    if key_file:
        try:
            with open(str(key_file), "rb") as stream:
                key = stream.read(4097).strip()
        except OSError as error:
            raise ProtocolError("cannot read key file {}: {}".format(key_file, error)) from error
        if not key or len(key) > 4096:
            raise ProtocolError("key file {} must hold 1..4096 bytes".format(key_file))
        return key
    return (environ if environ is not None else os.environ).get("EDGESPLIT_KEY", "").encode()
