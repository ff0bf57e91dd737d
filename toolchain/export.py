"""Halves → ONNX: TorchScript-based export (reaches opset 13 for old TensorRT), onnxsim,
onnx.checker, metadata in the file, and a numerical comparison with PyTorch through ONNX Runtime.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np
import onnx
import onnxsim
import torch
from torch import nn

from runtime.backends.onnxrt.runner import OnnxRuntimeRunner
from toolchain.errors import EdgesplitError


class ExportCheck(NamedTuple):
    max_abs_error: float
    mismatched_fraction: float  # integer outputs: share of elements that differ at all


def export_onnx(
    module: nn.Module, example: torch.Tensor, path: Path, opset: int,
    input_name: str, output_names: str | tuple[str, ...], metadata: dict[str, str],
) -> None:
    """Export with a dynamic batch axis, simplify, check, and stamp metadata into the file."""
    output_names = (output_names,) if isinstance(output_names, str) else tuple(output_names)
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # TorchScript deprecation chatter
        torch.onnx.export(
            module.eval(), (example,), buffer, dynamo=False, opset_version=opset,
            input_names=[input_name], output_names=list(output_names),
            dynamic_axes={name: {0: "batch"} for name in (input_name, *output_names)},
        )
    model = onnx.load_from_string(buffer.getvalue())
    simplified, valid = onnxsim.simplify(model)
    if not valid:
        raise EdgesplitError(f"onnxsim could not validate the simplified {path.name}")
    onnx.helper.set_model_props(simplified, metadata)
    onnx.checker.check_model(simplified, full_check=True)
    onnx.save(simplified, path)


def compare_with_torch(module: nn.Module, path: Path, inputs: torch.Tensor) -> list[ExportCheck]:
    """Run the same inputs through PyTorch and the ONNX file in ONNX Runtime: one check per output."""
    with torch.no_grad():
        expected = module.eval()(inputs)
    expected = [t.numpy() for t in (expected if isinstance(expected, tuple) else (expected,))]
    runner = OnnxRuntimeRunner(path)
    results = runner.infer({runner.inputs[0][0]: inputs.numpy()})
    checks = []
    for (name, _, _), wanted in zip(runner.outputs, expected):
        actual = results[name]
        if actual.shape != wanted.shape or actual.dtype != wanted.dtype:
            raise EdgesplitError(f"{path.name} returns {actual.dtype}{actual.shape} as {name}, "
                                 f"PyTorch {wanted.dtype}{wanted.shape}")
        difference = np.abs(actual.astype(np.float64) - wanted.astype(np.float64))
        checks.append(ExportCheck(float(difference.max()), float((difference > 0).mean())))
    return checks
