"""`--lossless auto`: the lossless stage that makes the calibration payloads smallest, among the stages
every edge has (Python's standard library), so the choice never asks the device for another install.
`--lossless rans`: the entropy stage, its prior fitted here to the calibration images' codes."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from runtime.coding import ENTROPY_CODERS, LOSSLESS, rans
from runtime.coding.packed import BYTE_STAGES
from runtime.wire import encode_frame, frames_of
from toolchain.errors import EdgesplitError

if TYPE_CHECKING:  # the CLI reads CHOICES without importing torch
    from toolchain.codecs import FeatureCodec

AUTO = "auto"
CHOICES = [AUTO, *LOSSLESS, *ENTROPY_CODERS]
# a table per code channel where the calibration gives each of its levels this many codes on average, else one
# table for all: a histogram of few codes would price the held-out images' codes by chance
CODES_PER_LEVEL = 8


def choose(codec: FeatureCodec, codes) -> tuple[str, dict[str, float]]:
    """The builtin stage with the fewest mean payload bytes (ties go to the cheaper, earlier one), and
    the mean of each."""
    frames = frames_of(codes, codec.wire_format())
    sizes = {}
    for name, stage in BYTE_STAGES.items():
        if stage.builtin:
            wire = codec.wire_format(name)
            sizes[name] = float(np.mean([len(encode_frame(frame, wire)) for frame in frames]))
    return min(sizes, key=sizes.get), sizes


def fit_prior(codec: FeatureCodec, codes: np.ndarray) -> np.ndarray:
    """The rans stage's frequencies: the calibration codes' histogram per code channel (or one for all)."""
    wire = codec.wire_format()
    if wire.parts or wire.picture:
        raise EdgesplitError(f"--lossless rans codes one tensor of codes; this cut sends "
                             f"{len(wire.parts) or 'a picture of'} {'tensors' if wire.parts else 'the image'}: use "
                             f"another --lossless")
    levels = 1 << wire.bits
    rows = codes.reshape(len(codes), wire.shape[0], -1).transpose(1, 0, 2).reshape(wire.shape[0], -1)
    if rows.shape[1] < CODES_PER_LEVEL * levels:
        rows = rows.reshape(1, -1)
    return rans.quantize(np.stack([np.bincount(row, minlength=levels) for row in rows.astype(np.int64)]))
