"""Small versions of architectures nobody here designed edgesplit for, as `--model architectures:NAME`.

Each keeps the traits that break naive tools: inverted residuals and ReLU6 (MobileNetV2), squeeze-
excitation and hardswish (MobileNetV3), LayerNorm over channels and GELU (ConvNeXt), parallel
branches joined by cat, with interpolate, flatten and view (Inception), two outputs (a
detector-style head), and a 3x64x64 RGB input. Random weights, with BatchNorm statistics made
non-trivial so that a wrong split or export shows in the outputs.
"""

import torch
import torch.nn.functional as F
from torch import nn

# name -> input shape
SHAPES = {"mobilenet_v2": (3, 32, 32), "mobilenet_v3_small": (3, 32, 32), "convnext": (3, 32, 32),
          "inception": (3, 32, 32), "detector": (3, 32, 32), "rgb64": (3, 64, 64)}


def _stats(model: nn.Module) -> nn.Module:
    generator = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2, generator=generator)
            module.running_var.uniform_(0.5, 1.5, generator=generator)
    return model.eval()


class InvertedResidual(nn.Module):
    def __init__(self, channels_in: int, channels_out: int, stride: int, expand: int = 4) -> None:
        super().__init__()
        hidden = channels_in * expand
        self.residual = stride == 1 and channels_in == channels_out
        self.block = nn.Sequential(
            nn.Conv2d(channels_in, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(),
            nn.Conv2d(hidden, channels_out, 1, bias=False), nn.BatchNorm2d(channels_out))

    def forward(self, x):
        return x + self.block(x) if self.residual else self.block(x)


def mobilenet_v2() -> nn.Module:
    torch.manual_seed(0)
    return _stats(nn.Sequential(
        nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU6(),
        InvertedResidual(16, 16, 1), InvertedResidual(16, 24, 2), InvertedResidual(24, 24, 1),
        nn.Conv2d(24, 64, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU6(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10)))


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.reduce, self.expand = nn.Conv2d(channels, channels // 4, 1), nn.Conv2d(channels // 4, channels, 1)

    def forward(self, x):
        scale = F.adaptive_avg_pool2d(x, 1)
        return x * F.hardsigmoid(self.expand(F.relu(self.reduce(scale))))


class V3Block(nn.Module):
    def __init__(self, channels_in: int, channels_out: int, stride: int) -> None:
        super().__init__()
        hidden = channels_in * 3
        self.block = nn.Sequential(
            nn.Conv2d(channels_in, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.Hardswish(),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden),
            SqueezeExcite(hidden), nn.Hardswish(),
            nn.Conv2d(hidden, channels_out, 1, bias=False), nn.BatchNorm2d(channels_out))

    def forward(self, x):
        return self.block(x)


def mobilenet_v3_small() -> nn.Module:
    torch.manual_seed(0)
    return _stats(nn.Sequential(
        nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.Hardswish(),
        V3Block(16, 24, 2), V3Block(24, 24, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(24, 32), nn.Hardswish(), nn.Linear(32, 10)))


class ChannelsLayerNorm(nn.Module):
    """LayerNorm over the channel axis of an N,C,H,W tensor, as ConvNeXt writes it."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels)

    def forward(self, x):
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ConvNeXtBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(channels, channels, 7, 1, 3, groups=channels)
        self.norm = ChannelsLayerNorm(channels)
        self.expand, self.project = nn.Conv2d(channels, 4 * channels, 1), nn.Conv2d(4 * channels, channels, 1)

    def forward(self, x):
        return x + self.project(F.gelu(self.expand(self.norm(self.depthwise(x)))))


def convnext() -> nn.Module:
    torch.manual_seed(0)
    return _stats(nn.Sequential(
        nn.Conv2d(3, 16, 4, 4), ChannelsLayerNorm(16), ConvNeXtBlock(16),
        ChannelsLayerNorm(16), nn.Conv2d(16, 32, 2, 2), ConvNeXtBlock(32),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.LayerNorm(32), nn.Linear(32, 10)))


class InceptionBlock(nn.Module):
    def __init__(self, channels_in: int, width: int) -> None:
        super().__init__()
        self.one = nn.Conv2d(channels_in, width, 1)
        self.three = nn.Sequential(nn.Conv2d(channels_in, width, 1), nn.ReLU(), nn.Conv2d(width, width, 3, 1, 1))
        self.coarse = nn.Conv2d(channels_in, width, 3, 2, 1)  # a half-resolution branch, upsampled back
        self.pool = nn.Sequential(nn.MaxPool2d(3, 1, 1), nn.Conv2d(channels_in, width, 1))

    def forward(self, x):
        coarse = F.interpolate(self.coarse(x), size=x.shape[-2:], mode="nearest")
        return F.relu(torch.cat([self.one(x), self.three(x), coarse, self.pool(x)], dim=1))


class Inception(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU())
        self.mixed = InceptionBlock(16, 8)
        self.reduce = nn.Sequential(nn.Conv2d(32, 32, 3, 2, 1), nn.BatchNorm2d(32), nn.ReLU(), nn.AdaptiveAvgPool2d(2))
        self.fc = nn.Linear(32 * 4, 10)

    def forward(self, x):
        x = self.reduce(self.mixed(self.stem(x)))
        return self.fc(x.view(x.size(0), -1))


def inception() -> nn.Module:
    torch.manual_seed(0)
    return _stats(Inception())


class Detector(nn.Module):
    """A backbone with two heads, returned as a dict: class logits and a box (cx, cy, w, h)."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Conv2d(3, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 32, 3, 2, 1), nn.BatchNorm2d(32), nn.ReLU())
        self.neck = nn.Sequential(nn.Conv2d(32, 32, 3, 1, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classes, self.boxes = nn.Linear(32, 10), nn.Linear(32, 4)

    def forward(self, x):
        features = self.neck(self.backbone(x))
        return {"logits": self.classes(features), "boxes": torch.sigmoid(self.boxes(features))}


def detector() -> nn.Module:
    torch.manual_seed(0)
    return _stats(Detector())


def rgb64() -> nn.Module:
    torch.manual_seed(0)
    return _stats(nn.Sequential(
        nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10)))


class TinyViT(nn.Module):
    """A ViT in miniature: 8x8 patches → 16 tokens of 32 features → two attention blocks → mean → classes."""

    def __init__(self) -> None:
        super().__init__()
        self.patches = nn.Conv2d(1, 32, 8, stride=8)
        self.blocks = nn.Sequential(*(nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True)
                                      for _ in range(2)))
        self.classifier = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patches(x).flatten(2).transpose(1, 2)
        return self.classifier(self.blocks(tokens).mean(1))


def tiny_vit() -> nn.Module:
    torch.manual_seed(0)
    return TinyViT()


def tiny_segmenter() -> nn.Module:
    """A map per image (3 classes on an 8x8 grid), no score per image: a segmenter's or detector's shape."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 3, 1))


class Sawtooth(nn.Module):
    """A periodic activation (fmod): ONNX's Mod, which TensorRT's parser imports from 8.6, not on the Nano's 8.2."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.fmod(x, 1.0)


def sawtooth() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, 2, 1), Sawtooth(), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
