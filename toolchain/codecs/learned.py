"""What the learned codecs share: a Tanh-bounded analysis on the edge, fixed-range n-bit codes, a synthesis in the
cloud, and (with a rate) a factorized prior that prices the codes in bits while they train."""

from __future__ import annotations

import math

import torch
from torch import nn

from toolchain.codecs.base import (AffineDequantize, AffineQuantize, FeatureCodec, dequantize, quantize,
                                   straight_through, tanh_range, whole_number)
from toolchain.errors import EdgesplitError


def _strided_kernel(stride: int) -> tuple[int, int]:
    """Kernel and padding that map H to exactly H / stride (H divisible by stride)."""
    kernel = 3 if stride <= 2 else stride
    return kernel, (kernel - 1) // 2


def upsampler(in_channels: int, out_channels: int, stride: int) -> nn.Module:
    if stride == 1:
        return nn.Conv2d(in_channels, out_channels, 3, 1, 1, bias=False)
    return nn.ConvTranspose2d(in_channels, out_channels, stride, stride, bias=False)


class LearnedCodec(FeatureCodec):
    """Edge `analysis` ends in Tanh; codes are its fixed-range n-bit quantization; cloud `synthesis`
    maps dequantized codes back to the split tensor's shape.

    With `rate` > 0 it trains for bytes too: a factorized prior (a learned distribution over the code levels of
    each code: channel and position) prices each code in bits, and `rate` weighs the bits per frame against the distillation loss
    (Ballé et al.'s rate-distortion training; Entropic Student's and FrankenSplit's split codecs). The bundle's
    rans stage then codes them with the histogram its build fits (`--lossless rans`)."""

    learned = True

    def __init__(self, feature_shape: tuple[int, ...], c: int = 8, s: int = 2, bits: int = 8,
                 rate: float = 0.0) -> None:
        super().__init__(feature_shape)
        self.channels, self.stride, self.bits = (whole_number(self.name, option, value)
                                                 for option, value in (("c", c), ("s", s), ("bits", bits)))
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
        self.analysis, self.synthesis = self.layers(self.feature_shape[0], *_strided_kernel(self.stride))
        if self.rate:
            positions = self.code_shape[1] * self.code_shape[2]
            self.prior = nn.Parameter(torch.zeros(self.channels, positions, self.levels))  # logits per code

    def layers(self, channels: int, kernel: int, padding: int) -> tuple[nn.Module, nn.Module]:
        """The edge's analysis (ending in Tanh) and the cloud's synthesis, for a split tensor of `channels`; a
        strided layer of `kernel` and `padding` maps H to H / stride."""
        raise NotImplementedError

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
        """Bits per frame: each code's -log2 probability under its own prior, at the code's continuous value
        (with uniform noise while training) interpolated between the two nearest levels, so the encoder's
        gradient moves codes toward cheaper levels and the prior's toward the codes' histogram."""
        code = latent / self.scale + self.zero_point
        if self.training:
            code = code + torch.empty_like(code).uniform_(-0.5, 0.5)
        code = code.clamp(0, self.levels - 1).flatten(2)  # N, channels, positions
        low = code.detach().floor().clamp(max=self.levels - 2).long()  # levels >= 2: low and low + 1 are levels
        log2p = (torch.log_softmax(self.prior, -1) / math.log(2)).expand(len(code), *self.prior.shape)
        below, above = torch.gather(log2p, 3, torch.stack((low, low + 1), -1)).unbind(-1)
        fraction = code - low
        return -((1 - fraction) * below + fraction * above).sum((1, 2))

    def params(self) -> dict:
        return {"c": self.channels, "s": self.stride, "bits": self.bits, **({"rate": self.rate} if self.rate else {})}
