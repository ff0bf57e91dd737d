"""Compression search (BBNet Algorithm 1, train phase) and the accuracy-vs-bytes table.

Configurations are tried from the least to the most compressed; each is trained and scored,
the most compressed one within the accuracy budget is kept, and the search stops at the
first configuration that misses the budget (more compression will not win it back).
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Iterable, NamedTuple

import numpy as np
import torch
from torch import nn

from toolchain.codec_training import FeatureCache, score_codec, train_codec
from toolchain.codecs import CodecSpec, FeatureCodec, make_codec
from toolchain.lossless import choose

CALIBRATION_FRAMES = 512  # training frames a codec's ranges and the rans stage's prior are fitted to, as a build's


class SearchRow(NamedTuple):
    codec: str
    bytes_per_frame: float  # mean payload after the best lossless stage
    lossless: str
    compression: float  # fp32 split-tensor bits / transmitted bits
    accuracy: float | None
    loss_points: float | None
    agreement: float
    train_seconds: float


def grid(family: str, channels: Iterable[int], strides: Iterable[int], bits: Iterable[int],
         rates: Iterable[float] = (0.0,)) -> list[CodecSpec]:
    """Every combination; a rate of 0 trains for accuracy alone (and names no rate)."""
    return [CodecSpec(family, {"c": c, "s": s, "bits": b, **({"rate": r} if r else {})})
            for c, s, b, r in itertools.product(channels, strides, bits, rates)]


@torch.no_grad()
def best_lossless(codec: FeatureCodec, features: torch.Tensor, fitting: torch.Tensor) -> tuple[str, float]:
    """The stage with the smallest mean payload on these features (every byte stage, and rans on frames as small as
    `--lossless auto` codes with it, its prior fitted to the codes of `fitting`, as a build fits it to its
    calibration images)."""
    encoder = codec.encoder().eval()
    wire, sizes = choose(codec, encoder(features.float()).numpy(), encoder(fitting.float()).numpy(), builtin=False,
                         entropy=True)
    return wire.lossless, sizes[wire.lossless]


def evaluate_config(
    spec: CodecSpec, feature_shape: tuple[int, ...], tail: nn.Module, train: FeatureCache,
    test: FeatureCache, epochs: int, seed: int, calibration: torch.Tensor,
) -> tuple[SearchRow, FeatureCodec]:
    torch.manual_seed(seed)
    codec = make_codec(spec, feature_shape)
    codec.calibrate(calibration.float())
    seconds = train_codec(codec, tail, train, epochs, seed) if codec.learned else 0.0
    score = score_codec(codec, tail, test)
    stage, payload = best_lossless(codec, test.features[:500], calibration)
    fp32_bits = 32 * int(np.prod(feature_shape))
    row = SearchRow(str(spec), payload, stage, fp32_bits / (8 * payload), score.accuracy, score.loss_points,
                    score.agreement, seconds)
    return row, codec


def search(
    specs: list[CodecSpec], feature_shape: tuple[int, ...], tail: nn.Module, train: FeatureCache,
    test: FeatureCache, budget_points: float, epochs: int, seed: int,
) -> tuple[list[SearchRow], FeatureCodec | None]:
    """Rows for every configuration tried, and the most compressed codec within the budget."""
    if test.labels is None:
        raise ValueError("the search needs labeled held-out images to measure accuracy loss")
    # a higher rate weight compresses more at the same shape
    ordered = sorted(specs, key=lambda spec: (-make_codec(spec, feature_shape).wire_format().packed_bytes,
                                              float(spec.params.get("rate", 0))))
    rows, best = [], None
    for spec in ordered:
        row, codec = evaluate_config(spec, feature_shape, tail, train, test, epochs, seed,
                                     train.features[:CALIBRATION_FRAMES])
        rows.append(row)
        if row.loss_points > budget_points:
            break
        best = codec
    return rows, best


def plot_rows(rows: list[SearchRow], path: Path, title: str, reference_accuracy: float | None = None) -> None:
    """Accuracy vs bytes per frame (log x), one line per codec family: sc2bench's axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    for family in dict.fromkeys(row.codec.split(":")[0] for row in rows):
        points = sorted((row.bytes_per_frame, 100 * row.accuracy) for row in rows
                        if row.codec.split(":")[0] == family and row.accuracy is not None)
        if points:
            axes.plot(*zip(*points), marker="o", label=family)
    if reference_accuracy is not None:
        axes.axhline(100 * reference_accuracy, color="grey", linestyle="--", label="unsplit model")
    axes.set_xscale("log")
    axes.set_xlabel("bytes per frame on the wire (after the best lossless stage)")
    axes.set_ylabel("top-1 accuracy (%)")
    axes.set_title(title)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
