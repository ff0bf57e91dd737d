"""Three architectures the toolchain was not designed around, for `python -m benchmarks foreign`: each is what
a user would bring (`--model benchmarks.foreign_models:NAME`), narrowed so that brief training fits two cores.
Top-level modules are the stages, so the optimizer's default split points are the stage ends."""

import torch
from torch import nn


def conv_bn(inputs: int, outputs: int, kernel: int, stride: int = 1, groups: int = 1, act=nn.ReLU6) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(inputs, outputs, kernel, stride, kernel // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(outputs), act())


class InvertedResidual(nn.Module):
    """MobileNetV2's block: expand 1x1, depthwise 3x3, project 1x1 (linear), a residual where shapes allow."""

    def __init__(self, inputs: int, outputs: int, stride: int, expand: int):
        super().__init__()
        hidden = inputs * expand
        layers = [conv_bn(inputs, hidden, 1)] if expand != 1 else []
        layers += [conv_bn(hidden, hidden, 3, stride, groups=hidden),
                   nn.Conv2d(hidden, outputs, 1, bias=False), nn.BatchNorm2d(outputs)]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and inputs == outputs

    def forward(self, x):
        return x + self.body(x) if self.residual else self.body(x)


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, squeezed: int):
        super().__init__()
        self.gate = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(channels, squeezed, 1), nn.SiLU(),
                                  nn.Conv2d(squeezed, channels, 1), nn.Sigmoid())

    def forward(self, x):
        return x * self.gate(x)


class MBConv(nn.Module):
    """EfficientNet's block: MobileNetV2's with SiLU and squeeze-excitation."""

    def __init__(self, inputs: int, outputs: int, stride: int, expand: int, kernel: int = 3):
        super().__init__()
        hidden = inputs * expand
        layers = [conv_bn(inputs, hidden, 1, act=nn.SiLU)] if expand != 1 else []
        layers += [conv_bn(hidden, hidden, kernel, stride, groups=hidden, act=nn.SiLU),
                   SqueezeExcite(hidden, max(2, inputs // 4)), nn.Conv2d(hidden, outputs, 1, bias=False),
                   nn.BatchNorm2d(outputs)]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and inputs == outputs

    def forward(self, x):
        return x + self.body(x) if self.residual else self.body(x)


class Bottleneck(nn.Module):
    """ResNet-50's block: 1x1 reduce, 3x3, 1x1 expand (x4), a projected shortcut where shapes change."""

    def __init__(self, inputs: int, width: int, stride: int):
        super().__init__()
        outputs = 4 * width
        self.body = nn.Sequential(conv_bn(inputs, width, 1, act=nn.ReLU), conv_bn(width, width, 3, stride, act=nn.ReLU),
                                  nn.Conv2d(width, outputs, 1, bias=False), nn.BatchNorm2d(outputs))
        self.shortcut = nn.Identity() if stride == 1 and inputs == outputs else nn.Sequential(
            nn.Conv2d(inputs, outputs, 1, stride, bias=False), nn.BatchNorm2d(outputs))
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.body(x) + self.shortcut(x))


def stage(block, inputs: int, outputs: int, count: int, stride: int, **options) -> nn.Sequential:
    return nn.Sequential(*[block(inputs if i == 0 else outputs, outputs, stride if i == 0 else 1, **options)
                           for i in range(count)])


def bottlenecks(inputs: int, width: int, count: int, stride: int) -> nn.Sequential:
    return nn.Sequential(*[Bottleneck(inputs if i == 0 else 4 * width, width, stride if i == 0 else 1)
                           for i in range(count)])


class Classifier(nn.Sequential):
    def __init__(self, channels: int, classes: int):
        super().__init__(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, classes))


def mobilenetv2(classes: int = 10) -> nn.Module:
    """MobileNetV2 at width 0.5 for 3x96x96 (torchvision's stage table, grouped by resolution)."""
    return nn.Sequential(dict_of(
        stem=conv_bn(3, 16, 3, 2), stage1=stage(InvertedResidual, 16, 8, 1, 1, expand=1),
        stage2=stage(InvertedResidual, 8, 12, 2, 2, expand=6), stage3=stage(InvertedResidual, 12, 16, 3, 2, expand=6),
        stage4=nn.Sequential(*stage(InvertedResidual, 16, 32, 4, 2, expand=6),
                             *stage(InvertedResidual, 32, 48, 3, 1, expand=6)),
        stage5=nn.Sequential(*stage(InvertedResidual, 48, 80, 3, 2, expand=6),
                             *stage(InvertedResidual, 80, 160, 1, 1, expand=6)),
        last=conv_bn(160, 640, 1), classifier=Classifier(640, classes)))


def efficientnet(classes: int = 10) -> nn.Module:
    """EfficientNet-B0's stage table at width 0.5 for 3x96x96: MBConv with SiLU, squeeze-excitation, 5x5 kernels."""
    return nn.Sequential(dict_of(
        stem=conv_bn(3, 16, 3, 2, act=nn.SiLU), stage1=stage(MBConv, 16, 8, 1, 1, expand=1),
        stage2=stage(MBConv, 8, 12, 2, 2, expand=6), stage3=stage(MBConv, 12, 20, 2, 2, expand=6, kernel=5),
        stage4=nn.Sequential(*stage(MBConv, 20, 40, 3, 2, expand=6), *stage(MBConv, 40, 56, 3, 1, expand=6, kernel=5)),
        stage5=nn.Sequential(*stage(MBConv, 56, 96, 4, 2, expand=6, kernel=5), *stage(MBConv, 96, 160, 1, 1, expand=6)),
        last=conv_bn(160, 640, 1, act=nn.SiLU), classifier=Classifier(640, classes)))


def resnet50(classes: int = 10) -> nn.Module:
    """ResNet-50's layout (3, 4, 6, 3 bottlenecks) at width 0.25 for 3x224x224."""
    return nn.Sequential(dict_of(
        stem=nn.Sequential(conv_bn(3, 16, 7, 2, act=nn.ReLU), nn.MaxPool2d(3, 2, 1)),
        layer1=bottlenecks(16, 16, 3, 1), layer2=bottlenecks(64, 32, 4, 2), layer3=bottlenecks(128, 64, 6, 2),
        layer4=bottlenecks(256, 128, 3, 2),
        classifier=Classifier(512, classes)))


def dict_of(**modules: nn.Module):
    from collections import OrderedDict

    return OrderedDict(modules)


MODELS = {"mobilenetv2": (mobilenetv2, (3, 96, 96)), "efficientnet": (efficientnet, (3, 96, 96)),
          "resnet50": (resnet50, (3, 224, 224))}

if __name__ == "__main__":
    for name, (make, shape) in MODELS.items():
        model = make().eval()
        print(name, sum(p.numel() for p in model.parameters()), tuple(model(torch.zeros(1, *shape)).shape))
