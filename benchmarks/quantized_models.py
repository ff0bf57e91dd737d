"""Seven architectures of the kinds people bring, written for the INT8 suite (benchmarks/quantized.py): each a
factory `--model benchmarks.quantized_models:NAME` takes, with the input shape in `MODELS`."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional


def conv_bn(inputs: int, outputs: int, kernel: int, stride: int = 1, groups: int = 1, act=nn.SiLU) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(inputs, outputs, kernel, stride, kernel // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(outputs), act())


class SqueezeExcitation(nn.Module):
    def __init__(self, channels: int, squeezed: int):
        super().__init__()
        self.reduce, self.expand = nn.Conv2d(channels, squeezed, 1), nn.Conv2d(squeezed, channels, 1)

    def forward(self, x):
        scale = functional.adaptive_avg_pool2d(x, 1)
        return x * torch.sigmoid(self.expand(functional.silu(self.reduce(scale))))


class MobileInvertedBottleneck(nn.Module):
    """EfficientNet's MBConv: expand 1x1, depthwise kxk, squeeze-excitation, project 1x1, residual."""

    def __init__(self, inputs: int, outputs: int, kernel: int, stride: int, expansion: int):
        super().__init__()
        hidden = inputs * expansion
        layers = [conv_bn(inputs, hidden, 1)] if expansion != 1 else []
        layers += [conv_bn(hidden, hidden, kernel, stride, groups=hidden), SqueezeExcitation(hidden, max(1, inputs // 4)),
                   nn.Conv2d(hidden, outputs, 1, bias=False), nn.BatchNorm2d(outputs)]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and inputs == outputs

    def forward(self, x):
        return x + self.body(x) if self.residual else self.body(x)


# EfficientNet-B0's stages: (repeats, output channels, kernel, stride, expansion), at half width
B0_STAGES = ((1, 8, 3, 1, 1), (2, 12, 3, 2, 6), (2, 20, 5, 2, 6), (3, 40, 3, 2, 6), (3, 56, 5, 1, 6),
             (4, 96, 5, 2, 6), (1, 160, 3, 1, 6))


def efficientnet_b0(classes: int = 10) -> nn.Module:
    layers, channels = [conv_bn(3, 16, 3, 2)], 16
    for repeats, outputs, kernel, stride, expansion in B0_STAGES:
        for index in range(repeats):
            layers.append(MobileInvertedBottleneck(channels, outputs, kernel, stride if index == 0 else 1, expansion))
            channels = outputs
    layers += [conv_bn(channels, 640, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2),
               nn.Linear(640, classes)]
    return nn.Sequential(*layers)


class DenseLayer(nn.Module):
    def __init__(self, inputs: int, growth: int):
        super().__init__()
        self.body = nn.Sequential(nn.BatchNorm2d(inputs), nn.ReLU(), nn.Conv2d(inputs, 4 * growth, 1, bias=False),
                                  nn.BatchNorm2d(4 * growth), nn.ReLU(),
                                  nn.Conv2d(4 * growth, growth, 3, padding=1, bias=False))

    def forward(self, x):
        return torch.cat([x, self.body(x)], 1)


def densenet(classes: int = 10, growth: int = 16, blocks: tuple[int, ...] = (4, 6, 8)) -> nn.Module:
    """DenseNet-BC at 3x64x64: dense blocks of concatenated features, transitions halving channels and size."""
    layers, channels = [nn.Conv2d(3, 2 * growth, 3, 2, 1, bias=False)], 2 * growth
    for index, count in enumerate(blocks):
        for _ in range(count):
            layers.append(DenseLayer(channels, growth))
            channels += growth
        if index < len(blocks) - 1:
            layers += [nn.BatchNorm2d(channels), nn.ReLU(), nn.Conv2d(channels, channels // 2, 1, bias=False),
                       nn.AvgPool2d(2)]
            channels //= 2
    layers += [nn.BatchNorm2d(channels), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, classes)]
    return nn.Sequential(*layers)


class EncoderBlock(nn.Module):
    """Pre-norm transformer block; attention through scaled_dot_product_attention, as current models write it."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv, self.projection = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.mlp = nn.Sequential(nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, width))

    def forward(self, tokens):
        batch, count, width = tokens.shape
        qkv = self.qkv(self.norm1(tokens)).reshape(batch, count, 3, self.heads, width // self.heads)
        query, key, value = qkv.permute(2, 0, 3, 1, 4)
        attended = functional.scaled_dot_product_attention(query, key, value)
        tokens = tokens + self.projection(attended.transpose(1, 2).reshape(batch, count, width))
        return tokens + self.mlp(self.norm2(tokens))


class VisionTransformer(nn.Module):
    """ViT-tiny-like at 3x64x64: 8x8 patches (64 tokens of 96 features), four blocks, mean-pooled classes."""

    def __init__(self, classes: int = 10, width: int = 96, depth: int = 4, heads: int = 3):
        super().__init__()
        self.patches = nn.Conv2d(3, width, 8, 8)
        self.position = nn.Parameter(torch.randn(1, 64, width) * 0.02)
        self.blocks = nn.Sequential(*(EncoderBlock(width, heads) for _ in range(depth)))
        self.norm, self.classifier = nn.LayerNorm(width), nn.Linear(width, classes)

    def forward(self, x):
        tokens = self.patches(x).flatten(2).transpose(1, 2) + self.position
        return self.classifier(self.norm(self.blocks(tokens)).mean(1))


def vit_tiny(classes: int = 10) -> nn.Module:
    return VisionTransformer(classes)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inputs: int, width: int, stride: int):
        super().__init__()
        outputs = width * self.expansion
        self.body = nn.Sequential(conv_bn(inputs, width, 1, act=nn.ReLU), conv_bn(width, width, 3, stride, act=nn.ReLU),
                                  nn.Conv2d(width, outputs, 1, bias=False), nn.BatchNorm2d(outputs))
        self.shortcut = nn.Identity() if stride == 1 and inputs == outputs else nn.Sequential(
            nn.Conv2d(inputs, outputs, 1, stride, bias=False), nn.BatchNorm2d(outputs))

    def forward(self, x):
        return functional.relu(self.body(x) + self.shortcut(x))


def resnet50(classes: int = 10) -> nn.Module:
    """ResNet-50 at full width (25.5M parameters with 1000 classes; 23.5M here) for 3x224x224."""
    layers, channels = [conv_bn(3, 64, 7, 2, act=nn.ReLU), nn.MaxPool2d(3, 2, 1)], 64
    for width, count, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
        for index in range(count):
            layers.append(Bottleneck(channels, width, stride if index == 0 else 1))
            channels = width * Bottleneck.expansion
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, classes)]
    return nn.Sequential(*layers)


class CrossStage(nn.Module):
    """YOLO's C3-like block: half the channels through two convolutions, concatenated with the other half."""

    def __init__(self, channels: int):
        super().__init__()
        half = channels // 2
        self.split, self.through = conv_bn(channels, channels, 1), nn.Sequential(conv_bn(half, half, 3),
                                                                                  conv_bn(half, half, 3))
        self.merge = conv_bn(channels, channels, 1)

    def forward(self, x):
        kept, worked = self.split(x).chunk(2, 1)
        return self.merge(torch.cat([kept, self.through(worked)], 1))


class Detector(nn.Module):
    """A three-scale YOLO-like detector at 3x128x128: grids at strides 8, 16 and 32, each cell 3 anchors x
    (box 4, objectness 1, 10 classes); a top-down path feeds the finer scales."""

    def __init__(self, classes: int = 10, anchors: int = 3):
        super().__init__()
        self.stem = nn.Sequential(conv_bn(3, 16, 3, 2), conv_bn(16, 32, 3, 2), CrossStage(32))
        self.down8, self.down16, self.down32 = (nn.Sequential(conv_bn(a, b, 3, 2), CrossStage(b))
                                                for a, b in ((32, 64), (64, 128), (128, 128)))
        self.lateral32, self.lateral16 = conv_bn(128, 64, 1), conv_bn(192, 64, 1)
        outputs = anchors * (5 + classes)
        self.head8, self.head16, self.head32 = (nn.Conv2d(c, outputs, 1) for c in (128, 64, 64))

    def forward(self, x):
        p8 = self.down8(self.stem(x))
        p16 = self.down16(p8)
        p32 = self.lateral32(self.down32(p16))
        up16 = self.lateral16(torch.cat([p16, functional.interpolate(p32, scale_factor=2.0)], 1))
        up8 = torch.cat([p8, functional.interpolate(up16, scale_factor=2.0)], 1)
        return self.head8(up8), self.head16(up16), self.head32(p32)


def detector(classes: int = 10) -> nn.Module:
    return Detector(classes)


class UNet(nn.Module):
    """A U-Net segmenter at 3x64x64: three levels down, transposed convolutions up with skips; one score per
    class (background and 10 garments) per pixel."""

    def __init__(self, classes: int = 11, widths: tuple[int, ...] = (16, 32, 64, 128)):
        super().__init__()
        self.down = nn.ModuleList()
        channels = 3
        for width in widths:
            self.down.append(nn.Sequential(conv_bn(channels, width, 3, act=nn.ReLU), conv_bn(width, width, 3, act=nn.ReLU)))
            channels = width
        self.up = nn.ModuleList(nn.ConvTranspose2d(w, w // 2, 2, 2) for w in widths[:0:-1])
        self.merge = nn.ModuleList(nn.Sequential(conv_bn(w, w // 2, 3, act=nn.ReLU), conv_bn(w // 2, w // 2, 3, act=nn.ReLU))
                                   for w in widths[:0:-1])
        self.classifier = nn.Conv2d(widths[0], classes, 1)

    def forward(self, x):
        skips = []
        for index, level in enumerate(self.down):
            x = level(x if index == 0 else functional.max_pool2d(x, 2))
            skips.append(x)
        for up, merge, skip in zip(self.up, self.merge, reversed(skips[:-1])):
            x = merge(torch.cat([up(x), skip], 1))
        return self.classifier(x)


def unet(classes: int = 11) -> nn.Module:
    return UNet(classes)


def keyword_spotting(classes: int = 12) -> nn.Module:
    """DS-CNN for keyword spotting on 1x40x101 log-mel frames (40 bands, 101 10-ms steps): a 10x4 strided
    convolution, four depthwise-separable blocks, average pooling."""
    layers = [nn.Sequential(nn.Conv2d(1, 64, (10, 4), 2, (5, 1), bias=False), nn.BatchNorm2d(64), nn.ReLU())]
    for _ in range(4):
        layers += [conv_bn(64, 64, 3, groups=64, act=nn.ReLU), conv_bn(64, 64, 1, act=nn.ReLU)]
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, classes)]
    return nn.Sequential(*layers)


# name -> (factory, input shape, data kind); the data kinds are made by benchmarks/quantized.py
MODELS = {
    "efficientnet_b0": (efficientnet_b0, (3, 96, 96), "rgb-folder"),
    "densenet": (densenet, (3, 64, 64), "rgb-folder"),
    "vit_tiny": (vit_tiny, (3, 64, 64), "rgb-folder"),
    "resnet50": (resnet50, (3, 224, 224), "rgb-folder"),
    "detector": (detector, (3, 128, 128), "rgb-folder"),
    "unet": (unet, (3, 64, 64), "masks"),
    "keyword_spotting": (keyword_spotting, (1, 40, 101), "spectrograms"),
}
