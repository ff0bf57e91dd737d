"""Static deployments on real, changing uplinks: frames that meet a deadline on the emulated Nano (issue 34).

    python -m benchmarks traces [--quick] [--seconds 60] [--fps 30] [--deadline-ms 100] [--traces DIR]

The testbed (benchmarks/testbed, needs root) as the bandwidth suite uses it: the edge in a cgroup as slow as a
Jetson Nano and its own network namespace, `edgesplit serve` in another, the uplink a veth shaped by tbf whose
rate follows a cellular trace (../shared/traces, 100 ms steps; an outage is the link's 10 kbit/s floor). For
each trace, the `--seconds` window whose per-second rates vary most is played from its start for every
deployment in turn: `edgesplit edge --fps F` (a camera: every frame's latency counts from its capture) over
the link, `edgesplit serve` beyond it, the default model:

- edge-only: the whole model on the device;
- cloud-only png: the image sent as PNG, the model in the cloud;
- split: the bundled default (layer3, the shipped 64-byte learned codec and its early exit).

traces.csv (per trace and deployment: frames, share that met the deadline, mean and p99 latency from capture,
accuracy over every frame, wire bytes per frame), frames-<trace>.csv (every frame), traces.png (the link's
rate and each deployment's latency over time), summary.json and RESULTS.md. An adaptive edge, which would
switch between these as the link changes, does not exist yet: these are the rows it has to beat.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import subprocess
import tempfile
from contextlib import ExitStack
from pathlib import Path

import numpy as np
from rich.progress import Progress

from benchmarks.bandwidth import DEFAULT_DEVICE, IN_FLIGHT, Testbed, open_testbed, serving
from benchmarks.common import QUICK_BUILD, parse_arguments, table, write_csv
from benchmarks.testbed import interrupt_on_sigterm
from benchmarks.testbed.devices import REFERENCES, TestbedError, one_line_errors
from benchmarks.testbed.trace import FLOOR_BPS, TRACES, TracePlayer, read_trace
from calibration_data import DEFAULT_CALIBRATION
from toolchain.build import BuildOptions, build_engines

DEPLOYMENTS = {  # name -> what build-engines is given besides the target
    "edge-only": {"strategy": "edge-only"},
    "cloud-only png": {"strategy": "cloud-only", "image_format": "png"},
    "split": {},
}
REPLY_TIMEOUT_S = 30  # a frame waits out an outage of the traces' length rather than fail


def build_deployments(target: str, work: Path, quick: bool) -> dict[str, Path]:
    sizes = QUICK_BUILD if quick else {}
    return {name: build_engines(BuildOptions(target=target, cloud="cpu", output=work / name.replace(" ", "-"),
                                             max_loss=math.inf, **options, **sizes), show_progress=False).bundle
            for name, options in DEPLOYMENTS.items()}


def play(testbed: Testbed, bundle: Path, window, fps: float, work: Path) -> tuple[list[dict], dict, list]:
    """One deployment for the window: the edge's per-frame rows, its summary, and the rates the link was set to."""
    # an upload that fell behind leaves orphaned sockets still sending at the floor rate: the next run's connection
    # timed out behind them for its whole window (the first run here)
    testbed.link.renew()
    summary_path, rows_path = work / "edge-summary.json", work / "edge-frames.csv"
    frames = int(fps * len(window.ms) * window.step_s)
    with serving(testbed, bundle, work) as edge, TracePlayer(testbed.link, window) as player:
        done = subprocess.run(testbed.edge([
            *edge, "--source", str(DEFAULT_CALIBRATION), "--limit", str(frames), "--fps", str(fps),
            "--in-flight", str(IN_FLIGHT), "--threads", "1", "--timeout", str(REPLY_TIMEOUT_S),
            "--summary-json", str(summary_path), "--output", str(rows_path)]), capture_output=True, text=True)
    if done.returncode != 0:
        raise TestbedError(f"edgesplit edge failed on {bundle.name}: {done.stderr.strip()[-300:]}")
    with open(rows_path, newline="") as rows:
        return list(csv.DictReader(rows)), json.loads(summary_path.read_text()), player.applied


def scored(trace: str, name: str, rows: list[dict], summary: dict, deadline_ms: float) -> dict:
    latency = np.array([float(row["latency_ms"]) for row in rows])
    # answered in time, by the cloud or on the edge (an exit's answer while the cloud is unreachable counts: its
    # accuracy is in the accuracy column)
    met = np.array([row["answered_by"] != "error" and float(row["latency_ms"]) <= deadline_ms for row in rows])
    return {"trace": trace, "deployment": name, "frames": len(rows), "met_deadline": round(float(met.mean()), 4),
            "latency_ms_mean": round(float(latency.mean()), 1),
            "latency_ms_p99": round(float(np.percentile(latency, 99)), 1),
            "accuracy": round(sum(row["prediction"] == row["label"] for row in rows) / len(rows), 4),
            "answered_on_edge": summary["edge_answers"], "unanswered": summary["errors"],
            "wire_bytes_per_frame": summary.get("wire_bytes_per_frame", 0.0)}


