"""INT8 on the architectures people bring (issue 31): seven models written for this suite
(benchmarks/quantized_models.py), trained briefly on RGB images from a folder, masks or audio-like arrays, then
built with `build-engines` as users type it, at each model's default cut and within the default bounds, for
cpu, raspberry-pi, jetson-nano and jetson-orin. One row per model and device: agreement (or the output's own
metric), loss, bytes per frame, calibration and what was kept in higher precision, build time and the build's
peak memory; or the one line a refused build printed.

    python -m benchmarks quantized [--quick] [--models resnet50,unet] [--output benchmarks/results/quantized]

`--models` rebuilds those models and keeps the other models' rows already in the output folder.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.progress import Progress

from benchmarks.bandwidth import edgesplit_command
from benchmarks.common import cpu_name, earlier_run, parse_arguments, table, train_briefly, write_csv
from benchmarks.foreign import rgb_folder
from benchmarks.quantized_models import MODELS
from toolchain.data import FASHION_MNIST_DIR, load_idx_directory

DEVICES = ("cpu", "raspberry-pi", "jetson-nano", "jetson-orin")
FULL = {"train": 3000, "test": 500, "epochs": 4, "rate": 1e-3}
BIG = {"train": 800, "test": 300, "epochs": 1, "rate": 1e-3}  # the 224x224 ResNet-50: an epoch of 3,000 takes ~20 min
QUICK = {"train": 200, "test": 60, "epochs": 1, "rate": 1e-3}
# the ViT from scratch predicts one class after 4 epochs at 1e-3 (7.2 % of the test images, 3e-4 too); 16 at 3e-4
# took it to 46 % in 64 s: a model that learned something to keep
SIZES = {"resnet50": BIG, "vit_tiny": dict(FULL, epochs=16, rate=3e-4)}
QUICK_RUN = (("keyword_spotting", "cpu"),)
BATCH = 32
COLUMNS = ["model", "device", "built", "split", "float_accuracy", "agreement", "loss_points", "miou_loss",
           "max_relative_error", "payload_bytes", "image_bytes", "precisions", "calibration", "kept_higher", "build_s",
           "peak_rss_gb", "commit", "refusal", "refusal_lines"]
KEYWORDS = 12


def write_masks(root: Path, shape: tuple[int, int, int], counts: dict[str, int]) -> Path:
    """Coloured Fashion-MNIST garments at `shape` with a class per pixel: 0 background, 1 + the garment's class
    where the garment is (an .npz: per-pixel labels do not fit a folder)."""
    from PIL import Image

    generator, arrays = np.random.default_rng(1), {}
    for split, count in counts.items():
        images, labels = load_idx_directory(FASHION_MNIST_DIR, split)
        chosen = generator.permutation(len(images))[:count]
        pictures, masks = [], []
        for index in chosen:
            gray = np.asarray(Image.fromarray(images[index]).resize(shape[1:][::-1], Image.BILINEAR),
                              np.float32)[..., None] / 255
            foreground, background = generator.uniform(0, 255, (2, 3))
            pictures.append((gray * foreground + (1 - gray) * background).astype(np.uint8).transpose(2, 0, 1))
            masks.append(np.where(gray[..., 0] > 0.2, labels[index] + 1, 0))
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = np.stack(pictures), np.stack(masks).astype(np.int64)
    path = root / "masks.npz"
    np.savez(path, **arrays)
    return path


def write_spectrograms(root: Path, shape: tuple[int, int, int], counts: dict[str, int]) -> Path:
    """Audio-like arrays: log-mel-like frames of 40 bands x 101 steps, each keyword two formant tracks of its
    own (start and end band), said at a random time, speed and loudness over noise; uint8 after log scaling."""
    generator, arrays = np.random.default_rng(2), {}
    bands, steps = shape[1:]
    tracks = generator.uniform(3, bands - 3, (KEYWORDS, 2, 2))  # keyword, formant, (start, end) band
    grid = np.arange(bands)[:, None]
    for split, count in counts.items():
        labels = generator.integers(0, KEYWORDS, count)
        frames = np.empty((count, 1, bands, steps), np.uint8)
        for index, keyword in enumerate(labels):
            length = int(generator.integers(40, 80))
            start = int(generator.integers(0, steps - length))
            energy = generator.gamma(1.0, 0.05, (bands, steps))
            for begin, end in tracks[keyword] + generator.normal(0, 1.0, (2, 2)):
                centre = np.linspace(begin, end, length)
                energy[:, start:start + length] += generator.uniform(0.5, 1.5) * np.exp(
                    -0.5 * ((grid - centre) / 1.5) ** 2)
            frames[index, 0] = np.clip(255 * np.log1p(8 * energy) / np.log(9 * 2.5), 0, 255)
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = frames, labels.astype(np.int64)
    path = root / "spectrograms.npz"
    np.savez(path, **arrays)
    return path


def make_data(kind: str, shape: tuple[int, int, int], root: Path, sizes: dict) -> Path:
    counts = {"train": sizes["train"], "test": sizes["test"]}
    root.mkdir(parents=True, exist_ok=True)
    if kind == "masks":
        return write_masks(root, shape, counts)
    if kind == "spectrograms":
        return write_spectrograms(root, shape, counts)
    return rgb_folder(root, shape, counts)


def model_arguments(name: str, weights: Path) -> list[str]:
    return ["--model", f"benchmarks.quantized_models:{name}", "--weights", str(weights), "--input-shape",
            ",".join(map(str, MODELS[name][1])), "--resize", "none"]


def loss_of(name: str, outputs, labels):
    """Cross-entropy per image or per pixel; the detector learns each garment's class at every cell of every
    scale (its boxes stay untrained: the suite measures quantization, not detection quality)."""
    from torch.nn import functional

    if name == "detector":
        return sum(functional.cross_entropy(grid[:, 5:15].mean((2, 3)), labels) for grid in outputs)
    return functional.cross_entropy(outputs, labels)


def train(name: str, source: Path, weights: Path, sizes: dict, progress: Progress) -> None:
    """Adam on the training split, briefly: a model someone trained, not a tuned one."""
    import torch

    from toolchain.data import load_images
    from toolchain.load import InputOptions, load_model

    spec = load_model(f"benchmarks.quantized_models:{name}", None, InputOptions(MODELS[name][1], "none")).spec()
    images = load_images(str(source), "train", spec)
    torch.manual_seed(0)
    model = MODELS[name][0]()
    train_briefly(model, images, lambda outputs, labels: loss_of(name, outputs, labels), sizes["epochs"], BATCH,
                  progress, name, sizes["rate"])
    torch.save(model.state_dict(), weights)


# Runs a command and writes its peak resident kilobytes (the kernel's ru_maxrss) to a file. Linux hands a forked
# child its parent's high-water mark, so a build forked by this suite reported the suite's own peak (every ResNet-50
# build of one run: 4.28 GB, after training it here) whatever it used; forked from this small process, its own.
PEAK_OF = ("import os, subprocess, sys; child = subprocess.Popen(sys.argv[2:]); _, status, usage = os.wait4(child.pid, 0);"
           " open(sys.argv[1], 'w').write(str(usage.ru_maxrss)); sys.exit(os.waitstatus_to_exitcode(status))")


def build(name: str, weights: Path, source: Path, device: str, output: Path) -> dict:
    """`build-engines` for one device, its peak resident memory from the kernel's accounting of that process."""
    command = [*edgesplit_command(), "build-engines", *model_arguments(name, weights), "--calib", str(source),
               "--target", device, "--output", str(output)]
    peak = output.with_name(output.name + ".peak")
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", PEAK_OF, str(peak), *command], stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
    row = dict.fromkeys(COLUMNS, None)
    row.update(model=name, device=device, build_s=round(time.perf_counter() - started, 1),
               peak_rss_gb=round(int(peak.read_text()) / 2 ** 20, 2), built=done.returncode == 0)
    if not row["built"]:
        lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
        return dict(row, refusal=lines[-1] if lines else f"exit status {done.returncode}", refusal_lines=len(lines))
    return dict(row, **measured(json.loads((output / "manifest.json").read_text())))


