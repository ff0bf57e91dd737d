"""One home per backend in the toolchain, mirroring runtime/backends/<name>/: the exporter table.

In the spirit of Ultralytics' `export_formats()`: one row per backend (ONNX Runtime, TensorRT,
TFLite) with its artefact's suffix, the precisions it builds, the halves it can run, the dtype
codes cross its halves in, whether the build host needs a GPU to finish its artefact, and the
functions that export a half (quantizing, linting and checking it on the way), compile it where
the host can, and export the whole model for `profile`'s baselines. Validation, the CLI and the
docs read this table; nothing outside a backend's own module compares against its name.

Adding a backend is adding a module here with an `EXPORTER` (and its runner in runtime/backends/).
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import torch
from torch import nn

from targets import PRECISIONS, Device
from toolchain.codecs import FeatureCodec
from toolchain.errors import TargetError
from toolchain.evaluate import batched
from toolchain.exit_branch import EXIT_OUTPUT, EdgeWithExit, ExitBranch

IMAGE, CODES, LOGITS = "image", "codes", "logits"


class Chain(nn.Module):
    """`second(first(x))`, unpacking a tuple: how halves pass several crossing tensors along."""

    def __init__(self, first: nn.Module, second: nn.Module) -> None:
        super().__init__()
        self.first, self.second = first, second

    def forward(self, *inputs):
        middle = self.first(*inputs)
        return self.second(*middle) if isinstance(middle, tuple) else self.second(middle)


class Parts(NamedTuple):
    """The torch pieces both halves are made of, and the names their tensors carry. Edge-only has no codec: its
    edge half is the whole model (the tail of a cut at the input)."""

    head: nn.Module
    codec: FeatureCodec | None
    tail: nn.Module
    branch: ExitBranch | None
    outputs: tuple[str, ...]  # what the tail returns, in order

    @property
    def code_names(self) -> tuple[str, ...]:
        """'codes', or codes0, codes1.. when several tensors cross the cut; none when nothing does."""
        if self.codec is None:
            return ()
        count = len(getattr(self.codec, "codecs", ())) or 1
        return (CODES,) if count == 1 else tuple(f"{CODES}{i}" for i in range(count))

    @property
    def code_shapes(self) -> tuple[tuple[int, ...], ...]:
        return getattr(self.codec, "code_shapes", (self.codec.code_shape,))

    def edge(self, code_dtype: torch.dtype) -> nn.Module:
        """Head + encoder (+ exit branch): images → codes (, exit logits); edge-only: the whole model."""
        if self.codec is None:
            return self.tail.eval()
        encoder = self.codec.encoder(code_dtype)
        if self.branch is None:
            return Chain(self.head, encoder).eval()
        return EdgeWithExit(self.head, encoder, self.branch).eval()

    def edge_before_quantizer(self) -> nn.Module:
        """What an integer-only artefact computes: the encoder stops before its quantizer."""
        if self.codec is None:
            return self.tail.eval()
        before = self.codec.pre_quantization()
        if self.branch is None:
            return Chain(self.head, before).eval()
        return EdgeWithExit(self.head, before, self.branch).eval()

    def cloud(self) -> nn.Module:
        return Chain(self.codec.decoder(), self.tail).eval()

    @torch.no_grad()
    def codes(self, images: np.ndarray, code_dtype: torch.dtype):
        """The codes of `images`: a tensor, or a tuple of them when several tensors cross."""
        return batched(Chain(self.head, self.codec.encoder(code_dtype)).eval(), images)

    @torch.no_grad()
    def output_shapes(self, images: np.ndarray) -> list[tuple[int, ...]]:
        features = self.head(torch.from_numpy(images[:1]))
        result = self.tail(*features) if isinstance(features, tuple) else self.tail(features)
        return [tuple(t.shape[1:]) for t in (result if isinstance(result, tuple) else (result,))]


class Half(NamedTuple):
    """One half to export: its role, device and precision, the parts, and images to check it on."""

    role: str
    device: Device
    precision: str
    parts: Parts
    calibration: np.ndarray  # images (N, C, H, W) in [0, 1]; a cloud half sees their codes
    sample: np.ndarray  # held-out images for the export checks
    directory: Path
    metadata: dict[str, str]
    scratch: Path | None = None  # where an INT8 half keeps what quantizing it again needs (outside the bundle)

    def module(self, code_dtype: torch.dtype) -> nn.Module:
        return self.parts.edge(code_dtype) if self.role == "edge" else self.parts.cloud()

    def inputs(self, images: np.ndarray, code_dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
        """What this half takes for `images`: the images themselves, or their codes (one tensor each)."""
        if self.role == "edge":
            return (torch.from_numpy(images),)
        codes = self.parts.codes(images, code_dtype)
        return codes if isinstance(codes, tuple) else (codes,)

    @property
    def names(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(input names, output names)."""
        if self.role == "cloud":
            return self.parts.code_names, self.parts.outputs
        if self.parts.codec is None:
            return (IMAGE,), self.parts.outputs
        exits = () if self.parts.branch is None else (EXIT_OUTPUT,)
        return (IMAGE,), self.parts.code_names + exits


