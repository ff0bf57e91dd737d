"""Image sets from disk: Fashion-MNIST (IDX), CIFAR-10 (binary batches) and edgesplit's npz.

Nothing is downloaded and nothing is unpickled: CIFAR-10 is read from its *binary* release
(`cifar-10-batches-bin`), not the pickled Python one.
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import NamedTuple

import numpy as np

from runtime.images import read_npz, to_model_input  # noqa: F401  (re-exported for the toolchain)
from toolchain.errors import EdgesplitError

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
    """uint8 images in NCHW and their labels (None for unlabeled sets)."""

    images: np.ndarray
    labels: np.ndarray | None

    def __len__(self) -> int:
        return len(self.images)

    def take(self, count: int) -> "ImageSet":
        labels = None if self.labels is None else self.labels[:count]
        return ImageSet(self.images[:count], labels)


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


def load_idx_directory(directory: Path, split: str) -> ImageSet:
    image_name, label_name = FASHION_MNIST_FILES[split]
    image_path, label_path = _find(directory, image_name), _find(directory, label_name)
    if image_path is None or label_path is None:
        hint = " (install it with: apt-get install -y dataset-fashion-mnist)" \
            if directory == FASHION_MNIST_DIR else ""
        raise EdgesplitError(f"no {image_name}[.gz] / {label_name}[.gz] in {directory}{hint}")
    images = read_idx(image_path)
    return ImageSet(images[:, None, :, :].copy(), read_idx(label_path).astype(np.int64))


def load_cifar10_binary(directory: Path, split: str) -> ImageSet:
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
    return ImageSet(records[:, 1:].reshape(-1, 3, 32, 32).copy(), records[:, 0].astype(np.int64))


def load_npz(path: Path, split: str) -> ImageSet:
    images, labels = read_npz(path, split)
    return ImageSet(images, labels)


def load_images(source: str | Path, split: str = "train") -> ImageSet:
    """`fashion-mnist`, an .npz file, an IDX directory or a CIFAR-10 binary directory."""
    if split not in FASHION_MNIST_FILES:
        raise EdgesplitError(f"unknown split {split!r}: use 'train' or 'test'")
    if str(source) == "fashion-mnist":
        return load_idx_directory(FASHION_MNIST_DIR, split)
    path = Path(source)
    if path.suffix == ".npz" and path.is_file():
        return load_npz(path, split)
    if path.is_dir():
        if (path / "test_batch.bin").exists() or (path / "data_batch_1.bin").exists():
            return load_cifar10_binary(path, split)
        return load_idx_directory(path, split)
    raise EdgesplitError(
        f"image source {str(source)!r} not found: give 'fashion-mnist', an .npz file, "
        "a folder of IDX files or a CIFAR-10 'cifar-10-batches-bin' folder"
    )
