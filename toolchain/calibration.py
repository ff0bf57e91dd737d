"""Activation ranges for a Q/DQ INT8 half, chosen by what keeps the float half's answers.

One pass of onnxruntime's histogram calibrator gives every activation's |x| histogram; from it each tensor
gets three symmetric ranges: min-max (the largest |x|: nothing clipped), percentile (RANGE_PERCENTILE of
|x|: the outliers clipped, TensorRT's percentile calibrator) and MSE (the threshold with the least expected
quantization error, rounding and clipping together: ModelOpt's "mse"). Each set of ranges is quantized
(onnxruntime's quantize_static with per-tensor overrides) at each placement of Q/DQ (quantize.PLACEMENTS: every
op, or the weighted ops' inputs only) and run unfused beside the float half on a few calibration inputs; the
candidate whose answers agree best (then the smallest relative error) is kept, min-max at every op on a tie
since it clips nothing and leaves nothing to FP16.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import onnx

from runtime.local import batch_size_for, in_batches
from toolchain.evaluate import relative_error
from toolchain.quantize import PLACEMENTS
from toolchain.quiet import quiet

LEVELS = 127  # symmetric int8: -127..127
RANGE_PERCENTILE = 99.99
SCORED_SAMPLES = 64  # inputs each candidate is run on; ranges come from every calibration input
# inputs whose every activation the calibrator holds at once, not the whole set's: 16, or as many as leave
# 1/8 of a batch's values (a 224x224 ResNet-50 half's activations of 16 inputs took 1.3 GB)
HISTOGRAM_CHUNK, HISTOGRAM_SHARE = 16, 8


class Histogram(NamedTuple):
    counts: np.ndarray  # of |x| over the calibration inputs
    edges: np.ndarray

    def centres(self) -> np.ndarray:
        return (self.edges[:-1] + self.edges[1:]) / 2


def min_max(histogram: Histogram) -> float:
    return float(histogram.edges[-1])


def percentile(histogram: Histogram) -> float:
    share = np.cumsum(histogram.counts) / max(1, histogram.counts.sum())
    return float(histogram.edges[1:][min(np.searchsorted(share, RANGE_PERCENTILE / 100), len(share) - 1)])


def quantization_error(histogram: Histogram, thresholds: np.ndarray) -> np.ndarray:
    """Expected squared error of symmetric int8 at each threshold: a uniform rounding error of step²/12 inside
    the range, the distance to the threshold outside it."""
    centres, counts = histogram.centres()[None, :], histogram.counts[None, :]
    limits = thresholds[:, None]
    rounding = (limits / LEVELS) ** 2 / 12
    clipped = np.where(centres > limits, (centres - limits) ** 2, rounding)
    return (clipped * counts).sum(axis=1)


def mse(histogram: Histogram) -> float:
    thresholds = histogram.edges[1:]
    return float(thresholds[np.argmin(quantization_error(histogram, thresholds))])


RANGES: dict[str, Callable[[Histogram], float]] = {"min-max": min_max, "percentile": percentile, "mse": mse}


class Calibrated(NamedTuple):
    """What was chosen for a half: the range method and Q/DQ placement, and every candidate's answers against
    the float half."""
    method: str
    placement: str  # quantize.PLACEMENTS
    tensors: int
    clipped: int  # tensors whose range clips some calibration values
    scores: dict  # "method at placement" -> {"agreement": ..., "relative_error": ...}
    frames: int  # calibration inputs the candidates were scored on
    thresholds: dict  # tensor name -> the chosen |x| range

    def describe(self) -> dict:
        return {"method": self.method, "placement": self.placement, "tensors": self.tensors,
                "clipped_tensors": self.clipped, "frames": self.frames, "candidates": self.scores}


class CalibrationFeed:
    """onnxruntime's CalibrationDataReader protocol over arrays (one per input), one sample per call."""

    def __init__(self, samples: dict[str, np.ndarray]):
        count = len(next(iter(samples.values())))
        self.rows = iter([{name: array[i:i + 1] for name, array in samples.items()} for i in range(count)])

    def get_next(self):
        return next(self.rows, None)


