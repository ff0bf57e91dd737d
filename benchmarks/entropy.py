"""Learned codecs trained for rate, entropy-coded with rANS, against today's bit-packed ones (issue 33).

    python -m benchmarks entropy [--quick] [--rates 0,0.002,0.005,0.01] [--shapes 16:4:4,8:4:4] [--output DIR]
    python -m benchmarks entropy --report-only   (summary, PNG and RESULTS.md again from entropy.csv)

Each shape (`c:s:bits` of a BBNet codec at the default model's layer3) is trained at each rate weight on
Fashion-MNIST's training images; the build's prior is fitted to the first CALIBRATION_FRAMES training images'
codes, and every one of the 10,000 test images is coded as the edge codes it (runtime/coding/rans.py, pure
Python) and decoded as the cloud does. Writes entropy.csv (accuracy, mean and worst bytes per frame, encode +
decode ms per frame, the worst frame; `sent_bytes` is what `--lossless auto` sends, the smaller of the bit-packed
codes and rANS), entropy.png (accuracy vs mean bytes, beside the codecs suite's bit-packed
learned codecs and affine + zstd from its accuracy_vs_bytes.csv, and BBNet's point as issue 33 cites it), summary.json and
RESULTS.md.
"""

from __future__ import annotations

import csv
import json
import platform
import time

import numpy as np
import torch

from benchmarks.common import ROOT, parse_arguments, write_csv
from toolchain.codec_search import CALIBRATION_FRAMES, grid
from toolchain.codec_training import prepare_training, score_codec, train_codec
from toolchain.codecs import make_codec
from toolchain.load import load_model
from toolchain.lossless import fit_prior
from toolchain.train import progress_bar

SPLIT = "layer3"
GOAL_BYTES, STRETCH_BYTES, GOAL_POINTS, GOAL_MS = 16, 8, 0.5, 0.3
BBNET_POINT = {"bytes": 16.0, "loss_points": 0.69}  # BBNet (seed 002) as issue 33 cites it: 16 B at -0.69 pt
CODECS_CSV = ROOT / "benchmarks" / "results" / "codecs" / "accuracy_vs_bytes.csv"


def add_options(parser) -> None:
    parser.add_argument("--rates", default="0,0.002,0.005,0.01", help="rate weights, comma-separated")
    parser.add_argument("--shapes", default="16:4:4,8:4:4", help="BBNet shapes c:s:bits, comma-separated")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--report-only", action="store_true",
                        help="write summary.json, entropy.png and RESULTS.md again from the output's entropy.csv")


def coded_frames(codec, cache, calibration: torch.Tensor) -> dict:
    """Every test frame through the deployment side with the rans stage: bytes, and ms to encode + decode."""
    encoder = codec.encoder().eval()
    with torch.no_grad():
        fitting = encoder(calibration.float()).numpy()
        codes = np.concatenate([encoder(cache.features[i:i + 1000].float()).numpy()
                                for i in range(0, len(cache), 1000)])
    coding = codec.coding(codec.wire_format().entropy_coded(fit_prior(codec, fitting)))
    sizes, milliseconds = np.empty(len(codes), np.int64), np.empty(len(codes))
    for index, frame in enumerate(codes):
        began = time.perf_counter()
        payload = coding.encode(frame)
        decoded = coding.decode(payload)
        milliseconds[index] = 1000 * (time.perf_counter() - began)
        if not np.array_equal(decoded, frame):
            raise AssertionError(f"{codec.spec()}: frame {index} did not decode to its codes")
        sizes[index] = len(payload)
    worst = int(np.argmax(sizes))
    packed, mean = coding.wire.packed_bytes, float(sizes.mean())
    return {"packed_bytes": packed, "rans_bytes": mean, "sent_bytes": min(packed, mean),
            "stage": "rans" if mean < packed else "none",
            "worst_bytes": int(sizes[worst]), "worst_frame": worst,
            "fallback_frames": float(np.mean(sizes == packed + 1)),
            "coding_ms": float(milliseconds.mean()), "coding_p99_ms": float(np.percentile(milliseconds, 99)),
            "coding_worst_ms": float(milliseconds.max())}


