"""What a camera would send instead of features (cloud-only): the image raw, as PNG, or as JPEG q90.

The build summary, `profile` and the default benchmark all compare the wire against these; a cloud-only
bundle sends them (runtime/wire.py's picture stage, which encodes and decodes them here too).
"""

from __future__ import annotations

import numpy as np

from runtime.inputs import to_pixels
from runtime.coding import PICTURES
from runtime.coding.picture import JPEG_QUALITY, decode_picture, encode_picture

IMAGE_FORMATS = ("raw", *PICTURES)
TITLES = {"raw": "raw", "png": "PNG", "jpeg": f"JPEG q{JPEG_QUALITY}"}


def formats_for(channels: int) -> tuple[str, ...]:
    """PNG and JPEG hold grey or RGB pictures; any other channel count goes raw only."""
    return IMAGE_FORMATS if channels in (1, 3) else ("raw",)


def encode_image(pixels: np.ndarray, image_format: str) -> bytes:
    """One C x H x W uint8 image → bytes as a camera could send it."""
    return pixels.tobytes() if image_format == "raw" else encode_picture(pixels, image_format)


def decode_image(data: bytes, image_format: str, shape: tuple[int, int, int]) -> np.ndarray:
    if image_format == "raw":
        return np.frombuffer(data, dtype=np.uint8).reshape(shape)
    return decode_picture(data, image_format, shape)


def mean_image_bytes(inputs: np.ndarray) -> dict[str, float]:
    """Mean bytes per image in each format, over model inputs (the images as the model sees them)."""
    pixels = to_pixels(inputs)
    return {name: float(np.mean([len(encode_image(p, name)) for p in pixels]))
            for name in formats_for(pixels.shape[1])}
