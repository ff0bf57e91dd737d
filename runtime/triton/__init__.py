"""The bundle's cloud side on NVIDIA Triton Inference Server: names shared by the repository the
toolchain writes (`edgesplit export-triton`), the Python-backend models that run inside Triton
(`decode`, `tail`) and the edge's gRPC transport.

An edge sends what it sends over TCP — one frame's payload, packed and compressed exactly as
runtime/wire.py writes it — plus the bundle id, to the ensemble; the decode model turns the payload
into the tail's input tensors with the runtime's own wire code and limits; the tail (a TensorRT plan,
ONNX Runtime, or ONNX Runtime inside a Python model) batches them dynamically.
"""

PAYLOAD = "PAYLOAD"  # uint8 [-1]: one frame's payload
BUNDLE_ID = "BUNDLE_ID"  # uint8 [16]: the bundle the edge was built with
BUNDLE_ID_PARAMETER = "edgesplit_bundle_id"  # in every model's config: what the repository serves
DECODE_SUFFIX, TAIL_SUFFIX = "_decode", "_tail"
BUNDLE_FOLDER = "bundle"  # the bundle, inside the decode model's version folder
DEFAULT_MODEL = "edgesplit"  # the ensemble an edge calls
VERSION = "1"


def model_names(name: str) -> dict:
    """The ensemble's name → its three models."""
    return {"ensemble": name, "decode": name + DECODE_SUFFIX, "tail": name + TAIL_SUFFIX}
