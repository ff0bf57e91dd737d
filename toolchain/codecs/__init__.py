"""Feature codecs at the split: one file per codec, each a `FeatureCodec` (base.py) with its training side and
its deployment side, and a `CODECS` table naming it for `--codec`; this package reads every file's table, so
adding a codec is adding its file.

    affine.py  `affine` (calibrated uniform quantization) and `int8` (`affine:bits=8`)
    bbnet.py   `bbnet`: BBNet's reduction/recovery units
    safbmp.py  `safbmp`: SAFBMP's depthwise-separable encoder, attention + bottleneck decoder
    learned.py what the learned ones share: Tanh-bounded codes, and a prior to train for rate
    pixels.py  a cloud-only bundle's image; multi.py: a cut crossed by several tensors
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil

from toolchain.codecs.base import CodecSpec, FeatureCodec
from toolchain.codecs.multi import MultiCodec
from toolchain.errors import EdgesplitError

CODECS = {name: codec for module in pkgutil.iter_modules(__path__)
          for name, codec in getattr(importlib.import_module(f"{__name__}.{module.name}"), "CODECS", {}).items()}
LEARNED = {name for name, codec in CODECS.items() if codec.learned}
DEFAULT_CODEC = "int8"


def parse_codec_spec(spec: str) -> CodecSpec:
    """`name` or `name:key=value,key=value`, e.g. `int8:per=channel`, `bbnet:c=8,s=2,bits=4`."""
    name, _, arguments = spec.partition(":")
    if name not in CODECS:
        raise EdgesplitError(f"unknown codec {name!r}; codecs: {', '.join(sorted(CODECS))}")
    params: dict = {}
    for item in filter(None, arguments.split(",")):
        key, equals, value = item.partition("=")
        if not equals:
            raise EdgesplitError(f"codec option {item!r} is not key=value (in {spec!r})")
        key, value = key.strip(), value.strip()
        if key in params:
            raise EdgesplitError(f"codec option {key!r} is given twice (in {spec!r})")
        params[key] = int(value) if value.isdigit() else value
    return CodecSpec(name, params)


def make_codec(spec: CodecSpec | str, feature_shape: tuple[int, ...]) -> FeatureCodec:
    """A codec for a split tensor of `feature_shape` (one sample, no batch axis)."""
    if isinstance(spec, str):
        spec = parse_codec_spec(spec)
    codec = CODECS[spec.name]
    accepted = [name for name in inspect.signature(codec.__init__).parameters if name not in ("self", "feature_shape")]
    unknown = sorted(set(spec.params) - set(accepted))
    if unknown:
        raise EdgesplitError(f"codec {spec.name!r} takes no option {', '.join(unknown)}; its options: "
                             f"{', '.join(accepted) or 'none'}")
    try:
        return codec(tuple(feature_shape), **spec.params)
    except TypeError as error:
        raise EdgesplitError(f"bad options for codec {spec.name!r}: {error}") from error


def make_cut_codec(spec: CodecSpec | str, shapes: tuple[tuple[int, ...], ...]) -> FeatureCodec:
    """The codec of a cut: one codec for one crossing tensor, a MultiCodec for several."""
    codecs = [make_codec(spec, shape) for shape in shapes]
    if len(codecs) == 1:
        return codecs[0]
    if codecs[0].learned:
        raise EdgesplitError(f"this cut is crossed by {len(codecs)} tensors, each with its own codec; learned "
                             f"codecs ({codecs[0].name}) train on a single crossing tensor: use int8 or affine here")
    return MultiCodec(codecs)
