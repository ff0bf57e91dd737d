"""The Python-backend models edgesplit puts in a Triton model repository; they run inside Triton's
Python stub, which provides `triton_python_backend_utils`.

`Decode`: one frame's payload → the tail's input tensors, with the runtime's wire code and the same
limits `edgesplit serve` applies; a payload of the wrong size, corrupt compression or another
bundle's id is refused (INVALID_ARG) with the reason, and the model goes on serving.
`Tail`: the bundle's cloud half on the runtime's own backend (ONNX Runtime on a CPU host), every
request of a dynamic batch in one call — for Triton builds without an onnxruntime backend.

Both load the bundle kept in the decode model's version folder and verify it (hashes, bundle id,
the signature when the config names a trust key) before Triton marks them ready.
"""

import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from runtime import protocol
from runtime.bundle import Bundle, file_sha256, load_bundle
from runtime.coding import Coding
from runtime.errors import BundleError, ProtocolError, WireError
from runtime.local import CloudHalf
from runtime.transports.triton import BUNDLE_FOLDER, BUNDLE_ID, BUNDLE_ID_PARAMETER, PAYLOAD, unpadded


def _settings(args: dict) -> dict:
    config = json.loads(args["model_config"])
    return {key: value["string_value"] for key, value in config.get("parameters", {}).items()}


def _repository_bundle(args: dict, settings: dict) -> Bundle:
    """The verified bundle this repository was exported from."""
    decode = Path(args["model_repository"]).parent / settings["decode_model"]
    bundle = load_bundle(decode / args["model_version"] / BUNDLE_FOLDER, settings.get("trust") or None)
    if settings.get(BUNDLE_ID_PARAMETER) != bundle.bundle_id:
        raise BundleError("model {} is configured for bundle {}, but its repository holds bundle {}".format(
            args["model_name"], settings.get(BUNDLE_ID_PARAMETER), bundle.bundle_id))
    return bundle


def _check_native_tail(args: dict, settings: dict, bundle: Bundle) -> None:
    """A tail Triton runs itself (ONNX Runtime or TensorRT backend) must be the bundle's cloud artefact."""
    artefact = settings.get("tail_artefact")
    if not artefact:
        return
    path = Path(args["model_repository"]).parent / artefact
    expected = bundle.manifest["files"][settings["tail_source"]]["sha256"]
    if not path.is_file() or file_sha256(path) != expected:
        raise BundleError("{} is not bundle {}'s {}: export the repository again".format(
            artefact, bundle.bundle_id, settings["tail_source"]))


class Decode:
    def initialize(self, args: dict) -> None:
        settings = _settings(args)
        bundle = _repository_bundle(args, settings)
        _check_native_tail(args, settings, bundle)
        self.wire = bundle.wire
        self.coding = Coding(bundle.wire)
        self.bundle_id = protocol.bundle_id_bytes(bundle.bundle_id)
        self.inputs = [(t["name"], np.dtype(t["dtype"])) for t in bundle.artefact("cloud")["inputs"]]

    def execute(self, requests: list) -> list:
        return [self._answer(request) for request in requests]

    def _answer(self, request):
        try:
            return pb_utils.InferenceResponse(output_tensors=self._decode(request))
        except (ProtocolError, WireError) as error:  # this frame only: the model goes on
            return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(
                str(error), pb_utils.TritonError.INVALID_ARG))

    def _decode(self, request) -> list:
        payloads = pb_utils.get_input_tensor_by_name(request, PAYLOAD).as_numpy()
        bundle_ids = pb_utils.get_input_tensor_by_name(request, BUNDLE_ID).as_numpy()
        frames = [self._frame(payload, bundle_id) for payload, bundle_id in zip(payloads, bundle_ids)]
        return [pb_utils.Tensor(name, np.stack([frame[i] for frame in frames]).astype(dtype, copy=False))
                for i, (name, dtype) in enumerate(self.inputs)]

    def _frame(self, payload: np.ndarray, bundle_id: np.ndarray) -> list:
        if bundle_id.tobytes() != self.bundle_id:
            raise ProtocolError("frame is for bundle {}, this server serves {}".format(
                bundle_id.tobytes().hex(), self.bundle_id.hex()), protocol.BUNDLE_MISMATCH)
        codes = self.coding.decode(unpadded(payload))
        return codes if self.wire.parts else [codes]


class Tail:
    def initialize(self, args: dict) -> None:
        settings = _settings(args)
        threads = int(settings.get("threads") or 0) or None
        self.cloud = CloudHalf(_repository_bundle(args, settings), threads)

    def execute(self, requests: list) -> list:
        """Every request of the batch through the backend at once, then each its own rows back."""
        names = [name for name, _ in self.cloud.inputs]
        feeds = [[pb_utils.get_input_tensor_by_name(request, name).as_numpy() for name in names]
                 for request in requests]
        parts = [np.concatenate([feed[i] for feed in feeds]) for i in range(len(names))]
        outputs = self.cloud.outputs_of(parts if self.cloud.wire.parts else parts[0])
        responses, start = [], 0
        for feed in feeds:
            rows = slice(start, start + len(feed[0]))
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor(name, np.ascontiguousarray(output[rows]))
                for name, output in zip(self.cloud.outputs, outputs)]))
            start = rows.stop
        return responses