def bit_packed_rows() -> list[dict]:
    """The codecs suite's rows (bit-packed learned codecs, affine + a byte stage), when it has run."""
    if not CODECS_CSV.exists():
        return []
    with open(CODECS_CSV) as stream:
        return [{"codec": row["codec"], "sent_bytes": float(row["bytes_per_frame"]), "stage": row["lossless"],
                 "loss_points": float(row["loss_points"])} for row in csv.DictReader(stream)]


def plot(rows: list[dict], compared: list[dict], path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7.5, 4.8))
    series = {"bbnet, rate-trained + rANS": rows,
              "bbnet/safbmp, bit-packed (codecs suite)": [r for r in compared if not r["codec"].startswith("affine")],
              "affine + byte stage (codecs suite)": [r for r in compared if r["codec"].startswith("affine")]}
    for (label, points), marker in zip(series.items(), ("o", "s", "^")):
        if points:
            axes.scatter([p["sent_bytes"] for p in points], [p["loss_points"] for p in points], marker=marker,
                         label=label)
    axes.scatter([BBNET_POINT["bytes"]], [BBNET_POINT["loss_points"]], marker="*", s=150, color="black",
                 label="BBNet, as issue 33 cites it (not measured here)")
    axes.axvline(GOAL_BYTES, color="grey", linestyle=":")
    axes.axhline(GOAL_POINTS, color="grey", linestyle=":", label=f"goal: <= {GOAL_BYTES} B at <= {GOAL_POINTS} pt")
    axes.set_xscale("log")
    axes.invert_yaxis()
    axes.set_xlabel("mean payload bytes per frame (as --lossless auto sends them)")
    axes.set_ylabel("top-1 points below the float model")
    axes.set_title(title)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


NUMBERS = ("rate", "accuracy", "loss_points", "agreement", "train_seconds", "packed_bytes", "rans_bytes",
           "sent_bytes", "worst_bytes", "worst_frame", "fallback_frames", "coding_ms", "coding_p99_ms",
           "coding_worst_ms")


def read_rows(output) -> list[dict]:
    with open(output / "entropy.csv") as stream:
        return [{k: float(v) if k in NUMBERS else v for k, v in row.items()} for row in csv.DictReader(stream)]


