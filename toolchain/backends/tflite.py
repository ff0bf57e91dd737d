"""Full-integer TFLite edge halves (Raspberry Pi): litert-torch converts, ai-edge-quantizer quantizes.

litert-torch turns the float edge module (NHWC in and out, the layout TFLite kernels want) into
a float .tflite; ai-edge-quantizer's `static_wi8_ai8` recipe, calibrated on real images,
makes every op int8 with int8 input and output. (litert-torch's own PT2E int8 path leaves
float ADD/TANH behind and is not used.) The result is inspected: a float tensor or a
DEQUANTIZE anywhere in the graph refuses the build. The artefact ends before the codec's
quantizer; its int8 output becomes wire codes through the manifest's `to_codes` mapping.
"""

from __future__ import annotations

import functools
import json
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from runtime.backends.tflite.runner import load_interpreter_module
from runtime.inputs import PIXEL_RANGE
from runtime.local import quantize_int8
from toolchain.backends import Exporter, Half, WholeModel, tensor_spec
from toolchain.calibration import SCORED_SAMPLES
from toolchain.errors import EdgesplitError
from toolchain.evaluate import first_output, relative_error
from toolchain.quiet import quiet

FILE = "edge.tflite"
VERIFICATION = {"backend": "tflite", "arithmetic": "the TFLite interpreter's int8 kernels (ai-edge-litert), as the Pi "
                                                   "runs them"}
TOOLS = ("litert-torch", "ai-edge-quantizer", "ai-edge-litert")

INTEGER_TYPES = {"int8", "int16", "int32", "int64", "bool"}  # int32: biases and shapes; int64: 16x8 biases
# layers with weights whose activations can be int16 (16x8 kernels) when int8 costs too much accuracy
WEIGHTED_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "CONV_2D_TRANSPOSE", "BATCH_MATMUL")


class TFLiteArtefact(NamedTuple):
    path: Path
    input_name: str
    output_name: str
    input_quantization: tuple[float, int]
    output_quantization: tuple[float, int]
    input_shape: list[int]
    output_shape: list[int]
    ops: list[str]
    float_bytes: int
    exit_output: tuple[str, list[int], tuple[float, int]] | None  # name, shape, quantization of exit logits


def _converters():
    try:
        import litert_torch
        from ai_edge_quantizer import quantizer
    except ImportError as error:
        raise EdgesplitError("converting to TFLite needs litert-torch and ai-edge-quantizer: "
                             "pip install 'edgesplit[tflite]'") from error
    return litert_torch, quantizer


