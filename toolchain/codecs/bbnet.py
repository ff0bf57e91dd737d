"""`bbnet`: BBNet's reduction and recovery units (seed 002, §3.2)."""

from __future__ import annotations

from torch import nn

from toolchain.codecs.learned import LearnedCodec, _strided_kernel, _upsampler


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


CODECS = {"bbnet": BBNetCodec}
