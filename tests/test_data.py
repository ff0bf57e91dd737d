import gzip
import struct

import numpy as np
import pytest

import toolchain.data as data
from runtime.inputs import InputSpec
from toolchain.data import load_images, read_idx, to_model_input
from toolchain.errors import EdgesplitError

MNIST_SIZE, CIFAR = InputSpec(1, 28, 28), InputSpec(3, 32, 32)


def write_idx(path, array):
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + b"".join(struct.pack(">I", s) for s in array.shape)
    with gzip.open(path, "wb") as stream:
        stream.write(header + array.astype(np.uint8).tobytes())


def test_idx_directory_round_trip(tmp_path):
    images = np.arange(3 * 28 * 28, dtype=np.uint8).reshape(3, 28, 28)
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.array([4, 0, 9]))
    loaded = load_images(tmp_path, "test", MNIST_SIZE)
    assert np.array_equal(loaded.images[:, 0], images)
    assert loaded.labels.tolist() == [4, 0, 9]


def test_truncated_idx_is_refused(tmp_path):
    path = tmp_path / "bad.gz"
    write_idx(path, np.zeros((2, 4), dtype=np.uint8))
    raw = gzip.decompress(path.read_bytes())[:-1]
    path.write_bytes(gzip.compress(raw))
    with pytest.raises(EdgesplitError, match="truncated: header says"):
        read_idx(path)


def test_cifar10_binary_release(tmp_path):
    rng = np.random.default_rng(0)
    records = rng.integers(0, 256, size=(5, 3073), dtype=np.uint8)
    records[:, 0] = [3, 1, 4, 1, 5]
    records.tofile(tmp_path / "test_batch.bin")
    loaded = load_images(tmp_path, "test", CIFAR)
    assert loaded.images.shape == (5, 3, 32, 32)
    assert loaded.labels.tolist() == [3, 1, 4, 1, 5]
    assert np.array_equal(loaded.images[2].reshape(-1), records[2, 1:])
    with pytest.raises(EdgesplitError, match="CIFAR-10 binary files missing .*data_batch_1.bin"):
        load_images(tmp_path, "train", CIFAR)


def test_missing_fashion_mnist_names_the_debian_package(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "FASHION_MNIST_DIR", tmp_path)
    with pytest.raises(EdgesplitError, match="apt-get install -y dataset-fashion-mnist"):
        load_images("fashion-mnist", "train", MNIST_SIZE)


def test_unknown_source_is_named():
    with pytest.raises(EdgesplitError, match="image source 'nowhere' not found"):
        load_images("nowhere", "train", MNIST_SIZE)


def test_debian_fashion_mnist_test_split_is_balanced(fashion_mnist):
    test = load_images("fashion-mnist", "test", MNIST_SIZE)
    assert test.images.shape == (10000, 1, 28, 28)
    assert np.bincount(test.labels).tolist() == [1000] * 10


def test_model_input_is_padded_only_when_the_spec_says_so():
    images = np.full((2, 1, 28, 28), 255, dtype=np.uint8)
    inputs = to_model_input(images, InputSpec(1, 32, 32, "pad"))
    assert inputs.shape == (2, 1, 32, 32) and inputs.dtype == np.float32
    assert inputs[0, 0, 2:30, 2:30].min() == 1.0 and inputs[0, 0, :2].max() == 0.0
    with pytest.raises(EdgesplitError, match=r"images are 28x28, the model takes 32x32 \(resize policy: none\); give "
                                             "images of the model's size, or build the bundle with --resize resize"):
        to_model_input(images, (1, 32, 32))
    with pytest.raises(EdgesplitError, match=r"images shaped \(2, 1, 28, 28\) have 1 channels \(as N,C,H,W\) or 28 "
                                             r"\(as N,H,W,C\); the model takes 3"):
        to_model_input(images, (3, 32, 32))


def test_edge_sources_give_the_same_model_input_from_npz_npy_and_image_files(tmp_path, holdout):
    from PIL import Image

    from runtime.images import open_source

    spec = InputSpec(1, 32, 32, "pad")
    images = holdout.images[:3, :, 2:30, 2:30]  # the 28x28 originals
    expected = to_model_input(images, spec)
    np.savez(tmp_path / "frames.npz", images=images, labels=holdout.labels[:3])
    np.save(tmp_path / "frames.npy", images[:, 0])
    folder = tmp_path / "pictures"
    folder.mkdir()
    for index, image in enumerate(images[:, 0]):
        Image.fromarray(image).save(folder / f"{index:03d}.png")
    from_npz = list(open_source(str(tmp_path / "frames.npz"), spec))
    from_npy = list(open_source(str(tmp_path / "frames.npy"), spec))
    from_files = list(open_source(str(folder), spec))
    for frames in (from_npz, from_npy, from_files):
        np.testing.assert_array_equal(np.stack([f.image for f in frames]), expected)
    assert [f.label for f in from_npz] == holdout.labels[:3].tolist()
    Image.fromarray(np.zeros((64, 48), dtype=np.uint8)).save(folder / "999-large.png")
    *_, large = open_source(str(folder), spec)  # padding cannot shrink: refused, not squeezed
    assert large.image is None and "999-large.png: images are 64x48, the model takes 32x32" in large.error
    assert next(iter(open_source(str(folder), spec._replace(resize="resize"), first=3))).image.shape == (1, 32, 32)
    with pytest.raises(EdgesplitError, match=r"camera source must be camera or camera:N"):
        open_source("camera:front", spec)
    with pytest.raises(EdgesplitError, match="source 'missing.npz' not found"):
        open_source("missing.npz", spec)
