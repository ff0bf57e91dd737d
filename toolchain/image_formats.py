"""What a camera would send instead of features (cloud-only): the image raw, as PNG, or as JPEG q90.

The build summary, `profile` and the default benchmark all compare the wire against these.
"""

from __future__ import annotations

import io

import numpy as np

JPEG_QUALITY = 90
IMAGE_FORMATS = ("raw", "png", "jpeg")
TITLES = {"raw": "raw", "png": "PNG", "jpeg": f"JPEG q{JPEG_QUALITY}"}


def formats_for(channels: int) -> tuple[str, ...]:
    """PNG and JPEG hold grey or RGB pictures; any other channel count goes raw only."""
    return IMAGE_FORMATS if channels in (1, 3) else ("raw",)


def encode_image(pixels: np.ndarray, image_format: str) -> bytes:
    """One C x H x W uint8 image → bytes as a camera could send it."""
    if image_format == "raw":
        return pixels.tobytes()
    from PIL import Image

    picture = Image.fromarray(pixels[0] if pixels.shape[0] == 1 else pixels.transpose(1, 2, 0))
    buffer = io.BytesIO()
    options = {"quality": JPEG_QUALITY} if image_format == "jpeg" else {"optimize": True}
    picture.save(buffer, format=image_format.upper(), **options)
    return buffer.getvalue()


def decode_image(data: bytes, image_format: str, shape: tuple[int, int, int]) -> np.ndarray:
    if image_format == "raw":
        return np.frombuffer(data, dtype=np.uint8).reshape(shape)
    from PIL import Image

    array = np.asarray(Image.open(io.BytesIO(data)))
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def to_pixels(inputs: np.ndarray) -> np.ndarray:
    """Model inputs (float in [0, 1]) → the uint8 images they were made from."""
    return np.round(inputs * 255).astype(np.uint8)


def mean_image_bytes(inputs: np.ndarray) -> dict[str, float]:
    """Mean bytes per image in each format, over model inputs (the images as the model sees them)."""
    pixels = to_pixels(inputs)
    return {name: float(np.mean([len(encode_image(p, name)) for p in pixels]))
            for name in formats_for(pixels.shape[1])}
