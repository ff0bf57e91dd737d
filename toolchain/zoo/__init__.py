"""Models bundled with edgesplit: a factory, its input, its default split and committed weights,
and for the default split a trained codec and exit branch that `build-engines` uses unasked."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, NamedTuple

from torch import nn

from toolchain.models import CifarResNet18

ZOO_DIR = Path(__file__).parent


class Shipped(NamedTuple):
    """What `python -m toolchain.zoo.make` trained for a bundled model's default split (see its card)."""

    codec: str  # learned codec spec
    codec_weights: Path
    exit_weights: Path
    card: Path
    exit_max_loss: float  # accuracy points the exit may cost against sending every frame (threshold calibration)


class ZooModel(NamedTuple):
    factory: Callable[[], nn.Module]
    input_shape: tuple[int, int, int]
    default_split: str
    weights: Path
    dataset: str
    card: Path
    resize: str = "none"  # how images of another size reach its input (runtime/inputs.py)
    shipped: Shipped | None = None


ZOO = {
    # BBNet's "reduce channel" ResNet-18 size; normalization statistics are those of
    # Fashion-MNIST padded to 32x32, the input the model sees.
    "resnet18w05-fmnist": ZooModel(
        factory=lambda: CifarResNet18(width=0.5, in_channels=1, mean=0.2166, std=0.3314),
        input_shape=(1, 32, 32),
        default_split="layer3",  # why: resnet18w05_fmnist_layer3.md
        weights=ZOO_DIR / "resnet18w05_fmnist.pt",
        dataset="fashion-mnist",
        card=ZOO_DIR / "resnet18w05_fmnist.md",
        resize="pad",  # trained on 28x28 Fashion-MNIST centred in 32x32 with zero borders
        shipped=Shipped(
            codec="bbnet:c=32,s=4,bits=4",
            codec_weights=ZOO_DIR / "resnet18w05_fmnist_layer3_codec.pt",
            exit_weights=ZOO_DIR / "resnet18w05_fmnist_layer3_exit.pt",
            card=ZOO_DIR / "resnet18w05_fmnist_layer3.md",
            exit_max_loss=0.2,
        ),
    ),
}
DEFAULT_MODEL = "resnet18w05-fmnist"
