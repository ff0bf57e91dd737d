"""Pruning benchmark (BBNet Table 3 style): the default model's head pruned by two criteria at
three ratios; params, MACs, accuracy before/after pruning/after fine-tuning, and measured edge
latency of the ONNX Runtime (fp32) and TFLite (int8) edge halves on this CPU.

    python -m benchmarks.pruning [--quick] [--output benchmarks/results/pruning]

bn-scale: 1 epoch of L1 sparsity training on the BN scale factors, then one global threshold
(BBNet §3.1); feature-bias: SAFBMP's criterion, per layer. Both fine-tune 1 epoch with
distillation. Training uses the first 20,000 Fashion-MNIST training images; accuracy is on the
10,000 test images. Latency: median ms per single frame, 1 thread (x86 proxy for the edge).
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.progress import Progress

from benchmarks.common import cpu_name, labeled_data, parse_arguments, table, write_csv
from benchmarks.tflite import edge_latency_ms
from calibration_data import DEFAULT_CALIBRATION
from runtime.bundle import load_bundle
from toolchain.build import BuildOptions, build_engines
from toolchain.data import load_images
from toolchain.load import InputOptions, load_model
from toolchain.pruning import count, fine_tune, head_modules, prune, save_pruned, sparsity_train
from toolchain.split import split_model
from toolchain.train import accuracy, predict

SPLIT = "layer2"
SHAPE = (1, 32, 32)
BUILD_HOLDOUT = 200  # the timed bundles' own check: accuracy is measured on the test images, in main()
# --quick: fine-tune on 256 images, measure on 200; the timed bundles calibrate on 32 (their time does not depend on it)
QUICK = {"train": 256, "test": 200, "calibration": 32}


def edge_latencies(model_path: Path | None, scratch: Path, inputs: np.ndarray, frames: int,
                   calibration_frames: int) -> dict:
    """Median edge ms per frame for the cpu (ONNX Runtime fp32) and raspberry-pi (TFLite int8) bundles."""
    model = {} if model_path is None else {"model": str(model_path), "inputs": InputOptions(SHAPE, "pad")}
    latencies = {}
    for target, column in (("cpu", "onnxrt_fp32_ms"), ("raspberry-pi", "tflite_int8_ms")):
        # the timed edge stops at the codes: no lossless stage to choose
        report = build_engines(BuildOptions(target=target, cloud="cpu", split=SPLIT, output=scratch / target,
                                            max_loss=100.0, lossless="none", holdout_frames=BUILD_HOLDOUT,
                                            calibration_frames=calibration_frames, **model))
        latencies[column] = round(edge_latency_ms(load_bundle(report.bundle), inputs, 1, frames), 3)
    return latencies


def main() -> None:
    args = parse_arguments(__doc__, "pruning", "256 training images, one ratio of feature-bias, 200 test images; the "
                                               "timed bundles calibrated on 32 images.")
    data = labeled_data(args.quick)
    ratios = (0.5,) if args.quick else (0.3, 0.5, 0.7)
    # --quick: SAFBMP's criterion only (bn-scale's sparsity training is test_pruning's)
    criteria = ("feature-bias",) if args.quick else ("bn-scale", "feature-bias")
    loaded = load_model(None)
    spec = loaded.spec()
    train = load_images(data, "train", spec).take(QUICK["train"] if args.quick else 20000)
    test = load_images(data, "test", spec)
    if args.quick:
        test = test.take(QUICK["test"])
    train_inputs, test_inputs = train.inputs(), test.inputs()
    calibration = load_images(str(DEFAULT_CALIBRATION), "train", spec).inputs()
    timed = 100 if args.quick else 500
    calibration_frames = QUICK["calibration"] if args.quick else BuildOptions().calibration_frames
    teacher = loaded.module.eval()
    base_accuracy = accuracy(predict(teacher, test_inputs), test.labels)
    base_macs, base_params = count(teacher, SHAPE)
    head_macs, head_params = count(split_model(teacher, SPLIT, SHAPE).head, SHAPE)
    scratch = Path(tempfile.mkdtemp())
    rows = []
    with Progress() as progress:
        task = progress.add_task("prune, fine-tune, build, time", total=1 + len(criteria) * len(ratios))
        baseline = {"criterion": "none", "ratio": 0.0, "params": base_params, "macs_m": round(base_macs / 1e6, 1),
                    "head_params": head_params, "head_macs_m": round(head_macs / 1e6, 1),
                    "top1_before": round(base_accuracy, 4), "top1_pruned": round(base_accuracy, 4),
                    "top1_finetuned": round(base_accuracy, 4),
                    **edge_latencies(None, scratch / "base", test_inputs, timed, calibration_frames)}
        rows.append(baseline)
        progress.advance(task)
        for criterion in criteria:
            for ratio in ratios:
                model = copy.deepcopy(teacher)
                if criterion == "bn-scale":
                    sparsity_train(model, head_modules(model, SPLIT, SHAPE), train_inputs, train.labels, 1)
                before = accuracy(predict(model, test_inputs), test.labels)
                pruned, report = prune(model, SPLIT, SHAPE, criterion, ratio, calibration)
                after = accuracy(predict(pruned, test_inputs), test.labels)
                fine_tune(pruned, teacher, train_inputs, train.labels, 1)
                tuned = accuracy(predict(pruned, test_inputs), test.labels)
                path = scratch / f"{criterion}-{ratio}.pt2"
                save_pruned(pruned, SHAPE, path)
                rows.append({"criterion": criterion, "ratio": ratio, "params": report.params_after,
                             "macs_m": round(report.macs_after / 1e6, 1), "head_params": report.head_params_after,
                             "head_macs_m": round(report.head_macs_after / 1e6, 1), "top1_before": round(before, 4),
                             "top1_pruned": round(after, 4), "top1_finetuned": round(tuned, 4),
                             **edge_latencies(path, scratch / path.stem, test_inputs, timed, calibration_frames)})
                progress.advance(task)
    for row in rows:
        row["loss_points"] = round(100 * (base_accuracy - row["top1_finetuned"]), 2)
        row["onnxrt_speedup"] = round(baseline["onnxrt_fp32_ms"] / row["onnxrt_fp32_ms"], 2)
        row["tflite_speedup"] = round(baseline["tflite_int8_ms"] / row["tflite_int8_ms"], 2)
    write_csv(args.output / "pruning.csv", rows)
    meeting = [r for r in rows[1:] if r["loss_points"] <= 0.5 and max(r["onnxrt_speedup"], r["tflite_speedup"]) >= 2]
    summary = {"quick": args.quick, "machine": cpu_name(), "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d"),
               "train_images": len(train.labels), "test_images": len(test.labels), "rows": rows,
               "meets_goal": [f"{r['criterion']} {r['ratio']}" for r in meeting]}
    (args.output / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot(args.output, rows)
    (args.output / "RESULTS.md").write_text(f"""# Pruning benchmark (BBNet Table 3 style)

