"""The two halves of a bundle as numpy callables, and both in one process (`SplitInference`).

The edge client and the cloud server run one half each; SplitInference runs both with the
exact bytes that would cross the network, as the reference the networked path must equal.
"""

from typing import List, NamedTuple, Optional

import numpy as np

from runtime.bundle import Bundle, answer_shape
from runtime.coding import CodeMapping, Coding
from runtime.inputs import to_pixels


class _Half:
    """One artefact of a bundle on its backend."""

    def __init__(self, bundle: Bundle, role: str, threads=None, verified: bool = False, **options):
        self.wire = bundle.wire
        self.coding = Coding(bundle.wire) if bundle.wire else None  # the codec's deployment side
        self.runner = bundle.open_runner(role, verified, threads=threads, **options)
        entry = bundle.artefact(role)
        self.inputs = [(tensor["name"], np.dtype(tensor["dtype"])) for tensor in entry["inputs"]]
        self.outputs = [tensor["name"] for tensor in entry["outputs"]]


class _ImageHalf(_Half):
    """An edge artefact, which takes images: NCHW float, or (integer-only) quantized and maybe NHWC."""

    def __init__(self, bundle: Bundle, threads=None, verified: bool = False, **options):
        super().__init__(bundle, "edge", threads, verified, **options)
        image = bundle.artefact("edge")["inputs"][0]
        self.input_layout = image.get("layout", "NCHW")
        self.input_quantization = self.runner.quantization(image["name"]) if image["dtype"] == "int8" else None

    def run_images(self, images: np.ndarray) -> dict:
        """float32 N,C,H,W in [0, 1] → every output of the artefact, by name."""
        if self.input_layout == "NHWC":
            images = np.ascontiguousarray(images.transpose(0, 2, 3, 1))
        if self.input_quantization is not None:
            images = quantize_int8(images, *self.input_quantization)
        return self.runner.infer({self.inputs[0][0]: images})


def softmax_entropy(logits: np.ndarray) -> np.ndarray:
    """Entropy in nats of each row's softmax: ECNet's measure of how unsure the edge classifier is."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    probabilities = np.exp(shifted)
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    return -(probabilities * np.log(np.clip(probabilities, 1e-12, None))).sum(axis=1)


def quantize_int8(values: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    return np.clip(np.round(values / scale) + zero_point, -128, 127).astype(np.int8)


class EdgeHalf(_ImageHalf):
    """Head + encoder: float NCHW images → uint8 codes (one array per crossing tensor) → one payload per frame.

    An integer-only artefact (TFLite int8) takes quantized input, may be NHWC, and ends before
    the codec's quantizer: its output becomes codes through the manifest's `to_codes` mapping.
    """

    def __init__(self, bundle: Bundle, threads=None, verified: bool = False, **options):
        super().__init__(bundle, threads, verified, **options)
        entry = bundle.artefact("edge")
        exit_entry = bundle.manifest.get("exit")
        self.exit_name = exit_entry["output"] if exit_entry else None
        self.code_outputs = [t for t in entry["outputs"] if t["name"] != self.exit_name]
        if self.code_outputs[0]["dtype"] == "int8":
            self.coding.to_codes = CodeMapping(entry["to_codes"], self.runner.quantization(self.code_outputs[0]["name"]))
        self.exit_quantization = None
        if exit_entry and next(t for t in entry["outputs"] if t["name"] == self.exit_name)["dtype"] == "int8":
            self.exit_quantization = self.runner.quantization(self.exit_name)

    def codes(self, images: np.ndarray):
        return self.codes_and_exit(images)[0]

    def codes_and_exit(self, images: np.ndarray):
        """Codes for the wire (an array, or a list with one per crossing tensor) and, when the bundle has an
        exit branch, its logits (else None)."""
        results = self.run_images(images)
        parts = [self._codes(results[tensor["name"]], tensor) for tensor in self.code_outputs]
        exit_logits = None if self.exit_name is None else results[self.exit_name].astype(np.float32)
        if self.exit_quantization is not None:
            exit_logits = (exit_logits - self.exit_quantization[1]) * self.exit_quantization[0]
        return (parts if self.wire.parts else parts[0]), exit_logits

    def _codes(self, outputs: np.ndarray, tensor: dict) -> np.ndarray:
        if tensor.get("layout") == "NHWC":
            outputs = outputs.transpose(0, 3, 1, 2)
        return self.coding.codes(outputs)

    def payloads(self, images: np.ndarray) -> List[bytes]:
        return self.payloads_and_exit(images)[0]

    def payloads_and_exit(self, images: np.ndarray):
        """One payload per frame and the exit branch's logits (None without one)."""
        codes, exit_logits = self.codes_and_exit(images)
        return [self.coding.encode(frame) for frame in self.coding.frames(codes)], exit_logits


