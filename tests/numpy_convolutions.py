"""Conv and ConvTranspose for onnx's ReferenceEvaluator as one float32 matrix product per kernel tap.

The evaluator's own kernels compute the same sums through im2col copies and a per-element col2im loop
(ConvTranspose: 17 s for 250 frames of the default cloud half); these stay numpy, with no int8 kernel
anywhere, which is what the Q/DQ tests need of an independent evaluator. Only 2-D, no dilation and
explicit pads are implemented; anything else falls back to the evaluator's own kernel."""

from __future__ import annotations

import numpy as np
from onnx.reference.ops.op_conv import Conv as ReferenceConv
from onnx.reference.ops.op_conv_transpose import ConvTranspose as ReferenceConvTranspose


def plain_2d(x, w, auto_pad, dilations) -> bool:
    return x.ndim == 4 and w.ndim == 4 and auto_pad in (None, "NOTSET") and all(d == 1 for d in dilations or (1, 1))


def matmul(images: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """[N, H, W, C] @ [C, M] as one matrix product (a batched product of H x W rows is many small ones)."""
    rows = np.ascontiguousarray(images).reshape(-1, images.shape[-1]) @ weights
    return rows.reshape(*images.shape[:-1], weights.shape[-1])


def conv2d(x: np.ndarray, w: np.ndarray, group: int, pads, strides) -> np.ndarray:
    batch, _, height, width = x.shape
    out_channels, per_group, kh, kw = w.shape
    top, left, bottom, right = pads
    sh, sw = strides
    padded = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    out_h = (height + top + bottom - kh) // sh + 1
    out_w = (width + left + right - kw) // sw + 1
    out = np.zeros((batch, out_h, out_w, out_channels), dtype=np.float32)
    per_out = out_channels // group
    for g in range(group):
        inputs = padded[:, g * per_group:(g + 1) * per_group].transpose(0, 2, 3, 1)
        weights = w[g * per_out:(g + 1) * per_out]
        for i in range(kh):
            for j in range(kw):
                window = inputs[:, i:i + sh * (out_h - 1) + 1:sh, j:j + sw * (out_w - 1) + 1:sw]
                out[..., g * per_out:(g + 1) * per_out] += matmul(window, weights[:, :, i, j].T)
    return out.transpose(0, 3, 1, 2)


def conv_transpose2d(x: np.ndarray, w: np.ndarray, pads, strides, output_padding) -> np.ndarray:
    batch, _, height, width = x.shape
    _, out_channels, kh, kw = w.shape
    sh, sw = strides
    full = np.zeros((batch, (height - 1) * sh + kh + output_padding[0], (width - 1) * sw + kw + output_padding[1],
                     out_channels), dtype=np.float32)
    inputs = x.transpose(0, 2, 3, 1)
    for i in range(kh):
        for j in range(kw):
            full[:, i:i + sh * (height - 1) + 1:sh, j:j + sw * (width - 1) + 1:sw] += matmul(inputs, w[:, :, i, j])
    top, left, bottom, right = pads
    return full[:, top:full.shape[1] - bottom, left:full.shape[2] - right].transpose(0, 3, 1, 2)


class Conv(ReferenceConv):
    def _run(self, X, W, B=None, auto_pad=None, dilations=None, group=None, kernel_shape=None, pads=None,
             strides=None):
        if not plain_2d(X, W, auto_pad, dilations):
            return super()._run(X, W, B, auto_pad=auto_pad, dilations=dilations, group=group,
                                kernel_shape=kernel_shape, pads=pads, strides=strides)
        out = conv2d(X.astype(np.float32, copy=False), W.astype(np.float32, copy=False), group or 1,
                     pads or (0, 0, 0, 0), strides or (1, 1))
        return ((out if B is None else out + B.reshape(1, -1, 1, 1)).astype(X.dtype, copy=False),)


class ConvTranspose(ReferenceConvTranspose):
    def _run(self, X, W, B=None, auto_pad=None, dilations=None, group=None, kernel_shape=None, output_padding=None,
             output_shape=None, pads=None, strides=None):
        if not plain_2d(X, W, auto_pad, dilations) or (group or 1) != 1 or output_shape is not None:
            return super()._run(X, W, B, auto_pad=auto_pad, dilations=dilations, group=group,
                                kernel_shape=kernel_shape, output_padding=output_padding, output_shape=output_shape,
                                pads=pads, strides=strides)
        out = conv_transpose2d(X.astype(np.float32, copy=False), W.astype(np.float32, copy=False),
                               pads or (0, 0, 0, 0), strides or (1, 1), output_padding or (0, 0))
        return ((out if B is None else out + B.reshape(1, -1, 1, 1)).astype(X.dtype, copy=False),)


OPS = [Conv, ConvTranspose]
