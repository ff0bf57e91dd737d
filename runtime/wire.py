"""Bytes that cross the network for one frame: the integer codes of the split tensor, or the image.

codes (uint8, values < 2^bits) → bit-packing when bits < 8 → lossless stage → payload; or, with the `rans`
stage, codes → rANS with the bundle's prior (runtime/rans.py) → payload, bit-packed behind a 0 byte where
that is no smaller. A cloud-only
bundle's codes are the image's pixels, sent raw or as a PNG or JPEG picture (Pillow, imported then).
Shared by edge and cloud; parameters come from the bundle manifest. Python 3.6 + numpy only;
zstandard and lz4 are imported only when a bundle uses them. Decompression never produces
more than the frame's packed size, so a crafted payload cannot balloon memory.
"""

import io
import zlib
from typing import Callable, NamedTuple, Tuple

import numpy as np

from runtime import rans
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
    """A lossless stage: its two directions. `decompress(payload, size)` must never produce much more than
    `size` bytes, whatever the payload."""

    compress: Callable[[bytes], bytes]
    decompress: Callable[[bytes, int], bytes]
    builtin: bool  # in Python's standard library: every edge has it without another install


# The one table of lossless stages: the wire code and the CLI choices read it (the bundle pins the stage; frames
# do not name it).
LOSSLESS = {
    "none": Lossless(lambda data: data, lambda payload, size: payload, True),
    "zlib": Lossless(lambda data: zlib.compress(data, 6), _zlib_inflate, True),
    "zstd": Lossless(lambda data: _optional("zstandard", "zstandard").ZstdCompressor(level=3).compress(data),
                     _zstd_decompress, False),
    "lz4": Lossless(lambda data: _optional("lz4.block", "lz4").compress(data, store_size=False),
                    lambda payload, size: _optional("lz4.block", "lz4").decompress(payload, uncompressed_size=size),
                    False),
}


# An entropy stage replaces bit-packing and the byte stages: it codes each code with its table of the bundle's
# prior (one per code channel, the first axis of the code shape, or one for all). A stream never starts with a 0
# byte (its first byte is the top of a state >= 2^16), so a 0 byte marks the bit-packed codes instead.
ENTROPY_CODERS = ("rans",)
PACKED_MARK = b"\x00"


# A picture stage replaces bit-packing and the lossless stage for a cloud-only bundle's C x H x W pixels.
PICTURES = ("png", "jpeg")
PICTURE_CHANNELS = {1: "L", 3: "RGB"}
JPEG_QUALITY = 90


def pillow():
    try:
        from PIL import Image
    except ImportError as error:
        raise WireError("PNG and JPEG frames need Pillow: pip install pillow") from error
    return Image


def encode_picture(pixels: np.ndarray, picture: str) -> bytes:
    """One C x H x W uint8 image (C = 1 or 3) → PNG or JPEG bytes, as a camera would send it."""
    picture_file = pillow().fromarray(pixels[0] if pixels.shape[0] == 1 else pixels.transpose(1, 2, 0))
    buffer = io.BytesIO()
    options = {"quality": JPEG_QUALITY} if picture == "jpeg" else {"optimize": True}
    picture_file.save(buffer, format=picture.upper(), **options)
    return buffer.getvalue()


def decode_picture(payload: bytes, picture: str, shape) -> np.ndarray:
    """PNG or JPEG bytes → C x H x W uint8; its header must declare exactly `shape` before a pixel is decoded."""
    channels, height, width = shape
    try:
        opened = pillow().open(io.BytesIO(payload), formats=[picture.upper()])
        if opened.size != (width, height) or opened.mode != PICTURE_CHANNELS[channels]:
            raise WireError("the {} frame is a {}x{} {} picture; the bundle sends {}x{} {}".format(
                picture, opened.size[1], opened.size[0], opened.mode, height, width, PICTURE_CHANNELS[channels]))
        pixels = np.asarray(opened)
    except WireError:
        raise
    except Exception as error:  # Pillow raises its own types, and OSError for truncated data
        raise WireError("payload is not a valid {} picture: {}".format(picture, error)) from error
    if pixels.shape != (height, width) + ((channels,) if channels > 1 else ()):
        raise WireError("the {} picture decoded to {}, not {}".format(picture, pixels.shape, tuple(shape)))
    return pixels[None] if channels == 1 else np.ascontiguousarray(pixels.transpose(2, 0, 1))


def _stage(lossless: str) -> Lossless:
    if lossless not in LOSSLESS:
        raise WireError("unknown lossless stage {!r}; stages: {}".format(lossless, ", ".join(
            tuple(LOSSLESS) + ENTROPY_CODERS)))
    return LOSSLESS[lossless]


_CODERS = {}