class PixelEdge:
    """A cloud-only bundle's edge: no model, the image's own pixels are the codes (sent raw, PNG or JPEG)."""

    def __init__(self, bundle: Bundle):
        self.coding = Coding(bundle.wire)  # a picture's coder imports Pillow now, not on the first frame

    def codes_and_exit(self, images: np.ndarray):
        return to_pixels(images), None

    def codes(self, images: np.ndarray) -> np.ndarray:
        return to_pixels(images)

    def payloads_and_exit(self, images: np.ndarray):
        return [self.coding.encode(pixels) for pixels in to_pixels(images)], None


def edge_half(bundle: Bundle, threads=None, verified: bool = False, **options):
    """What the edge runs on each image before sending: the head + encoder, or (cloud-only) nothing."""
    if bundle.strategy == "cloud-only":
        return PixelEdge(bundle)
    return EdgeHalf(bundle, threads, verified, **options)


class WholeModelHalf(_ImageHalf):
    """An edge-only bundle's one artefact: images → every output of the model, on the device."""

    def __init__(self, bundle: Bundle, threads=None, verified: bool = False, **options):
        super().__init__(bundle, threads, verified, **options)
        # per output: its name, its shape as the model returns it, and (int8) its (scale, zero point), read once
        self.answers = [(t["name"], answer_shape(t), self.runner.quantization(t["name"]) if t["dtype"] == "int8"
                         else None) for t in bundle.artefact("edge")["outputs"]]

    def outputs_of(self, images: np.ndarray) -> List[np.ndarray]:
        """Float values shaped as the model returns them (an int8 artefact's dequantized, its layout undone)."""
        results = self.run_images(images)
        answers = []
        for name, shape, quantization in self.answers:
            values = results[name].astype(np.float32)
            if quantization is not None:
                values = (values - quantization[1]) * quantization[0]
            answers.append(values.reshape((len(images),) + shape))
        return answers


def output_sizes(bundle: Bundle) -> List[tuple]:
    """(name, shape) of each output the answering half returns, in the order replies carry them."""
    return [(t["name"], answer_shape(t)) for t in bundle.answers]


def reply_values(bundle: Bundle) -> int:
    """How many float32 values one reply carries: every output, flattened."""
    return sum(int(np.prod(shape)) for _, shape in output_sizes(bundle))


def class_output(bundle: Bundle) -> Optional[int]:
    """Index of the output a frame's top-1 is read from: the first classification output; None when the model
    has none (a detector's or segmenter's maps: a frame has no top-1)."""
    kinds = [t.get("kind", "class") for t in bundle.answers]
    return kinds.index("class") if "class" in kinds else None


def split_values(values: np.ndarray, sizes: List[tuple]) -> List[np.ndarray]:
    """One reply's flat float32 values → one array per cloud output."""
    arrays, offset = [], 0
    for _, shape in sizes:
        count = int(np.prod(shape))
        arrays.append(values[offset:offset + count].reshape(shape))
        offset += count
    return arrays


