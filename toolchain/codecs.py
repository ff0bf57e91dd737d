"""Feature codecs at the split (CompressAI style: one object, two modes).

- training: `forward(x)` is a differentiable stand-in for decode(encode(x)) (straight-through
  rounding), so codecs can be trained with the backbone frozen;
- deployment: `encoder()` joins the head and emits uint8 codes, `decoder()` joins the tail and
  reads them; `compress`/`decompress` produce and consume the bytes the runtime sends, through
  the runtime's own wire module, so both sides share one byte format.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from runtime.wire import WireFormat, decode_frame, encode_frame
from toolchain.errors import EdgesplitError


def quantize(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, levels: int) -> torch.Tensor:
    return torch.clamp(torch.round(x / scale) + zero_point, 0, levels - 1)


def dequantize(codes: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor) -> torch.Tensor:
    return (codes - zero_point) * scale


class AffineQuantize(nn.Module):
    """float → uint8 codes: clamp(round(x / scale) + zero_point, 0, 2^bits - 1)."""

    def __init__(self, scale: torch.Tensor, zero_point: torch.Tensor, levels: int) -> None:
        super().__init__()
        self.register_buffer("scale", scale.clone())
        self.register_buffer("zero_point", zero_point.clone())
        self.levels = levels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return quantize(x, self.scale, self.zero_point, self.levels).to(torch.uint8)


class AffineDequantize(nn.Module):
    """uint8 codes → float: (codes - zero_point) * scale."""

    def __init__(self, scale: torch.Tensor, zero_point: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("scale", scale.clone())
        self.register_buffer("zero_point", zero_point.clone())

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        return dequantize(codes.to(torch.float32), self.scale, self.zero_point)


class AffineInt8Codec(nn.Module):
    """Calibrated asymmetric 8-bit quantization of the split tensor, per tensor or per channel.

    Ranges come from calibration features and always contain 0, so post-ReLU features use
    all 256 codes (a symmetric int8 range would waste half of them).
    """

    name = "int8"
    bits = 8

    def __init__(self, per: str = "tensor") -> None:
        super().__init__()
        if per not in ("tensor", "channel"):
            raise EdgesplitError(f"int8 codec: per must be 'tensor' or 'channel', got {per!r}")
        self.per = per
        self.register_buffer("scale", torch.ones(()))
        self.register_buffer("zero_point", torch.zeros(()))
        self.feature_shape: tuple[int, ...] | None = None

    @property
    def levels(self) -> int:
        return 2 ** self.bits

    @torch.no_grad()
    def calibrate(self, features: torch.Tensor) -> None:
        """Min/max ranges from a batch of split-tensor features (N, C, ...)."""
        per_channel = self.per == "channel"
        reduce = [d for d in range(features.dim()) if not (per_channel and d == 1)]
        # per channel, ranges keep shape (1, C, 1, ...) so they broadcast over NC... features
        low = features.amin(dim=reduce, keepdim=per_channel).clamp(max=0.0)
        high = features.amax(dim=reduce, keepdim=per_channel).clamp(min=0.0)
        scale = (high - low) / (self.levels - 1)
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        self.scale = scale
        self.zero_point = torch.clamp(torch.round(-low / scale), 0, self.levels - 1)
        self.feature_shape = tuple(features.shape[1:])

    def encoder(self) -> nn.Module:
        return AffineQuantize(self.scale, self.zero_point, self.levels)

    def decoder(self) -> nn.Module:
        return AffineDequantize(self.scale, self.zero_point)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        codes = quantize(x, self.scale, self.zero_point, self.levels)
        return x + (dequantize(codes, self.scale, self.zero_point) - x).detach()

    def wire_format(self) -> WireFormat:
        if self.feature_shape is None:
            raise EdgesplitError("the int8 codec must be calibrated before it has a wire format")
        return WireFormat(self.feature_shape, self.bits)

    def compress(self, x: torch.Tensor) -> list[bytes]:
        codes = self.encoder()(x).numpy()
        return [encode_frame(frame, self.wire_format()) for frame in codes]

    def decompress(self, payloads: list[bytes]) -> torch.Tensor:
        codes = np.stack([decode_frame(payload, self.wire_format()) for payload in payloads])
        return self.decoder()(torch.from_numpy(codes))

    def describe(self) -> dict:
        """What the manifest records about this codec."""
        return {"name": self.name, "params": {"per": self.per}, "bits": self.bits,
                "scale": self.scale.flatten().tolist(), "zero_point": self.zero_point.flatten().tolist()}


CODECS = {AffineInt8Codec.name: AffineInt8Codec}
DEFAULT_CODEC = "int8"


def parse_codec_spec(spec: str) -> nn.Module:
    """`name` or `name:key=value,key=value`, e.g. `int8:per=channel`."""
    name, _, arguments = spec.partition(":")
    if name not in CODECS:
        raise EdgesplitError(f"unknown codec {name!r}; codecs: {', '.join(sorted(CODECS))}")
    params = {}
    for item in filter(None, arguments.split(",")):
        key, equals, value = item.partition("=")
        if not equals:
            raise EdgesplitError(f"codec option {item!r} is not key=value (in {spec!r})")
        params[key.strip()] = value.strip()
    try:
        return CODECS[name](**params)
    except TypeError as error:
        raise EdgesplitError(f"bad options for codec {name!r}: {error}") from error