def plot(output: Path, windows: dict, frames: dict, deadline_ms: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(2, len(windows), figsize=(5 * len(windows), 6), sharex="col", squeeze=False)
    for column, (trace, window) in enumerate(windows.items()):
        rate, latency = axes[0][column], axes[1][column]
        rate.step(window.ms / 1000, np.maximum(window.bps, FLOOR_BPS) / 1e3, where="post", color="gray")
        rate.set(title=trace, ylabel="uplink kbit/s (trace, floored)", yscale="log")
        for name, (rows, fps) in frames[trace].items():
            times = np.array([int(row["index"]) / fps for row in rows])
            latency.plot(times, [float(row["latency_ms"]) for row in rows], ".", markersize=2, label=name)
        latency.axhline(deadline_ms, color="black", linewidth=0.8, linestyle="--")
        latency.set(xlabel="seconds (camera time)", ylabel="latency from capture, ms", yscale="log")
        latency.legend(markerscale=4, fontsize=8)
    figure.tight_layout()
    figure.savefig(output / "traces.png", dpi=120)
    plt.close(figure)


def positive(text: str) -> float:
    value = float(text)  # argparse names a ValueError as an invalid positive value
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text}")
    return value


def main() -> None:
    def options(parser):
        parser.add_argument("--seconds", type=positive, default=60.0, help="How long each trace's window plays.")
        parser.add_argument("--fps", type=positive, default=30.0, help="The camera's frame rate.")
        parser.add_argument("--deadline-ms", type=positive, default=100.0, help="A frame is on time within this.")
        parser.add_argument("--traces", type=Path, default=TRACES, help="Folder of ms,kbit_s trace CSVs.")
        parser.add_argument("--calibration", type=Path, default=None,
                            help="The Nano's calibration from an earlier run (as the bandwidth suite takes it).")

    args = parse_arguments(__doc__, "traces", "One trace, 5 seconds at 10 frames/s; builds calibrated on 128 images.",
                           options)
    paths = sorted(args.traces.glob("*.csv"))
    if not paths:
        raise SystemExit(f"no trace CSVs in {args.traces}: give --traces DIR (ms,kbit_s rows)")
    seconds, fps = (5.0, 10.0) if args.quick else (args.seconds, args.fps)
    interrupt_on_sigterm()
    with one_line_errors(), ExitStack() as stack, Progress() as progress:
        traces = [read_trace(path) for path in paths[:1 if args.quick else None]]  # a bad file before any build
        work = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        testbed = open_testbed(DEFAULT_DEVICE, work, stack, args.calibration)
        bundles = build_deployments(REFERENCES[DEFAULT_DEVICE].target, work, args.quick)
        windows = {trace.name: trace.window(trace.liveliest(seconds), seconds) for trace in traces}
        task = progress.add_task("trace x deployment", total=len(windows) * len(bundles))
        results, frames = [], {}
        for trace, window in windows.items():
            frames[trace] = {}
            for name, bundle in bundles.items():
                rows, summary, applied = play(testbed, bundle, window, fps, work)
                results.append(scored(trace, name, rows, summary, args.deadline_ms))
                frames[trace][name] = (rows, fps)
                write_csv(args.output / f"frames-{trace}-{name.replace(' ', '-')}.csv", rows)
                write_csv(args.output / f"link-{trace}-{name.replace(' ', '-')}.csv",
                          [{"seconds": s, "set_bps": r, "trace_bps": t} for s, r, t in applied])
                progress.advance(task)
    write_csv(args.output / "traces.csv", results)
    plot(args.output, windows, frames, args.deadline_ms)
    starts = {trace.name: trace.liveliest(seconds) for trace in traces}
    summary = {"device": testbed.words(), "fps": fps, "seconds": seconds, "deadline_ms": args.deadline_ms,
               "windows_start_s": starts, "floor_bps": FLOOR_BPS, "rows": results}
    (args.output / "summary.json").write_text(json.dumps(summary, indent=2))
    report = ["# Static deployments on cellular uplink traces\n", f"Generated by `python -m benchmarks traces"
              f"{' --quick' if args.quick else ''}`: {testbed.words()}. Each trace's {seconds:g}-second window whose "
              f"per-second rates vary most (starting at {', '.join(f'{k} {v:g} s' for k, v in starts.items())}); "
              f"a camera at {fps:g} frames/s; on time: answered within {args.deadline_ms:g} ms of capture.\n",
              table(results, list(results[0]))]
    (args.output / "RESULTS.md").write_text("\n".join(report) + "\n")
    print("\n".join(report))


if __name__ == "__main__":
    main()
