"""edgesplit wire protocol, version 1: length-prefixed binary frames. Spec: runtime/PROTOCOL.md.

The only module that turns bytes from a socket into values. Every length is checked against a
limit before anything is read or allocated, every frame carries a CRC-32, and anything wrong
raises ProtocolError with the error code to answer with. Python 3.6 + stdlib + numpy.
"""

import hashlib
import hmac
import math
import os
import struct
import zlib
from typing import Callable, NamedTuple, Tuple

import numpy as np

from runtime.errors import ProtocolError
from runtime.wire import LOSSLESS, MAX_WIRE_NDIM, PICTURES

MAGIC = b"ESPL"
VERSION = 1

# magic, version, type, flags, request id, bundle id, lossless stage, bits, dtype, ndim,
# scale, zero point, payload length, checksum; then ndim x uint32 shape; then the payload
HEADER = struct.Struct(">4sBBHQ16sBBBBffII")
HEADER_BYTES = HEADER.size
DIM = struct.Struct(">I")

HELLO, CHALLENGE, AUTH, READY, FEATURES, RESULT, ERROR, CLOSING = range(1, 9)
FRAME_TYPES = {HELLO: "HELLO", CHALLENGE: "CHALLENGE", AUTH: "AUTH", READY: "READY",
               FEATURES: "FEATURES", RESULT: "RESULT", ERROR: "ERROR", CLOSING: "CLOSING"}
TENSOR_TYPES = (FEATURES, RESULT)

FLAG_FINAL = 0x0001  # on ERROR: the sender closes the connection after this frame
KNOWN_FLAGS = FLAG_FINAL

DTYPE_NONE, DTYPE_UINT8, DTYPE_FLOAT32 = 0, 1, 2
DTYPES = {DTYPE_NONE: None, DTYPE_UINT8: np.dtype(np.uint8), DTYPE_FLOAT32: np.dtype(">f4")}

STAGE_IDS = {stage.wire_id for stage in LOSSLESS.values()} | set(PICTURES.values())

# error codes carried in ERROR frames
BAD_FRAME, UNSUPPORTED_VERSION, BUNDLE_MISMATCH, AUTH_FAILED, BAD_REQUEST, INTERNAL, TIMEOUT, \
    TOO_MANY_IN_FLIGHT, BUSY = range(1, 10)
ERROR_NAMES = {BAD_FRAME: "bad frame", UNSUPPORTED_VERSION: "unsupported version",
               BUNDLE_MISMATCH: "bundle mismatch", AUTH_FAILED: "authentication failed",
               BAD_REQUEST: "bad request", INTERNAL: "internal error",
               TIMEOUT: "timeout", TOO_MANY_IN_FLIGHT: "too many frames in flight", BUSY: "server busy"}

MAX_NDIM = MAX_WIRE_NDIM
MAX_CONTROL_PAYLOAD = 1024
NONCE_BYTES = 32
MIN_KEY_BYTES = 16  # 128 bits: a shared key shorter than this can be guessed online
BUNDLE_ID_BYTES = 16


class Limits(NamedTuple):
    """What a receiver accepts; a frame over a limit is refused before its body is read."""

    max_payload: int = 16 << 20
    max_elements: int = 16 << 20


DEFAULT_LIMITS = Limits()


def features_limits(wire) -> Limits:
    """What a server takes from an edge of this wire format: a payload up to twice its packed size (a lossless
    stage may expand incompressible data a little), and exactly its elements."""
    return Limits(max_payload=max(4096, 2 * wire.packed_bytes + 1024), max_elements=wire.elements)
# before a peer has authenticated: control frames only, whatever the bundle's feature size
HANDSHAKE_LIMITS = Limits(max_payload=MAX_CONTROL_PAYLOAD, max_elements=MAX_CONTROL_PAYLOAD)


class Frame(NamedTuple):
    type: int
    request_id: int = 0
    bundle_id: bytes = bytes(BUNDLE_ID_BYTES)
    flags: int = 0
    lossless: int = 0
    bits: int = 0
    dtype: int = DTYPE_NONE
    shape: Tuple[int, ...] = ()
    scale: float = 0.0
    zero_point: float = 0.0
    payload: bytes = b""

    @property
    def type_name(self) -> str:
        return FRAME_TYPES.get(self.type, str(self.type))


class Header(NamedTuple):
    """A validated fixed header; `body_bytes` more bytes (shape, then payload) follow it."""

    frame: Frame
    ndim: int
    payload_length: int
    checksum: int

    @property
    def body_bytes(self) -> int:
        return self.ndim * DIM.size + self.payload_length


