"""Both halves of a bundle in one process, with the exact bytes that would cross the network."""

from typing import List

import numpy as np

from runtime.bundle import Bundle
from runtime.wire import decode_frame, encode_frame


class SplitInference:
    def __init__(self, bundle: Bundle, threads=None):
        self.wire = bundle.wire
        self.edge_runner = bundle.open_runner("edge", threads=threads)
        self.cloud_runner = bundle.open_runner("cloud", threads=threads)
        edge, cloud = bundle.artefact("edge"), bundle.artefact("cloud")
        self.image_name = edge["inputs"][0]["name"]
        self.codes_name = edge["outputs"][0]["name"]
        self.cloud_input = cloud["inputs"][0]["name"]
        self.logits_name = cloud["outputs"][0]["name"]

    def edge(self, images: np.ndarray) -> List[bytes]:
        """A batch of float NCHW images → one payload per frame."""
        codes = self.edge_runner.infer({self.image_name: images})[self.codes_name]
        return [encode_frame(frame, self.wire) for frame in codes]

    def cloud(self, payloads: List[bytes]) -> np.ndarray:
        codes = np.stack([decode_frame(payload, self.wire) for payload in payloads])
        return self.cloud_runner.infer({self.cloud_input: codes})[self.logits_name]

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return self.cloud(self.edge(images))
