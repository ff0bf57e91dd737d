"""A cloud-only bundle's codec: the image's own pixels, sent raw or as a picture (not a --codec choice)."""

from __future__ import annotations

import torch

from runtime.wire import WireFormat
from toolchain.codecs.affine import AffineCodec
from toolchain.errors import EdgesplitError
from toolchain.image_formats import formats_for


class PixelCodec(AffineCodec):
    """Cloud-only: the image itself crosses as the uint8 pixels it was read from (the edge half's input is pixels
    / 255), sent raw or as a PNG or JPEG picture. Nothing to calibrate: the scale is 1/255 by construction."""

    name = "pixels"

    def __init__(self, image_shape: tuple[int, ...], picture: str = "raw") -> None:
        super().__init__(image_shape, bits=8, per="tensor")
        if picture not in formats_for(image_shape[0]):
            raise EdgesplitError(f"a {image_shape[0]}-channel image is sent as {' or '.join(formats_for(image_shape[0]))}"
                                 f", not {picture!r}")
        self.picture = picture
        self.scale, self.zero_point = torch.tensor(1 / 255), torch.tensor(0.0)

    range_methods = ()

    def calibrate(self, features: torch.Tensor, method: str = "min-max") -> None:
        """The range is the pixels' by construction."""

    def params(self) -> dict:
        return {"picture": self.picture}

    def wire_format(self, lossless: str = "none") -> WireFormat:
        picture = "" if self.picture == "raw" else self.picture
        return WireFormat.of([self.code_shape], self.bits, lossless)._replace(picture=picture).validated()