class CloudHalf(_Half):
    """Decoder + tail: payloads (or decoded codes) → every output of the model."""

    def __init__(self, bundle: Bundle, threads=None, verified: bool = False, **options):
        super().__init__(bundle, "cloud", threads, verified, **options)

    def decode(self, payload: bytes):
        return self.coding.decode(payload)

    def stack(self, frames: list):
        """Decoded frames → a batch (a list of batches when several tensors cross)."""
        if not self.wire.parts:
            return np.stack(frames)
        return [np.stack(part) for part in zip(*frames)]

    def outputs_of(self, codes) -> List[np.ndarray]:
        parts = codes if self.wire.parts else [codes]
        feed = {name: part.astype(dtype, copy=False) for (name, dtype), part in zip(self.inputs, parts)}
        results = self.runner.infer(feed)
        return [results[name] for name in self.outputs]

    def logits(self, codes) -> np.ndarray:
        """The first output (the classifier's logits)."""
        return self.outputs_of(codes)[0]

    def replies(self, frames: list) -> np.ndarray:
        """Decoded frames → one row of flat float32 values per frame: every output, in manifest order."""
        outputs = self.outputs_of(self.stack(frames))
        return np.concatenate([output.reshape(len(frames), -1) for output in outputs], axis=1)


BATCH_VALUES = 1 << 22  # input values run at once: a batch's activations bound a build's memory


def batch_size_for(inputs: np.ndarray, most: int = 500) -> int:
    """500 32x32 images at once, 27 of 3x224x224."""
    return max(1, min(most, BATCH_VALUES // max(1, int(np.prod(inputs.shape[1:])))))


def in_batches(run, arrays: list, size: int) -> List[np.ndarray]:
    """`run(batch)` on `arrays` (aligned on their first axis) `size` rows at a time, each output it returns
    concatenated over the batches: memory bounded by one batch, not the whole set."""
    pieces = [run([array[start:start + size] for array in arrays]) for start in range(0, len(arrays[0]), size)]
    return [np.concatenate(parts) for parts in zip(*pieces)]


class Deployed(NamedTuple):
    """A set of images through both halves as deployed: what each frame sends, and what comes back."""

    payload_bytes: np.ndarray  # per frame
    exit_logits: Optional[np.ndarray]  # None without an exit branch
    outputs: List[np.ndarray]  # every cloud output, for every frame (as if none exited)


class SplitInference:
    def __init__(self, bundle: Bundle, threads=None, verified: bool = False, **options):
        """`verified=True` runs each half the way the toolchain verified it (a TensorRT half's Q/DQ ONNX in
        ONNX Runtime as fake quantization), so a bundle for a GPU can be measured on any CPU. `options`
        go to both halves' runners. A cloud-only bundle's edge sends the image's pixels."""
        self.edge_half = edge_half(bundle, threads, verified, **options)
        self.cloud_half = CloudHalf(bundle, threads, verified, **options)

    def edge(self, images: np.ndarray) -> List[bytes]:
        return self.edge_half.payloads(images)

    def cloud_outputs(self, payloads: List[bytes]) -> List[np.ndarray]:
        cloud = self.cloud_half
        return cloud.outputs_of(cloud.stack([cloud.decode(payload) for payload in payloads]))

    def cloud(self, payloads: List[bytes]) -> np.ndarray:
        return self.cloud_outputs(payloads)[0]

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return self.cloud(self.edge(images))

    def deployed(self, images: np.ndarray, batch: Optional[int] = None) -> Deployed:
        """Edge → payload bytes → cloud for every frame, in batches (default: batch_size_for the images);
        the exit logits beside."""
        batch = batch or batch_size_for(images)
        sizes, exits, outputs = [], [], []
        for start in range(0, len(images), batch):
            payloads, exit_logits = self.edge_half.payloads_and_exit(images[start:start + batch])
            sizes += [len(payload) for payload in payloads]
            exits.append(exit_logits)
            outputs.append(self.cloud_outputs(payloads))
        return Deployed(np.array(sizes), None if exits[0] is None else np.concatenate(exits),
                        [np.concatenate(parts) for parts in zip(*outputs)])


def deployed(bundle: Bundle, images: np.ndarray, verified: bool = False, batch: Optional[int] = None) -> Deployed:
    """Every frame as the bundle deploys it, whatever its strategy: an edge-only bundle sends nothing."""
    batch = batch or batch_size_for(images)
    if bundle.strategy != "edge-only":
        return SplitInference(bundle, verified=verified).deployed(images, batch)
    model = WholeModelHalf(bundle, verified=verified)
    outputs = [model.outputs_of(images[start:start + batch]) for start in range(0, len(images), batch)]
    return Deployed(np.zeros(len(images), dtype=np.int64), None, [np.concatenate(parts) for parts in zip(*outputs)])