def code_commit() -> str:
    """The code the rows are built with: a run of some models keeps the others' rows from an earlier one."""
    found = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True,
                           cwd=Path(__file__).parent)
    return found.stdout.strip() or "unknown"


def measured(manifest: dict) -> dict:
    """The build's own checks, in the table's words."""
    checks = manifest["checks"]
    outputs = checks.get("outputs", {})
    pixel = next((o["pixel_agreement"] for o in outputs.values() if "pixel_agreement" in o), None)
    errors = [o["relative_error"] for o in outputs.values() if "relative_error" in o]
    loss = None if "bundle_accuracy" not in checks else round(100 * (checks["float_accuracy"]
                                                                    - checks["bundle_accuracy"]), 2)
    kept = [f"{role}: {len(higher['layers'])} of {higher['of']} layers in {higher['precision']} "
            f"({higher['macs_share']:.0%} of MACs)"
            for role, higher in ((role, checks.get(f"{role}_higher_precision")) for role in ("edge", "cloud"))
            if higher is not None]
    calibration = [f"{role} {checks[f'{role}_calibration']['method']} at {checks[f'{role}_calibration']['placement']}"
                   for role in ("edge", "cloud") if f"{role}_calibration" in checks]
    return {"split": manifest["split"].get("module") or manifest["split"]["node"],
            "float_accuracy": None if "float_accuracy" not in checks else round(100 * checks["float_accuracy"], 1),
            "agreement": checks.get("top1_agreement", pixel), "max_relative_error": max(errors) if errors else None,
            "loss_points": loss, "miou_loss": None if "bundle_miou" not in checks else round(
                checks["float_miou"] - checks["bundle_miou"], 4),
            "payload_bytes": round(checks["mean_payload_bytes"], 1), "image_bytes": checks["image_bytes"]["raw"],
            "precisions": "/".join(manifest["artefacts"][role]["precision"] for role in ("edge", "cloud")
                                   if role in manifest["artefacts"]),
            "calibration": ", ".join(calibration), "kept_higher": "; ".join(kept)}


