"""Shared fixtures: real images from calibration_data and small real models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from calibration_data import DEFAULT_CALIBRATION
from runtime.inputs import InputSpec
from toolchain.data import ImageSet, load_images, to_model_input
from toolchain.load import load_model
from toolchain.models import PlainCNN

INPUT_SHAPE = (1, 32, 32)
DEFAULT_SPEC = InputSpec(1, 32, 32, "pad")  # the bundled model's: Fashion-MNIST's 28x28 centred in 32x32
TINY_WEIGHTS = Path(__file__).with_name("assets") / "tiny.pt"
TINY_MODEL = ["--model", "conftest:TinyNet", "--weights", str(TINY_WEIGHTS), "--input-shape", "1,32,32",
              "--resize", "pad"]


@pytest.fixture(scope="session")
def holdout() -> ImageSet:
    return load_images(DEFAULT_CALIBRATION, "test", DEFAULT_SPEC)


@pytest.fixture(scope="session")
def images(holdout) -> torch.Tensor:
    """64 real Fashion-MNIST test images as model input."""
    return torch.from_numpy(to_model_input(holdout.images[:64], INPUT_SHAPE))


@pytest.fixture(scope="session")
def default_model():
    return load_model(None)


@pytest.fixture(scope="session")
def int8_built(tmp_path_factory):
    """The default model for the cpu target with the int8 codec at layer2, uncompressed (16,384 B per frame, no
    exit branch), as a directory and a .tar, built once: the bundle the runtime tests run on.
    test_default_bundle.py builds the real default (`build-engines` with no options)."""
    from toolchain.build import BuildOptions, build_engines

    output = tmp_path_factory.mktemp("bundles") / "int8-cpu"
    return build_engines(BuildOptions(split="layer2", codec="int8", lossless="none", output=output, tar=True))


@pytest.fixture(scope="session")
def device_bundle(tmp_path_factory):
    """`device_bundle(edge, cloud=None)`: the default model built for that deployment, once per session."""
    from toolchain.build import BuildOptions, build_engines

    built = {}

    def build(edge: str, cloud: str | None = None):
        if (edge, cloud) not in built:
            output = tmp_path_factory.mktemp("devices") / f"{edge}-{cloud or 'default'}"
            built[edge, cloud] = build_engines(BuildOptions(target=edge, cloud=cloud, output=output))
        return built[edge, cloud]
    return build


@pytest.fixture()
def plain_cnn() -> PlainCNN:
    torch.manual_seed(0)
    model = PlainCNN(widths=(8, 16))
    # non-trivial BN statistics, so an error in the split would show in the outputs
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    return model.eval()


def tiny_features(seed: int = 0) -> torch.Tensor:
    """Post-ReLU-like features with a few channels of very different ranges."""
    generator = torch.Generator().manual_seed(seed)
    scales = torch.tensor([0.1, 1.0, 5.0, 20.0]).view(1, 4, 1, 1)
    return torch.relu(torch.randn(16, 4, 6, 6, generator=generator)) * scales


@pytest.fixture()
def features() -> torch.Tensor:
    return tiny_features()


def top1(logits) -> np.ndarray:
    return np.asarray(logits).argmax(1)


def PlainCNNSmall() -> PlainCNN:
    """A factory for `--model conftest:PlainCNNSmall` (tests run with tests/ on sys.path)."""
    return PlainCNN(widths=(8, 16))


def TinyNet() -> PlainCNN:
    """`--model conftest:TinyNet --weights tests/assets/tiny.pt`: small, trained (tests/assets/make_tiny.py)."""
    return PlainCNN(widths=(16, 32))
