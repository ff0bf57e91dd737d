"""Train the codec and exit branch a bundled model ships for its default split, and write their card.

    python -m toolchain.zoo.make [--model resnet18w05-fmnist] [--output-dir DIR]

Both train with the backbone frozen on the model's whole training set (distillation + labels),
seed 0, and are scored on its whole test set. The card's numbers come from this run (kept in
<card>.json; `--card-only` re-renders the card from it) and from the committed benchmark results
it cites; regenerate rather than edit.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import time
from pathlib import Path

import torch

from toolchain.codec_training import prepare_training, save_checkpoint, score_codec, train_codec
from toolchain.codecs import make_codec
from toolchain.exit_branch import save_exit, train_exit
from toolchain.load import load_model, zoo_entry
from toolchain.zoo import DEFAULT_MODEL

EPOCHS, SEED = 2, 0
BUDGET_POINTS = 0.5  # what the default bundle may lose, exits included
CODEC_SHARE = 0.5  # of that budget, what the codec may use: the rest is the exits'
RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def rows(path: Path) -> list[dict]:
    with open(path, newline="") as stream:
        return list(csv.DictReader(stream))


def measured_alternatives(spec: str, split: str, exit_accuracy: float) -> str:
    """The committed measurements the choice rests on, as card text (skipped when a result is missing)."""
    lines = []
    layer3, layer2 = RESULTS / "codecs" / "accuracy_vs_bytes.csv", RESULTS / "search-layer2" / "search.csv"
    if layer3.exists():
        small = [row for row in rows(layer3) if row["codec"].startswith("bbnet") and float(row["bytes_per_frame"]) <= 64]
        limit = BUDGET_POINTS * CODEC_SHARE
        fitting = [row for row in small if float(row["loss_points"]) <= limit]
        rule = min(fitting, key=lambda row: (float(row["bytes_per_frame"]), float(row["loss_points"])))["codec"]
        lines += [f"Learned codecs of at most 64 B per frame at {split}, each trained 2 epochs by "
                  f"`python -m benchmarks codecs` (`{layer3.relative_to(RESULTS.parent.parent)}`; an earlier run "
                  "than the shipped checkpoint, whose own numbers are above), on the 10,000 test images. The rule: "
                  f"the fewest bytes among those losing at most {limit:g} pt, half the budget, so the exits keep "
                  f"the other half; it picks `{rule}`.", "",
                  "| codec | bytes/frame | vs float (pt) | agreement |", "|---|---:|---:|---:|"]
        lines += [f"| {row['codec']}{' (shipped)' if row['codec'] == spec else ''} | {float(row['bytes_per_frame']):.0f} "
                  f"| {-float(row['loss_points']):+.2f} | {float(row['agreement']):.2%} |" for row in small]
    accuracy = RESULTS / "accuracy" / "accuracy.csv"
    if accuracy.exists():
        int8 = {row["split"]: row for row in rows(accuracy) if row["codec"] == "int8"}
        lines += ["", f"The accuracy suite (`{accuracy.relative_to(RESULTS.parent.parent)}`) sends int8 codes "
                      "of each split: " + ", ".join(f"{split} {int(row['bytes_per_frame']):,} B "
                                                   f"({0.0 - float(row['loss_points']) + 0.0:+.2f} pt)"  # no '-0.00'
                                                   for split, row in int8.items() if split in ("layer2", "layer3"))
                  + "; layer3 halves the bytes at no measurable cost."]
    early_exit = RESULTS / "early_exit" / "summary.json"
    if early_exit.exists():
        alone = json.loads(early_exit.read_text())["edge_only_accuracy"]
        lines += ["", f"An exit branch at layer2 answers {alone:.2%} of the test images right alone "
                      f"(`{early_exit.relative_to(RESULTS.parent.parent)}`); at {split}, {exit_accuracy:.2%}."]
    if layer2.exists():
        best = min(rows(layer2), key=lambda row: float(row["bytes_per_frame"]))
        lines += ["", f"At layer2 the smallest codec the search tried (`{layer2.relative_to(RESULTS.parent.parent)}`) "
                      f"needs {float(best['bytes_per_frame']):.0f} B for {-float(best['loss_points']):+.2f} pt "
                      f"({best['codec']}): its 16x16 tensor keeps 4x the positions of layer3's 8x8."]
    return "\n".join(lines)


def write_card(path: Path, facts: dict) -> None:
    f = facts
    path.write_text(f"""# Shipped codec and exit branch: {f['model']} at {f['module']} (node {f['split']})

Written by `python -m toolchain.zoo.make`; regenerate rather than edit. `build-engines` with no
`--split`, `--codec` or exit option uses both; `--codec int8` (or any other) builds without them.

