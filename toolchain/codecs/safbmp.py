"""`safbmp`: SAFBMP's asymmetric coding (§3.3): a cheap edge encoder, an attentive cloud decoder."""

from __future__ import annotations

import torch
from torch import nn

from toolchain.codecs.learned import LearnedCodec, upsampler


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

    def layers(self, channels: int, kernel: int, padding: int) -> tuple[nn.Module, nn.Module]:
        analysis = nn.Sequential(
            nn.Conv2d(channels, channels, kernel, self.stride, padding, groups=channels, bias=False),
            nn.BatchNorm2d(channels), nn.ReLU(),
            nn.Conv2d(channels, self.channels, 1, bias=False), nn.BatchNorm2d(self.channels), nn.Tanh(),
        )
        synthesis = nn.Sequential(
            upsampler(self.channels, channels, self.stride), nn.BatchNorm2d(channels), nn.ReLU(),
            SelfAttention(channels), Bottleneck(channels),
        )
        return analysis, synthesis


CODECS = {"safbmp": SAFBMPCodec}
