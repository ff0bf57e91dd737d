"""Images into model input on the edge: npz/npy arrays, a folder of image files, a camera.

numpy only; Pillow reads image files and OpenCV a camera, each imported only when used.
The toolchain prepares its calibration and test images with the same `to_model_input`.
"""

import time
from pathlib import Path
from typing import Iterator, NamedTuple, Optional, Tuple

import numpy as np

from runtime.errors import EdgesplitError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".pgm", ".ppm", ".webp")


class SourceFrame(NamedTuple):
    index: int
    image: np.ndarray  # float32 C,H,W in [0, 1], the model's input size
    label: Optional[int]


def to_model_input(images: np.ndarray, input_shape: Tuple[int, int, int]) -> np.ndarray:
    """uint8 NCHW → float32 in [0, 1], zero-padded at the centre to the model's H and W."""
    channels, height, width = input_shape
    if images.shape[1] != channels:
        raise EdgesplitError("images have {} channels, the model takes {}".format(images.shape[1], channels))
    pad_h, pad_w = height - images.shape[2], width - images.shape[3]
    if pad_h < 0 or pad_w < 0:
        raise EdgesplitError("images are {}x{}, larger than the model input {}x{}".format(
            images.shape[2], images.shape[3], height, width))
    padding = ((0, 0), (0, 0), (pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2))
    return np.pad(images, padding).astype(np.float32) / 255.0


def read_npz(path, split: str) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """edgesplit's array format: `images` (uint8 N,H,W or N,C,H,W) and optional `labels`.

    A file may hold two splits as `<split>_images` / `<split>_labels` (calibration_data does).
    """
    with np.load(str(path), allow_pickle=False) as archive:
        prefix = "{}_".format(split) if "{}_images".format(split) in archive else ""
        if prefix + "images" not in archive:
            raise EdgesplitError("{} has no 'images' or '{}_images' array".format(path, split))
        images = archive[prefix + "images"]
        labels = archive[prefix + "labels"] if prefix + "labels" in archive else None
    return _nchw_uint8(images, path), None if labels is None else labels.astype(np.int64)


def _nchw_uint8(images: np.ndarray, origin) -> np.ndarray:
    if images.dtype != np.uint8 or images.ndim not in (3, 4):
        raise EdgesplitError("{}: images must be uint8 N,H,W or N,C,H,W, got {} {}".format(
            origin, images.dtype, images.shape))
    return images[:, None] if images.ndim == 3 else images


def _fit(image: np.ndarray, input_shape, resize) -> np.ndarray:
    """H,W,C uint8 of any size → the model's C,H,W float input (resized only when larger)."""
    channels, height, width = input_shape
    if image.shape[0] > height or image.shape[1] > width:
        image = resize(image, (width, height))
    if image.ndim == 2:
        image = image[:, :, None]
    return to_model_input(image.transpose(2, 0, 1)[None], input_shape)[0]


def _array_frames(images, labels, input_shape, first: int) -> Iterator[SourceFrame]:
    for index in range(first, len(images)):
        yield SourceFrame(index, to_model_input(images[index:index + 1], input_shape)[0],
                          None if labels is None else int(labels[index]))


def _file_frames(directory: Path, input_shape, first: int) -> Iterator[SourceFrame]:
    try:
        from PIL import Image
    except ImportError as error:
        raise EdgesplitError("reading a folder of images needs Pillow: pip install pillow") from error
    mode = {1: "L", 3: "RGB"}.get(input_shape[0])
    if mode is None:
        raise EdgesplitError("image files give 1 or 3 channels, the model takes {}".format(input_shape[0]))
    files = sorted(p for p in directory.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise EdgesplitError("{} holds no image files ({})".format(directory, ", ".join(IMAGE_SUFFIXES)))

    def resize(array, size):
        return np.asarray(Image.fromarray(array).resize(size, Image.BILINEAR))

    for index, path in enumerate(files[first:], first):
        with Image.open(str(path)) as picture:
            yield SourceFrame(index, _fit(np.asarray(picture.convert(mode)), input_shape, resize), None)


def _camera_frames(device: int, input_shape) -> Iterator[SourceFrame]:
    try:
        import cv2
    except ImportError as error:
        raise EdgesplitError("a camera source needs OpenCV: pip install opencv-python-headless") from error
    capture = cv2.VideoCapture(device)
    if not capture.isOpened():
        raise EdgesplitError("camera {} cannot be opened".format(device))

    def resize(array, size):
        return cv2.resize(array, size, interpolation=cv2.INTER_AREA)

    try:
        index = 0
        while True:
            ok, bgr = capture.read()
            if not ok:
                raise EdgesplitError("camera {} stopped delivering frames".format(device))
            if input_shape[0] == 1:
                picture = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
            else:
                picture = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            yield SourceFrame(index, _fit(picture, input_shape, resize), None)
            index += 1
    finally:
        capture.release()


def open_source(spec: str, input_shape, split: str = "test", first: int = 0) -> Iterator[SourceFrame]:
    """`camera[:N]`, an .npz (its `<split>_images` or `images`), an .npy of uint8 images, or a folder."""
    if spec == "camera" or spec.startswith("camera:"):
        device = spec.partition(":")[2] or "0"
        if not device.isdigit():
            raise EdgesplitError("camera source must be camera or camera:N, got {!r}".format(spec))
        return _camera_frames(int(device), input_shape)
    path = Path(spec)
    if path.is_dir():
        return _file_frames(path, input_shape, first)
    if path.suffix == ".npz" and path.is_file():
        images, labels = read_npz(path, split)
        return _array_frames(images, labels, input_shape, first)
    if path.suffix == ".npy" and path.is_file():
        return _array_frames(_nchw_uint8(np.load(str(path), allow_pickle=False), path), None, input_shape, first)
    raise EdgesplitError("source {!r} not found: give an .npz or .npy of uint8 images, a folder of image "
                         "files, or camera[:N]".format(spec))


def paced(frames: Iterator[SourceFrame], fps: Optional[float]) -> Iterator[SourceFrame]:
    """Release frames no faster than `fps`, as a camera would (no pacing when fps is None)."""
    if not fps:
        for frame in frames:
            yield frame
        return
    start = time.monotonic()
    for count, frame in enumerate(frames):
        delay = start + count / fps - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        yield frame