def plot(output: Path, rows: list[dict], models: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = np.full((len(models), len(DEVICES)), np.nan)
    for row in rows:
        if row.get("built") and row.get("agreement") is not None:
            grid[models.index(row["model"]), DEVICES.index(row["device"])] = 100 * row["agreement"]
    figure, axis = plt.subplots(figsize=(7, 0.5 * len(models) + 1.5))
    image = axis.imshow(grid, vmin=95, vmax=100, cmap="viridis")
    for (i, j), value in np.ndenumerate(grid):
        axis.text(j, i, "refused" if np.isnan(value) else f"{value:.1f}", ha="center", va="center",
                  color="white" if np.isnan(value) or value < 98.5 else "black", fontsize=8)
    axis.set_xticks(range(len(DEVICES)), DEVICES)
    axis.set_yticks(range(len(models)), models)
    axis.set_title("agreement with the float model (%), default cut and bounds")
    figure.colorbar(image)
    figure.tight_layout()
    figure.savefig(output / "quantized.png", dpi=120)
    plt.close(figure)


def write_report(output: Path, summary: dict, rows: list[dict]) -> None:
    refusals = "\n".join(f"- {r['model']} on {r['device']} ({r['refusal_lines']} line(s)): `{r['refusal']}`"
                         for r in rows if not r["built"]) or "- none"
    (output / "RESULTS.md").write_text(f"""# INT8 on seven architectures, four devices

Generated by `python -m benchmarks quantized{' --quick' if summary['quick'] else ''}` on {summary['machine']}
({summary['cpus']} CPUs), {summary['date']}. Each model trained briefly here
({json.dumps(summary['sizes'])}), then `build-engines --target DEVICE` at its default cut and bounds (98 %
agreement, 1 point of loss). Float accuracy: the float model's on the held-out images (per pixel for the
segmenter), how far its brief training took it. Agreement is top-1 for a class output, per pixel for a segmenter;
a detector's grids are held to their relative error. Calibration: the range method and Q/DQ placement each INT8
Q/DQ half kept (every op, or the weighted ops' inputs only). Peak RSS: the build process's maximum resident memory
(the kernel's count). Commit: the code the row was built with (`--models` reruns some and keeps the others').

{table(rows, COLUMNS[:-2])}

Refused, with the one line the build printed:
{refusals}

![agreement](quantized.png)
""")


def with_earlier(output: Path, rows: list[dict], sizes: dict) -> tuple[list[dict], dict]:
    """This run's rows and training sizes beside those of the models an earlier full run in `output` built and this
    one did not, in the suite's order."""
    earlier = earlier_run(output)
    rows = [row for row in earlier.get("rows", []) if row["model"] not in sizes] + rows
    order = list(MODELS)
    return (sorted(rows, key=lambda row: (order.index(row["model"]), DEVICES.index(row["device"]))),
            dict(earlier.get("sizes", {}), **sizes))


def main() -> None:
    def options(parser):
        parser.add_argument("--models", default=",".join(MODELS), help="comma-separated models (default: all seven)")

    args = parse_arguments(__doc__, "quantized", "One model (keyword spotting) on cpu, trained on 200 arrays.",
                           options)
    chosen = [name for name in args.models.split(",") if name]
    unknown = sorted(set(chosen) - set(MODELS))
    if unknown:
        sys.exit(f"--models: unknown {', '.join(unknown)}; models: {', '.join(MODELS)}")
    runs = list(QUICK_RUN) if args.quick else [(name, device) for name in chosen for device in DEVICES]
    models = list(dict.fromkeys(name for name, _ in runs))
    rows, sizes_used, commit = [], {}, code_commit()
    with tempfile.TemporaryDirectory() as scratch, Progress() as progress:
        work = Path(scratch)
        task = progress.add_task("build", total=len(runs))
        for name in models:
            factory, shape, kind = MODELS[name]
            sizes = QUICK if args.quick else SIZES.get(name, FULL)
            sizes_used[name] = sizes
            source = make_data(kind, shape, work / name, sizes)
            weights = work / f"{name}.pt"
            train(name, source, weights, sizes, progress)
            for model, device in runs:
                if model == name:
                    progress.update(task, description=f"{name} for {device}")
                    rows.append(dict(build(name, weights, source, device, work / f"{name}-{device}"), commit=commit))
                    progress.advance(task)
    if not args.quick:
        rows, sizes_used = with_earlier(args.output, rows, sizes_used)
        models = [name for name in MODELS if name in sizes_used]
    summary = {"quick": args.quick, "machine": cpu_name(), "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d"),
               "sizes": sizes_used, "rows": rows}
    write_csv(args.output / "quantized.csv", rows)
    (args.output / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot(args.output, rows, models)
    write_report(args.output, summary, rows)
    print(f"wrote {args.output}/RESULTS.md")


if __name__ == "__main__":
    main()