Generated by `python -m benchmarks.pruning{' --quick' if args.quick else ''}` on {summary['machine']}
({summary['cpus']} CPUs), {summary['date']}. Default model, head = everything before {SPLIT}; the split
tensor (64x16x16) and the tail are never pruned. Training on {len(train.labels)} images, top-1 on
{len(test.labels)} test images; `top1_before` is after sparsity training (bn-scale) or the original.
Latency: median ms per frame of the edge half, 1 thread, on this x86 CPU.

{table(rows, list(rows[0]))}

Goal: >= 2x measured edge speed-up at <= 0.5 pt loss — met by: {', '.join(summary['meets_goal']) or 'none'}.

![pruning](pruning.png)

BBNet (seed 002, Table 3) reports 11.5x fewer params and 5.6x fewer FLOPs at -0.5 pt for 40 %
network slimming of a whole VGG/ResNet; here only the edge head is pruned and MACs are
compared with measured time (Torch-Pruning issues #382, #149: fewer MACs need not mean faster).
""")
    print(f"wrote {args.output}/RESULTS.md")


def plot(output: Path, rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6.5, 4))
    for criterion, marker in (("bn-scale", "o"), ("feature-bias", "s")):
        chosen = [r for r in rows if r["criterion"] == criterion]
        if not chosen:  # --quick runs one criterion
            continue
        for column, style in (("onnxrt_speedup", "-"), ("tflite_speedup", "--")):
            axis.plot([r["loss_points"] for r in chosen], [r[column] for r in chosen], marker=marker,
                      linestyle=style, label=f"{criterion}, {column.split('_')[0]}")
    axis.axhline(2, color="k", linestyle=":", label="goal: 2x")
    axis.axvline(0.5, color="grey", linestyle=":")
    axis.set_xlabel("top-1 loss after fine-tuning (points)")
    axis.set_ylabel("measured edge speed-up")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(output / "pruning.png", dpi=120)
    plt.close(figure)


if __name__ == "__main__":
    main()