def histograms(float_path: Path, samples: dict[str, np.ndarray]) -> dict[str, Histogram]:
    from onnxruntime.quantization import CalibrationMethod, create_calibrator

    with tempfile.TemporaryDirectory() as scratch, quiet():  # the calibrator prints per call
        calibrator = create_calibrator(str(float_path), augmented_model_path=str(Path(scratch) / "augmented.onnx"),
                                       calibrate_method=CalibrationMethod.Percentile,
                                       extra_options={"symmetric": True, "num_bins": 2048})
        first = next(iter(samples.values()))
        chunk = max(1, batch_size_for(first, HISTOGRAM_CHUNK * HISTOGRAM_SHARE) // HISTOGRAM_SHARE)
        for start in range(0, len(first), chunk):  # each call merges into the histograms and drops its outputs
            calibrator.collect_data(CalibrationFeed({name: array[start:start + chunk]
                                                     for name, array in samples.items()}))
        found = calibrator.collector.histogram_dict
    return {name: Histogram(np.asarray(entry[0], np.float64), np.asarray(entry[1], np.float64))
            for name, entry in found.items()}


def ranges(found: dict[str, Histogram], method: str) -> dict[str, float]:
    return {name: RANGES[method](histogram) for name, histogram in found.items()}


def answers(reference: list[np.ndarray], candidate: list[np.ndarray]) -> dict:
    """How well a candidate keeps the float half's answers: top-1 agreement over its score outputs (N, classes),
    and the relative error over every output."""
    agreements = [float((c.argmax(1) == r.argmax(1)).mean()) for r, c in zip(reference, candidate)
                  if r.ndim == 2 and r.shape[1] > 1 and np.issubdtype(r.dtype, np.floating)]
    errors = [relative_error(c.astype(np.float64), r.astype(np.float64)) for r, c in zip(reference, candidate)]
    return {"agreement": float(np.mean(agreements)) if agreements else None,
            "relative_error": float(np.mean(errors))}


def run_all(path: Path, samples: dict[str, np.ndarray], graph_optimization: str) -> list[np.ndarray]:
    from runtime.backends.onnxrt.runner import OnnxRuntimeRunner

    runner = OnnxRuntimeRunner(path, graph_optimization=graph_optimization)

    def outputs(batch: list[np.ndarray]) -> list[np.ndarray]:
        found = runner.infer_impl(dict(zip(samples, batch)))
        return [found[name] for name, _, _ in runner.outputs]
    arrays = list(samples.values())  # every half's batch axis is dynamic; 64 224x224 inputs at once took ~1 GB
    return in_batches(outputs, arrays, batch_size_for(arrays[0]))


def rank(scores: dict) -> tuple:
    agreement = scores["agreement"]
    return (agreement if agreement is not None else 1.0, -scores["relative_error"])


def calibrate(float_path: Path, qdq_path: Path, samples: dict[str, np.ndarray], quantize: Callable) -> Calibrated:
    """Writes `qdq_path` quantized with the best of RANGES at the best of PLACEMENTS; `quantize(float, qdq, samples,
    thresholds, exclude, placement)` makes one candidate (thresholds per tensor name)."""
    found = histograms(float_path, samples)
    scored = {name: array[:SCORED_SAMPLES] for name, array in samples.items()}
    reference = run_all(float_path, scored, "all")
    scores, best = {}, None
    for placement in PLACEMENTS:
        for method in RANGES:
            name = f"{method} at {placement}"
            candidate = qdq_path.with_suffix(f".{len(scores)}.onnx")
            quantize(float_path, candidate, samples, ranges(found, method), [], placement)
            scores[name] = answers(reference, run_all(candidate, scored, "disabled"))
            if best is None or rank(scores[name]) > rank(scores[best[0]]):
                if best is not None:
                    best[1].unlink()
                best = name, candidate, method, placement
            else:
                candidate.unlink()
    _, candidate, method, placement = best
    candidate.replace(qdq_path)
    chosen = ranges(found, method)
    clipped = sum(chosen[name] < min_max(histogram) for name, histogram in found.items())
    onnx.checker.check_model(str(qdq_path))
    return Calibrated(method, placement, len(found), clipped, scores, len(next(iter(scored.values()))), chosen)


SCORED_FRAMES = 256  # calibration frames each codec range is scored on


def as_tuple(value) -> tuple:
    return value if isinstance(value, tuple) else (value,)


def tail_outputs(tail, crossing: tuple) -> list[np.ndarray]:
    """`tail`'s outputs a batch at a time (batch_size_for the first crossing tensor): 256 frames of a 224x224
    ResNet-50's tail at once held gigabytes."""
    import torch

    size, count = batch_size_for(crossing[0]), len(crossing[0])
    pieces = [as_tuple(tail(*(tensor[start:start + size] for tensor in crossing))) for start in range(0, count, size)]
    return [torch.cat(parts).numpy() for parts in zip(*pieces)]


def choose_codec_range(codec, features, tail) -> dict | None:
    """Calibrates `codec` (codecs.FeatureCodec) on `features` (a crossing tensor or a tuple of them) with the
    range method, of those it takes, whose decoded features keep `tail`'s float answers best (min-max on a tie);
    returns the method and every method's answers, or None for a codec with at most one way to fit a range."""
    import torch

    methods = codec.range_methods
    if len(methods) < 2:
        codec.calibrate(features)
        return None
    scored = tuple(tensor[:SCORED_FRAMES] for tensor in as_tuple(features))
    with torch.no_grad():
        reference = tail_outputs(tail, scored)
        scores = {}
        for method in methods:
            codec.calibrate(features, method)
            scores[method] = answers(reference, tail_outputs(tail, as_tuple(codec(*scored))))
    best = max(methods, key=lambda method: rank(scores[method]))  # max keeps the first of equals: min-max
    codec.calibrate(features, best)
    return {"method": best, "frames": len(scored[0]), "candidates": scores}