def _coder(wire: "WireFormat"):
    """The prior's rANS tables and each code's table index, made once per bundle."""
    cached = _CODERS.get(id(wire.prior))
    if cached is None or cached[0] is not wire.prior:
        per_table = wire.elements // len(wire.prior)
        table_of = [index // per_table for index in range(wire.elements)]
        cached = _CODERS[id(wire.prior)] = (wire.prior, rans.model(np.array(wire.prior)), table_of)
    return cached[1], cached[2]


def entropy_encode(codes: np.ndarray, wire: "WireFormat") -> bytes:
    """Codes → the rANS stream, or the bit-packed codes behind a 0 byte where the stream is no smaller."""
    if codes.size and int(codes.max()) >= 1 << wire.bits:
        raise WireError("codes must be below 2^{} = {}, got {}".format(wire.bits, 1 << wire.bits, int(codes.max())))
    coder, table_of = _coder(wire)
    stream = rans.encode(codes.reshape(-1).tolist(), table_of, coder)
    return stream if len(stream) < wire.packed_bytes + 1 else PACKED_MARK + pack_bits(codes, wire.bits)


def entropy_decode(payload: bytes, wire: "WireFormat") -> np.ndarray:
    if payload[:1] == PACKED_MARK:
        if len(payload) != wire.packed_bytes + 1:
            raise WireError("payload has {} bit-packed bytes, the bundle's wire format needs {}".format(
                len(payload) - 1, wire.packed_bytes))
        return unpack_bits(payload[1:], wire.bits, wire.elements)
    if len(payload) > wire.packed_bytes:  # no stream the encoder sends is this long: refused before decoding
        raise WireError("entropy-coded payload of {} bytes is over the {} the bundle's codes take bit-packed".format(
            len(payload), wire.packed_bytes))
    coder, table_of = _coder(wire)
    return rans.decode(payload, table_of, coder)


def compress_bytes(data: bytes, lossless: str) -> bytes:
    return _stage(lossless).compress(data)


def decompress_bytes(payload: bytes, lossless: str, size: int) -> bytes:
    """Undo `compress_bytes`; the result must be exactly `size` bytes."""
    stage = _stage(lossless)
    try:
        data = stage.decompress(payload, size)
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


MAX_WIRE_NDIM = 6  # a bundle's code shape: 1..6 sizes (runtime/PROTOCOL.md, bundle limits)
MAX_WIRE_ELEMENTS = 1 << 24  # codes per frame: 16 MiB at 8 bits, far over any cut worth sending


def _size(shape) -> int:
    return int(np.prod(shape, dtype=np.int64))


class WireFormat(NamedTuple):
    """One frame: code shape without the batch axis, bits per code, lossless stage. When several tensors
    cross the cut, `parts` holds each one's code shape, `shape` is (all their elements,), and a frame is
    every part bit-packed in order, then one lossless stage over the whole. `picture` ("png" or "jpeg") sends
    8-bit C x H x W codes (the image itself) as that picture instead."""

    shape: Tuple[int, ...]
    bits: int = 8
    lossless: str = "none"
    parts: Tuple[Tuple[int, ...], ...] = ()
    picture: str = ""
    prior: Tuple[Tuple[int, ...], ...] = ()  # the rans stage's frequencies: a table per code channel, or one

    @classmethod
    def of(cls, shapes, bits: int = 8, lossless: str = "none") -> "WireFormat":
        shapes = tuple(tuple(shape) for shape in shapes)
        if len(shapes) == 1:
            return cls(shapes[0], bits, lossless).validated()
        return cls((sum(_size(shape) for shape in shapes),), bits, lossless, shapes).validated()

    @property
    def shapes(self) -> Tuple[Tuple[int, ...], ...]:
        return self.parts or (self.shape,)

    @property
    def elements(self) -> int:
        return _size(self.shape)

    def _packed(self, shape) -> int:
        return (_size(shape) * self.bits + 7) // 8

    @property
    def packed_bytes(self) -> int:
        """Bytes after bit-packing, before the lossless stage (its exact output size when 'none')."""
        return sum(self._packed(shape) for shape in self.shapes)

    def to_manifest(self) -> dict:
        entry = {"shape": list(self.shape), "dtype": "uint8", "bits": self.bits,
                 "lossless": self.lossless, "packed_bytes_per_frame": self.packed_bytes}
        if self.parts:
            entry["parts"] = [list(shape) for shape in self.parts]
        if self.picture:
            entry["picture"] = self.picture
        if self.prior:
            entry["prior"] = {"precision": rans.PRECISION, "frequencies": [list(table) for table in self.prior]}
        return entry

    @classmethod
    def from_manifest(cls, entry: dict) -> "WireFormat":
        parts = tuple(tuple(shape) for shape in entry.get("parts", ()))
        prior = entry.get("prior", {})
        if prior and prior.get("precision") != rans.PRECISION:
            raise WireError("the prior's frequencies are out of 2^{}; this runtime codes with 2^{}".format(
                prior.get("precision"), rans.PRECISION))
        try:
            frequencies = tuple(tuple(table) for table in prior.get("frequencies", ()))
        except TypeError:
            raise WireError("the prior's frequencies must be a list of tables, each a list of integers") from None
        return cls(tuple(entry["shape"]), entry["bits"], entry["lossless"], parts, entry.get("picture", ""),
                   frequencies).validated()

    def entropy_coded(self, frequencies) -> "WireFormat":
        """This wire with the rans stage and its prior (frequencies per table, as rans.quantize gives them)."""
        return self._replace(lossless="rans", prior=tuple(tuple(int(f) for f in table) for table in frequencies)
                             ).validated()

    def validated(self) -> "WireFormat":
        if type(self.bits) is not int or not 1 <= self.bits <= 8:
            raise WireError("bits per code must be 1..8, got {!r}".format(self.bits))
        for shape in (self.shape,) + self.parts:
            if not 1 <= len(shape) <= MAX_WIRE_NDIM or not all(type(size) is int and size > 0 for size in shape):
                raise WireError("wire shape {} must be 1..{} positive integer sizes".format(list(shape), MAX_WIRE_NDIM))
        if _size(self.shape) > MAX_WIRE_ELEMENTS:
            raise WireError("wire shape {} has {:,} codes per frame, over the {:,} a frame may carry".format(
                list(self.shape), _size(self.shape), MAX_WIRE_ELEMENTS))
        if self.parts and _size(self.shape) != sum(_size(shape) for shape in self.parts):
            raise WireError("wire shape {} does not hold its parts {}".format(self.shape, self.parts))
        if self.lossless in ENTROPY_CODERS or self.prior:
            self._check_prior()
        else:
            _stage(self.lossless)
        if self.picture and (self.picture not in PICTURES or self.bits != 8 or self.lossless != "none"
                             or self.parts or len(self.shape) != 3 or self.shape[0] not in PICTURE_CHANNELS):
            raise WireError("a {!r} picture frame carries one 8-bit grey or RGB image (C x H x W, C = 1 or 3) with "
                            "no lossless stage; pictures: {}".format(self.picture, ", ".join(PICTURES)))
        return self

    def _check_prior(self) -> None:
        tables = len(self.prior)
        if self.lossless not in ENTROPY_CODERS or self.parts or self.picture:
            raise WireError("a prior belongs to the {} stage on one code tensor, not to lossless {!r}{}".format(
                "/".join(ENTROPY_CODERS), self.lossless, " with parts" if self.parts else ""))
        if any(not isinstance(f, (int, np.integer)) or isinstance(f, bool) for table in self.prior for f in table):
            raise WireError("the {} stage's prior must hold integer frequencies".format(self.lossless))
        if tables not in (1, self.shape[0]) or any(len(table) != 1 << self.bits for table in self.prior):
            raise WireError("the {} stage needs one table or one per code channel ({}), each of 2^{} frequencies; "
                            "the prior has {} tables".format(self.lossless, self.shape[0], self.bits, tables))
        rans.model(np.array(self.prior))  # frequencies that sum right, each >= 1


def frames_of(codes, wire: WireFormat) -> list:
    """A batch of codes (an array, or one array per part) → one frame's codes per entry, as encode_frame takes."""
    if not wire.parts:
        return list(codes)
    return [[part[i] for part in codes] for i in range(len(codes[0]))]


def encode_frame(codes, wire: WireFormat) -> bytes:
    """One frame's codes (uint8 of `wire.shape`, or a sequence of arrays, one per part) → payload bytes."""
    arrays = list(codes) if wire.parts else [codes]
    found = [(a.dtype, tuple(a.shape)) for a in arrays]
    if found != [(np.dtype(np.uint8), shape) for shape in wire.shapes]:
        raise WireError("codes must be uint8 shaped {}, got {}".format(
            list(wire.shapes), [("{} {}".format(dtype, shape)) for dtype, shape in found]))
    if wire.picture:
        return encode_picture(arrays[0], wire.picture)
    if wire.prior:
        return entropy_encode(arrays[0], wire)
    return compress_bytes(b"".join(pack_bits(a, wire.bits) for a in arrays), wire.lossless)


def decode_frame(payload: bytes, wire: WireFormat):
    """Payload bytes → one frame's codes (a list of arrays when several parts); sizes must be exactly what
    the manifest says."""
    if wire.picture:
        return decode_picture(payload, wire.picture, wire.shape)
    if wire.prior:
        return entropy_decode(payload, wire).reshape(wire.shape)
    data = decompress_bytes(payload, wire.lossless, wire.packed_bytes)
    arrays, offset = [], 0
    for shape in wire.shapes:
        size = wire._packed(shape)
        arrays.append(unpack_bits(data[offset:offset + size], wire.bits, _size(shape)).reshape(shape))
        offset += size
    return arrays if wire.parts else arrays[0]
