"""Bytes that cross the network for one frame: the integer codes of the split tensor, or the image.

The manifest's wire entry is a `WireFormat`: code shapes, bits per code and the stage between codes and bytes.
A frame goes through the codec's deployment side (runtime/coding/: bit-packing and a byte stage, rANS with the
bundle's prior, or a picture); `encode_frame`/`decode_frame` are that for callers holding only a wire. Shared
by edge and cloud; Python 3.6 + numpy only.
"""

from typing import NamedTuple, Tuple

import numpy as np

from runtime.coding import PICTURES, STAGES, Coding, coder_class, rans, stage_of
from runtime.coding.packed import packed_size
from runtime.errors import WireError

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

    @property
    def packed_bytes(self) -> int:
        """Bytes after bit-packing, before the lossless stage (its exact output size when 'none')."""
        return sum(packed_size(shape, self.bits) for shape in self.shapes)

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
        if not isinstance(prior, dict):
            raise WireError("the wire's prior must be an object with precision and frequencies, got {}".format(
                type(prior).__name__))
        if prior and prior.get("precision") != rans.PRECISION:
            raise WireError("the prior's precision is {!r}; this runtime codes with frequencies out of 2^{}".format(
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
        if self.picture and self.picture not in PICTURES:
            raise WireError("a {!r} picture frame carries one 8-bit grey or RGB image (C x H x W, C = 1 or 3) with "
                            "no lossless stage; pictures: {}".format(self.picture, ", ".join(PICTURES)))
        if not self.picture and self.lossless in PICTURES:
            raise WireError("{!r} is a picture, not a lossless stage; stages: {}".format(
                self.lossless, ", ".join(name for name in STAGES if name not in PICTURES)))
        coder_class(stage_of(self)).check(self)
        return self


_CODINGS = {}
CODINGS_KEPT = 16  # wires a process codes with at once (a bundle's one, a search's few): older ones are rebuilt


def _coding(wire: WireFormat) -> Coding:
    """The deployment side of a wire, made once per wire (a bundle's prior becomes rANS tables once)."""
    cached = _CODINGS.get(id(wire))
    if cached is None or cached.wire is not wire:
        if len(_CODINGS) >= CODINGS_KEPT:
            _CODINGS.clear()
        cached = _CODINGS[id(wire)] = Coding(wire)
    return cached


def frames_of(codes, wire: WireFormat) -> list:
    """A batch of codes (an array, or one array per part) → one frame's codes per entry, as encode_frame takes."""
    return _coding(wire).frames(codes)


def encode_frame(codes, wire: WireFormat) -> bytes:
    """One frame's codes (uint8 of `wire.shape`, or a sequence of arrays, one per part) → payload bytes."""
    return _coding(wire).encode(codes)


def decode_frame(payload: bytes, wire: WireFormat):
    """Payload bytes → one frame's codes (a list of arrays when several parts); sizes must be exactly what
    the manifest says."""
    return _coding(wire).decode(payload)
