"""Shared fixtures: real images from calibration_data, small real models, and what several tests need built.

Two tiers (tests/README.md):
- every test: `python -m pytest -q` (the README's command, what CI runs);
- quick, for local work: `python -m pytest -q -m "not slow"` leaves out the benchmark smoke runs, the default
  model built for each device and the emulated devices' calibration (tests using `device_bundle` or
  `calibration` are marked slow here), and the few trainings of their own.

What several tests need is built once per run: session fixtures below, and EDGESPLIT_CACHE set to one
folder for the run (toolchain/cache.py), which the benchmark and command processes the tests start inherit.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from calibration_data import DEFAULT_CALIBRATION
from runtime.inputs import InputSpec
from toolchain.cache import CACHE_ENV
from toolchain.data import FASHION_MNIST_DIR, ImageSet, load_images, to_model_input
from toolchain.load import load_model
from toolchain.models import PlainCNN

INPUT_SHAPE = (1, 32, 32)
DEFAULT_SPEC = InputSpec(1, 32, 32, "pad")  # the bundled model's: Fashion-MNIST's 28x28 centred in 32x32
TINY_WEIGHTS = Path(__file__).with_name("assets") / "tiny.pt"
TINY_MODEL = ["--model", "conftest:TinyNet", "--weights", str(TINY_WEIGHTS), "--input-shape", "1,32,32",
              "--resize", "pad"]


@pytest.fixture(scope="session", autouse=True)
def shared_cache(tmp_path_factory):
    """One EDGESPLIT_CACHE for the run (toolchain/cache.py), inherited by the commands the tests start: the float
    model's outputs on the held-out images are computed once, not in every benchmark process."""
    if os.environ.get(CACHE_ENV):
        yield
        return
    os.environ[CACHE_ENV] = str(tmp_path_factory.mktemp("cache"))
    yield
    del os.environ[CACHE_ENV]


SLOW_FIXTURES = {"device_bundle", "calibration"}  # the default model per device; an emulated device's quota


def pytest_configure(config):
    """A -m expression naming a marker nobody registered (`-m "not slwo"`) is refused: it would select every test."""
    import re

    known = {line.split(":")[0].strip() for line in config.getini("markers")}
    named = set(re.findall(r"[A-Za-z_]\w*", config.option.markexpr or "")) - {"and", "or", "not"}
    if named - known:
        raise pytest.UsageError(f"-m names {', '.join(sorted(named - known))}, which no test is marked with (the "
                                "quick tier is -m 'not slow')")


def pytest_collection_modifyitems(items):
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


def debian_package(package: str, present) -> None:
    """Installs a Debian package a test needs unless `present()`; apt needs root, so without it the test skips
    saying what to install."""
    if present():
        return
    if os.geteuid() != 0:
        pytest.skip(f"needs Debian's {package}, and installing it needs root: apt-get install -y {package}")
    install = ["apt-get", "install", "-y", "-q", package]
    environment = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    if subprocess.run(install, env=environment, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=environment, capture_output=True, check=True)
        subprocess.run(install, env=environment, capture_output=True, check=True)
    assert present(), f"apt-get installed {package}, yet it is not where the tests look"


@pytest.fixture(scope="session")
def fashion_mnist() -> Path:
    """Debian's full Fashion-MNIST (the `fashion-mnist` source)."""
    debian_package("dataset-fashion-mnist", FASHION_MNIST_DIR.exists)
    return FASHION_MNIST_DIR


@pytest.fixture(scope="session")
def haproxy() -> str:
    debian_package("haproxy", lambda: shutil.which("haproxy") is not None)
    return shutil.which("haproxy")


@pytest.fixture(scope="session")
def testbed() -> None:
    """What emulated devices and links need: root, iproute2 (installed as root when missing) and a writable cgroup
    cpu controller (the kernel's or the container's to give; root cannot add one)."""
    from benchmarks.testbed import missing_root

    if os.geteuid() != 0:
        pytest.skip(missing_root())
    debian_package("iproute2", lambda: shutil.which("ip") is not None and shutil.which("tc") is not None)
    if missing_root():
        pytest.skip(missing_root())


@pytest.fixture(scope="session")
def tritonserver() -> Path:
    """The real tritonserver (benchmarks/tritonserver.py), fetched into its cache the first time."""
    from benchmarks import tritonserver

    if tritonserver.unsupported():  # not on this machine kind: another OS or CPU, a Python without libpython.so
        pytest.skip(tritonserver.unsupported())
    if not tritonserver.server_installed():
        tritonserver.fetch()
    return tritonserver.server_dir()


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
def default_build(tmp_path_factory):
    """`build-engines` with nothing but an output folder (the cpu edge and cloud, the shipped codec and exit):
    (bundle path, what it printed)."""
    from click.testing import CliRunner

    from toolchain.cli import main

    output = tmp_path_factory.mktemp("default") / "bundle"
    result = CliRunner().invoke(main, ["build-engines", "--output", str(output)], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    return output, result.output


@pytest.fixture(scope="session")
def device_bundle(tmp_path_factory):
    """`device_bundle(edge, cloud=None)`: the default model built for that deployment, once per session. The build
    checks its bound on 500 held-out images (its evaluation runs Q/DQ halves unfused: ~15 s per 2,000); the tests
    that judge accuracy run every held-out image through the bundle themselves (deployed_top1)."""
    from toolchain.build import BuildOptions, build_engines

    built = {}

    def build(edge: str, cloud: str | None = None):
        if (edge, cloud) not in built:
            output = tmp_path_factory.mktemp("devices") / f"{edge}-{cloud or 'default'}"
            built[edge, cloud] = build_engines(BuildOptions(target=edge, cloud=cloud, output=output, holdout_frames=500))
        return built[edge, cloud]
    return build


@pytest.fixture(scope="session")
def deployed_top1(holdout):
    """`deployed_top1(bundle_path)`: top-1 of the bundle run as deployed (each half as its entry says it is
    verified on a CPU) on the held-out images, computed once per bundle: several tests judge one device bundle."""
    from runtime.bundle import load_bundle
    from runtime.local import SplitInference

    done = {}

    def run(path: Path) -> np.ndarray:
        if path not in done:
            inputs = to_model_input(holdout.images, INPUT_SHAPE)
            done[path] = top1(SplitInference(load_bundle(path), verified=True)(inputs))
            done[path].flags.writeable = False
        return done[path]
    return run


@pytest.fixture(scope="session")
def calibration(testbed, tmp_path_factory):
    """`calibration(device)`: the emulated device calibrated once per run (root), as the JSON file the bandwidth
    suite's --calibration reads and the Calibration; test_testbed checks it."""
    from benchmarks.testbed.devices import calibrate

    done = {}

    def calibrated(device: str):
        if device not in done:
            work = tmp_path_factory.mktemp(f"calibration-{device}")
            result = calibrate(device, work)
            (work / "calibration.json").write_text(json.dumps(result.as_dict()))
            done[device] = work / "calibration.json", result
        return done[device]
    return calibrated


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
