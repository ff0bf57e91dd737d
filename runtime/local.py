"""The two halves of a bundle as numpy callables, and both in one process (`SplitInference`).

The edge client and the cloud server run one half each; SplitInference runs both with the
exact bytes that would cross the network, as the reference the networked path must equal.
"""

from typing import List

import numpy as np

from runtime.bundle import Bundle
from runtime.wire import decode_frame, encode_frame


class _Half:
    """One artefact of a bundle on its backend, with its (single) input and output names."""

    def __init__(self, bundle: Bundle, role: str, threads=None):
        self.wire = bundle.wire
        self.runner = bundle.open_runner(role, threads=threads)
        entry = bundle.artefact(role)
        self.input_name = entry["inputs"][0]["name"]
        self.output_name = entry["outputs"][0]["name"]

    def run(self, array: np.ndarray) -> np.ndarray:
        return self.runner.infer({self.input_name: array})[self.output_name]


class EdgeHalf(_Half):
    """Head + encoder: float NCHW images → uint8 codes → one payload per frame."""

    def __init__(self, bundle: Bundle, threads=None):
        super().__init__(bundle, "edge", threads)

    def codes(self, images: np.ndarray) -> np.ndarray:
        return self.run(images)

    def payloads(self, images: np.ndarray) -> List[bytes]:
        return [encode_frame(frame, self.wire) for frame in self.codes(images)]


class CloudHalf(_Half):
    """Decoder + tail: payloads (or decoded codes) → logits."""

    def __init__(self, bundle: Bundle, threads=None):
        super().__init__(bundle, "cloud", threads)

    def decode(self, payload: bytes) -> np.ndarray:
        return decode_frame(payload, self.wire)

    def logits(self, codes: np.ndarray) -> np.ndarray:
        return self.run(codes)


class SplitInference:
    def __init__(self, bundle: Bundle, threads=None):
        self.edge_half = EdgeHalf(bundle, threads)
        self.cloud_half = CloudHalf(bundle, threads)

    def edge(self, images: np.ndarray) -> List[bytes]:
        return self.edge_half.payloads(images)

    def cloud(self, payloads: List[bytes]) -> np.ndarray:
        return self.cloud_half.logits(np.stack([self.cloud_half.decode(payload) for payload in payloads]))

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return self.cloud(self.edge(images))
