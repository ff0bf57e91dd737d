"""A cut crossed by several tensors: one codec per tensor, their codes in one frame."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from runtime.wire import WireFormat
from toolchain.codecs.base import FeatureCodec
from toolchain.errors import EdgesplitError


class PerTensor(nn.Module):
    """Applies one module per tensor: k tensors in, k tensors out, in the cut's order."""

    def __init__(self, modules: list[nn.Module]) -> None:
        super().__init__()
        self.each = nn.ModuleList(modules)

    def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(module(tensor) for module, tensor in zip(self.each, tensors))


class MultiCodec(FeatureCodec):
    """A cut crossed by several tensors: one codec of the same spec per tensor, all their codes in one
    frame (the runtime's WireFormat parts). Only codecs without training take part."""

    def __init__(self, codecs: list[FeatureCodec]) -> None:
        first = codecs[0]
        super().__init__(first.feature_shape)
        self.codecs = nn.ModuleList(codecs)
        self.name, self.bits = first.name, first.bits
        self.code_shapes = tuple(codec.code_shape for codec in codecs)
        self.code_shape = (sum(int(np.prod(shape)) for shape in self.code_shapes),)

    @property
    def range_methods(self) -> tuple[str, ...]:
        return self.codecs[0].range_methods

    def calibrate(self, features, method: str = "min-max") -> None:
        for codec, tensor in zip(self.codecs, features):
            codec.calibrate(tensor, method)

    def encoder(self, code_dtype: torch.dtype = torch.uint8) -> nn.Module:
        return PerTensor([codec.encoder(code_dtype) for codec in self.codecs])

    def decoder(self) -> nn.Module:
        return PerTensor([codec.decoder() for codec in self.codecs])

    def pre_quantization(self) -> nn.Module:
        return PerTensor([codec.pre_quantization() for codec in self.codecs])

    def forward(self, *features: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(codec(tensor) for codec, tensor in zip(self.codecs, features))

    def params(self) -> dict:
        return self.codecs[0].params()

    def wire_format(self, lossless: str = "none") -> WireFormat:
        return WireFormat.of(self.code_shapes, self.bits, lossless)

    def map_int8_output(self, scale: float, zero_point: int) -> dict:
        raise EdgesplitError("an integer-only edge half maps one output to codes; this cut crosses "
                             f"{len(self.codecs)} tensors")

    def describe(self) -> dict:
        return {**super().describe(), "parts": [codec.describe() for codec in self.codecs]}
