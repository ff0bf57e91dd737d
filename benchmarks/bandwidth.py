"""Latency vs uplink bandwidth, BBNet Table 4's shape: edge-only, cloud-only and edgesplit at the
planner's split, 100 kbit/s .. 3.5 Mbit/s.

The splits are profiled (`toolchain.profile`), the planner picks the best split per bandwidth,
and every networked row is measured through the real runtime: `edgesplit serve` in a thread
and the edge client over TCP on loopback, its uplink emulated by the client's token bucket.
Cloud-only is a bundle split at the model's input normalization with int8 codes: the image
itself crosses the network (1,024 B for Fashion-MNIST at 32x32). Edge-only is the whole model
on the edge backend, no network. Frames are sent one at a time (latency per frame); the time
per 100 frames is 100 x the mean, as BBNet reports a batch of 100 processed in turn.

Writes bandwidth.csv, summary.json (with the machine), bandwidth.png, RESULTS.md and the
profile it planned from.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.progress import Progress

from benchmarks.common import cpu_name, parse_arguments, table, write_csv
from calibration_data import DEFAULT_CALIBRATION
from runtime.bundle import load_bundle
from runtime.cloud import BackgroundServer, ServerConfig
from runtime.edge import CLOUD, ClientConfig, EdgeClient
from runtime.images import open_source
from runtime.link import EmulatedLink, parse_duration, parse_rate
from toolchain.load import load_model
from toolchain.build import BuildOptions, build_engines
from toolchain.planning import fastest, format_rate, plan_options
from toolchain.profile import ProfileOptions, profile_target

# BBNet's range, then two faster links where earlier splits can pay off
BANDWIDTHS = ("100kbit", "300kbit", "500kbit", "1mbit", "1500kbit", "2500kbit", "3500kbit", "10mbit", "100mbit")
QUICK_BANDWIDTHS = ("100kbit", "3500kbit")
SPLITS = ("layer2", "layer3", "layer4", "pool")
CODECS = ("int8", "affine:bits=4")
CLOUD_ONLY_SPLIT = "normalize"  # the image, quantized to int8 codes, is what crosses
LINK_SECONDS = 6.0  # emulated link time spent per row, at most
# BBNet Table 4 (Jetson Nano + GTX 1060 PC, CIFAR-10, seconds per 100 images)
BBNET_NANO_ONLY_S = 4.7436
BBNET_ROWS = {100: (11.378, 1.188), 300: (4.233, 1.164), 500: (2.802, 1.122), 700: (2.188, 1.097),
              900: (1.850, 1.083), 1100: (1.635, 1.074), 1300: (1.486, 1.069), 1500: (1.376, 1.064),
              2500: (1.093, 0.993), 3500: (0.970, 0.934)}


def measure_over_link(bundle_dir: Path, frames: list, bandwidth: float, rtt_s: float, frame_bytes: float,
                      max_frames: int) -> dict:
    """Frames one at a time through serve + edge over an emulated uplink: latency per frame."""
    count = max(3, min(max_frames, math.ceil(LINK_SECONDS / (8 * frame_bytes / bandwidth + rtt_s + 0.002))))
    bundle = load_bundle(bundle_dir)
    with BackgroundServer(bundle, ServerConfig(allow_unauthenticated=True)) as server:
        config = ClientConfig(server.address[0], server.address[1], in_flight=1,
                              # no burst: every frame is serialized at the link rate, BBNet's bytes / bandwidth
                              link=EmulatedLink(bandwidth, rtt_s, burst_bytes=0), reply_timeout_s=120.0)
        with EdgeClient(bundle, config, threads=1) as client:
            outcomes = client.run_all(frames[:count])
            stats = client.stats.as_dict()
    answered = [o for o in outcomes if o.answered_by == CLOUD]
    if len(answered) != count:
        raise RuntimeError(f"{count - len(answered)} of {count} frames were not answered by the cloud")
    latency = np.array([o.latency_s for o in answered]) * 1000
    labeled = [o for o in answered if o.label is not None]
    return {"frames": count, "wire_bytes_per_frame": stats["bytes_sent"] / count,
            "ms_per_frame": float(latency.mean()), "ms_p50": float(np.median(latency)),
            "runtime_accuracy": float(np.mean([o.logits.argmax() == o.label for o in labeled])) if labeled else None}


def build(split: str, codec: str, target: str, work: Path, cache: dict) -> Path:
    key = (split, codec)
    if key not in cache:
        output = work / f"{split}-{codec.replace(':', '_').replace('=', '')}"
        cache[key] = build_engines(BuildOptions(target=target, cloud="cpu", split=split, codec=codec, output=output,
                                                lossless="none", max_loss=math.inf), show_progress=False)
    return cache[key].bundle


def plot(output: Path, rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    for strategy, style in (("edge-only", ":"), ("cloud-only", "--"), ("edgesplit", "-")):
        chosen = [r for r in rows if r["strategy"] == strategy]
        kbits = [r["bandwidth_bps"] / 1e3 for r in chosen]
        axes.plot(kbits, [r["s_per_100"] for r in chosen], style, marker="o", label=f"{strategy} (measured)")
        if strategy != "edge-only":
            axes.plot(kbits, [r["planned_ms"] / 10 for r in chosen], style, color="grey", alpha=0.5,
                      label=f"{strategy} (planner's prediction)")
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlabel("uplink (kbit/s)")
    axes.set_ylabel("seconds per 100 frames")
    axes.legend(fontsize=8)
    axes.grid(True, which="both", alpha=0.3)
    figure.tight_layout()
    figure.savefig(output / "bandwidth.png", dpi=120)
    plt.close(figure)


def write_report(output: Path, summary: dict, rows: list[dict]) -> None:
    columns = ["bandwidth", "strategy", "option", "wire_bytes_per_frame", "ms_per_frame", "s_per_100", "planned_ms",
               "accuracy", "planner_choice"]
    best_splits = [(r["bandwidth"], r["option"]) for r in rows if r["strategy"] == "edgesplit"]
    distinct = list(dict.fromkeys(option for _, option in best_splits))
    split_words = (f"{distinct[0]} at every bandwidth" if len(distinct) == 1
                   else "; ".join(f"{rate}: {option}" for rate, option in best_splits))
    bbnet = [{"bandwidth": f"{kbps} kbps", "cloud-only s/100": cloud, "BBNet s/100": split}
             for kbps, (cloud, split) in BBNET_ROWS.items()]
    lines = [
        "# Latency vs bandwidth (BBNet Table 4)", "",
        f"Generated by `python -m benchmarks bandwidth` on {summary['machine']} ({summary['cpus']} CPUs, no GPU), "
        f"{summary['date']}. This one CPU is both the edge and the cloud: edge target `{summary['target']}`, "
        f"float accuracy {summary['float_accuracy']:.2%} on {summary['holdout_frames']} held-out Fashion-MNIST "
        "images; uplink emulated by the edge client (token bucket), "
        f"RTT {summary['rtt']}, frames sent one at a time.", "",
        table(rows, columns), "",
        "![bandwidth](bandwidth.png)", "",
        "BBNet's Table 4 (Jetson Nano edge, GTX 1060 PC cloud, ResNet-18 on CIFAR-10, seconds per 100 "
        f"images; nano-only {BBNET_NANO_ONLY_S} s):", "",
        table(bbnet, ["bandwidth", "cloud-only s/100", "BBNet s/100"]), "",
        f"What differs: BBNet's Jetson Nano alone takes {BBNET_NANO_ONLY_S} s per 100 images and sending them "
        f"to its GPU PC {BBNET_ROWS[3500][0]} s at 3.5 Mbps, so offloading pays once the link is fast; "
        "here edge and cloud are the same x86 CPU and the whole model takes about a "
        "millisecond, so edge-only wins at every bandwidth and the planner says so (`planner_choice`). The "
        f"`edgesplit` rows are the planner's best *split* ({split_words}), measured through the runtime "
        "beside the planner's prediction; the difference is the runtime's own cost per frame (thread "
        "hand-offs in the edge client and the server, protocol, socket) that the planner's sum leaves out. "
        "Images are 32x32 grayscale "
        "(1,024 B), not CIFAR's 3,072 B, so cloud-only is cheap; BBNet's accuracy column comes from its "
        "learned compression layer, ours from the int8/4-bit codecs profiled.",
    ]
    (output / "RESULTS.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    def options(parser):
        parser.add_argument("--target", default="cpu", help="Edge target whose backends are profiled.")
        parser.add_argument("--rtt", default="0ms", help="Round trip added by the emulated link (BBNet: none).")
        parser.add_argument("--max-loss", type=float, default=1.0, help="Accuracy points a split may lose.")

    args = parse_arguments(__doc__, "bandwidth", "Two splits, one codec, two bandwidths, few frames.", options)
    bandwidths = [parse_rate(b) for b in (QUICK_BANDWIDTHS if args.quick else BANDWIDTHS)]
    rtt_s = parse_duration(args.rtt)
    splits, codecs = (SPLITS[-2:], CODECS[:1]) if args.quick else (SPLITS, CODECS)
    profile = profile_target(ProfileOptions(target=args.target, cloud="cpu", splits=splits, codecs=codecs,
                                            frames=20 if args.quick else 200))
    (args.output / "profile.json").write_text(json.dumps(profile, indent=1) + "\n")
    source = list(open_source(str(DEFAULT_CALIBRATION), load_model(None).spec()))
    max_frames = 10 if args.quick else 100
    float_accuracy = profile["data"]["float_accuracy"]
    rows, bundles = [], {}
    with Progress() as progress, tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        task = progress.add_task("bandwidths", total=len(bandwidths))
        for bandwidth in bandwidths:
            options = plan_options(profile, profile, bandwidth, 1000 * rtt_s)
            planner_choice = fastest(options, args.max_loss).name
            best_split = fastest(options, args.max_loss, "split")
            cloud_only_raw = next(o for o in options if o.name == "cloud-only raw")
            edge_only = next(o for o in options if o.strategy == "edge-only")
            split_name, codec = best_split.name.rsplit(" ", 1)
            candidates = [(CLOUD_ONLY_SPLIT, "int8", "cloud-only", "image as int8 codes", cloud_only_raw),
                          (split_name, codec, "edgesplit", best_split.name, best_split)]
            for split, codec_spec, strategy, label, option in candidates:
                bundle_dir = build(split, codec_spec, args.target, work, bundles)
                manifest = bundles[(split, codec_spec)].manifest
                measured = measure_over_link(bundle_dir, source, bandwidth, rtt_s, option.frame_bytes, max_frames)
                rows.append({"bandwidth": format_rate(bandwidth), "bandwidth_bps": bandwidth, "strategy": strategy,
                             "option": label, "wire_bytes_per_frame": round(measured["wire_bytes_per_frame"], 1),
                             "frames": measured["frames"], "ms_per_frame": round(measured["ms_per_frame"], 2),
                             "s_per_100": round(measured["ms_per_frame"] / 10, 3),
                             "planned_ms": round(option.total_ms, 2),
                             "accuracy": round(manifest["checks"]["bundle_accuracy"], 4),
                             "planner_choice": planner_choice})
            rows.append({"bandwidth": format_rate(bandwidth), "bandwidth_bps": bandwidth, "strategy": "edge-only",
                         "option": "whole model on the edge", "wire_bytes_per_frame": 0.0,
                         "frames": profile["data"]["timed_frames"], "ms_per_frame": round(edge_only.edge_ms, 3),
                         "s_per_100": round(edge_only.edge_ms / 10, 4), "planned_ms": round(edge_only.total_ms, 3),
                         "accuracy": round(profile["edge_only"]["accuracy"], 4), "planner_choice": planner_choice})
            progress.advance(task)
    summary = {"quick": args.quick, "machine": cpu_name(), "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d"),
               "target": args.target, "rtt": args.rtt, "float_accuracy": float_accuracy,
               "holdout_frames": profile["data"]["holdout_frames"], "rows": rows}
    write_csv(args.output / "bandwidth.csv", rows)
    (args.output / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot(args.output, rows)
    write_report(args.output, summary, rows)
    print(table(rows, ["bandwidth", "strategy", "option", "wire_bytes_per_frame", "ms_per_frame", "planned_ms",
                       "planner_choice"]))
    print(f"wrote {args.output}/RESULTS.md")


if __name__ == "__main__":
    main()
