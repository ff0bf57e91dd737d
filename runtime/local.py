"""The two halves of a bundle as numpy callables, and both in one process (`SplitInference`).

The edge client and the cloud server run one half each; SplitInference runs both with the
exact bytes that would cross the network, as the reference the networked path must equal.
"""

from typing import List

import numpy as np

from runtime.bundle import Bundle
from runtime.errors import BundleError
from runtime.wire import decode_frame, encode_frame


class _Half:
    """One artefact of a bundle on its backend; `output_name` is its first output (codes or logits)."""

    def __init__(self, bundle: Bundle, role: str, threads=None, verified: bool = False, **options):
        self.wire = bundle.wire
        self.runner = bundle.open_runner(role, verified, threads=threads, **options)
        entry = bundle.artefact(role)
        self.input_name = entry["inputs"][0]["name"]
        self.output_name = entry["outputs"][0]["name"]
        self.input_dtype = np.dtype(entry["inputs"][0]["dtype"])

    def run(self, array: np.ndarray) -> np.ndarray:
        return self.runner.infer({self.input_name: array})[self.output_name]


def softmax_entropy(logits: np.ndarray) -> np.ndarray:
    """Entropy in nats of each row's softmax: ECNet's measure of how unsure the edge classifier is."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    probabilities = np.exp(shifted)
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    return -(probabilities * np.log(np.clip(probabilities, 1e-12, None))).sum(axis=1)


def quantize_int8(values: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    return np.clip(np.round(values / scale) + zero_point, -128, 127).astype(np.int8)


class CodeMapping:
    """From an integer-only edge artefact's int8 output to the bundle's uint8 wire codes.

    `passthrough`: the codec uses the artefact's own output scale, so a code is the int8 value
    + 128, no float on the device. `requantize`: dequantize with the interpreter's parameters,
    quantize with the codec's (per tensor or per channel, any bit width).
    """

    def __init__(self, entry: dict, output_quantization):
        self.method = entry["method"]
        self.scale = np.asarray(entry["scale"], dtype=np.float32)
        self.zero_point = np.asarray(entry["zero_point"], dtype=np.float32)
        self.levels = int(entry["levels"])
        self.output_scale, self.output_zero_point = output_quantization
        if self.method == "passthrough" and not (
                self.levels == 256 and self.scale.size == 1 and np.isclose(self.scale[0], self.output_scale, rtol=1e-6)
                and self.zero_point[0] == self.output_zero_point + 128):
            raise BundleError("manifest maps edge outputs to codes unchanged, but the artefact's output is "
                              "quantized with scale {}, zero point {} and the codec with {}, {}".format(
                                  self.output_scale, self.output_zero_point, self.scale.tolist(),
                                  self.zero_point.tolist()))
        if self.method not in ("passthrough", "requantize"):
            raise BundleError("unknown edge code mapping {!r}".format(self.method))
        if self.scale.size > 1:  # per channel, NCHW
            self.scale = self.scale.reshape(1, -1, 1, 1)
            self.zero_point = self.zero_point.reshape(1, -1, 1, 1)

    def __call__(self, outputs: np.ndarray) -> np.ndarray:
        if self.method == "passthrough":
            return (outputs.astype(np.int16) + 128).astype(np.uint8)
        real = (outputs.astype(np.float32) - self.output_zero_point) * self.output_scale
        return np.clip(np.round(real / self.scale + self.zero_point), 0, self.levels - 1).astype(np.uint8)


class EdgeHalf(_Half):
    """Head + encoder: float NCHW images → uint8 codes → one payload per frame.

    An integer-only artefact (TFLite int8) takes quantized input, may be NHWC, and ends before
    the codec's quantizer: its output becomes codes through the manifest's `to_codes` mapping.
    """

    def __init__(self, bundle: Bundle, threads=None, verified: bool = False, **options):
        super().__init__(bundle, "edge", threads, verified, **options)
        entry = bundle.artefact("edge")
        image, features = entry["inputs"][0], entry["outputs"][0]
        self.input_layout, self.output_layout = image.get("layout", "NCHW"), features.get("layout", "NCHW")
        self.input_quantization = self.runner.quantization(self.input_name) if image["dtype"] == "int8" else None
        self.to_codes = None
        if features["dtype"] == "int8":
            self.to_codes = CodeMapping(entry["to_codes"], self.runner.quantization(self.output_name))
        exit_entry = bundle.manifest.get("exit")
        self.exit_name = exit_entry["output"] if exit_entry else None
        self.exit_quantization = None
        if exit_entry and next(t for t in entry["outputs"] if t["name"] == self.exit_name)["dtype"] == "int8":
            self.exit_quantization = self.runner.quantization(self.exit_name)

    def codes(self, images: np.ndarray) -> np.ndarray:
        return self.codes_and_exit(images)[0]

    def codes_and_exit(self, images: np.ndarray):
        """Codes for the wire and, when the bundle has an exit branch, its logits (else None)."""
        if self.input_layout == "NHWC":
            images = np.ascontiguousarray(images.transpose(0, 2, 3, 1))
        if self.input_quantization is not None:
            images = quantize_int8(images, *self.input_quantization)
        results = self.runner.infer({self.input_name: images})
        outputs = results[self.output_name]
        if self.output_layout == "NHWC":
            outputs = outputs.transpose(0, 3, 1, 2)
        if self.to_codes is not None:
            codes = self.to_codes(outputs)
        else:
            codes = outputs.astype(np.uint8, copy=False)  # engines without uint8 tensors give integral float32
        exit_logits = None if self.exit_name is None else results[self.exit_name].astype(np.float32)
        if self.exit_quantization is not None:
            exit_logits = (exit_logits - self.exit_quantization[1]) * self.exit_quantization[0]
        return codes, exit_logits

    def payloads(self, images: np.ndarray) -> List[bytes]:
        return [encode_frame(frame, self.wire) for frame in self.codes(images)]


class CloudHalf(_Half):
    """Decoder + tail: payloads (or decoded codes) → logits."""

    def __init__(self, bundle: Bundle, threads=None, verified: bool = False, **options):
        super().__init__(bundle, "cloud", threads, verified, **options)

    def decode(self, payload: bytes) -> np.ndarray:
        return decode_frame(payload, self.wire)

    def logits(self, codes: np.ndarray) -> np.ndarray:
        return self.run(codes.astype(self.input_dtype, copy=False))


class SplitInference:
    def __init__(self, bundle: Bundle, threads=None, verified: bool = False, **options):
        """`verified=True` runs each half the way the toolchain verified it (a TensorRT half's Q/DQ ONNX in
        ONNX Runtime as fake quantization), so a bundle for a GPU can be measured on any CPU. `options`
        go to both halves' runners."""
        self.edge_half = EdgeHalf(bundle, threads, verified, **options)
        self.cloud_half = CloudHalf(bundle, threads, verified, **options)

    def edge(self, images: np.ndarray) -> List[bytes]:
        return self.edge_half.payloads(images)

    def cloud(self, payloads: List[bytes]) -> np.ndarray:
        return self.cloud_half.logits(np.stack([self.cloud_half.decode(payload) for payload in payloads]))

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return self.cloud(self.edge(images))