def bundle_id_bytes(bundle_id: str) -> bytes:
    try:
        raw = bytes.fromhex(bundle_id)
    except ValueError:
        raw = b""
    if len(raw) != BUNDLE_ID_BYTES:
        raise ProtocolError("bundle id must be {} hex digits, got {!r}".format(2 * BUNDLE_ID_BYTES, bundle_id))
    return raw


def frame_bytes(payload_bytes: int, ndim: int) -> int:
    """Bytes a tensor frame takes on the wire: header, one word per dimension, payload."""
    return HEADER_BYTES + DIM.size * ndim + payload_bytes


def _checksum(header: bytes, body: bytes) -> int:
    return zlib.crc32(body, zlib.crc32(header)) & 0xFFFFFFFF


def encode(frame: Frame) -> bytes:
    """A frame → its bytes on the wire (the sender's own limits are the caller's business)."""
    if len(frame.shape) > MAX_NDIM:
        raise ProtocolError("a frame carries at most {} dimensions, got {}".format(MAX_NDIM, len(frame.shape)))
    fields = (MAGIC, VERSION, frame.type, frame.flags, frame.request_id, frame.bundle_id, frame.lossless,
              frame.bits, frame.dtype, len(frame.shape), frame.scale, frame.zero_point, len(frame.payload))
    body = b"".join(DIM.pack(size) for size in frame.shape) + frame.payload
    checksum = _checksum(HEADER.pack(*(fields + (0,))), body)
    return HEADER.pack(*(fields + (checksum,))) + body


def parse_header(data: bytes, limits: Limits = DEFAULT_LIMITS) -> Header:
    """Validate the fixed header before any body byte is read."""
    if len(data) != HEADER_BYTES:
        raise ProtocolError("frame header must be {} bytes, got {}".format(HEADER_BYTES, len(data)))
    (magic, version, frame_type, flags, request_id, bundle_id, lossless, bits, dtype, ndim, scale, zero_point,
     payload_length, checksum) = HEADER.unpack(data)
    if magic != MAGIC:
        raise ProtocolError("not an edgesplit frame (magic {!r}, expected {!r})".format(magic, MAGIC))
    if version != VERSION:
        raise ProtocolError("protocol version {} is not supported (this side speaks {})".format(version, VERSION),
                            UNSUPPORTED_VERSION)
    if frame_type not in FRAME_TYPES:
        raise ProtocolError("unknown frame type {}".format(frame_type))
    if flags & ~KNOWN_FLAGS:
        raise ProtocolError("unknown flags 0x{:04x} in a {} frame".format(flags, FRAME_TYPES[frame_type]))
    if dtype not in DTYPES:
        raise ProtocolError("unknown dtype code {}".format(dtype))
    if ndim > MAX_NDIM:
        raise ProtocolError("frame has {} dimensions, the limit is {}".format(ndim, MAX_NDIM))
    tensor = frame_type in TENSOR_TYPES
    if tensor != (dtype != DTYPE_NONE) or (not tensor and ndim):
        raise ProtocolError("a {} frame {} a tensor".format(FRAME_TYPES[frame_type], "needs" if tensor else "has no"))
    if lossless not in STAGE_IDS or bits > 8:
        raise ProtocolError("unknown codec: lossless stage {}, {} bits".format(lossless, bits))
    limit = limits.max_payload if tensor else MAX_CONTROL_PAYLOAD
    if payload_length > limit:
        raise ProtocolError("{} payload of {} bytes is over the limit of {}".format(
            FRAME_TYPES[frame_type], payload_length, limit))
    if not (math.isfinite(scale) and math.isfinite(zero_point)):
        raise ProtocolError("quantization parameters must be finite")
    frame = Frame(frame_type, request_id, bundle_id, flags, lossless, bits, dtype, (), scale, zero_point)
    return Header(frame, ndim, payload_length, checksum)


def finish_frame(header: Header, body: bytes, limits: Limits = DEFAULT_LIMITS) -> Frame:
    """The bytes after a header → the whole frame, checksum and shape checked."""
    if len(body) != header.body_bytes:
        raise ProtocolError("frame body is {} bytes, the header says {}".format(len(body), header.body_bytes))
    fields = header.frame
    raw_header = HEADER.pack(MAGIC, VERSION, fields.type, fields.flags, fields.request_id, fields.bundle_id,
                             fields.lossless, fields.bits, fields.dtype, header.ndim, fields.scale,
                             fields.zero_point, header.payload_length, 0)
    if _checksum(raw_header, body) != header.checksum:
        raise ProtocolError("{} frame {} fails its CRC-32: corrupted in transit".format(
            fields.type_name, fields.request_id))
    split = header.ndim * DIM.size
    shape = tuple(DIM.unpack_from(body, offset)[0] for offset in range(0, split, DIM.size))
    elements = _product(shape) if shape else 0
    if fields.dtype != DTYPE_NONE and (not shape or elements == 0 or elements > limits.max_elements):
        raise ProtocolError("tensor shape {} is empty or over the limit of {} elements".format(
            shape, limits.max_elements))
    return fields._replace(shape=shape, payload=bytes(body[split:]))


