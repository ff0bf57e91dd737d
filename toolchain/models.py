"""Model definitions edgesplit ships (torchvision is not importable beside our torch build).

Every model takes float images in [0, 1], NCHW, and normalizes inside the graph, so the
edge runtime only has to scale uint8 pixels and never needs per-model statistics.
"""

from __future__ import annotations

import torch
from torch import nn


class Normalize(nn.Module):
    def __init__(self, mean: float, std: float) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean))
        self.register_buffer("std", torch.tensor(std))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU()
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class CifarResNet18(nn.Module):
    """ResNet-18 for 32x32 inputs: 3x3 stem, no max-pool, four stages of two blocks."""

    def __init__(
        self, width: float = 1.0, in_channels: int = 3, num_classes: int = 10,
        mean: float = 0.5, std: float = 0.25,
    ) -> None:
        super().__init__()
        planes = [int(round(64 * width * 2**i)) for i in range(4)]
        self.normalize = Normalize(mean, std)
        self.conv1 = nn.Conv2d(in_channels, planes[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes[0])
        self.relu = nn.ReLU()
        stages, in_planes = [], planes[0]
        for index, width_of_stage in enumerate(planes):
            stride = 1 if index == 0 else 2
            stages.append(nn.Sequential(
                BasicBlock(in_planes, width_of_stage, stride),
                BasicBlock(width_of_stage, width_of_stage, 1),
            ))
            in_planes = width_of_stage
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(planes[3], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(self.normalize(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.flatten(self.pool(x)))


class PlainCNN(nn.Module):
    """A VGG-style chain with no skip connections: every layer boundary is a valid split."""

    def __init__(
        self, in_channels: int = 1, num_classes: int = 10, widths: tuple[int, ...] = (16, 32, 64),
        mean: float = 0.5, std: float = 0.25,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [Normalize(mean, std)]
        for width in widths:
            layers += [
                nn.Conv2d(in_channels, width, 3, 1, 1, bias=False),
                nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2),
            ]
            in_channels = width
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(in_channels, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class MobileNetV1(nn.Module):
    """MobileNet v1 (Howard et al. 2017) at width 1.0: a strided 3x3 stem, then 13 depthwise-separable
    blocks; 224x224 RGB and 1001 classes as TFLite's hosted mobilenet_v1_1.0_224 (the testbed's Pi reference)."""

    BLOCKS = ((32, 64, 1), (64, 128, 2), (128, 128, 1), (128, 256, 2), (256, 256, 1), (256, 512, 2),
              *[(512, 512, 1)] * 5, (512, 1024, 2), (1024, 1024, 1))

    def __init__(self, in_channels: int = 3, num_classes: int = 1001, mean: float = 0.5, std: float = 0.5) -> None:
        super().__init__()

        def separable(inputs: int, outputs: int, stride: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(inputs, inputs, 3, stride, 1, groups=inputs, bias=False), nn.BatchNorm2d(inputs), nn.ReLU6(),
                nn.Conv2d(inputs, outputs, 1, bias=False), nn.BatchNorm2d(outputs), nn.ReLU6())

        self.normalize = Normalize(mean, std)
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU6())
        self.blocks = nn.Sequential(*[separable(*block) for block in self.BLOCKS])
        self.classifier = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(1024, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.blocks(self.stem(self.normalize(x))))
