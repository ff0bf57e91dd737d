"""What every codec is (CompressAI's pattern: one object, two sides).

- training: `forward(x)` is a differentiable stand-in for decode(encode(x)) (straight-through rounding), so
  codecs train with the backbone frozen;
- deployment: `encoder()` joins the head and emits uint8 codes, `decoder()` joins the tail and reads them;
  `compress`/`decompress` go from features to the bytes the runtime sends and back through `coding()`: the
  runtime's own deployment side (runtime/coding/), the object a bundle's edge and cloud build from its manifest.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from runtime.coding import Coding
from runtime.wire import WireFormat
from toolchain.errors import EdgesplitError


def quantize(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, levels: int) -> torch.Tensor:
    # zero_point may be fractional (the Tanh codecs' (2^n - 1) / 2), so it is added before rounding
    return torch.clamp(torch.round(x / scale + zero_point), 0, levels - 1)


def dequantize(codes: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor) -> torch.Tensor:
    return (codes - zero_point) * scale


def straight_through(x: torch.Tensor, rounded: torch.Tensor) -> torch.Tensor:
    """Forward: `rounded`; backward: identity."""
    return x + (rounded - x).detach()


class AffineQuantize(nn.Module):
    """float → codes: clamp(round(x / scale + zero_point), 0, levels - 1), as uint8 or, for engines
    without uint8 tensors (TensorRT < 8.5), as integral float32."""

    def __init__(self, scale: torch.Tensor, zero_point: torch.Tensor, levels: int,
                 code_dtype: torch.dtype = torch.uint8) -> None:
        super().__init__()
        self.register_buffer("scale", scale.clone())
        self.register_buffer("zero_point", zero_point.clone())
        self.levels = levels
        self.code_dtype = code_dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return quantize(x, self.scale, self.zero_point, self.levels).to(self.code_dtype)


class AffineDequantize(nn.Module):
    """uint8 codes → float: (codes - zero_point) * scale."""

    def __init__(self, scale: torch.Tensor, zero_point: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("scale", scale.clone())
        self.register_buffer("zero_point", zero_point.clone())

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        return dequantize(codes.to(torch.float32), self.scale, self.zero_point)


def tanh_range(levels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point mapping [-1, 1] onto codes 0..levels-1: codes = round((V + 1) / 2 * (levels - 1)).

    BBNet's eq. 4, round((V + 1) * (2^n - 1)), spans 0..2(2^n - 1) and overflows n bits.
    """
    return torch.tensor(2.0 / (levels - 1)), torch.tensor((levels - 1) / 2.0)


def whole_number(codec: str, option: str, value) -> int:
    """A codec option that counts something (bits, channels, stride), or one line saying it is not one."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    raise EdgesplitError(f"{codec} codec: {option} must be a whole number, got {value!r}")


class CodecSpec(NamedTuple):
    name: str
    params: dict

    def __str__(self) -> str:
        return self.name + (":" + ",".join(f"{k}={v}" for k, v in self.params.items()) if self.params else "")


class FeatureCodec(nn.Module):
    """The interface every codec has; subclasses set `name`, `bits`, `code_shape`."""

    name = ""
    learned = False
    bits = 8
    code_shape: tuple[int, ...] = ()

    def __init__(self, feature_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.feature_shape = tuple(feature_shape)

    @property
    def levels(self) -> int:
        return 2 ** self.bits

    range_methods: tuple[str, ...] = ()  # how `calibrate` may fit a range (RANGE_METHODS), if it fits one

    def calibrate(self, features: torch.Tensor, method: str = "min-max") -> None:
        """Fit data-dependent constants (ranges) from split-tensor features; none by default."""

    def encoder(self, code_dtype: torch.dtype = torch.uint8) -> nn.Module:
        raise NotImplementedError

    def decoder(self) -> nn.Module:
        raise NotImplementedError

    def params(self) -> dict:
        raise NotImplementedError

    def spec(self) -> "CodecSpec":
        return CodecSpec(self.name, self.params())

    def wire_format(self, lossless: str = "none") -> WireFormat:
        return WireFormat.of([self.code_shape], self.bits, lossless)

    def coding(self, wire: WireFormat | str = "none") -> Coding:
        """The deployment side: codes ↔ bytes for this codec's wire (a lossless stage's name, or a whole wire such
        as `wire_format().entropy_coded(prior)`), the runtime's own object."""
        return Coding(self.wire_format(wire) if isinstance(wire, str) else wire)

    @torch.no_grad()
    def compress(self, x: torch.Tensor, wire: WireFormat | str = "none") -> list[bytes]:
        """A batch of split-tensor features → one payload per frame, as the edge sends them."""
        coding = self.coding(wire)
        return [coding.encode(frame) for frame in self.encoder().eval()(x).numpy()]

    @torch.no_grad()
    def decompress(self, payloads: list[bytes], wire: WireFormat | str = "none") -> torch.Tensor:
        """Payloads → the decoded split tensor, as the cloud half computes it."""
        coding = self.coding(wire)
        codes = np.stack([coding.decode(payload) for payload in payloads])
        return self.decoder().eval()(torch.from_numpy(codes))

    def pre_quantization(self) -> nn.Module:
        """The encoder up to its quantizer: what an integer-only edge artefact computes."""
        return nn.Identity()

    def map_int8_output(self, scale: float, zero_point: int) -> dict:
        """How an int8 artefact output with these parameters becomes this codec's codes."""
        return {"method": "requantize", "scale": self.scale.flatten().tolist(),
                "zero_point": self.zero_point.flatten().tolist(), "levels": self.levels}

    def describe(self) -> dict:
        """What the manifest records about this codec."""
        return {"name": self.name, "params": self.params(), "bits": self.bits,
                "code_shape": list(self.code_shape), "learned": self.learned}


def channel_axis(rank: int) -> int:
    """Where a batch's channels are: dim 1 of N, C, ... maps; the last of a transformer's N, tokens, features."""
    return 2 if rank == 3 else 1