| | codec | exit branch |
|---|---|---|
| split | {f['split']} ({'x'.join(map(str, f['shape']))} float32: {f['fp32_bytes']:,} B) | {f['split']} |
| spec | `{f['codec']}` | conv 3x3 s2 + BN + ReLU, average pool, linear ({f['exit_params']:,} parameters) |
| bytes per frame | {f['payload_bytes']} (bit-packed codes) | 0: the edge answers |
| on the {f['test_frames']:,} test images | {f['codec_accuracy']:.2%} top-1 ({f['codec_loss']:+.2f} pt against the float model's {f['float_accuracy']:.2%}), {f['codec_agreement']:.2%} agreement | {f['exit_accuracy']:.2%} top-1 alone |
| training | {EPOCHS} epochs on {f['train_frames']:,} training images, backbone frozen, distillation + labels | same |
| seed | {SEED} | {SEED} |
| training time | {f['codec_seconds']:.0f} s on {f['threads']} CPU threads | {f['exit_seconds']:.0f} s |
| checkpoint sha256 | `{f['codec_sha256']}` | `{f['exit_sha256']}` |

Both checkpoints name the model they belong to (parameters sha256 `{f['model_sha256'][:16]}...`);
(what bundles and checkpoints record; the model card's sha256 is of the weights file); a build of
any other model or split refuses them with one line. Each build calibrates the exit
threshold on its own calibration images: the least offloading one whose exits change at most
{f['exit_max_loss']:g} % of the cloud's answers there (a bound on the accuracy they cost).

Reproduce: `python -m toolchain.zoo.make --model {f['model']}`

## Why this split and codec

The default promises at most {BUDGET_POINTS:g} pt of loss with exits included, so the codec may use only
part of it. At {f['module']} the shipped codec sends {f['payload_bytes']} B per frame, {f['image_bytes'] / f['payload_bytes']:.0f}x fewer than the
{f['image_bytes']:,}-byte input image.

{measured_alternatives(f['codec'], f['split'], f['exit_accuracy'])}
""")


def make(model: str, output_dir: Path | None, card_only: bool = False) -> None:
    entry = zoo_entry(model)
    shipped, loaded = entry.shipped, load_model(model)
    output_dir = output_dir or shipped.card.parent
    output_dir.mkdir(parents=True, exist_ok=True)
    codec_path, exit_path = output_dir / shipped.codec_weights.name, output_dir / shipped.exit_weights.name
    card, facts_path = output_dir / shipped.card.name, (output_dir / shipped.card.name).with_suffix(".json")
    if card_only:
        write_card(card, json.loads(facts_path.read_text()))
        return
    frozen = prepare_training(loaded.module, entry.default_split, loaded.spec(), entry.dataset)
    torch.manual_seed(SEED)
    codec = make_codec(shipped.codec, frozen.point.shape)
    identity = {"spec": shipped.codec, "split": frozen.point.node, "model_sha256": loaded.sha256}
    codec_seconds = train_codec(codec, frozen.tail, frozen.train, EPOCHS, SEED, checkpoint=codec_path,
                                checkpoint_facts=identity)
    score = score_codec(codec, frozen.tail, frozen.test)
    save_checkpoint(codec_path, codec, epoch=EPOCHS, agreement=score.agreement, **identity)  # without optimizer state
    started = time.perf_counter()
    branch = train_exit(frozen.train, int(frozen.train.teacher.shape[1]), epochs=EPOCHS, seed=SEED)
    exit_seconds = time.perf_counter() - started
    save_exit(exit_path, branch, frozen.point.node, loaded.sha256)
    with torch.no_grad():
        exit_accuracy = float((branch.eval()(frozen.test.features.float()).argmax(1) == frozen.test.labels)
                              .float().mean())
    facts = {
        "model": model, "module": entry.default_split, "split": frozen.point.node, "shape": frozen.point.shape,
        "fp32_bytes": frozen.point.fp32_bytes,
        "image_bytes": loaded.spec().channels * loaded.spec().height * loaded.spec().width,
        "codec": shipped.codec, "payload_bytes": codec.wire_format().packed_bytes, "test_frames": len(frozen.test),
        "train_frames": len(frozen.train), "float_accuracy": score.teacher_accuracy, "codec_accuracy": score.accuracy,
        "codec_loss": -score.loss_points, "codec_agreement": score.agreement, "exit_accuracy": exit_accuracy,
        "exit_params": sum(p.numel() for p in branch.parameters()), "codec_seconds": codec_seconds,
        "exit_seconds": exit_seconds, "threads": torch.get_num_threads(), "codec_sha256": sha256(codec_path),
        "exit_sha256": sha256(exit_path), "model_sha256": loaded.sha256, "exit_max_loss": shipped.exit_max_loss}
    facts_path.write_text(json.dumps(facts, indent=2) + "\n")
    write_card(card, facts)
    print(f"{shipped.codec} at {frozen.point.node}: {score.accuracy:.2%} ({-score.loss_points:+.2f} pt), exit branch "
          f"{exit_accuracy:.2%} alone; wrote {codec_path}, {exit_path} and {shipped.card.name} in {output_dir}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--output-dir", type=Path, default=None, help="default: next to the model's weights")
    parser.add_argument("--card-only", action="store_true", help="re-render the card from its .json, no training")
    args = parser.parse_args()
    make(args.model, args.output_dir, args.card_only)


if __name__ == "__main__":
    main()
