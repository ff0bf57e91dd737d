"""Image sets from disk: Fashion-MNIST (IDX), CIFAR-10 (binary batches), edgesplit's npz/npy, and
folders of image files (class subfolders give labels; `train/` and `test/` subfolders give splits).

Every set comes out at the model's input size through its `InputSpec`, exactly as the edge's
sources prepare frames. Held-out images are never calibration images: a source with one set
keeps every 5th image out of calibration and says so in `origin`. Nothing is downloaded and
nothing is unpickled: CIFAR-10 is read from its *binary* release (`cifar-10-batches-bin`).
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import NamedTuple

import numpy as np

from runtime.images import load_array, read_folder, read_npz
from runtime.inputs import InputSpec
from toolchain.errors import EdgesplitError

HOLDOUT_EVERY = 5  # a source with one set of images keeps every 5th out of calibration, for the accuracy check

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
CIFAR10_FILES = {
    "train": tuple(f"data_batch_{i}.bin" for i in range(1, 6)),
    "test": ("test_batch.bin",),
}
CIFAR10_RECORD = 1 + 3 * 32 * 32
IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class ImageSet(NamedTuple):
    """uint8 images in N,C,H,W at the model's size, their labels (None for unlabeled sets), and where
    they came from."""

    images: np.ndarray
    labels: np.ndarray | None
    origin: str = ""

    def __len__(self) -> int:
        return len(self.images)

    def take(self, count: int) -> "ImageSet":
        labels = None if self.labels is None else self.labels[:count]
        return ImageSet(self.images[:count], labels, self.origin)

    def drawn(self, count: int, seed: int = 0) -> np.ndarray:
        """The indices `sample` takes: `count` drawn without replacement, in order (all when there are fewer)."""
        if count >= len(self):
            return np.arange(len(self))
        return np.sort(np.random.default_rng(seed).choice(len(self), count, replace=False))

    def sample(self, count: int, seed: int = 0) -> "ImageSet":
        """`count` images drawn without replacement (in their order): a folder's images come sorted by class,
        so its first images may all be of one class."""
        if count >= len(self):
            return self
        chosen = self.drawn(count, seed)
        return ImageSet(self.images[chosen], None if self.labels is None else self.labels[chosen],
                        f"{self.origin} ({count} drawn at random)")

    def inputs(self) -> np.ndarray:
        """What the edge half takes: float32 in [0, 1]."""
        return self.images.astype(np.float32) / 255.0


def to_model_input(images: np.ndarray, spec: InputSpec | tuple[int, int, int]) -> np.ndarray:
    """uint8 images → float32 model input by `spec` (a bare C,H,W refuses other sizes)."""
    spec = spec if isinstance(spec, InputSpec) else InputSpec(*spec)
    return spec.prepare(images, "images")


def read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as stream:
        raw = stream.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_DTYPES:
        raise EdgesplitError(f"{path} is not an IDX file (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=IDX_DTYPES[raw[2]], offset=header)
    if data.size != int(np.prod(shape)):
        raise EdgesplitError(f"{path} is truncated: header says {shape}, found {data.size} values")
    return data.reshape(shape)


def _find(directory: Path, name: str) -> Path | None:
    for candidate in (directory / name, directory / f"{name}.gz"):
        if candidate.exists():
            return candidate
    return None


def load_idx_directory(directory: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    image_name, label_name = FASHION_MNIST_FILES[split]
    image_path, label_path = _find(directory, image_name), _find(directory, label_name)
    if image_path is None or label_path is None:
        hint = " (install it with: apt-get install -y dataset-fashion-mnist)" \
            if directory == FASHION_MNIST_DIR else ""
        raise EdgesplitError(f"no {image_name}[.gz] / {label_name}[.gz] in {directory}{hint}")
    return read_idx(image_path), read_idx(label_path).astype(np.int64)


def load_cifar10_binary(directory: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    paths = [directory / name for name in CIFAR10_FILES[split]]
    missing = [p.name for p in paths if not p.exists()]
    if missing:
        raise EdgesplitError(
            f"CIFAR-10 binary files missing in {directory}: {', '.join(missing)} "
            "(expected the 'cifar-10-batches-bin' folder of the binary release)"
        )
    raw = np.concatenate([np.fromfile(p, dtype=np.uint8) for p in paths])
    if raw.size % CIFAR10_RECORD:
        raise EdgesplitError(f"CIFAR-10 files in {directory} are not whole {CIFAR10_RECORD}-byte records")
    records = raw.reshape(-1, CIFAR10_RECORD)
    return records[:, 1:].reshape(-1, 3, 32, 32), records[:, 0].astype(np.int64)


def _one_set(images: np.ndarray, labels: np.ndarray | None, split: str, origin: str) -> ImageSet:
    """From a source with a single set: every 5th image is held out, the rest calibrates."""
    held = np.arange(len(images)) % HOLDOUT_EVERY == HOLDOUT_EVERY - 1
    chosen = held if split == "test" else ~held
    part = "every 5th image" if split == "test" else "all but every 5th image"
    return ImageSet(images[chosen], None if labels is None else labels[chosen],
                    f"{origin}, {part} (it holds one set: the held-out images are never calibration images)")


def load_images(source: str | Path, split: str, spec: InputSpec) -> ImageSet:
    """`fashion-mnist`, an .npz or .npy file, a folder of image files, an IDX directory or a CIFAR-10 binary
    directory; images arranged and sized for `spec` (or refused with the reason)."""
    if split not in FASHION_MNIST_FILES:
        raise EdgesplitError(f"unknown split {split!r}: use 'train' or 'test'")
    path = Path(source)
    if str(source) == "fashion-mnist":
        images, labels = load_idx_directory(FASHION_MNIST_DIR, split)
        return ImageSet(spec.fit(spec.arrange(images, source), source), labels, f"the {split} split of {source}")
    if path.suffix in (".npz", ".npy") and path.is_file():
        if path.suffix == ".npy":
            images, labels, separate = load_array(path), None, False
        else:
            images, labels, separate = read_npz(path, split)
        images = spec.fit(spec.arrange(images, path), path)
        return ImageSet(images, labels, f"the {split} split of {path}") if separate else \
            _one_set(images, labels, split, str(path))
    if path.is_dir():
        if (path / "test_batch.bin").exists() or (path / "data_batch_1.bin").exists():
            images, labels = load_cifar10_binary(path, split)
        elif _find(path, FASHION_MNIST_FILES[split][0]) is not None:
            images, labels = load_idx_directory(path, split)
        else:
            images, labels, separate = read_folder(path, spec, split)
            return ImageSet(images, labels, f"{path / split}") if separate else \
                _one_set(images, labels, split, str(path))
        return ImageSet(spec.fit(spec.arrange(images, path), path), labels, f"the {split} split of {path}")
    problem = "is not a format edgesplit reads" if path.exists() else "not found"
    raise EdgesplitError(
        f"image source {str(source)!r} {problem}: give 'fashion-mnist', an .npz or .npy file, a folder of image "
        "files, a folder of IDX files or a CIFAR-10 'cifar-10-batches-bin' folder"
    )
