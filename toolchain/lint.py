"""Per-target lint of an ONNX artefact before it ships: what the device's parser would refuse.

Opset, ops the target's TensorRT parser imports, symmetric Q/DQ (zero point 0, int8), I/O
types, and dynamic axes (only the leading batch axis may vary). Each problem is a sentence.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from targets import TENSORRT_IO_DTYPES, Target

ONNX_TYPE_NAMES = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.FLOAT16: "float16",
                   onnx.TensorProto.UINT8: "uint8", onnx.TensorProto.INT8: "int8",
                   onnx.TensorProto.INT32: "int32", onnx.TensorProto.INT64: "int64", onnx.TensorProto.BOOL: "bool"}


def symmetric_int8(node: onnx.NodeProto, constants: dict) -> bool:
    """A Q or DQ node TensorRT builds: int8 with zero point 0. Without a zero point, a Q node's output is
    uint8 by the ONNX spec, and a DQ node's type is its input's."""
    zero_point = constants.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    if zero_point is not None:
        return zero_point.dtype == np.int8 and not np.any(zero_point)
    quantized = constants.get(node.input[0])
    return node.op_type == "DequantizeLinear" and quantized is not None and quantized.dtype == np.int8


def lint_onnx(path: Path, target: Target) -> list[str]:
    model = onnx.load(str(path))
    problems = []
    opset = next(entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx"))
    if opset != target.onnx_opset:
        problems.append(f"opset {opset}, the {target.name} target needs {target.onnx_opset}")
    graph = model.graph
    if target.parser_ops:
        unknown = sorted({node.op_type for node in graph.node} - target.parser_ops)
        if unknown:
            problems.append(f"ops the {target.name} parser does not import: {', '.join(unknown)}")
    constants = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    for node in graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") and not symmetric_int8(node, constants):
            problems.append(f"{node.op_type} {node.name!r} is not symmetric int8 (TensorRT needs int8, zero point 0)")
    for kind, tensors in (("input", graph.input), ("output", graph.output)):
        for tensor in tensors:
            dtype = ONNX_TYPE_NAMES.get(tensor.type.tensor_type.elem_type, str(tensor.type.tensor_type.elem_type))
            if target.parser_ops and dtype not in TENSORRT_IO_DTYPES:
                problems.append(f"{kind} {tensor.name!r} is {dtype}; {target.name}'s TensorRT takes "
                                f"{', '.join(sorted(TENSORRT_IO_DTYPES))}")
            dims = tensor.type.tensor_type.shape.dim
            dynamic = [i for i, dim in enumerate(dims) if not dim.HasField("dim_value")]
            if dynamic not in ([], [0]):
                problems.append(f"{kind} {tensor.name!r} has dynamic axes {dynamic}; only the batch axis 0 may vary")
    return problems
