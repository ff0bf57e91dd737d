"""TensorRT halves: ONNX (explicit Q/DQ for INT8) plus a build recipe; the engine is built where a GPU is.

An engine runs only on the TensorRT version and GPU it was built with, so the bundle carries the
ONNX of the half and a recipe (precision, batch profile, workspace); `compile` builds the engine
into the bundle when the build host has TensorRT and a GPU, otherwise the device builds it at
first start. INT8 is explicit Q/DQ (TensorRT 10 deprecated its implicit calibrators, 11 removed
them), checked on a CPU as fake quantization (`VERIFICATION`), and linted for the device's parser.
Device facts this module reads from `backend_options`: `parser` (TensorRT version whose ONNX
parser imports the half) and `batch_profile` (min/opt/max batch of the engine).
"""

from __future__ import annotations

from pathlib import Path

import tempfile

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from toolchain.backends import Exporter, Half, TritonTail, WholeModel
from toolchain.backends.onnxrt import onnx_entry
from toolchain.errors import EdgesplitError
from toolchain.export import export_half, export_onnx, export_whole_model
from toolchain.mixed_precision import Requantizable

CODE_DTYPE = "float32"  # UINT8 I/O arrived in TensorRT 8.5: codes cross TensorRT halves as integral float32
WORKSPACE_MIB = 1024

# ONNX ops the TensorRT 8.2 ONNX parser imports (onnx-tensorrt docs/operators.md, release/8.2-GA;
# Round and Sign arrived in 8.2), restricted to what CNN halves use; later versions add to it.
OPS_8_2 = frozenset((
    "Abs", "Add", "AveragePool", "BatchNormalization", "Cast", "Ceil", "Clip", "Concat", "Constant",
    "ConstantOfShape", "Conv", "ConvTranspose", "DequantizeLinear", "Div", "Dropout", "Elu", "Equal", "Erf",
    "Exp", "Expand", "Flatten", "Floor", "Gather", "Gemm", "GlobalAveragePool", "GlobalMaxPool", "Greater",
    "HardSigmoid", "HardSwish", "Identity", "InstanceNormalization", "LeakyRelu", "Less", "Log", "MatMul", "Max",
    "MaxPool", "Min", "Mul", "Neg", "Pad", "Pow", "PRelu", "QuantizeLinear", "Reciprocal", "ReduceMax",
    "ReduceMean", "ReduceMin", "ReduceSum", "Relu", "Reshape", "Resize", "Round", "Selu", "Shape", "Sigmoid",
    "Sign", "Slice", "Softmax", "Softplus", "Split", "Sqrt", "Squeeze", "Sub", "Sum", "Tanh", "Tile",
    "Transpose", "Unsqueeze", "Where",
))
OPS_8_6 = OPS_8_2 | {"LayerNormalization", "GroupNormalization", "Mod", "Trilu"}
PARSER_OPS = {"8.2": OPS_8_2, "8.6": OPS_8_6, "10": OPS_8_6}
IO_DTYPES = frozenset(("float32", "float16", "int8", "int32", "bool"))
ONNX_TYPE_NAMES = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.FLOAT16: "float16",
                   onnx.TensorProto.UINT8: "uint8", onnx.TensorProto.INT8: "int8",
                   onnx.TensorProto.INT32: "int32", onnx.TensorProto.INT64: "int64", onnx.TensorProto.BOOL: "bool"}

# How a TensorRT half is run on a CPU to check it: with graph optimizations off, Q/DQ stay separate ops,
# i.e. fake quantization in float, which is how TensorRT's int8 arithmetic behaves; ONNX Runtime's fused
# int8 kernels would measure the build host's CPU instead (they saturate on AVX2 without VNNI).
ARITHMETIC = {"int8": "ONNX Runtime, graph optimizations off: Q/DQ as separate ops (fake quantization), as TensorRT "
                      "computes",
              "fp16": "ONNX Runtime in fp32: TensorRT's fp16 rounding is not emulated here",
              "fp32": "ONNX Runtime in fp32, as TensorRT's fp32 computes up to float rounding"}


def verification(precision: str) -> dict:
    return {"backend": "onnxrt", "options": {"graph_optimization": "disabled"}, "arithmetic": ARITHMETIC[precision]}


def export(half: Half) -> tuple[dict, dict]:
    path, checks = export_half(half, CODE_DTYPE)
    problems = lint(path, half.device)
    if problems:
        raise EdgesplitError(f"{half.role} ONNX would not build on {half.device.name}: {'; '.join(problems)}")
    entry = onnx_entry(half, path.name, CODE_DTYPE)
    shapes = {tensor["name"]: tensor["shape"][1:] for tensor in entry["inputs"]}
    entry.update(engine=engine_entry(half.device, half.precision, shapes), verification=verification(half.precision))
    return entry, checks


def engine_entry(device, precision: str, shapes: dict[str, list[int]]) -> dict:
    """What building this half's engine needs: precision, a batch profile per input, workspace."""
    sizes = device.backend_options["batch_profile"]
    recipe = {"precision": precision, "opset": device.onnx_opset, "workspace_mib": WORKSPACE_MIB,
              "max_batch": sizes[2],
              "profiles": {name: [[size] + list(shape) for size in sizes] for name, shape in shapes.items()}}
    return {"recipe": recipe, "tensorrt": device.versions.get("tensorrt", ""), "plan": None}


