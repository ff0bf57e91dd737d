"""Codec benchmark on the default model: accuracy vs bytes per frame, and lossless stages.

    python -m benchmarks.codecs [--quick] [--split layer3] [--output benchmarks/results/codecs]

Writes accuracy_vs_bytes.csv/.png (affine 8/6/4/2-bit, BBNet and SAFBMP codecs, Fashion-MNIST
test set), lossless.csv (ratio and microseconds per frame of each lossless stage on real
codes, ECNet Table III's measurement) and summary.json (machine, settings, best 512x row).
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import write_csv
from benchmarks.lossless import lossless_rows
from toolchain.codec_search import evaluate_config, grid, plot_rows
from toolchain.codec_training import cache_features
from toolchain.codecs import CodecSpec
from toolchain.data import load_images
from toolchain.load import load_model
from toolchain.split import split_model

LEARNED_GRID = {"channels": (32, 16, 8, 4), "strides": (4,), "bits": (8, 4, 2)}
AFFINE_BITS = (8, 6, 4, 2)
TARGET_COMPRESSION = 512
BUDGET_POINTS = 1.0


SEED_CONTEXT = """Seeds, for comparison (their numbers, not measured here):
- BBNet (seed 002, §4.3): up to 512x bit compression at <= 2.5 pt top-1 loss, ResNet-18 on CIFAR-10,
  160 epochs of accuracy-aware training per configuration.
- ECNet (seed 000, Table III): ZIP 1.68x at 9 ms/frame, Huffman 1.62x, on int8 ImageNet features.
"""


def write_report(output: Path) -> Path:
    """RESULTS.md from the CSV/JSON this benchmark wrote: tables are never typed by hand."""
    summary = json.loads((output / "summary.json").read_text())
    with open(output / "accuracy_vs_bytes.csv") as stream:
        rows = list(csv.DictReader(stream))
    with open(output / "lossless.csv") as stream:
        lossless = list(csv.DictReader(stream))
    settings = summary["settings"]
    lines = [
        "# Codec benchmark results", "",
        f"Written by `python -m benchmarks.codecs`; machine: {summary['machine']['platform']}, "
        f"{summary['machine']['torch_threads']} torch threads (this CPU stands in for edge and cloud).",
        f"Default model split at `{settings['split']}` (tensor {'x'.join(map(str, settings['split_tensor']))}), "
        f"codecs trained {settings['epochs']} epochs on {settings['train_frames']} Fashion-MNIST training "
        f"images, scored on {settings['test_frames']} test images; unsplit accuracy "
        f"{100 * summary['unsplit_accuracy']:.2f}%.", "",
        f"Goal: {summary['goal']}. Best within it: "
        + (f"`{summary['best_within_goal']['codec']}` at {summary['best_within_goal']['compression']:.0f}x, "
           f"{summary['best_within_goal']['loss_points']:+.2f} pt." if summary["best_within_goal"] else "none."),
        f"Mean training time per learned configuration: {summary['mean_train_seconds_per_learned_config']:.0f} s.",
        "", "![accuracy vs bytes](accuracy_vs_bytes.png)", "",
        "| codec | bytes/frame | lossless | compression vs fp32 | accuracy | loss (pt) | agreement | train (s) |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    lines += [f"| {r['codec']} | {float(r['bytes_per_frame']):.1f} | {r['lossless']} | {float(r['compression']):.1f}x "
              f"| {100 * float(r['accuracy']):.2f}% | {float(r['loss_points']):+.2f} | "
              f"{100 * float(r['agreement']):.2f}% | {float(r['train_seconds']):.0f} |" for r in rows]
    lines += ["", "Lossless stages on real codes (1000 test frames; ratio against one byte per code):", "",
              "| codes | stage | bytes/frame | ratio | encode µs/frame | decode µs/frame |",
              "|---|---|---:|---:|---:|---:|"]
    lines += [f"| {r['codes']} | {r['stage']} | {float(r['bytes_per_frame']):.1f} | {float(r['ratio_vs_uint8']):.2f}x "
              f"| {float(r['encode_us']):.0f} | {float(r['decode_us']):.0f} |" for r in lossless]
    lines += ["", SEED_CONTEXT]
    path = output / "RESULTS.md"
    path.write_text("\n".join(lines))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--split", default="layer3")
    parser.add_argument("--train-frames", type=int, default=60000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="tiny run for smoke tests (minutes, not comparable)")
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/codecs"))
    args = parser.parse_args()
    learned = LEARNED_GRID
    if args.quick:
        args.train_frames, args.epochs = 1000, 1
        learned = {"channels": (8,), "strides": (4,), "bits": (8, 2)}
    args.output.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)

    model = load_model(None)
    halves = split_model(model.module, args.split, model.input_shape)
    train_set = load_images("fashion-mnist", "train", model.spec()).take(args.train_frames)
    test_set = load_images("fashion-mnist", "test", model.spec())
    if args.quick:
        test_set = test_set.take(1000)
    train = cache_features(halves.head, halves.tail, train_set.inputs(),
                           train_set.labels, description="caching train features")
    test = cache_features(halves.head, halves.tail, test_set.inputs(),
                          test_set.labels, description="caching test features")
    shape = halves.point.shape
    specs = [CodecSpec("affine", {"bits": b, "per": "channel"}) for b in AFFINE_BITS]
    for family in ("bbnet", "safbmp"):
        specs += grid(family, **learned)
    rows, codes_for_lossless = [], {}
    for spec in specs:
        row, codec = evaluate_config(spec, shape, halves.tail, train, test, args.epochs, args.seed, train.features[:512])
        rows.append(row)
        print(f"{row.codec:28s} {row.bytes_per_frame:9.1f} B/frame ({row.lossless:4s}) "
              f"{row.compression:8.1f}x  acc {100 * row.accuracy:.2f}%  loss {row.loss_points:+.2f} pt  "
              f"train {row.train_seconds:.0f}s", flush=True)
        if spec.name == "affine" and spec.params["bits"] in (8, 4) or str(spec) == "bbnet:c=16,s=4,bits=8":
            with torch.no_grad():
                codes = codec.encoder().eval()(test.features[:1000].float()).numpy()
            codes_for_lossless[f"{spec}@{args.split}"] = (codes, codec.bits)
    write_csv(args.output / "accuracy_vs_bytes.csv", rows)
    teacher_accuracy = float((test.teacher.argmax(1) == test.labels).float().mean())
    plot_rows(rows, args.output / "accuracy_vs_bytes.png",
              f"Fashion-MNIST, ResNet-18 w0.5 split at {args.split} ({'x'.join(map(str, shape))})",
              reference_accuracy=teacher_accuracy)

    lossless = lossless_rows(codes_for_lossless, repeats=1 if args.quick else 3)
    write_csv(args.output / "lossless.csv", lossless)

    within = [r for r in rows if r.loss_points <= BUDGET_POINTS and r.compression >= TARGET_COMPRESSION]
    best = max(within, key=lambda r: r.compression, default=None)
    summary = {
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "torch_threads": torch.get_num_threads()},
        "settings": {**{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                     "split_tensor": list(shape), "test_frames": len(test)},
        "unsplit_accuracy": teacher_accuracy,
        "goal": f">= {TARGET_COMPRESSION}x bit compression at <= {BUDGET_POINTS} pt loss",
        "best_within_goal": best._asdict() if best else None,
        "mean_train_seconds_per_learned_config": float(np.mean([r.train_seconds for r in rows if r.train_seconds])),
    }
    (args.output / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary["best_within_goal"], indent=2))
    print(f"wrote {write_report(args.output)}")


if __name__ == "__main__":
    main()
