"""`affine`: calibrated uniform quantization of the split tensor, 1-8 bits, per tensor or per channel; `int8` is
`affine:bits=8` under the name the CLI has always taken."""

from __future__ import annotations

import math

import torch
from torch import nn

from toolchain.codecs.base import (AffineDequantize, AffineQuantize, FeatureCodec, channel_axis, dequantize, quantize,
                                   straight_through, whole_number)
from toolchain.errors import EdgesplitError


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
        self.bits, self.per = whole_number(self.name, "bits", bits), per
        if not 1 <= self.bits <= 8:
            raise EdgesplitError(f"{self.name} codec: bits must be 1..8, got {bits}")
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


class Int8Codec(AffineCodec):
    """`int8`: the 8-bit affine codec under the name the CLI has always taken."""

    def __init__(self, feature_shape: tuple[int, ...], per: str = "tensor") -> None:
        super().__init__(feature_shape, bits=8, per=per)


CODECS = {"int8": Int8Codec, "affine": AffineCodec}
