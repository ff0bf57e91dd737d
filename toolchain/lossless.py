"""`--lossless auto`: the stage that makes the calibration payloads smallest, among those every edge has without
another install: Python's standard library's byte stages, and for a codec trained for rate the rans stage (pure
Python) where a frame holds few enough codes for pure-Python coding to stay cheap on a device. `--lossless rans`: the entropy stage, its prior
fitted here to the calibration images' codes."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from runtime.coding import ENTROPY_CODERS, LOSSLESS, rans
from runtime.coding.packed import BYTE_STAGES
from runtime.wire import WireFormat, encode_frame, frames_of
from toolchain.errors import EdgesplitError

if TYPE_CHECKING:  # the CLI reads CHOICES without importing torch
    from toolchain.codecs import FeatureCodec

AUTO = "auto"
CHOICES = [AUTO, *LOSSLESS, *ENTROPY_CODERS]
# a table per code where the calibration gives each of its levels this many codes on average (and the tables fit
# a bundle), else per code channel where that does, else one for all: a histogram of few codes would price the
# held-out images' codes by chance
CODES_PER_LEVEL = 8
# tables per code only while they stay this small in the manifest (~100 KB of JSON; the wire takes up to 65,536)
PER_CODE_FREQUENCIES = 1 << 14
# auto tries rans on frames of at most this many codes: pure Python codes ~0.3 µs a code each way here (0.6 ms a
# frame at this size), several times that on a Raspberry Pi
RANS_AUTO_CODES = 1024


def choose(codec: FeatureCodec, codes, fitting=None, builtin: bool = True,
           entropy: bool = False) -> tuple[WireFormat, dict[str, float]]:
    """The wire with the fewest mean payload bytes on `codes` (ties go to the cheaper, earlier stage), and each
    stage's mean. Byte stages: the standard library's (`builtin`) or all; rans for a codec trained for rate (or
    any, with `entropy`) where the frame is small enough, its prior fitted to `fitting`'s codes (default: `codes`,
    which favours it: a codec's other codes did not shape its tables)."""
    plain = codec.wire_format()
    wires = {name: codec.wire_format(name) for name, stage in BYTE_STAGES.items() if stage.builtin or not builtin}
    trained_for_it = entropy or getattr(codec, "rate", 0) > 0
    if trained_for_it and not plain.parts and not plain.picture and plain.elements <= RANS_AUTO_CODES:
        wires["rans"] = plain.entropy_coded(fit_prior(codec, codes if fitting is None else fitting))
    frames = frames_of(codes, plain)
    sizes = {name: float(np.mean([len(encode_frame(frame, wire)) for frame in frames])) for name, wire in wires.items()}
    return wires[min(sizes, key=sizes.get)], sizes


def fit_prior(codec: FeatureCodec, codes: np.ndarray) -> np.ndarray:
    """The rans stage's frequencies: the calibration codes' histogram per code, per code channel or for all: the
    finest the calibration frames fill."""
    wire = codec.wire_format()
    if wire.parts or wire.picture:
        raise EdgesplitError(f"--lossless rans codes one tensor of codes; this cut sends "
                             f"{len(wire.parts) or 'a picture of'} {'tensors' if wire.parts else 'the image'}: use "
                             f"another --lossless")
    levels, enough = 1 << wire.bits, CODES_PER_LEVEL << wire.bits
    if len(codes) >= enough and wire.elements << wire.bits <= PER_CODE_FREQUENCIES:
        rows = codes.reshape(len(codes), -1).T
    else:
        rows = codes.reshape(len(codes), wire.shape[0], -1).transpose(1, 0, 2).reshape(wire.shape[0], -1)
        if rows.shape[1] < enough:
            rows = rows.reshape(1, -1)
    return rans.quantize(np.stack([np.bincount(row, minlength=levels) for row in rows.astype(np.int64)]))
