"""Halves → ONNX: TorchScript-based export (reaches opset 13 for old TensorRT), onnxsim,
onnx.checker, metadata in the file, and a numerical comparison with PyTorch through ONNX Runtime.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import NamedTuple

import numpy as np
import onnx
import onnxsim
import torch
from torch import nn

from runtime.backends.onnxrt.runner import OnnxRuntimeRunner
from toolchain.errors import EdgesplitError
from toolchain.quiet import quiet


def _attention_below_opset_14() -> None:
    """Opset 13 (TensorRT 8.2 on the Nano) has no symbolic for scaled dot-product attention; opset 14's
    decomposition (Transpose, MatMul, Softmax, ...) uses only ops opset 13 has, so transformers export there."""
    from torch.onnx import symbolic_opset14

    torch.onnx.register_custom_op_symbolic("aten::scaled_dot_product_attention",
                                           symbolic_opset14.scaled_dot_product_attention, 13)


_attention_below_opset_14()


@contextlib.contextmanager
def attention_unfused():
    """Without gradients, nn.TransformerEncoderLayer runs one fused op that has no ONNX export; this makes it run
    its modules (attention, feed-forward) as in training."""
    enabled = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(enabled)


class ExportCheck(NamedTuple):
    max_abs_error: float
    mismatched_fraction: float  # integer outputs: share of elements that differ at all


def export_onnx(
    module: nn.Module, examples: tuple[torch.Tensor, ...], path: Path, opset: int,
    input_names: tuple[str, ...], output_names: tuple[str, ...], metadata: dict[str, str],
) -> None:
    """Export with a dynamic batch axis, simplify, check, and stamp metadata into the file."""
    buffer = io.BytesIO()
    # quiet: TorchScript's deprecation chatter, and the graph it dumps (from C++) on a failure
    with torch.no_grad(), attention_unfused(), quiet():
        try:
            torch.onnx.export(
                module.eval(), tuple(examples), buffer, dynamo=False, opset_version=opset,
                input_names=list(input_names), output_names=list(output_names),
                dynamic_axes={name: {0: "batch"} for name in (*input_names, *output_names)},
            )
        except Exception as error:  # the exporter raises many types, with the graph dumped after the reason
            reason = next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)
            raise EdgesplitError(f"{path.stem} cannot be exported to ONNX at opset {opset}: {reason}") from error
    model = onnx.load_from_string(buffer.getvalue())
    simplified, valid = onnxsim.simplify(model)
    if not valid:
        raise EdgesplitError(f"onnxsim could not validate the simplified {path.name}")
    pin_output_shapes(simplified, module, examples)
    onnx.helper.set_model_props(simplified, metadata)
    onnx.checker.check_model(simplified, full_check=True)
    onnx.save(simplified, path)


def pin_output_shapes(model: onnx.ModelProto, module: nn.Module, examples: tuple[torch.Tensor, ...]) -> None:
    """Every output's axes but the batch as PyTorch computes them: reshapes traced from a dynamic batch (attention
    decomposed, say) leave ONNX's shape inference with unknown axes TensorRT would take as dynamic. The
    checker's full shape inference then verifies them."""
    with torch.no_grad():
        result = module.eval()(*examples)
    for output, tensor in zip(model.graph.output, result if isinstance(result, tuple) else (result,)):
        dims = output.type.tensor_type.shape.dim
        if len(dims) != tensor.dim():
            continue  # left to the checks that compare with PyTorch
        for dim, size in list(zip(dims, tensor.shape))[1:]:
            dim.dim_value = size


def compare_with_torch(module: nn.Module, path: Path, inputs: tuple[torch.Tensor, ...]) -> list[ExportCheck]:
    """Run the same inputs through PyTorch and the ONNX file in ONNX Runtime: one check per output."""
    with torch.no_grad():
        expected = module.eval()(*inputs)
    expected = [t.numpy() for t in (expected if isinstance(expected, tuple) else (expected,))]
    runner = OnnxRuntimeRunner(path)
    results = runner.infer({name: tensor.numpy() for (name, _, _), tensor in zip(runner.inputs, inputs)})
    checks = []
    for (name, _, _), wanted in zip(runner.outputs, expected):
        actual = results[name]
        if actual.shape != wanted.shape or actual.dtype != wanted.dtype:
            raise EdgesplitError(f"{path.name} returns {actual.dtype}{actual.shape} as {name}, "
                                 f"PyTorch {wanted.dtype}{wanted.shape}")
        difference = np.abs(actual.astype(np.float64) - wanted.astype(np.float64))
        checks.append(ExportCheck(float(difference.max()), float((difference > 0).mean())))
    return checks


MAX_CODE_ERROR = 1  # ONNX Runtime and PyTorch may round a value on a code boundary differently
MAX_LOGIT_ERROR = 1e-3


def export_half(half, code_dtype: str) -> tuple[Path, dict]:
    """A half as ONNX at its device's opset: exported, simplified, checked against PyTorch, and made
    Q/DQ INT8 (calibrated on the half's calibration inputs) when its precision is int8.

    Returns the file and the checks (max |Δ| per output against PyTorch; an int8 half has no bound
    here: the bundle's accuracy gate decides)."""
    from toolchain.quantize import quantize_in_place

    dtype = getattr(torch, code_dtype)
    module, examples = half.module(dtype), half.inputs(half.sample, dtype)
    input_names, output_names = half.names
    path = half.directory / f"{half.role}.onnx"
    export_onnx(module, examples, path, half.device.onnx_opset, input_names, output_names, metadata=half.metadata)
    codes = set(half.parts.code_names)
    limits = [MAX_CODE_ERROR if name in codes else MAX_LOGIT_ERROR for name in output_names]
    if half.precision == "int8":
        calibration = half.inputs(half.calibration, dtype)
        calibrated = quantize_in_place(path, {name: tensor.numpy() for name, tensor in zip(input_names, calibration)},
                                       half.scratch, half.role)
        limits = [float("inf")] * len(limits)
    errors: dict[str, list[ExportCheck]] = {}
    for name, check, limit in zip(output_names, compare_with_torch(module, path, examples), limits):
        if check.max_abs_error > limit:
            raise EdgesplitError(f"{name} output of the {half.role} ONNX differs from PyTorch by "
                                 f"{check.max_abs_error:g} (limit {limit:g})")
        errors.setdefault("exit" if name == "exit_logits" else half.role, []).append(check)
    checks = {f"{half.role}_calibration": calibrated.describe()} if half.precision == "int8" else {}
    for label, found in errors.items():
        checks[f"{label}_max_abs_error"] = max(check.max_abs_error for check in found)
        checks[f"{label}_mismatched_fraction"] = max(check.mismatched_fraction for check in found)
    return path, checks


def export_whole_model(request) -> Path:
    """The unsplit model as ONNX at the device's opset (Q/DQ INT8 when its precision is int8)."""
    from toolchain.quantize import quantize_in_place

    path = request.directory / f"whole-{request.cache_key}.onnx"
    examples = (torch.from_numpy(request.calibration[:1]),)
    export_onnx(request.module, examples, path, request.device.onnx_opset, ("image",), request.outputs,
                metadata={"edgesplit_role": "whole model", "edgesplit_device": request.device.name})
    if request.precision == "int8":
        quantize_in_place(path, {"image": request.calibration})
    return path
