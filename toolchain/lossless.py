"""`--lossless auto`: the lossless stage that makes the calibration payloads smallest, among the stages
every edge has (Python's standard library), so the choice never asks the device for another install."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from runtime.wire import LOSSLESS, encode_frame, frames_of

if TYPE_CHECKING:  # the CLI reads CHOICES without importing torch
    from toolchain.codecs import FeatureCodec

AUTO = "auto"
CHOICES = [AUTO, *LOSSLESS]


def choose(codec: FeatureCodec, codes) -> tuple[str, dict[str, float]]:
    """The builtin stage with the fewest mean payload bytes (ties go to the cheaper, earlier one), and
    the mean of each."""
    frames = frames_of(codes, codec.wire_format())
    sizes = {}
    for name, stage in LOSSLESS.items():
        if stage.builtin:
            wire = codec.wire_format(name)
            sizes[name] = float(np.mean([len(encode_frame(frame, wire)) for frame in frames]))
    return min(sizes, key=sizes.get), sizes
