"""Bytes that cross the network for one frame: the integer codes of the split tensor.

Shared by edge and cloud; parameters come from the bundle manifest. Python 3.6 + numpy only.
"""

from typing import NamedTuple, Tuple

import numpy as np

from runtime.errors import WireError


class WireFormat(NamedTuple):
    """One frame's codes: shape without the batch axis, bits per code, lossless stage."""

    shape: Tuple[int, ...]
    bits: int = 8
    lossless: str = "none"

    @property
    def elements(self) -> int:
        return int(np.prod(self.shape))

    @property
    def payload_bytes(self) -> int:
        return self.elements * self.bits // 8

    def to_manifest(self) -> dict:
        return {"shape": list(self.shape), "dtype": "uint8", "bits": self.bits,
                "lossless": self.lossless, "bytes_per_frame": self.payload_bytes}

    @classmethod
    def from_manifest(cls, entry: dict) -> "WireFormat":
        if entry.get("bits") != 8 or entry.get("lossless") != "none":
            raise WireError("this runtime sends 8-bit codes without a lossless stage; the bundle asks "
                            "for bits={} lossless={}".format(entry.get("bits"), entry.get("lossless")))
        return cls(tuple(entry["shape"]), entry["bits"], entry["lossless"])


def encode_frame(codes: np.ndarray, wire: WireFormat) -> bytes:
    """One frame's codes (uint8, `wire.shape`) → payload bytes."""
    if codes.dtype != np.uint8 or tuple(codes.shape) != wire.shape:
        raise WireError("codes must be uint8 of shape {}, got {} {}".format(wire.shape, codes.dtype, codes.shape))
    return codes.tobytes()


def decode_frame(payload: bytes, wire: WireFormat) -> np.ndarray:
    """Payload bytes → one frame's codes; the length must be exactly what the manifest says."""
    if len(payload) != wire.payload_bytes:
        raise WireError("payload has {} bytes, the bundle's wire format needs {}".format(
            len(payload), wire.payload_bytes))
    return np.frombuffer(payload, dtype=np.uint8).reshape(wire.shape)
