"""Feature codecs at the split (CompressAI style: one object, two modes).

- training: `forward(x)` is a differentiable stand-in for decode(encode(x)) (straight-through
  rounding), so codecs train with the backbone frozen;
- deployment: `encoder()` joins the head and emits uint8 codes, `decoder()` joins the tail and
  reads them; `compress`/`decompress` produce and consume the bytes the runtime sends, through
  the runtime's own wire module, so both sides share one byte format.

Codecs: `affine` (calibrated uniform quantization; `int8` is `affine:bits=8`), and two
learned ones whose edge side ends in Tanh, so codes need no range on the wire:
`bbnet` (BBNet's reduction/recovery units) and `safbmp` (SAFBMP's asymmetric coding:
depthwise-separable encoder, self-attention + bottleneck decoder).
"""

from __future__ import annotations

import inspect
import math
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from runtime.wire import WireFormat, decode_frame, encode_frame
from toolchain.errors import EdgesplitError
from toolchain.image_formats import formats_for


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

    @torch.no_grad()
    def compress(self, x: torch.Tensor, lossless: str = "none") -> list[bytes]:
        wire = self.wire_format(lossless)
        return [encode_frame(frame, wire) for frame in self.encoder().eval()(x).numpy()]

    @torch.no_grad()
    def decompress(self, payloads: list[bytes], lossless: str = "none") -> torch.Tensor:
        wire = self.wire_format(lossless)
        codes = np.stack([decode_frame(payload, wire) for payload in payloads])
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


RANGE_SAMPLE = 1 << 22  # values a range is fitted on, at most (torch.quantile takes 16M)


