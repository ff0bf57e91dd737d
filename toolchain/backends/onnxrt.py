"""ONNX Runtime halves: float ONNX at the device's opset, exactly what `edgesplit serve` / `edge` run."""

from __future__ import annotations

import numpy as np

from toolchain.backends import Exporter, Half, TritonTail, WholeModel, code_encoding, tensor_spec
from toolchain.export import export_half, export_whole_model

CODE_DTYPE = "uint8"
VERIFICATION = {"backend": "onnxrt", "arithmetic": "ONNX Runtime, as deployed"}


def export(half: Half) -> tuple[dict, dict]:
    path, checks = export_half(half, CODE_DTYPE)
    return dict(onnx_entry(half, path.name, CODE_DTYPE), verification=VERIFICATION), checks


def onnx_entry(half: Half, file: str, code_dtype: str) -> dict:
    """The manifest entry of an ONNX half (shared by every backend that ships ONNX)."""
    parts = half.parts
    answers = [tensor_spec(name, shape, "float32") for name, shape in zip(parts.outputs, parts.output_shapes(half.sample))]
    common = {"file": file, "backend": half.device.backend, "device": half.device.name, "precision": half.precision,
              "opset": half.device.onnx_opset}
    if parts.codec is None:  # edge-only: the whole model
        return dict(common, inputs=[tensor_spec("image", half.sample.shape[1:], "float32")], outputs=answers)
    codes = [tensor_spec(name, shape, code_dtype) for name, shape in zip(parts.code_names, parts.code_shapes)]
    if half.role == "edge":
        inputs = [tensor_spec("image", half.sample.shape[1:], "float32")]
        outputs = codes + ([] if parts.branch is None else [tensor_spec("exit_logits", (parts.branch.classes,),
                                                                          "float32")])
    else:
        inputs, outputs = codes, answers
    return dict(common, inputs=inputs, outputs=outputs, codes=code_encoding(code_dtype, parts.codec.levels))


def whole_model(request: WholeModel):
    from runtime.backends.onnxrt.runner import OnnxRuntimeRunner

    runner = OnnxRuntimeRunner(export_whole_model(request), threads=request.threads)
    return lambda images: runner.infer({"image": np.ascontiguousarray(images)})[request.outputs[0]]


def triton_tail(entry: dict) -> TritonTail:
    return TritonTail("onnxruntime_onnx", entry["file"], "model.onnx", "KIND_CPU")


EXPORTER = Exporter(
    name="onnxrt", title="ONNX Runtime", suffix=".onnx", precisions=("fp32",), roles=("edge", "cloud"),
    code_dtype=CODE_DTYPE, host_needs_gpu=False, export=export, whole_model=whole_model, triton_tail=triton_tail,
)
