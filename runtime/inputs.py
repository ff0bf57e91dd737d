"""The model's input, described once and applied the same way everywhere.

An `InputSpec` says what one image must be for the model: channels, height, width, what to do
with images of another size (`resize`: refuse, centre zero-pad, or bilinear resize), and the
per-channel mean/std a model expects when it does not normalize inside its graph (the toolchain
folds them into the edge half, so the runtime only scales uint8 pixels to [0, 1]). The manifest
carries it; calibration, evaluation and every edge source (arrays in N,C,H,W or N,H,W,C, image
folders, a camera) go through `prepare`, so the same image gives the same codes everywhere. A
mismatch is one line naming what was found and what the model takes; nothing is padded or resized
unless the spec says so. Python 3.6 + numpy; Pillow only when resizing.
"""

from typing import NamedTuple, Optional, Tuple

import numpy as np

from runtime.errors import EdgesplitError

RESIZE_POLICIES = ("none", "pad", "resize")
PIXEL_RANGE = (0.0, 1.0)  # what the edge half takes: uint8 pixels / 255


class InputSpec(NamedTuple):
    channels: int
    height: int
    width: int
    resize: str = "none"  # none: other sizes are refused; pad: centre zero-padding; resize: bilinear (Pillow)
    mean: Optional[Tuple[float, ...]] = None  # per channel, applied inside the edge half
    std: Optional[Tuple[float, ...]] = None

    @property
    def shape(self) -> Tuple[int, int, int]:
        return self.channels, self.height, self.width

    def checked(self) -> "InputSpec":
        if min(self.shape) <= 0:
            raise EdgesplitError("the input shape must be positive C,H,W, got {}".format(self.shape))
        if self.resize not in RESIZE_POLICIES:
            raise EdgesplitError("resize must be one of {}, got {!r}".format(", ".join(RESIZE_POLICIES), self.resize))
        if (self.mean is None) != (self.std is None):
            raise EdgesplitError("give both --mean and --std, or neither")
        for name, values in (("mean", self.mean), ("std", self.std)):
            if values is not None and len(values) not in (1, self.channels):
                raise EdgesplitError("--{} needs 1 or {} values (one per channel), got {}".format(
                    name, self.channels, len(values)))
        if self.std is not None and min(self.std) <= 0:
            raise EdgesplitError("--std values must be positive, got {}".format(list(self.std)))
        return self

    def to_manifest(self) -> dict:
        return {"name": "image", "shape": ["batch", self.channels, self.height, self.width], "dtype": "float32",
                "layout": "NCHW", "range": list(PIXEL_RANGE), "pixels": "uint8 / 255", "resize": self.resize,
                "mean": None if self.mean is None else list(self.mean),
                "std": None if self.std is None else list(self.std),
                "normalization": "none" if self.mean is None else "(x - mean) / std, inside the edge half"}

    @classmethod
    def from_manifest(cls, entry: dict) -> "InputSpec":
        channels, height, width = entry["shape"][1:]
        mean, std = entry.get("mean"), entry.get("std")
        return cls(channels, height, width, entry.get("resize", "none"), None if mean is None else tuple(mean),
                   None if std is None else tuple(std)).checked()

    def arrange(self, images: np.ndarray, origin) -> np.ndarray:
        """uint8 images as N,H,W, N,C,H,W or N,H,W,C → N,C,H,W; the layout is read from the channel count."""
        if images.dtype != np.uint8:
            raise EdgesplitError("{}: images must be uint8 pixels, got {}".format(origin, images.dtype))
        if images.ndim == 3:
            if self.channels == 1:
                return images[:, None]
            raise EdgesplitError("{}: images shaped {} have one channel (N,H,W); the model takes {}".format(
                origin, tuple(images.shape), self.channels))
        if images.ndim != 4:
            raise EdgesplitError("{}: images must be N,H,W, N,C,H,W or N,H,W,C, got shape {}".format(
                origin, images.shape))
        first, last = images.shape[1] == self.channels, images.shape[3] == self.channels
        if last and (not first or images.shape[1:3] == (self.height, self.width)):
            return np.ascontiguousarray(images.transpose(0, 3, 1, 2))
        if first:
            return images
        raise EdgesplitError("{}: images shaped {} have {} channels (as N,C,H,W) or {} (as N,H,W,C); the model "
                             "takes {}".format(origin, tuple(images.shape), images.shape[1], images.shape[3],
                                               self.channels))

    def fit(self, images: np.ndarray, origin) -> np.ndarray:
        """uint8 N,C,H,W of any size → the model's H x W, by the spec's resize policy, or a one-line refusal."""
        height, width = images.shape[2:]
        if (height, width) == (self.height, self.width):
            return images
        if self.resize == "pad" and height <= self.height and width <= self.width:
            top, left = (self.height - height) // 2, (self.width - width) // 2
            padding = ((0, 0), (0, 0), (top, self.height - height - top), (left, self.width - width - left))
            return np.pad(images, padding)
        if self.resize == "resize":
            return np.stack([resize_image(image, self.height, self.width) for image in images])
        hint = "" if self.resize == "pad" else ("; give images of the model's size, or build the bundle with "
                                                "--resize resize (bilinear) or --resize pad (centre zero-padding)")
        raise EdgesplitError("{}: images are {}x{}, the model takes {}x{} (resize policy: {}){}".format(
            origin, height, width, self.height, self.width, self.resize, hint))

    def prepare(self, images: np.ndarray, origin) -> np.ndarray:
        """uint8 images in any supported layout and size → float32 N,C,H,W in [0, 1], what the edge half takes."""
        return self.fit(self.arrange(images, origin), origin).astype(np.float32) / 255.0


def to_pixels(inputs: np.ndarray) -> np.ndarray:
    """Model inputs (`prepare`'s float in [0, 1]) → the uint8 pixels they were made from, exactly."""
    return np.round(inputs * 255).astype(np.uint8)


def resize_image(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """One uint8 C,H,W image, bilinear (Pillow), so every source resizes alike."""
    try:
        from PIL import Image
    except ImportError as error:
        raise EdgesplitError("resizing images needs Pillow: pip install pillow") from error
    planes = [np.asarray(Image.fromarray(plane).resize((width, height), Image.BILINEAR)) for plane in image]
    return np.stack(planes)


def parse_floats(text: Optional[str], name: str) -> Optional[Tuple[float, ...]]:
    if text is None:
        return None
    try:
        return tuple(float(part) for part in text.split(","))
    except ValueError:
        raise EdgesplitError("--{} must be comma-separated numbers, got {!r}".format(name, text)) from None
