"""The bundle's cloud side on NVIDIA Triton Inference Server: names shared by the repository the
toolchain writes (`edgesplit export-triton`), the Python-backend models that run inside Triton
(`decode`, `tail`) and the edge's gRPC transport.

An edge sends what it sends over TCP — one frame's payload, packed and compressed exactly as
runtime/wire.py writes it — plus the bundle id, to the ensemble; the decode model turns the payload
into the tail's input tensors with the runtime's own wire code and limits; the tail (a TensorRT plan,
ONNX Runtime, or ONNX Runtime inside a Python model) batches them dynamically.

PAYLOAD has a fixed size, the bundle's largest frame and a length: Triton refuses a request of another shape
before any model copies it (tritonserver has no gRPC message limit of its own). The edge sends the length
(uint32, little-endian), the payload, then zeros, gzip-compressed by gRPC: the padding costs bytes of
deflate, not of the link.
"""

import numpy as np

from runtime import protocol
from runtime.errors import ProtocolError

PAYLOAD = "PAYLOAD"  # uint8 [payload_size(wire)]: one frame's length, payload and padding
BUNDLE_ID = "BUNDLE_ID"  # uint8 [16]: the bundle the edge was built with
BUNDLE_ID_PARAMETER = "edgesplit_bundle_id"  # in every model's config: what the repository serves
DECODE_SUFFIX, TAIL_SUFFIX = "_decode", "_tail"
BUNDLE_FOLDER = "bundle"  # the bundle, inside the decode model's version folder
DEFAULT_MODEL = "edgesplit"  # the ensemble an edge calls
VERSION = "1"
LENGTH_BYTES = 4
COMPRESSION = "gzip"  # the edge's requests: what gRPC's core compresses and Triton's decompresses
# tritonserver's start: request objects are not pooled (each would keep the largest request it held), and
# glibc maps large buffers of its own so that freeing them returns the memory (a 64 MB request costs only while
# it lasts)
SERVER_OPTIONS = ("--grpc-infer-allocation-pool-size=0",)
SERVER_ENVIRONMENT = {"MALLOC_MMAP_THRESHOLD_": "131072"}


def payload_size(wire) -> int:
    """PAYLOAD's fixed size for a bundle's wire format."""
    return LENGTH_BYTES + protocol.features_limit(wire)


def padded(payload: bytes, size: int) -> np.ndarray:
    """A frame's payload as PAYLOAD: uint8 [1, size]."""
    data = np.zeros((1, size), np.uint8)
    data[0, :LENGTH_BYTES] = np.frombuffer(len(payload).to_bytes(LENGTH_BYTES, "little"), np.uint8)
    data[0, LENGTH_BYTES:LENGTH_BYTES + len(payload)] = np.frombuffer(payload, np.uint8)
    return data


def unpadded(data: np.ndarray) -> bytes:
    """PAYLOAD's one row → the frame's payload; a length past its end is refused."""
    length = int.from_bytes(data[:LENGTH_BYTES].tobytes(), "little")
    if length > data.size - LENGTH_BYTES:
        raise ProtocolError("payload of {} bytes is over this bundle's limit of {}".format(
            length, data.size - LENGTH_BYTES), protocol.BAD_REQUEST)
    return data[LENGTH_BYTES:LENGTH_BYTES + length].tobytes()


def model_names(name: str) -> dict:
    """The ensemble's name → its three models."""
    return {"ensemble": name, "decode": name + DECODE_SUFFIX, "tail": name + TAIL_SUFFIX}
