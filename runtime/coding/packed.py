"""Bit-packing, then a byte stage: each code keeps its `bits` bits, most significant first, every part of the
frame in order; then the whole goes through zlib, zstd, lz4 or nothing. zstandard and lz4 are imported only when
a bundle uses them. Decompression never produces more than the frame's packed size, so a crafted payload cannot
balloon memory."""

import io
import zlib
from typing import Callable, NamedTuple

import numpy as np

from runtime.coding import ENTROPY_CODERS, Coder
from runtime.errors import WireError


def _optional(module_name: str, package: str):
    try:
        return __import__(module_name, fromlist=["_"])
    except ImportError as error:
        raise WireError("this lossless stage needs {}: pip install {}".format(module_name, package)) from error


def _zlib_inflate(payload: bytes, size: int) -> bytes:
    inflater = zlib.decompressobj()
    data = inflater.decompress(payload, size + 1)
    if not inflater.eof:
        raise WireError("zlib payload is truncated or inflates past {} bytes".format(size))
    return data


def _zstd_decompress(payload: bytes, size: int) -> bytes:
    # a bounded read: decompress() would trust a content size written in the frame header
    reader = _optional("zstandard", "zstandard").ZstdDecompressor().stream_reader(io.BytesIO(payload))
    return reader.read(size + 1)


class Lossless(NamedTuple):
    """A byte stage: its two directions. `decompress(payload, size)` must never produce much more than
    `size` bytes, whatever the payload."""

    compress: Callable[[bytes], bytes]
    decompress: Callable[[bytes, int], bytes]
    builtin: bool  # in Python's standard library: every edge has it without another install


# The byte stages (runtime.coding.STAGES names them; the bundle pins the stage, frames do not name it)
BYTE_STAGES = {
    "none": Lossless(lambda data: data, lambda payload, size: payload, True),
    "zlib": Lossless(lambda data: zlib.compress(data, 6), _zlib_inflate, True),
    "zstd": Lossless(lambda data: _optional("zstandard", "zstandard").ZstdCompressor(level=3).compress(data),
                     _zstd_decompress, False),
    "lz4": Lossless(lambda data: _optional("lz4.block", "lz4").compress(data, store_size=False),
                    lambda payload, size: _optional("lz4.block", "lz4").decompress(payload, uncompressed_size=size),
                    False),
}


def compress_bytes(data: bytes, lossless: str) -> bytes:
    return BYTE_STAGES[lossless].compress(data)


def decompress_bytes(payload: bytes, lossless: str, size: int) -> bytes:
    """Undo `compress_bytes`; the result must be exactly `size` bytes."""
    try:
        data = BYTE_STAGES[lossless].decompress(payload, size)
    except WireError:
        raise
    except Exception as error:  # each library raises its own type for corrupt input
        raise WireError("payload is not valid {} data: {}".format(lossless, error)) from error
    if len(data) != size:
        after = "" if lossless == "none" else " after {} decoding".format(lossless)
        raise WireError("payload has {} bytes{}, the bundle's wire format needs {}".format(len(data), after, size))
    return data


def _lane_shifts(bits: int) -> np.ndarray:
    """Shift of each code within its byte when `bits` divides 8, first code most significant."""
    return np.arange(8 - bits, -1, -bits, dtype=np.uint8)


_UNPACK_TABLES = {}


def _unpack_table(bits: int) -> np.ndarray:
    """Row b holds the codes packed in byte value b: unpacking is one table lookup per byte."""
    if bits not in _UNPACK_TABLES:
        values = np.arange(256, dtype=np.uint8)[:, None]
        _UNPACK_TABLES[bits] = (values >> _lane_shifts(bits)) & np.uint8((1 << bits) - 1)
    return _UNPACK_TABLES[bits]


def pack_bits(codes: np.ndarray, bits: int) -> bytes:
    """Keep the low `bits` bits of each uint8 code, most significant first, padded to a byte."""
    if bits == 8:
        return codes.tobytes()
    flat = codes.reshape(-1)
    if 8 % bits == 0:  # whole codes per byte: shifts instead of a bit-plane round trip
        lanes = 8 // bits
        padded = np.zeros(-(-flat.size // lanes) * lanes, dtype=np.uint8)
        padded[:flat.size] = flat & ((1 << bits) - 1)
        groups = padded.reshape(-1, lanes)
        packed = np.zeros(len(groups), dtype=np.uint8)
        for lane, shift in enumerate(_lane_shifts(bits)):
            packed |= groups[:, lane] << shift
        return packed.tobytes()
    planes = np.unpackbits(flat.reshape(-1, 1), axis=1)[:, 8 - bits:]
    return np.packbits(planes.reshape(-1)).tobytes()


def unpack_bits(data: bytes, bits: int, elements: int) -> np.ndarray:
    raw = np.frombuffer(data, dtype=np.uint8)
    if bits == 8:
        return raw
    if 8 % bits == 0:
        return np.take(_unpack_table(bits), raw, axis=0).reshape(-1)[:elements]
    planes = np.unpackbits(raw)[:elements * bits].reshape(elements, bits)
    padded = np.zeros((elements, 8), dtype=np.uint8)
    padded[:, 8 - bits:] = planes
    return np.packbits(padded, axis=1).reshape(elements)


def packed_size(shape, bits: int) -> int:
    return (int(np.prod(shape, dtype=np.int64)) * bits + 7) // 8


class PackedCoder(Coder):
    @classmethod
    def check(cls, wire) -> None:
        if wire.prior:
            raise WireError("a prior belongs to the {} stage on one code tensor, not to lossless {!r}{}".format(
                "/".join(ENTROPY_CODERS), wire.lossless, " with parts" if wire.parts else ""))

    def encode(self, arrays: list) -> bytes:
        return compress_bytes(b"".join(pack_bits(a, self.wire.bits) for a in arrays), self.wire.lossless)

    def decode(self, payload: bytes) -> list:
        wire = self.wire
        data = decompress_bytes(payload, wire.lossless, wire.packed_bytes)
        arrays, offset = [], 0
        for shape in wire.shapes:
            size = packed_size(shape, wire.bits)
            arrays.append(unpack_bits(data[offset:offset + size], wire.bits, int(np.prod(shape))).reshape(shape))
            offset += size
        return arrays


CODER = PackedCoder