def compile_engines(directory: Path, entries: dict) -> None:
    """Build and stamp each half's engine into the bundle when this host has TensorRT and a GPU;
    otherwise say why in the entry, and leave the ONNX and recipe for the device to build from."""
    from runtime.backends.tensorrt.engine import build_engine, probe_device

    device = probe_device()
    for role, entry in entries.items():
        engine = entry["engine"]
        if "reason" in device:
            engine["not_built"] = device["reason"]
            continue
        plan = directory / f"{role}.plan"
        engine["stamp"] = build_engine(directory / entry["file"], plan, engine["recipe"], device)
        engine["plan"] = plan.name
        for leftover in (Path(f"{plan}.json"), Path(f"{plan}.timing")):  # the stamp lives in the manifest
            leftover.unlink()


def whole_model(request: WholeModel):
    from runtime.backends.tensorrt.runner import TensorRTRunner

    path = export_whole_model(request)
    entry = {"engine": engine_entry(request.device, request.precision, {"image": list(request.calibration.shape[1:])})}
    runner = TensorRTRunner(path, artefact=entry, cache_key=f"whole-{request.cache_key}")
    return lambda images: runner.infer({"image": np.ascontiguousarray(images)})[request.outputs[0]]


def _symmetric_int8(node: onnx.NodeProto, constants: dict) -> bool:
    """A Q or DQ node TensorRT builds: int8 with zero point 0. Without a zero point, a Q node's output is
    uint8 by the ONNX spec, and a DQ node's type is its input's."""
    zero_point = constants.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    if zero_point is not None:
        return zero_point.dtype == np.int8 and not np.any(zero_point)
    quantized = constants.get(node.input[0])
    return node.op_type == "DequantizeLinear" and quantized is not None and quantized.dtype == np.int8


def lint(path: Path, device) -> list[str]:
    """What the device's TensorRT parser would refuse, one sentence each: opset, ops, asymmetric Q/DQ,
    I/O types, dynamic axes other than the batch."""
    model = onnx.load(str(path))
    problems = []
    opset = next(entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx"))
    if opset != device.onnx_opset:
        problems.append(f"opset {opset}, {device.name} needs {device.onnx_opset}")
    graph = model.graph
    unknown = sorted({node.op_type for node in graph.node} - PARSER_OPS[device.backend_options["parser"]])
    if unknown:
        problems.append(f"ops the {device.name} parser does not import: {', '.join(unknown)}")
    constants = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    for node in graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") and not _symmetric_int8(node, constants):
            problems.append(f"{node.op_type} {node.name!r} is not symmetric int8 (TensorRT needs int8, zero point 0)")
    for kind, tensors in (("input", graph.input), ("output", graph.output)):
        for tensor in tensors:
            dtype = ONNX_TYPE_NAMES.get(tensor.type.tensor_type.elem_type, str(tensor.type.tensor_type.elem_type))
            if dtype not in IO_DTYPES:
                problems.append(f"{kind} {tensor.name!r} is {dtype}; {device.name}'s TensorRT takes "
                                f"{', '.join(sorted(IO_DTYPES))}")
            dims = tensor.type.tensor_type.shape.dim
            dynamic = [i for i, dim in enumerate(dims) if not dim.HasField("dim_value")]
            if dynamic not in ([], [0]):
                problems.append(f"{kind} {tensor.name!r} has dynamic axes {dynamic}; only the batch axis 0 may vary")
    return problems


def precheck(role: str, device, module, examples: tuple) -> None:
    """The float half at the device's opset, linted for its parser: one line naming the opset and the ops it
    would refuse, before the build calibrates or trains anything for it."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"{role}.onnx"
        with torch.no_grad():
            outputs = module.eval()(*examples)
        count = len(outputs) if isinstance(outputs, tuple) else 1
        export_onnx(module, examples, path, device.onnx_opset, tuple(f"input{i}" for i in range(len(examples))),
                    tuple(f"output{i}" for i in range(count)), metadata={})
        problems = lint(path, device)
    if problems:
        parser = device.backend_options["parser"]
        raise EdgesplitError(f"the {role} half at this cut would not build on {device.name} (TensorRT {parser}, "
                             f"opset {device.onnx_opset}): {'; '.join(problems)}; choose a cut before them (--split) "
                             f"or a device whose TensorRT imports them")


def unavailable() -> str:
    from runtime.backends.tensorrt.engine import probe_device

    return probe_device().get("reason", "")


# Triton's onnxruntime backend builds a TensorRT engine from the Q/DQ ONNX where no plan was built
TRITON_ACCELERATOR = """optimization { execution_accelerators { gpu_execution_accelerator: [
  { name: "tensorrt" parameters { key: "precision_mode" value: "%s" } } ] } }
"""


def triton_tail(entry: dict) -> TritonTail:
    """The engine the bundle carries (it must match the Triton host's TensorRT and GPU), else the ONNX."""
    plan = entry["engine"].get("plan")
    if plan:
        return TritonTail("tensorrt_plan", plan, "model.plan", "KIND_GPU")
    return TritonTail("onnxruntime_onnx", entry["file"], "model.onnx", "KIND_GPU",
                      TRITON_ACCELERATOR % entry["precision"].upper())


EXPORTER = Exporter(
    name="tensorrt", title="TensorRT", suffix=".onnx (+ .plan built on a GPU)", precisions=("fp32", "fp16", "int8"),
    roles=("edge", "cloud"), code_dtype=CODE_DTYPE, host_needs_gpu=True, export=export, whole_model=whole_model,
    compile=compile_engines, unavailable=unavailable, triton_tail=triton_tail, precheck=precheck,
    requantizable=Requantizable.load,
)