def finish(output, summary: dict) -> None:
    """From entropy.csv and the run's settings: the goal's verdict (summary.json), entropy.png and RESULTS.md."""
    rows = read_rows(output)
    plot(rows, bit_packed_rows(), output / "entropy.png", f"Fashion-MNIST, default model at {SPLIT}: bytes vs accuracy")
    within = [r for r in rows if r["sent_bytes"] <= GOAL_BYTES and r["loss_points"] <= GOAL_POINTS]
    closest = min(rows, key=lambda r: max(r["sent_bytes"] / GOAL_BYTES, r["loss_points"] / GOAL_POINTS))
    trained = [r for r in rows if r["rate"] > 0 and r["loss_points"] <= GOAL_POINTS]
    summary.update(best_within_goal=min(within, key=lambda r: r["sent_bytes"], default=None),
                   closest=f"`{closest['codec']}` at {closest['sent_bytes']:.1f} B, {closest['loss_points']:+.2f} pt",
                   fewest_bytes_trained_for_rate=min(trained, key=lambda r: r["sent_bytes"], default=None),
                   slowest_coding_ms=max(r["coding_worst_ms"] for r in rows))
    (output / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    write_report(output, summary, rows)


def write_report(output, summary: dict, rows: list[dict]) -> None:
    settings, best = summary["settings"], summary["best_within_goal"]
    trained = summary["fewest_bytes_trained_for_rate"]
    lines = ["# Rate-trained codecs, entropy-coded", "",
             f"Written by `{summary['command']}`; machine: {summary['machine']}. Default model split at "
             f"`{SPLIT}`, BBNet codecs trained {settings['epochs']} epochs on {settings['train_frames']} Fashion-MNIST "
             f"training images, scored and coded on {settings['test_frames']} test images (float model "
             f"{100 * summary['float_accuracy']:.2f}%). Bytes are the payload before the frame's header.", "",
             f"Goal: at most {GOAL_BYTES} B per frame at most {GOAL_POINTS} pt below the float model (stretch "
             f"{STRETCH_BYTES} B); encode + decode at most {GOAL_MS} ms per frame.",
             "Best within it (bytes as `--lossless auto` sends them): " + (
                 f"`{best['codec']}` at {best['sent_bytes']:.1f} B ({best['stage']}), {best['loss_points']:+.2f} pt."
                 if best else "none; closest " + summary["closest"] + "."),
             "Fewest bytes trained for rate within the accuracy goal: " + (
                 f"`{trained['codec']}` at {trained['sent_bytes']:.1f} B, {trained['loss_points']:+.2f} pt." if trained
                 else "none."),
             f"Slowest frame to encode and decode: {summary['slowest_coding_ms']:.3f} ms (a one-off: the p99 column).",
             "", "![accuracy vs bytes](entropy.png)", "",
             "| codec | packed B | rANS mean B | sent B (auto) | worst frame (B, index) | frames sent packed | loss (pt) "
             "| agreement | encode+decode ms mean / p99 / worst | train (s) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['codec']} | {r['packed_bytes']:.0f} | {r['rans_bytes']:.1f} | {r['sent_bytes']:.1f} ({r['stage']}) "
              f"| {r['worst_bytes']:.0f} (#{r['worst_frame']:.0f}) | {100 * r['fallback_frames']:.1f}% | "
              f"{r['loss_points']:+.2f} | {100 * r['agreement']:.2f}% | {r['coding_ms']:.3f} / {r['coding_p99_ms']:.3f} / "
              f"{r['coding_worst_ms']:.3f} | {r['train_seconds']:.0f} |" for r in rows]
    (output / "RESULTS.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    args = parse_arguments(__doc__, "entropy", "tiny run for smoke tests (not comparable)", add_options)
    if args.report_only:
        finish(args.output, json.loads((args.output / "summary.json").read_text()))
        print(f"wrote {args.output / 'RESULTS.md'}")
        return
    rates = [float(rate) for rate in args.rates.split(",")]
    shapes = [tuple(int(part) for part in shape.split(":")) for shape in args.shapes.split(",")]
    train_frames, test_frames = (1000, 500) if args.quick else (None, None)
    epochs = 1 if args.quick else args.epochs
    model = load_model(None)
    frozen = prepare_training(model.module, SPLIT, model.spec(), "fashion-mnist", train_frames, test_frames)
    specs = [spec for c, s, bits in shapes for spec in grid("bbnet", [c], [s], [bits], rates)]
    calibration = frozen.train.features[:CALIBRATION_FRAMES]
    rows = []
    with progress_bar() as progress:
        task = progress.add_task("rate x shape", total=len(specs), status="")
        for spec in specs:
            progress.update(task, status=str(spec))
            torch.manual_seed(args.seed)
            codec = make_codec(spec, frozen.point.shape)
            seconds = train_codec(codec, frozen.tail, frozen.train, epochs, args.seed)
            score = score_codec(codec, frozen.tail, frozen.test)
            rows.append({"codec": str(spec), "rate": float(spec.params.get("rate", 0)), "accuracy": score.accuracy,
                         "loss_points": score.loss_points, "agreement": score.agreement, "train_seconds": seconds,
                         **coded_frames(codec, frozen.test, calibration)})
            progress.advance(task)
    write_csv(args.output / "entropy.csv", rows)
    command = " ".join(["python -m benchmarks entropy", *(["--quick"] if args.quick else []), "--rates", args.rates,
                        "--shapes", args.shapes, "--epochs", str(epochs), *(["--seed", str(args.seed)] if args.seed else [])])
    finish(args.output, {"quick": args.quick, "command": command,
                         "machine": f"{platform.platform()}, {torch.get_num_threads()} torch threads",
                         "settings": {"rates": rates, "shapes": [list(shape) for shape in shapes], "epochs": epochs,
                                      "seed": args.seed, "train_frames": len(frozen.train),
                                      "test_frames": len(frozen.test)},
                         "float_accuracy": float((frozen.test.teacher.argmax(1) == frozen.test.labels).float().mean())})
    print(f"wrote {args.output / 'RESULTS.md'}")


if __name__ == "__main__":
    main()
