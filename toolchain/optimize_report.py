"""What `edgesplit optimize` shows: every point measured, every prediction, the winner per rate against both
baselines (CSV, JSON, PNG, markdown)."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from toolchain.optimize import REPORT_FORMAT, STREAM_FRAMES, Choice, Result, point_name
from toolchain.planning import format_rate
from toolchain.results import cpu_name, write_csv
from toolchain.summary import markdown_table

POINT_COLUMNS = ("name", "strategy", "split", "ratio", "codec", "threshold", "offload_rate", "payload_bytes",
                 "frame_bytes", "edge_ms_here", "edge_p90_ms_here", "cloud_ms", "accuracy", "agreement",
                 "loss_points", "build_s")


def point_rows(result: Result) -> list[dict]:
    factor = result.speed.factor
    rows = []
    for row in result.rows:
        entry = {column: row.get(column) for column in POINT_COLUMNS}
        entry.update(name=point_name(row), edge_ms_device=factor * row["edge_ms_here"],
                     edge_p90_ms_device=factor * row["edge_p90_ms_here"])
        rows.append({k: round(v, 4) if isinstance(v, float) else v for k, v in entry.items()})
    return rows


def prediction_rows(result: Result) -> list[dict]:
    rows = []
    for choice in result.choices:
        for option in choice.options:
            rows.append({"uplink_bps": choice.rate, "option": option.name, "strategy": option.strategy,
                         "mean_frame_bytes": round(option.frame_bytes, 1), "edge_ms": round(option.edge_ms, 3),
                         "upload_ms": round(option.upload_ms, 3), "cloud_ms": round(option.cloud_ms, 3),
                         "latency_ms": round(option.total_ms, 3), "s_per_100": round(choice.seconds(option), 3),
                         "loss_points": round(option.loss_points, 2),
                         "within_max_loss": option.loss_points <= result.search.options.max_loss,
                         "chosen": option == choice.winner})
    return rows


def raw_upload(choice: Choice):
    return next((o for o in choice.options if o.name == "cloud-only raw"), None)


def choice_rows(result: Result) -> list[dict]:
    rows = []
    for choice in result.choices:
        raw = raw_upload(choice)
        rows.append({
            "uplink": format_rate(choice.rate), "uplink_bps": choice.rate, "choice": choice.winner.name,
            "strategy": choice.winner.strategy, "s_per_100": round(choice.seconds(choice.winner), 3),
            "loss_points": round(choice.winner.loss_points, 2),
            "mean_frame_bytes": round(choice.winner.frame_bytes, 1),
            "edge_only_s_per_100": round(choice.seconds(choice.edge_only), 3),
            "cloud_only": None if choice.cloud_only is None else choice.cloud_only.name,
            "cloud_only_s_per_100": None if choice.cloud_only is None else round(choice.seconds(choice.cloud_only), 3),
            "speedup_vs_better_baseline": round(choice.speedup, 2),
            "speedup_vs_edge_only": round(choice.seconds(choice.edge_only) / choice.seconds(choice.winner), 2),
            "speedup_vs_raw_image": None if raw is None else round(choice.seconds(raw) / choice.seconds(choice.winner), 2),
            "bundle": result.bundles.get(choice.winner.name, "" if choice.winner.strategy == "split" else
                                         "no split: " + ("run the whole model on the device"
                                                         if choice.winner.strategy == "edge-only"
                                                         else "send the image to the whole model in the cloud"))})
    return rows


def draw(result: Result, path: Path) -> None:
    """Predicted seconds per 100 frames against the uplink: both baselines, the best unpruned split without an
    exit (the split alone), and the optimizer's choice."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rates = [c.rate for c in result.choices]
    figure, (times, accuracy) = plt.subplots(1, 2, figsize=(12, 4.8))
    lines = {name: [] for name in ("edge-only", "cloud-only raw", "cloud-only png", "cloud-only jpeg")}
    split_alone, chosen = [], []
    for choice in result.choices:
        for name in lines:
            option = next((o for o in choice.options if o.name == name), None)
            lines[name].append(math.nan if option is None else choice.seconds(option))
        plain = [o for o in choice.options if o.strategy == "split" and " pruned " not in o.name
                 and " exit " not in o.name and o.loss_points <= result.search.options.max_loss]
        split_alone.append(min((choice.seconds(o) for o in plain), default=math.nan))
        chosen.append(choice.seconds(choice.winner))
    for name, values in lines.items():
        times.plot(rates, values, "--" if name.startswith("cloud") else ":", marker=".", label=name)
    times.plot(rates, split_alone, "-", marker="s", label="split alone (unpruned, no exit)")
    times.plot(rates, chosen, "k-", linewidth=3, alpha=0.5, marker="o", label="optimizer's choice")
    times.set(xscale="log", yscale="log", xlabel="uplink (bit/s)",
              ylabel=f"predicted s per {STREAM_FRAMES} frames", title="time against the uplink")
    times.grid(True, which="both", alpha=0.3)
    times.legend(fontsize=7)
    splits = [r for r in result.rows if r["strategy"] == "split"]
    for ratio in sorted({r["ratio"] for r in splits}):
        part = [r for r in splits if r["ratio"] == ratio]
        accuracy.scatter([max(r["offload_rate"] * r["frame_bytes"], 0.1) for r in part],
                         [-r["loss_points"] for r in part], s=14, label=f"splits, pruned {ratio:g}")
    for row in result.rows:
        if row["strategy"] != "split":
            accuracy.scatter([max(row["frame_bytes"], 0.1)], [-row["loss_points"]], marker="x",
                             label=row["name"])
    accuracy.axhline(-result.search.options.max_loss, color="grey", linestyle=":", label="--max-loss")
    accuracy.set(xscale="log", xlabel="mean bytes per frame on the wire (exits send nothing)",
                 ylabel="accuracy against the float model (points)", title="every point measured")
    accuracy.grid(True, which="both", alpha=0.3)
    accuracy.legend(fontsize=6)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write_report(result: Result, output: Path) -> dict:
    """points.csv, predictions.csv, choices.csv, summary.json, optimize.png and REPORT.md in `output`."""
    search, options = result.search, result.search.options
    output.mkdir(parents=True, exist_ok=True)
    points, choices = point_rows(result), choice_rows(result)
    write_csv(output / "points.csv", points)
    write_csv(output / "predictions.csv", prediction_rows(result))
    write_csv(output / "choices.csv", choices)
    draw(result, output / "optimize.png")
    summary = {
        "format": REPORT_FORMAT, "model": {"name": search.loaded.name, "sha256": search.loaded.sha256},
        "devices": {"edge": search.devices.edge.name, "cloud": search.devices.cloud.name},
        "measured_on": {"edge": search.measured_on.edge.name, "cloud": search.measured_on.cloud.name},
        "speed": dict(search.speed._asdict(), words=search.speed.words()), "machine": cpu_name(),
        "client_ms": search.client_ms,
        "float_accuracy": search.float_accuracy, "evaluated_frames": len(search.evaluate),
        "max_loss": options.max_loss, "budget_s": options.budget_s, "seconds": round(result.seconds, 1),
        "date": time.strftime("%Y-%m-%d"), "choices": choices, "not_tried": result.not_tried,
        "refused": result.refused, "adaptive_bundle": None if result.adaptive is None else str(result.adaptive),
        "points": len([r for r in points if r["strategy"] == "split"])}
    (output / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    (output / "REPORT.md").write_text(markdown(summary, choices, points, result))
    return summary


def adaptive_words(result: Result) -> str:
    if result.adaptive is None:
        return "No adaptive bundle: one point won every rate it was built for (or none was built)."
    return (f"Every winner in one bundle, `{result.adaptive}`: from each rate up, `edgesplit edge` runs the point that "
            "won there, following its own estimate of the uplink as it changes (`edgesplit verify-bundle` lists the "
            "table).")


def markdown(summary: dict, choices: list[dict], points: list[dict], result: Result) -> str:
    options = result.search.options
    best = sorted((p for p in points if p["loss_points"] <= options.max_loss),
                  key=lambda p: (p["offload_rate"] or 0) * (p["frame_bytes"] or 0))[:15]
    not_tried = "\n".join(f"- {line}" for line in result.not_tried) or "- nothing: every point was measured"
    refused = "\n".join(f"- {name}: {why}" for name, why in result.refused.items()) or \
        "- nothing: every point chosen was built"
    return f"""# edgesplit optimize: {summary['model']['name']} on {summary['devices']['edge']} → {summary['devices']['cloud']}

Measured on {summary['machine']}, {summary['date']}, in {summary['seconds']:.0f} s (budget {options.budget_s:.0f} s).
Edge times: measured here on {summary['measured_on']['edge']}'s backend, one thread, times the device's factor:
{summary['speed']['words']}; every frame adds the edge client's own CPU time
({summary['client_ms']:.2f} ms here: reading, encoding, the socket and the reply), times the factor too. Cloud times: {summary['measured_on']['cloud']}
here.
Accuracy: top-1 on the labels of {summary['evaluated_frames']} held-out images (exit thresholds picked on as many
others); a point's loss is the float model's top-1 there ({summary['float_accuracy']:.2%}) less its own, at most
`--max-loss {options.max_loss}` points; agreement is with the float model's answers. Predicted time: {STREAM_FRAMES}
frames streamed with 8 in flight, the upload counting the protocol's frame and TCP/IP headers, an exit as the
share of frames it still sends.

## The choice per uplink

{markdown_table(choices, ['uplink', 'choice', 's_per_100', 'loss_points', 'mean_frame_bytes', 'edge_only_s_per_100',
                          'cloud_only', 'cloud_only_s_per_100', 'speedup_vs_better_baseline', 'speedup_vs_raw_image',
                          'bundle'])}

{adaptive_words(result)}

![optimize](optimize.png)

## The points sending least within the loss bound ({summary['points']} split points measured; all in points.csv)

{markdown_table(best, ['name', 'offload_rate', 'frame_bytes', 'edge_ms_device', 'cloud_ms', 'loss_points',
                       'agreement'])}

## Refused when built for the real devices (the next fastest point took its place)

{refused}

## Not tried

{not_tried}
"""