def _product(shape) -> int:
    elements = 1
    for size in shape:
        elements *= size
    return elements


def decode(data: bytes, limits: Limits = DEFAULT_LIMITS) -> Frame:
    """Exactly one frame's bytes → Frame; anything else raises ProtocolError."""
    if len(data) < HEADER_BYTES:
        raise ProtocolError("frame is truncated: {} bytes, a header alone is {}".format(len(data), HEADER_BYTES))
    header = parse_header(bytes(data[:HEADER_BYTES]), limits)
    return finish_frame(header, bytes(data[HEADER_BYTES:]), limits)


def read_frame(read_exactly: Callable[[int], bytes], limits: Limits = DEFAULT_LIMITS) -> Frame:
    """Read one frame through `read_exactly(n)`, which returns n bytes or raises at end of stream."""
    header = parse_header(read_exactly(HEADER_BYTES), limits)
    return finish_frame(header, read_exactly(header.body_bytes) if header.body_bytes else b"", limits)


# --- tensors -------------------------------------------------------------------------------

def features_frame(request_id: int, bundle_id: bytes, payload: bytes, wire, quantization) -> Frame:
    """One frame's encoded codes. `wire` is the bundle's WireFormat, `quantization` its (scale, zero point)."""
    return Frame(FEATURES, request_id, bundle_id, 0, wire.stage_id, wire.bits, DTYPE_UINT8,
                 tuple(wire.shape), quantization[0], quantization[1], payload)


def result_frame(request_id: int, bundle_id: bytes, values: np.ndarray) -> Frame:
    values = np.ascontiguousarray(values, dtype=DTYPES[DTYPE_FLOAT32])
    return Frame(RESULT, request_id, bundle_id, dtype=DTYPE_FLOAT32, shape=values.shape, payload=values.tobytes())


def result_values(frame: Frame) -> np.ndarray:
    """A RESULT's values with the dtype and shape the frame declares (the edge checks they are the bundle's)."""
    dtype = DTYPES[frame.dtype]
    if frame.type != RESULT or dtype is None or len(frame.payload) != _product(frame.shape) * dtype.itemsize:
        raise ProtocolError("RESULT frame {} payload does not match its shape {}".format(
            frame.request_id, frame.shape))
    return np.frombuffer(frame.payload, dtype=dtype).reshape(frame.shape)


def check_features(frame: Frame, wire, quantization) -> None:
    """Refuse a FEATURES frame whose codec description differs from the bundle's."""
    expected = (wire.stage_id, wire.bits, DTYPE_UINT8, tuple(wire.shape))
    found = (frame.lossless, frame.bits, frame.dtype, frame.shape)
    if found != expected:
        raise ProtocolError("features are (lossless {}, {} bits, dtype {}, shape {}); the bundle sends "
                            "(lossless {}, {} bits, dtype {}, shape {})".format(*(found + expected)), BAD_REQUEST)
    if any(abs(found - wanted) > 1e-6 * abs(wanted) for found, wanted in zip((frame.scale, frame.zero_point),
                                                                             quantization)):
        raise ProtocolError("features quantized with scale {}, zero point {}; the bundle uses {}, {}".format(
            frame.scale, frame.zero_point, *quantization), BAD_REQUEST)


def wire_quantization(manifest: dict) -> Tuple[float, float]:
    """Per-tensor (scale, zero point) of the codes, or (0, 0) when the cloud artefact's decoder holds them."""
    codec = manifest["codec"]
    scale, zero_point = codec.get("scale", []), codec.get("zero_point", [])
    if len(scale) == 1 and len(zero_point) == 1:
        return float(np.float32(scale[0])), float(np.float32(zero_point[0]))
    return 0.0, 0.0


# --- errors --------------------------------------------------------------------------------

def error_frame(code: int, message: str, request_id: int = 0, final: bool = False,
                bundle_id: bytes = bytes(BUNDLE_ID_BYTES)) -> Frame:
    text = message.encode("utf-8", "replace")[:MAX_CONTROL_PAYLOAD - 2]
    return Frame(ERROR, request_id, bundle_id, FLAG_FINAL if final else 0, payload=struct.pack(">H", code) + text)


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
    return hmac.new(key, b"edgesplit/1 " + role + first_nonce + second_nonce + bundle_id, hashlib.sha256).digest()


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