def first_line(error: Exception) -> str:
    """A converter's message without its stack dump: the line that names the op or layer."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0] if lines else 'no message'}"


def calibrated_ranges(float_path: Path, fixed: dict[str, tuple[float, float]], samples: list[dict]) -> dict:
    """ai-edge-quantizer's calibration of every tensor, with the ranges of the tensors in `fixed` (its input and
    outputs) set, not measured.

    Its calibration keeps a moving average of each sample's range: good for activations inside, but the
    input's ends short of the data's (Fashion-MNIST reached 0.85 of 1.0, clipping the brightest pixels), and
    the output's clip every frame beyond the average (a keyword-spotting head's wire reached 5.70 of 9.47)."""
    from ai_edge_quantizer import quantizer, recipe

    quantizing = quantizer.Quantizer(str(float_path))
    quantizing.load_quantization_recipe(recipe.static_wi8_ai8())
    ranges = quantizing.calibrate({"serving_default": samples})
    for name, (low, high) in fixed.items():
        measured = ranges[name]
        ranges[name] = dict(measured, min=np.full_like(measured["min"], low), max=np.full_like(measured["max"], high))
    return ranges


def quantize_static(float_path: Path, ranges: dict, path: Path, int16_scopes: list[str] = ()) -> None:
    """The static int8 recipe with `ranges`; the layers whose scopes (their output tensors' names) are listed get
    int16 activations (16x8): ai-edge-quantizer puts integer QUANTIZE ops between them and their int8 neighbours."""
    from ai_edge_quantizer import qtyping, quantizer, recipe

    quantizing = quantizer.Quantizer(str(float_path))
    quantizing.load_quantization_recipe(recipe.static_wi8_ai8())
    for scope in int16_scopes:  # the narrowest regex wins over '.*'
        quantizing.add_static_config(f"^{re.escape(scope)}$", qtyping.TFLOperationName.ALL_SUPPORTED, 16, 8)
    quantizing.quantize(ranges).export_model(str(path), overwrite=True)
    path.chmod(0o644)  # the exporter leaves it executable


@torch.no_grad()
def output_ranges(module: nn.Module, images: np.ndarray, batch: int = 64) -> dict[int, tuple[float, float]]:
    """Each output's range over all of `images`, zero included, keyed by its rank (4: the features, 2: exit
    logits)."""
    ranges = {}
    for start in range(0, len(images), batch):
        result = module.eval()(torch.from_numpy(images[start:start + batch]))
        for output in result if isinstance(result, (tuple, list)) else (result,):
            low, high = ranges.get(output.dim(), (0.0, 0.0))
            ranges[output.dim()] = (min(low, float(output.min())), max(high, float(output.max())))
    return ranges


def graph_ops(path: Path) -> list[tuple[str, set[str]]]:
    """(op name, dtypes of its tensors) for every op of a .tflite, in graph order."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    # without default delegates: XNNPACK would fold the ops into one DELEGATE node
    interpreter = Interpreter(model_path=str(path),
                              experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    tensors = {t["index"]: np.dtype(t["dtype"]).name for t in interpreter.get_tensor_details()}
    return [(op["op_name"], {tensors[i] for i in list(op["inputs"]) + list(op["outputs"]) if i >= 0})
            for op in interpreter._get_ops_details()]


def float_ops(ops: list[tuple[str, set[str]]]) -> list[str]:
    """'OP (float dtypes)' for each op that is not integer-only, DEQUANTIZE included."""
    return [f"{name} ({', '.join(sorted(dtypes - INTEGER_TYPES)) or 'dequantize'})" for name, dtypes in ops
            if name == "DEQUANTIZE" or dtypes - INTEGER_TYPES]


def convert_float(module: nn.Module, example: np.ndarray, path: Path, outputs: list[int] | None = None) -> None:
    """Float NCHW module → float NHWC .tflite at `path` (`outputs`: which outputs turn channel-last too)."""
    litert_torch, _ = _converters()
    channel_last = litert_torch.to_channel_last_io(module.eval(), args=[0], outputs=outputs or [])
    nhwc = np.ascontiguousarray(example.transpose(0, 2, 3, 1)).astype(np.float32)
    try:
        converted = litert_torch.convert(channel_last.eval(), (torch.from_numpy(nhwc[:1]),))
    except Exception as error:  # the converter raises many types; the build must name the stage
        raise EdgesplitError(f"litert-torch cannot convert the edge half: {first_line(error)}") from error
    converted.export(str(path))


def convert_and_quantize(module: nn.Module, calibration: np.ndarray, path: Path, keep: Path | None = None) -> int:
    """Float NCHW module → float NHWC .tflite → full-int8 .tflite at `path`; returns the float model's bytes.
    With `keep` (a scratch folder and a role, as scratch/role), what quantizing it again needs is left there
    (Int16Requantizable)."""
    nhwc_calibration = np.ascontiguousarray(calibration.transpose(0, 2, 3, 1)).astype(np.float32)
    with tempfile.TemporaryDirectory() as scratch, quiet():
        float_path = Path(scratch) / "float.tflite"
        convert_float(module, calibration, float_path, outputs=[0])
        interpreter = load_interpreter_module().Interpreter(model_path=str(float_path))
        input_key = interpreter.get_signature_list()["serving_default"]["inputs"][0]
        samples = [{input_key: nhwc_calibration[i:i + 1]} for i in range(len(nhwc_calibration))]
        fixed = {interpreter.get_input_details()[0]["name"]: PIXEL_RANGE}
        ranges = output_ranges(module, calibration)
        fixed.update({detail["name"]: ranges[len(detail["shape"])] for detail in interpreter.get_output_details()})
        try:
            ranges = calibrated_ranges(float_path, fixed, samples)
            quantize_static(float_path, ranges, path)
        except Exception as error:  # as above: one line naming what the quantizer refused
            raise EdgesplitError(f"ai-edge-quantizer cannot make the edge half full-int8: {first_line(error)}") \
                from error
        float_bytes = float_path.stat().st_size
        if keep is not None:
            Int16Requantizable.save(keep, float_path, ranges, nhwc_calibration[:SCORED_SAMPLES])
        return float_bytes


def check_integer_only(path: Path) -> list[tuple[str, set[str]]]:
    """The graph's ops, once none is float and none dequantizes."""
    ops = graph_ops(path)
    remaining = float_ops(ops)
    if remaining:
        raise EdgesplitError(f"the int8 TFLite edge half still has float ops, not shipped: {'; '.join(remaining)}")
    return ops


def convert_int8(module: nn.Module, calibration: np.ndarray, path: Path, keep: Path | None = None) -> TFLiteArtefact:
    """Float NCHW module → full-int8 NHWC .tflite at `path`, calibrated on `calibration` (N,C,H,W), inspected.

    The module returns the features, or (features, exit logits) with an exit branch."""
    float_bytes = convert_and_quantize(module, calibration, path, keep)
    ops = check_integer_only(path)
    interpreter = load_interpreter_module().Interpreter(model_path=str(path))
    (inputs,) = interpreter.get_input_details()
    # the features are the 4-D output; an exit branch adds a 2-D one
    outputs = next(d for d in interpreter.get_output_details() if len(d["shape"]) == 4)
    exits = [d for d in interpreter.get_output_details() if len(d["shape"]) == 2]
    for detail in [inputs, outputs] + exits:
        if np.dtype(detail["dtype"]).name != "int8" or not detail["quantization"][0]:
            raise EdgesplitError(f"the TFLite edge half's {detail['name']} is {np.dtype(detail['dtype']).name}, "
                                 "not quantized int8")
    return TFLiteArtefact(path, inputs["name"], outputs["name"],
                          (float(inputs["quantization"][0]), int(inputs["quantization"][1])),
                          (float(outputs["quantization"][0]), int(outputs["quantization"][1])),
                          [int(s) for s in inputs["shape"]], [int(s) for s in outputs["shape"]],
                          sorted({name for name, _ in ops}), float_bytes,
                          None if not exits else (exits[0]["name"], [int(v) for v in exits[0]["shape"]],
                                                  (float(exits[0]["quantization"][0]),
                                                   int(exits[0]["quantization"][1]))))


def run_tflite(path: Path, samples: np.ndarray, runner=None) -> list[np.ndarray]:
    """Every output of a .tflite on NHWC float `samples` through the runtime's runner, in float: an int8 model's
    input quantized and its outputs dequantized."""
    from runtime.backends.tflite.runner import TFLiteRunner

    runner = runner or TFLiteRunner(path)
    ((name, dtype, _),) = runner.inputs
    quantization = runner.quantization(name)
    feed = samples if quantization is None else quantize_int8(samples, *quantization)
    found = runner.infer_impl({name: np.ascontiguousarray(feed.astype(dtype))})
    results = []
    for output, _, _ in runner.outputs:
        scale_zero = runner.quantization(output)
        values = found[output].astype(np.float32)
        results.append(values if scale_zero is None else (values - scale_zero[1]) * scale_zero[0])
    return results


def time_tflite(path: Path, samples: np.ndarray) -> float:
    """Ms per frame of a .tflite over `samples`, after one warm-up frame."""
    from runtime.backends.tflite.runner import TFLiteRunner

    runner = TFLiteRunner(path)
    run_tflite(path, samples[:1], runner)
    started = time.perf_counter()
    run_tflite(path, samples, runner)
    return 1000 * (time.perf_counter() - started) / len(samples)


class Int16Requantizable:
    """What a full-int8 TFLite half was made from, kept out of the bundle: the float .tflite, every tensor's
    calibrated range (the input's and outputs' as fixed) and the NHWC samples its error is scored on. Quantized
    again with some layers' activations in int16 (16x8 kernels, int8 weights) it stays integer-only: QUANTIZE ops
    requantize between int8 and int16 (mixed_precision.py has the search)."""

    higher = "int16 activations (16x8)"

    def __init__(self, float_path: Path, ranges: dict, samples: np.ndarray) -> None:
        self.float_path, self.ranges, self.samples = float_path, ranges, samples
        self.reference = run_tflite(float_path, samples)

    @staticmethod
    def save(keep: Path, float_path: Path, ranges: dict, samples: np.ndarray) -> None:
        """`keep` is the scratch folder joined with the half's role: files keep + '.float.tflite', ..."""
        shutil.copy(float_path, f"{keep}.float.tflite")
        names = sorted(ranges)
        np.savez(f"{keep}.ranges.npz", samples=samples,
                 **{f"{index}.{key}": value for index, name in enumerate(names) for key, value in ranges[name].items()})
        Path(f"{keep}.ranges.json").write_text(json.dumps(names))

    @classmethod
    def load(cls, scratch: Path, role: str) -> Int16Requantizable | None:
        keep = scratch / role
        if not Path(f"{keep}.float.tflite").exists():
            return None
        names = json.loads(Path(f"{keep}.ranges.json").read_text())
        ranges = {name: {} for name in names}
        with np.load(f"{keep}.ranges.npz") as stored:
            for key in stored.files:
                if key != "samples":
                    index, field = key.split(".", 1)
                    ranges[names[int(index)]][field] = stored[key]
            samples = stored["samples"]
        return cls(Path(f"{keep}.float.tflite"), ranges, samples)

    def quantize(self, path: Path, kept: list[str]) -> None:
        with quiet():
            quantize_static(self.float_path, self.ranges, path, kept)
        check_integer_only(path)

    def layers(self, path: Path) -> list[str]:
        """The scopes of the weighted layers, in graph order, but those writing an output: the half's outputs stay
        int8 (the wire's mapping reads them)."""
        return [scope for scope, _ in self._weighted]

    @staticmethod
    def screen(path: Path) -> None:
        """No one-run screen: every layer is measured alone (an edge head has few; the interpreter's int8 tensors
        would need their scales mapped back to the float half's tensors by name)."""
        return None

    def name(self, layer: str) -> str:
        """As torch names it, with its class: layer1.0.conv1 (Conv2d); where litert-torch flattened the path so
        that names repeat, with its place among the weighted layers: expand (Conv2d, weighted layer 14)."""
        names = self._torch_names
        own, place = names[layer], list(names).index(layer) + 1
        if list(names.values()).count(own) == 1:
            return own
        return f"{own[:-1]}, weighted layer {place})" if own.endswith(")") else f"{own} (weighted layer {place})"

    @functools.cached_property
    def _torch_names(self) -> dict[str, str]:
        """Each weighted layer's scope and torch name, in graph order, worked out once for every refusal line."""
        return {scope: self.torch_name(scope) for scope, _ in self._weighted}

    @staticmethod
    def torch_name(layer: str) -> str:
        """The module a scope's last tensor comes from, as torch names it, and its class: layer1.0.conv1 (Conv2d).
        litert-torch writes each step of the path as class_attribute (...BasicBlock_0/...conv.Conv2d_conv1)."""
        last = [part for part in layer.split(";") if part.strip() and not part.isdigit()][-1]
        path = last.split("/")
        # past wrapper and model; a class's leading underscore is not the split
        steps = [step.rsplit(".", 1)[-1].lstrip("_").split("_", 1) for step in path[2:] or path[-1:]]
        if not steps or any(len(step) != 2 for step in steps):
            return last
        return f"{'.'.join(attribute for _, attribute in steps)} ({steps[-1][0]})"

    @functools.cached_property
    def _weighted(self) -> list[tuple[str, int]]:
        """(scope, multiply-accumulates per sample) of each weighted layer not writing an output."""
        from ai_edge_quantizer.utils import tfl_flatbuffer_utils as flatbuffer

        model = flatbuffer.read_model(str(self.float_path))
        graph = model.subgraphs[0]
        found = []
        for op in graph.operators:
            name = flatbuffer.TFL_OP_CODE_TO_NAME.get(model.operatorCodes[op.opcodeIndex].builtinCode)
            kind = getattr(name, "value", name)
            if kind not in WEIGHTED_OPS or set(op.outputs) & set(graph.outputs):
                continue
            weights, written = graph.tensors[op.inputs[1]].shape, graph.tensors[op.outputs[0]].shape
            per_output = int(np.prod(weights[1:3] if kind == "DEPTHWISE_CONV_2D" else weights[1:]))
            found.append((flatbuffer.get_op_scope(op, graph.tensors), int(np.prod(written[1:])) * per_output))
        return found

    def error(self, path: Path) -> float:
        found = run_tflite(path, self.samples)
        return float(np.mean([relative_error(f, r) for f, r in zip(found, self.reference)]))

    def macs(self) -> dict[str, int]:
        return dict(self._weighted)

    def cost(self, path: Path, share: float) -> str:
        """The half's time per frame on this CPU's interpreter, all int8 and as kept (16x8 kernels are not
        XNNPACK's): the x86 proxy; `profile` measures the device."""
        with tempfile.TemporaryDirectory() as scratch:
            all_int8 = Path(scratch) / "int8.tflite"
            self.quantize(all_int8, [])
            before, after = (time_tflite(candidate, self.samples) for candidate in (all_int8, path))
        return f"{before:.2f} ms per frame all int8, {after:.2f} ms as kept (this CPU's TFLite interpreter)"

    @staticmethod
    def entry(path: Path) -> dict:
        return {"ops": sorted({name for name, _ in graph_ops(path)})}


def int8_range(quantization: tuple[float, int]) -> tuple[float, float]:
    """The real values an int8 tensor with this (scale, zero point) can hold."""
    scale, zero_point = quantization
    return scale * (-128 - zero_point), scale * (127 - zero_point)


def check_input_range(quantization: tuple[float, int]) -> None:
    """The int8 input must cover what pixels can be, [0, 1], or frames brighter or darker than the calibration
    images would be clipped; quantize_static sets it so, and this checks what the quantizer wrote."""
    scale = quantization[0]
    low, high = int8_range(quantization)
    wanted_low, wanted_high = PIXEL_RANGE
    if low > wanted_low + scale or high < wanted_high - scale:
        raise EdgesplitError(f"the int8 edge half's input covers [{low:.3f}, {high:.3f}], pixels span "
                             f"[{wanted_low:g}, {wanted_high:g}]: frames outside would be clipped")


def _tensor(name: str, shape: list[int], quantization: tuple[float, int], layout: str = "NHWC") -> dict:
    spec = tensor_spec(name, shape[1:], "int8", layout)
    spec["quantization"] = {"scale": quantization[0], "zero_point": quantization[1]}
    return spec


def kept_for(half: Half) -> Path | None:
    return None if half.scratch is None else half.scratch / half.role


def export(half: Half) -> tuple[dict, dict]:
    """The edge half as full-int8 TFLite; an 8-bit per-tensor codec adopts the artefact's output scale,
    so codes are its int8 output + 128 and the device never converts features to float."""
    from importlib import metadata

    if half.parts.codec is None:
        return export_whole(half)
    shape = half.parts.code_shapes[0]
    if len(shape) != 3:  # the converter turns C x H x W maps channel-last; anything else has no such layout
        raise EdgesplitError(f"{half.device.name}'s full-int8 TFLite half sends a C x H x W map; this cut crosses "
                             f"{'x'.join(map(str, shape))}: split where a convolution's map crosses, or "
                             "build for another edge device")
    module = half.parts.edge_before_quantizer()
    artefact = convert_int8(module, half.calibration, half.directory / FILE, kept_for(half))
    check_input_range(artefact.input_quantization)
    mapping = half.parts.codec.map_int8_output(*artefact.output_quantization)
    outputs = [_tensor(artefact.output_name, artefact.output_shape, artefact.output_quantization)]
    if artefact.exit_output is not None:
        outputs.append(_tensor(*artefact.exit_output, layout="NC"))
    entry = {"file": FILE, "backend": half.device.backend, "device": half.device.name, "precision": half.precision,
             "inputs": [_tensor(artefact.input_name, artefact.input_shape, artefact.input_quantization)],
             "outputs": outputs, "to_codes": mapping, "ops": artefact.ops, "float_model_bytes": artefact.float_bytes,
             "codes": {"dtype": "int8", "values": f"integers 0..{half.parts.codec.levels - 1} after to_codes",
                       "note": "the output is the int8 tensor before the codec's quantizer; to_codes maps it"},
             "tools": {name: metadata.version(name) for name in TOOLS}, "verification": VERIFICATION}
    return entry, wire_clipping(module, half.sample, artefact.output_quantization)


def wire_clipping(module: nn.Module, images: np.ndarray, quantization: tuple[float, int]) -> dict:
    """The int8 output's range, and the share of feature values of `images` (held out) beyond it."""
    scale = quantization[0]
    low, high = int8_range(quantization)
    with torch.no_grad():
        features = first_output(module.eval()(torch.from_numpy(images)))
    beyond = ((features < low - scale / 2) | (features > high + scale / 2)).float().mean()
    return {"wire_range": [low, high], "wire_clipped_share": float(beyond)}


class _LogitsAsMap(nn.Module):
    """Logits as an N x K x 1 x 1 map: the full-int8 converter takes a 4-D first output."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return first_output(self.model(x))[:, :, None, None]


def export_whole(half: Half) -> tuple[dict, dict]:
    """Edge-only: the whole model as full-int8 TFLite, answering with its class logits (an N x 1 x 1 x K map)."""
    from importlib import metadata

    if len(half.parts.outputs) > 1:
        raise EdgesplitError(f"a full-int8 TFLite whole model answers with one output; this model returns "
                             f"{len(half.parts.outputs)} ({', '.join(half.parts.outputs)}): run it split, or "
                             "edge-only on another device")
    artefact = convert_int8(_LogitsAsMap(half.parts.tail), half.calibration, half.directory / FILE, kept_for(half))
    check_input_range(artefact.input_quantization)
    answer = _tensor(artefact.output_name, artefact.output_shape, artefact.output_quantization)
    answer["answer_shape"] = [artefact.output_shape[-1]]
    entry = {"file": FILE, "backend": half.device.backend, "device": half.device.name, "precision": half.precision,
             "inputs": [_tensor(artefact.input_name, artefact.input_shape, artefact.input_quantization)],
             "outputs": [answer], "ops": artefact.ops, "float_model_bytes": artefact.float_bytes,
             "tools": {name: metadata.version(name) for name in TOOLS}, "verification": VERIFICATION}
    return entry, {}


def whole_model(request: WholeModel):
    from runtime.backends.tflite.runner import TFLiteRunner

    artefact = convert_int8(_LogitsAsMap(request.module), request.calibration,
                            request.directory / f"whole-{request.cache_key}.tflite")
    runner = TFLiteRunner(artefact.path, threads=request.threads)
    scale, zero_point = artefact.output_quantization

    def run(images: np.ndarray) -> np.ndarray:
        quantized = quantize_int8(images.transpose(0, 2, 3, 1), *artefact.input_quantization)
        outputs = runner.infer({artefact.input_name: np.ascontiguousarray(quantized)})[artefact.output_name]
        return ((outputs.astype(np.float32) - zero_point) * scale).reshape(len(images), -1)
    return run


EXPORTER = Exporter(
    name="tflite", title="TFLite (LiteRT)", suffix=".tflite", precisions=("int8",), roles=("edge",),
    code_dtype=None, host_needs_gpu=False, export=export, whole_model=whole_model,
    requantizable=Int16Requantizable.load,
)
