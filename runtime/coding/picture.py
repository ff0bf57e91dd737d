"""A cloud-only bundle's codes are the image's 8-bit C x H x W pixels (C = 1 or 3); this coder sends them as a
PNG or JPEG picture, as a camera would (Pillow, imported when a bundle uses it). Decoding checks the picture's
header declares exactly the bundle's shape before a pixel is decoded."""

import io

import numpy as np

from runtime.coding import PICTURES, Coder
from runtime.errors import WireError

PICTURE_CHANNELS = {1: "L", 3: "RGB"}
JPEG_QUALITY = 90


def pillow():
    try:
        from PIL import Image
    except ImportError as error:
        raise WireError("PNG and JPEG frames need Pillow: pip install pillow") from error
    return Image


def encode_picture(pixels: np.ndarray, picture: str) -> bytes:
    """One C x H x W uint8 image (C = 1 or 3) → PNG or JPEG bytes, as a camera would send it."""
    picture_file = pillow().fromarray(pixels[0] if pixels.shape[0] == 1 else pixels.transpose(1, 2, 0))
    buffer = io.BytesIO()
    options = {"quality": JPEG_QUALITY} if picture == "jpeg" else {"optimize": True}
    picture_file.save(buffer, format=picture.upper(), **options)
    return buffer.getvalue()


def decode_picture(payload: bytes, picture: str, shape) -> np.ndarray:
    """PNG or JPEG bytes → C x H x W uint8; its header must declare exactly `shape` before a pixel is decoded."""
    channels, height, width = shape
    try:
        opened = pillow().open(io.BytesIO(payload), formats=[picture.upper()])
        if opened.size != (width, height) or opened.mode != PICTURE_CHANNELS[channels]:
            raise WireError("the {} frame is a {}x{} {} picture; the bundle sends {}x{} {}".format(
                picture, opened.size[1], opened.size[0], opened.mode, height, width, PICTURE_CHANNELS[channels]))
        pixels = np.asarray(opened)
    except WireError:
        raise
    except Exception as error:  # Pillow raises its own types, and OSError for truncated data
        raise WireError("payload is not a valid {} picture: {}".format(picture, error)) from error
    if pixels.shape != (height, width) + ((channels,) if channels > 1 else ()):
        raise WireError("the {} picture decoded to {}, not {}".format(picture, pixels.shape, tuple(shape)))
    return pixels[None] if channels == 1 else np.ascontiguousarray(pixels.transpose(2, 0, 1))


class PictureCoder(Coder):
    def __init__(self, wire) -> None:
        super().__init__(wire)
        pillow()  # imported now: missing, it is one line before the first frame; present, no frame pays for it

    @classmethod
    def check(cls, wire) -> None:
        if (wire.bits != 8 or wire.lossless != "none" or wire.parts or wire.prior or len(wire.shape) != 3
                or wire.shape[0] not in PICTURE_CHANNELS):
            raise WireError("a {!r} picture frame carries one 8-bit grey or RGB image (C x H x W, C = 1 or 3) with "
                            "no lossless stage; pictures: {}".format(wire.picture, ", ".join(PICTURES)))

    def encode(self, arrays: list) -> bytes:
        return encode_picture(arrays[0], self.wire.picture)

    def decode(self, payload: bytes) -> list:
        return [decode_picture(payload, self.wire.picture, self.wire.shape)]


CODER = PictureCoder
