"""`bbnet`: BBNet's reduction and recovery units (seed 002, §3.2)."""

from __future__ import annotations

from torch import nn

from toolchain.codecs.learned import LearnedCodec, upsampler


class BBNetCodec(LearnedCodec):
    """BBNet §3.2: reduction unit conv(c', stride s) + BN + Tanh; recovery unit conv/transposed
    conv back to (C, H, W) + BN + ReLU."""

    name = "bbnet"

    def layers(self, channels: int, kernel: int, padding: int) -> tuple[nn.Module, nn.Module]:
        analysis = nn.Sequential(nn.Conv2d(channels, self.channels, kernel, self.stride, padding, bias=False),
                                 nn.BatchNorm2d(self.channels), nn.Tanh())
        synthesis = nn.Sequential(upsampler(self.channels, channels, self.stride), nn.BatchNorm2d(channels),
                                  nn.ReLU())
        return analysis, synthesis


CODECS = {"bbnet": BBNetCodec}