def min_max_range(rows: torch.Tensor, levels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, the range of its values, widened to contain 0: nothing clipped."""
    return rows.amin(1).clamp(max=0.0), rows.amax(1).clamp(min=0.0)


def percentile_range(rows: torch.Tensor, levels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, the 0.01 % and 99.99 % quantiles: the rarest outliers clipped."""
    low = torch.quantile(rows, 1e-4, dim=1).clamp(max=0.0)
    return low, torch.quantile(rows, 1 - 1e-4, dim=1).clamp(min=0.0)


def mse_range(rows: torch.Tensor, levels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, the min-max range shrunk by the factor (of 20, 0.3 to 1) with the least squared error of codes
    decoded, rounding and clipping together."""
    low, high = min_max_range(rows, levels)
    best_error, best = torch.full_like(low, math.inf), torch.ones_like(low)
    for factor in torch.linspace(0.3, 1.0, 20, dtype=rows.dtype):
        scale = ((high - low) * factor / (levels - 1)).clamp(min=1e-12)[:, None]
        zero_point = torch.round(-low[:, None] * factor / scale)
        error = (dequantize(quantize(rows, scale, zero_point, levels), scale, zero_point) - rows).pow(2).mean(1)
        better = error < best_error
        best_error, best = torch.where(better, error, best_error), torch.where(better, factor, best)
    return low * best, high * best


RANGE_METHODS = {"min-max": min_max_range, "percentile": percentile_range, "mse": mse_range}


class AffineCodec(FeatureCodec):
    """Calibrated asymmetric n-bit quantization of the split tensor, per tensor or per channel.

    Ranges come from calibration features and always contain 0, so post-ReLU features use
    every code (a symmetric range would waste half of them).
    """

    name = "affine"
    range_methods = tuple(RANGE_METHODS)

    def __init__(self, feature_shape: tuple[int, ...], bits: int = 8, per: str = "tensor") -> None:
        super().__init__(feature_shape)
        if per not in ("tensor", "channel"):
            raise EdgesplitError(f"{self.name} codec: per must be 'tensor' or 'channel', got {per!r}")
        if not 1 <= int(bits) <= 8:
            raise EdgesplitError(f"{self.name} codec: bits must be 1..8, got {bits}")
        self.bits, self.per = int(bits), per
        self.code_shape = self.feature_shape
        self.register_buffer("scale", torch.ones(()))
        self.register_buffer("zero_point", torch.zeros(()))

    @torch.no_grad()
    def calibrate(self, features: torch.Tensor, method: str = "min-max") -> None:
        """Ranges (RANGE_METHODS) from a batch of split-tensor features (N, C, ...), or (N, tokens, features)."""
        per_channel = self.per == "channel"
        axis = channel_axis(features.dim())
        # a row of values per channel (or one row), sampled so quantiles stay within torch's limit
        rows = (features.transpose(0, axis) if per_channel else features.reshape(1, -1)).reshape(
            features.shape[axis] if per_channel else 1, -1)
        rows = rows[:, ::max(1, rows.numel() // RANGE_SAMPLE)].double()
        low, high = RANGE_METHODS[method](rows, self.levels)
        if per_channel:  # ranges of shape (1, C, 1, ...) or (1, 1, D) broadcast over the features
            shape = [1] * features.dim()
            shape[axis] = -1
            low, high = low.reshape(shape), high.reshape(shape)
        else:
            low, high = low.reshape(()), high.reshape(())
        low, high = low.float(), high.float()
        scale = (high - low) / (self.levels - 1)
        self.scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        self.zero_point = torch.clamp(torch.round(-low / self.scale), 0, self.levels - 1)

    def encoder(self, code_dtype: torch.dtype = torch.uint8) -> nn.Module:
        return AffineQuantize(self.scale, self.zero_point, self.levels, code_dtype)

    def decoder(self) -> nn.Module:
        return AffineDequantize(self.scale, self.zero_point)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        codes = quantize(x, self.scale, self.zero_point, self.levels)
        return straight_through(x, dequantize(codes, self.scale, self.zero_point))

    def params(self) -> dict:
        return {"bits": self.bits, "per": self.per}

    def map_int8_output(self, scale: float, zero_point: int) -> dict:
        """8 bits per tensor adopts the artefact's own output quantization: codes are int8 + 128."""
        if self.bits != 8 or self.per != "tensor":
            return super().map_int8_output(scale, zero_point)
        self.scale = torch.tensor(scale, dtype=torch.float32)
        self.zero_point = torch.tensor(float(zero_point + 128))
        return dict(super().map_int8_output(scale, zero_point), method="passthrough")

    def describe(self) -> dict:
        return {**super().describe(), "scale": self.scale.flatten().tolist(),
                "zero_point": self.zero_point.flatten().tolist()}


class PixelCodec(AffineCodec):
    """Cloud-only: the image itself crosses as the uint8 pixels it was read from (the edge half's input is pixels
    / 255), sent raw or as a PNG or JPEG picture. Nothing to calibrate: the scale is 1/255 by construction."""

    name = "pixels"

    def __init__(self, image_shape: tuple[int, ...], picture: str = "raw") -> None:
        super().__init__(image_shape, bits=8, per="tensor")
        if picture not in formats_for(image_shape[0]):
            raise EdgesplitError(f"a {image_shape[0]}-channel image is sent as {' or '.join(formats_for(image_shape[0]))}"
                                 f", not {picture!r}")
        self.picture = picture
        self.scale, self.zero_point = torch.tensor(1 / 255), torch.tensor(0.0)

    range_methods = ()

    def calibrate(self, features: torch.Tensor, method: str = "min-max") -> None:
        """The range is the pixels' by construction."""

    def params(self) -> dict:
        return {"picture": self.picture}

    def wire_format(self, lossless: str = "none") -> WireFormat:
        picture = "" if self.picture == "raw" else self.picture
        return WireFormat.of([self.code_shape], self.bits, lossless)._replace(picture=picture).validated()


class Int8Codec(AffineCodec):
    """`int8`: the 8-bit affine codec under the name the CLI has always taken."""

    def __init__(self, feature_shape: tuple[int, ...], per: str = "tensor") -> None:
        super().__init__(feature_shape, bits=8, per=per)


def _strided_kernel(stride: int) -> tuple[int, int]:
    """Kernel and padding that map H to exactly H / stride (H divisible by stride)."""
    kernel = 3 if stride <= 2 else stride
    return kernel, (kernel - 1) // 2


def _upsampler(in_channels: int, out_channels: int, stride: int) -> nn.Module:
    if stride == 1:
        return nn.Conv2d(in_channels, out_channels, 3, 1, 1, bias=False)
    return nn.ConvTranspose2d(in_channels, out_channels, stride, stride, bias=False)


class LearnedCodec(FeatureCodec):
    """Edge `analysis` ends in Tanh; codes are its fixed-range n-bit quantization; cloud `synthesis`
    maps dequantized codes back to the split tensor's shape.

    With `rate` > 0 it trains for bytes too: a factorized prior (a learned distribution over the code levels per
    code channel) prices each code in bits, and `rate` weighs the bits per frame against the distillation loss
    (Ballé et al.'s rate-distortion training; Entropic Student's and FrankenSplit's split codecs). The bundle's
    rans stage then codes them with the histogram its build fits (`--lossless rans`)."""

    learned = True

    def __init__(self, feature_shape: tuple[int, ...], c: int, s: int, bits: int, rate: float = 0.0) -> None:
        super().__init__(feature_shape)
        self.channels, self.stride, self.bits = int(c), int(s), int(bits)
        try:
            self.rate = float(rate)
        except ValueError:
            raise EdgesplitError(f"{self.name} codec: rate must be a number of loss per bit, got {rate!r}") from None
        if len(self.feature_shape) != 3:
            raise EdgesplitError(f"{self.name} codec needs a C,H,W split tensor, got shape {self.feature_shape}")
        if not 1 <= self.bits <= 8 or self.channels < 1 or self.stride < 1 or not 0 <= self.rate < math.inf:
            raise EdgesplitError(f"{self.name} codec: need c >= 1, s >= 1, bits 1..8, rate >= 0; got {self.params()}")
        _, height, width = self.feature_shape
        if height % self.stride or width % self.stride:
            raise EdgesplitError(f"{self.name} codec: stride {self.stride} does not divide the split tensor's "
                                 f"{height}x{width}")
        self.code_shape = (self.channels, height // self.stride, width // self.stride)
        scale, zero_point = tanh_range(self.levels)
        self.register_buffer("scale", scale)
        self.register_buffer("zero_point", zero_point)
        self.analysis: nn.Module = nn.Identity()
        self.synthesis: nn.Module = nn.Identity()
        if self.rate:
            self.prior = nn.Parameter(torch.zeros(self.channels, self.levels))  # logits per code channel

    def encoder(self, code_dtype: torch.dtype = torch.uint8) -> nn.Module:
        return nn.Sequential(self.analysis, AffineQuantize(self.scale, self.zero_point, self.levels, code_dtype))

    def pre_quantization(self) -> nn.Module:
        return self.analysis

    def decoder(self) -> nn.Module:
        return nn.Sequential(AffineDequantize(self.scale, self.zero_point), self.synthesis)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_bits(x)[0]

    def forward_with_bits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The decoded features and, with a rate, each frame's bits under the prior (None without)."""
        latent = self.analysis(x)
        rounded = dequantize(quantize(latent, self.scale, self.zero_point, self.levels), self.scale, self.zero_point)
        return self.synthesis(straight_through(latent, rounded)), self.code_bits(latent) if self.rate else None

    def code_bits(self, latent: torch.Tensor) -> torch.Tensor:
        """Bits per frame: each code's -log2 probability under its channel's prior, at the code's continuous value
        (with uniform noise while training) interpolated between the two nearest levels, so the encoder's
        gradient moves codes toward cheaper levels and the prior's toward the codes' histogram."""
        code = latent / self.scale + self.zero_point
        if self.training:
            code = code + torch.empty_like(code).uniform_(-0.5, 0.5)
        code = code.clamp(0, self.levels - 1).flatten(2)  # N, channels, positions
        low = code.detach().floor().clamp(max=self.levels - 2).long()  # levels >= 2: low and low + 1 are levels
        log2p = torch.log_softmax(self.prior, 1) / math.log(2)
        log2p = log2p.view(1, self.channels, 1, self.levels).expand(*code.shape, self.levels)
        below, above = torch.gather(log2p, 3, torch.stack((low, low + 1), -1)).unbind(-1)
        fraction = code - low
        return -((1 - fraction) * below + fraction * above).sum((1, 2))

    def params(self) -> dict:
        return {"c": self.channels, "s": self.stride, "bits": self.bits, **({"rate": self.rate} if self.rate else {})}


class BBNetCodec(LearnedCodec):
    """BBNet §3.2: reduction unit conv(c', stride s) + BN + Tanh; recovery unit conv/transposed
    conv back to (C, H, W) + BN + ReLU."""

    name = "bbnet"

    def __init__(self, feature_shape: tuple[int, ...], c: int = 8, s: int = 2, bits: int = 8,
                 rate: float = 0.0) -> None:
        super().__init__(feature_shape, c, s, bits, rate)
        channels = self.feature_shape[0]
        kernel, padding = _strided_kernel(self.stride)
        self.analysis = nn.Sequential(
            nn.Conv2d(channels, self.channels, kernel, self.stride, padding, bias=False),
            nn.BatchNorm2d(self.channels), nn.Tanh(),
        )
        self.synthesis = nn.Sequential(
            _upsampler(self.channels, channels, self.stride), nn.BatchNorm2d(channels), nn.ReLU(),
        )


class SelfAttention(nn.Module):
    """SAGAN-style attention over positions; gamma starts at 0, so it begins as the identity."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        inner = max(1, channels // 8)
        self.query = nn.Conv2d(channels, inner, 1)
        self.key = nn.Conv2d(channels, inner, 1)
        self.value = nn.Conv2d(channels, channels, 1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        query = self.query(x).flatten(2).transpose(1, 2)  # N, HW, inner
        key = self.key(x).flatten(2)  # N, inner, HW
        attention = torch.softmax(torch.bmm(query, key), dim=-1)  # N, HW, HW
        attended = torch.bmm(self.value(x).flatten(2), attention.transpose(1, 2))  # N, C, HW
        return x + self.gamma * attended.reshape(x.shape)


class Bottleneck(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        inner = max(1, channels // 4)
        self.body = nn.Sequential(
            nn.Conv2d(channels, inner, 1, bias=False), nn.BatchNorm2d(inner), nn.ReLU(),
            nn.Conv2d(inner, inner, 3, 1, 1, bias=False), nn.BatchNorm2d(inner), nn.ReLU(),
            nn.Conv2d(inner, channels, 1, bias=False), nn.BatchNorm2d(channels),
        )
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(x + self.body(x))


class SAFBMPCodec(LearnedCodec):
    """SAFBMP §3.3: a cheap depthwise-separable encoder on the edge; the cloud decoder, where
    compute is plentiful, adds a self-attention layer and a bottleneck block."""

    name = "safbmp"

    def __init__(self, feature_shape: tuple[int, ...], c: int = 8, s: int = 2, bits: int = 8,
                 rate: float = 0.0) -> None:
        super().__init__(feature_shape, c, s, bits, rate)
        channels = self.feature_shape[0]
        kernel, padding = _strided_kernel(self.stride)
        self.analysis = nn.Sequential(
            nn.Conv2d(channels, channels, kernel, self.stride, padding, groups=channels, bias=False),
            nn.BatchNorm2d(channels), nn.ReLU(),
            nn.Conv2d(channels, self.channels, 1, bias=False), nn.BatchNorm2d(self.channels), nn.Tanh(),
        )
        self.synthesis = nn.Sequential(
            _upsampler(self.channels, channels, self.stride), nn.BatchNorm2d(channels), nn.ReLU(),
            SelfAttention(channels), Bottleneck(channels),
        )


class PerTensor(nn.Module):
    """Applies one module per tensor: k tensors in, k tensors out, in the cut's order."""

    def __init__(self, modules: list[nn.Module]) -> None:
        super().__init__()
        self.each = nn.ModuleList(modules)

    def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(module(tensor) for module, tensor in zip(self.each, tensors))


class MultiCodec(FeatureCodec):
    """A cut crossed by several tensors: one codec of the same spec per tensor, all their codes in one
    frame (the runtime's WireFormat parts). Only codecs without training take part."""

    def __init__(self, codecs: list[FeatureCodec]) -> None:
        first = codecs[0]
        super().__init__(first.feature_shape)
        self.codecs = nn.ModuleList(codecs)
        self.name, self.bits = first.name, first.bits
        self.code_shapes = tuple(codec.code_shape for codec in codecs)
        self.code_shape = (sum(int(np.prod(shape)) for shape in self.code_shapes),)

    @property
    def range_methods(self) -> tuple[str, ...]:
        return self.codecs[0].range_methods

    def calibrate(self, features, method: str = "min-max") -> None:
        for codec, tensor in zip(self.codecs, features):
            codec.calibrate(tensor, method)

    def encoder(self, code_dtype: torch.dtype = torch.uint8) -> nn.Module:
        return PerTensor([codec.encoder(code_dtype) for codec in self.codecs])

    def decoder(self) -> nn.Module:
        return PerTensor([codec.decoder() for codec in self.codecs])

    def pre_quantization(self) -> nn.Module:
        return PerTensor([codec.pre_quantization() for codec in self.codecs])

    def forward(self, *features: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(codec(tensor) for codec, tensor in zip(self.codecs, features))

    def params(self) -> dict:
        return self.codecs[0].params()

    def wire_format(self, lossless: str = "none") -> WireFormat:
        return WireFormat.of(self.code_shapes, self.bits, lossless)

    def map_int8_output(self, scale: float, zero_point: int) -> dict:
        raise EdgesplitError("an integer-only edge half maps one output to codes; this cut crosses "
                             f"{len(self.codecs)} tensors")

    def describe(self) -> dict:
        return {**super().describe(), "parts": [codec.describe() for codec in self.codecs]}


CODECS = {"int8": Int8Codec, "affine": AffineCodec, "bbnet": BBNetCodec, "safbmp": SAFBMPCodec}
LEARNED = {name for name, codec in CODECS.items() if codec.learned}
DEFAULT_CODEC = "int8"


class CodecSpec(NamedTuple):
    name: str
    params: dict

    def __str__(self) -> str:
        return self.name + (":" + ",".join(f"{k}={v}" for k, v in self.params.items()) if self.params else "")


def parse_codec_spec(spec: str) -> CodecSpec:
    """`name` or `name:key=value,key=value`, e.g. `int8:per=channel`, `bbnet:c=8,s=2,bits=4`."""
    name, _, arguments = spec.partition(":")
    if name not in CODECS:
        raise EdgesplitError(f"unknown codec {name!r}; codecs: {', '.join(sorted(CODECS))}")
    params: dict = {}
    for item in filter(None, arguments.split(",")):
        key, equals, value = item.partition("=")
        if not equals:
            raise EdgesplitError(f"codec option {item!r} is not key=value (in {spec!r})")
        value = value.strip()
        params[key.strip()] = int(value) if value.isdigit() else value
    return CodecSpec(name, params)


def make_codec(spec: CodecSpec | str, feature_shape: tuple[int, ...]) -> FeatureCodec:
    """A codec for a split tensor of `feature_shape` (one sample, no batch axis)."""
    if isinstance(spec, str):
        spec = parse_codec_spec(spec)
    codec = CODECS[spec.name]
    accepted = [name for name in inspect.signature(codec.__init__).parameters if name not in ("self", "feature_shape")]
    unknown = sorted(set(spec.params) - set(accepted))
    if unknown:
        raise EdgesplitError(f"codec {spec.name!r} takes no option {', '.join(unknown)}; its options: "
                             f"{', '.join(accepted) or 'none'}")
    try:
        return codec(tuple(feature_shape), **spec.params)
    except TypeError as error:
        raise EdgesplitError(f"bad options for codec {spec.name!r}: {error}") from error


def make_cut_codec(spec: CodecSpec | str, shapes: tuple[tuple[int, ...], ...]) -> FeatureCodec:
    """The codec of a cut: one codec for one crossing tensor, a MultiCodec for several."""
    codecs = [make_codec(spec, shape) for shape in shapes]
    if len(codecs) == 1:
        return codecs[0]
    if codecs[0].learned:
        raise EdgesplitError(f"this cut is crossed by {len(codecs)} tensors, each with its own codec; learned "
                             f"codecs ({codecs[0].name}) train on a single crossing tensor: use int8 or affine here")
    return MultiCodec(codecs)
