"""A codec's deployment side: what the runtime does between a half's output and a frame's payload.

A bundle's codec is one object: in the toolchain (toolchain/codecs/) `forward` trains it and its encoder and
decoder join the halves; `compress`/`decompress` deploy it through a `Coding`, the same object the runtime
builds from the bundle's manifest and sends every frame through:

    Coding.codes(outputs)   the edge artefact's output → the codec's uint8 codes (an int8 artefact's values
                            requantized to the codec's levels by the manifest's `to_codes`; else as they are)
    Coding.encode(codes)    one frame's codes → its payload
    Coding.decode(payload)  the payload → the frame's codes, exactly the wire's shapes, or one WireError line

Between codes and bytes a coder does the work, one file here per coder, each with the contract of `Coder`;
STAGES maps the wire's stage (its `picture`, else its `lossless`) to the coder's module. Adding an entropy coder
is adding its file and its rows in STAGES. Python 3.6 and numpy only: an edge imports this without torch.

    packed.py   bit-packing, then a byte stage from the standard library or a package (none, zlib, zstd, lz4)
    rans.py     rANS with the prior the bundle ships (static tables per code, per code channel or one)
    picture.py  a cloud-only bundle's image as a PNG or JPEG picture (Pillow)
"""

import importlib
from typing import NamedTuple, Optional

import numpy as np

from runtime.errors import BundleError, WireError


class Stage(NamedTuple):
    module: str  # the coder's module under runtime.coding
    kind: str  # "bytes" (after bit-packing), "entropy" (codes with a prior) or "picture" (the image)


STAGES = {"none": Stage("packed", "bytes"), "zlib": Stage("packed", "bytes"), "zstd": Stage("packed", "bytes"),
          "lz4": Stage("packed", "bytes"), "rans": Stage("rans", "entropy"),
          "png": Stage("picture", "picture"), "jpeg": Stage("picture", "picture")}
LOSSLESS = tuple(name for name, stage in STAGES.items() if stage.kind == "bytes")  # the CLI's byte stages
ENTROPY_CODERS = tuple(name for name, stage in STAGES.items() if stage.kind == "entropy")
PICTURES = tuple(name for name, stage in STAGES.items() if stage.kind == "picture")


class Coder:
    """The contract: built once per wire format (a bundle's), `check`ed before any frame.

    `check(wire)` raises WireError naming what is wrong with a wire entry this coder cannot serve;
    `encode(arrays)` takes one frame's uint8 codes, one array per part, already checked against the wire's
    shapes, and returns the payload; `decode(payload)` returns the same list of arrays, never allocating more
    than the frame's packed size, and refuses anything else in one WireError line with bounded work."""

    def __init__(self, wire) -> None:
        self.wire = wire

    @classmethod
    def check(cls, wire) -> None:
        raise NotImplementedError

    def encode(self, arrays: list) -> bytes:
        raise NotImplementedError

    def decode(self, payload: bytes) -> list:
        raise NotImplementedError


def stage_of(wire) -> str:
    return wire.picture or wire.lossless


def coder_class(stage: str):
    if stage not in STAGES:
        raise WireError("unknown lossless stage {!r}; stages: {}".format(stage, ", ".join(LOSSLESS + ENTROPY_CODERS)))
    return importlib.import_module("runtime.coding." + STAGES[stage].module).CODER


class CodeMapping:
    """From an integer-only edge artefact's int8 output to the bundle's uint8 wire codes.

    `passthrough`: the codec uses the artefact's own output scale, so a code is the int8 value
    + 128, no float on the device. `requantize`: dequantize with the interpreter's parameters,
    quantize with the codec's (per tensor or per channel, any bit width).
    """

    def __init__(self, entry: dict, output_quantization):
        self.method = entry["method"]
        self.scale = np.asarray(entry["scale"], dtype=np.float32)
        self.zero_point = np.asarray(entry["zero_point"], dtype=np.float32)
        self.levels = int(entry["levels"])
        self.output_scale, self.output_zero_point = output_quantization
        if self.method == "passthrough" and not (
                self.levels == 256 and self.scale.size == 1 and np.isclose(self.scale[0], self.output_scale, rtol=1e-6)
                and self.zero_point[0] == self.output_zero_point + 128):
            raise BundleError("manifest maps edge outputs to codes unchanged, but the artefact's output is "
                              "quantized with scale {}, zero point {} and the codec with {}, {}".format(
                                  self.output_scale, self.output_zero_point, self.scale.tolist(),
                                  self.zero_point.tolist()))
        if self.method not in ("passthrough", "requantize"):
            raise BundleError("unknown edge code mapping {!r}".format(self.method))
        if self.scale.size > 1:  # per channel, NCHW
            self.scale = self.scale.reshape(1, -1, 1, 1)
            self.zero_point = self.zero_point.reshape(1, -1, 1, 1)

    def __call__(self, outputs: np.ndarray) -> np.ndarray:
        if self.method == "passthrough":
            return (outputs.astype(np.int16) + 128).astype(np.uint8)
        real = (outputs.astype(np.float32) - self.output_zero_point) * self.output_scale
        return np.clip(np.round(real / self.scale + self.zero_point), 0, self.levels - 1).astype(np.uint8)


class Coding:
    """A bundle's codec at run time: `wire` (runtime.wire.WireFormat, checked) and, set by an int8 edge artefact's
    half, `to_codes`, the mapping of its output to codes. Edge and cloud build the same one from the manifest."""

    def __init__(self, wire) -> None:
        self.wire = wire
        self.to_codes: Optional[CodeMapping] = None
        self.coder = coder_class(stage_of(wire))(wire)

    def codes(self, outputs: np.ndarray) -> np.ndarray:
        """A batch of one crossing tensor's outputs (NCHW) → its uint8 codes."""
        if self.to_codes is not None:
            return self.to_codes(outputs)
        return outputs.astype(np.uint8, copy=False)  # engines without uint8 tensors give integral float32

    def frames(self, codes) -> list:
        """A batch of codes (an array, or one array per part) → one frame's codes per entry, as `encode` takes."""
        if not self.wire.parts:
            return list(codes)
        return [[part[i] for part in codes] for i in range(len(codes[0]))]

    def encode(self, codes) -> bytes:
        """One frame's codes (uint8 of the wire's shape, or a sequence of arrays, one per part) → payload."""
        arrays = list(codes) if self.wire.parts else [codes]
        found = [(a.dtype, tuple(a.shape)) for a in arrays]
        if found != [(np.dtype(np.uint8), shape) for shape in self.wire.shapes]:
            raise WireError("codes must be uint8 shaped {}, got {}".format(
                list(self.wire.shapes), [("{} {}".format(dtype, shape)) for dtype, shape in found]))
        return self.coder.encode(arrays)

    def decode(self, payload: bytes):
        """Payload → one frame's codes (a list of arrays when several parts), exactly the manifest's sizes."""
        arrays = self.coder.decode(payload)
        return arrays if self.wire.parts else arrays[0]