class WholeModel(NamedTuple):
    """The unsplit model on one device's backend, for `profile`'s edge-only and cloud-only baselines."""

    module: nn.Module
    outputs: tuple[str, ...]  # the model's output names; the first is the one timed and scored
    device: Device
    precision: str
    calibration: np.ndarray
    directory: Path
    cache_key: str
    threads: int | None


class TritonTail(NamedTuple):
    """How Triton runs a cloud artefact with its own backend (`edgesplit export-triton`)."""

    platform: str  # Triton's platform: onnxruntime_onnx, tensorrt_plan
    source: str  # the bundle's file it loads
    file: str  # its name in the model's version folder
    kind: str  # KIND_CPU or KIND_GPU
    config: str = ""  # more config.pbtxt text (an execution accelerator)


class Exporter(NamedTuple):
    name: str  # = runtime/backends/<name>
    title: str
    suffix: str
    precisions: tuple[str, ...]
    roles: tuple[str, ...]
    code_dtype: str | None  # dtype codes cross its halves in; None: the artefact says how (see its entry)
    host_needs_gpu: bool  # finishing the artefact (an engine) needs a GPU where it is built
    export: Callable[[Half], tuple[dict, dict]]  # → (manifest entry, checks); writes the artefact
    whole_model: Callable[[WholeModel], Callable[[np.ndarray], np.ndarray]]  # → images → logits
    compile: Callable[[Path, dict], None] | None = None  # builds {role: entry} engines where the host can
    unavailable: Callable[[], str] = lambda: ""  # why this host cannot run its artefacts ("" if it can)
    triton_tail: Callable[[dict], TritonTail] | None = None  # a cloud entry → how Triton serves it natively
    # (role, device, float module, example inputs) → raises where the device cannot take the half: run on the
    # float half right after the split, so calibration and training are not spent on a half it would refuse
    precheck: Callable[[str, Device, nn.Module, tuple], None] | None = None
    # (build scratch, role) → the INT8 half its export left there to quantize again with some layers in higher
    # precision (toolchain/mixed_precision.py), or None
    requantizable: Callable[[Path, str], object | None] | None = None


def exporter(device: Device) -> Exporter:
    if device.backend not in EXPORTERS:
        raise TargetError(f"device {device.name} runs backend {device.backend!r}, which this toolchain cannot "
                          f"export; backends: {', '.join(sorted(EXPORTERS))}")
    return EXPORTERS[device.backend]


def check_precision(device: Device, role: str, requested: str | None) -> str:
    """The precision of a device's half: its default, or `requested` when its backend builds it and the
    device can run it."""
    if requested is None:
        return device.precision
    if requested not in PRECISIONS:
        raise TargetError(f"precision must be one of {', '.join(PRECISIONS)}, got {requested!r}")
    if requested in device.refused_precisions:
        raise TargetError(f"{requested} is refused for {device.name}: {device.refused_precisions[requested]}")
    row = exporter(device)
    if requested not in row.precisions:
        raise TargetError(f"{device.name}'s {role} half runs on {row.title}, which edgesplit builds in "
                          f"{', '.join(row.precisions)}, not {requested}")
    return requested


def export_formats() -> list[dict]:
    """The table as rows, for docs and `edgesplit devices`."""
    return [{"backend": row.name, "title": row.title, "suffix": row.suffix, "precisions": ", ".join(row.precisions),
             "halves": ", ".join(row.roles), "codes": row.code_dtype or "int8, mapped by the manifest",
             "GPU where it is built": "for the engine (else the device builds it)" if row.host_needs_gpu else "no"}
            for row in EXPORTERS.values()]


def tensor_spec(name: str, shape: tuple[int, ...] | list[int], dtype: str, layout: str | None = None) -> dict:
    """A manifest tensor: name, shape with a batch axis, dtype, layout."""
    shape = list(shape)
    layout = layout or {3: "NCHW", 1: "NC"}.get(len(shape), "unspecified")
    return {"name": name, "shape": ["batch", *shape], "dtype": dtype, "layout": layout}


def code_encoding(dtype: str, levels: int) -> dict:
    return {"dtype": dtype, "values": f"integers 0..{levels - 1}",
            "note": "integral float32: this backend takes no uint8 tensors" if dtype == "float32" else ""}


def _discover() -> dict[str, Exporter]:
    exporters = {}
    for module in pkgutil.iter_modules(__path__):
        exporter = importlib.import_module(f"{__name__}.{module.name}").EXPORTER
        exporters[exporter.name] = exporter
    return exporters


EXPORTERS = _discover()  # last: each backend's module imports the names above
