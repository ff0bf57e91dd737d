"""Time for 100 frames vs uplink bandwidth on an emulated Jetson Nano or Raspberry Pi (BBNet Table 4,
Fig. 9): edge-only, cloud-only, edgesplit at the planner's split, and what `edgesplit optimize` chooses.

The testbed (benchmarks/testbed, needs root): the edge runs in a cgroup whose CPU quota makes it
as slow as the device — the factor calibrated from a published time: BBNet's Nano time for CIFAR
ResNet-18, a Pi 4's TFLite time for MobileNet v1 — and in its own network namespace, its uplink a
veth shaped by `tbf`; `edgesplit serve` runs unconfined in another namespace (the cloud is this CPU).
The emulated Nano runs `cpu` bundles (ONNX Runtime: its TensorRT engines need its GPU); the emulated
Pi runs `raspberry-pi` bundles, full-int8 TFLite, as a Pi does. Results of a device other than the
Nano go to benchmarks/results/bandwidth-<device>.

1. Profiles. Every candidate (split x codec, and the shipped learned codec) is built. The cloud's
   profile times its cloud half here. The edge's profile runs `edgesplit edge` on the emulated
   device over the link at PROFILE_RATE (the rows' qdisc, never their bottleneck): the time per frame
   it sustains through the runtime. Edge-only:
   the whole model on the emulated device; cloud-only: a cloud-only bundle, the image sent raw.
2. Plan. Per bandwidth the planner (toolchain.planning) predicts the time of 100 frames streamed
   with 8 in flight — the first frame's latency, then one frame per slowest stage, less the tbf
   burst the link passes at once — counting TCP/IP headers on the link, and picks the fastest split
   within --max-loss.
3. Measure. The same 100 frames end to end: `edgesplit serve` in the cloud's namespace, `edgesplit
   edge --limit 100` in the edge's namespace and cgroup, every frame answered by the cloud (early
   exits off, as BBNet has none); the seconds it took and the bytes the edge's interface sent. A
   stream under 20 s (the emulated edge, not the link, may set its time) is the median of five runs.
4. Composed. `edgesplit optimize` for the device (`--profile-edge` with the edge profile of 1:
   every edge time here scaled by the whole model's time there over here) at every bandwidth: pruned
   heads, learned codecs and exit branches, each rate's winner built as a bundle; the winner streamed
   as in 3 with its exits on, accuracy counted over every frame from the edge's per-frame CSV against
   the float model's on the same frames.

Without root the suite says so and stops; `--device host` runs the same steps on this CPU, the
link emulated by the edge client's token bucket (no emulated device, no kernel link).
"""

from __future__ import annotations

import copy
import csv
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, NamedTuple

from rich.progress import Progress

from benchmarks.common import QUICK_BUILD, cpu_name, earlier_run, free_port, parse_arguments, table, write_csv
from benchmarks.testbed import interrupt_on_sigterm, missing_root
from benchmarks.testbed.devices import REFERENCES, Calibration, CpuQuota, TestbedError, calibrate, edge_backend, \
    quota_for, run_json, time_command
from benchmarks.testbed.link import ADDRESSES, CLOUD, EDGE, NamespaceLink
from calibration_data import DEFAULT_CALIBRATION
from runtime.errors import EdgesplitError
from runtime.link import parse_rate
from targets import get_device
from toolchain.backends import exporter
from toolchain.build import BuildOptions, build_engines
from toolchain.data import load_images
from toolchain.load import load_model
from toolchain.planning import SEGMENT_OVERHEAD_BYTES, PlanOption, fastest, format_rate, plan_options
from toolchain.profile import ProfileOptions, candidate, profile_target
from toolchain.split import resolve_point, trace

# BBNet's Table 4 range and the 20 kbit/s of its abstract
BANDWIDTHS = ("20kbit", "100kbit", "300kbit", "500kbit", "700kbit", "1mbit", "1500kbit", "2500kbit", "3500kbit")
QUICK_BANDWIDTHS = ("100kbit", "3500kbit")
SPLITS = ("layer2", "layer3", "layer4", "pool")
CODECS = ("int8", "affine:bits=4")
ROOT = Path(__file__).resolve().parents[1]
# learned codecs with committed weights: (codec label, split, checkpoint)
LEARNED = (("bbnet-64B-shipped", "layer3", ROOT / "toolchain/zoo/resnet18w05_fmnist_layer3_codec.pt"),
           ("bbnet-128B-searched", "layer2", ROOT / "benchmarks/results/search-layer2/best.pt"))
UPLOADS = ("raw", "png")  # the image uploads measured (JPEG q90 costs accuracy: the optimizer weighs it)
QUICK_UPLOADS = ("raw",)
# the optimizer's search, as benchmarks/results/optimize ran it; --quick: one head and codec, little training
OPTIMIZE = {"splits": ("layer2", "layer3"), "ratios": (0.0, 0.5), "budget_s": 2400.0}
QUICK_OPTIMIZE = {"splits": ("layer3",), "ratios": (0.0,), "codecs": ("bbnet:bits=4,c=32,s=2",),
                  "train_frames": 1000, "epochs": 1, "holdout_frames": 200, "frames": 10}
DEFAULT_DEVICE = "jetson-nano"  # BBNet's edge
FRAMES, QUICK_FRAMES = 100, 20
IN_FLIGHT = 8
REPEATS, REPEAT_BELOW_S = 5, 20.0  # see steady_stream; --quick runs each stream once
PROFILE_RATE = 1e9  # the edge is profiled through the same tbf as the rows (its qdisc costs the edge a few %)
LINK_CHECK_BPS = 1e6
# BBNet Table 4 (Jetson Nano + GTX 1060 PC, CIFAR-10, ResNet-18, seconds per 100 images)
BBNET_NANO_ONLY_S = 4.7436
BBNET_ROWS = {100: (11.378, 1.188), 300: (4.233, 1.164), 500: (2.802, 1.122), 700: (2.188, 1.097),
              900: (1.850, 1.083), 1100: (1.635, 1.074), 1300: (1.486, 1.069), 1500: (1.376, 1.064),
              2500: (1.093, 0.993), 3500: (0.970, 0.934)}
BBNET_SPEEDUP_20KBIT = 38.89  # BBNet's abstract: vs cloud-only at 20 kbit/s


class Testbed:
    """Where the edge and the cloud run: an emulated device behind a kernel link, or (host) this CPU with
    the edge client's token bucket."""

    def __init__(self, calibration: Calibration | None, quota: CpuQuota | None, link: NamespaceLink | None):
        self.calibration, self.quota, self.link = calibration, quota, link
        self.host = ADDRESSES[CLOUD] if link else "127.0.0.1"
        # the target whose edge halves the device runs here
        self.target = REFERENCES[calibration.device].target if calibration else "cpu"

    def words(self) -> str:
        if self.calibration is None:
            return "no emulated device: this CPU is edge and cloud, the uplink the edge client's token bucket"
        return f"{self.calibration.words()}; uplink: veth between network namespaces, tbf"

    def edge(self, command: list[str]) -> list[str]:
        command = self.link.inside(EDGE, command) if self.link else command
        return self.quota.wrap(command) if self.quota else command

    def cloud(self, command: list[str]) -> list[str]:
        return self.link.inside(CLOUD, command) if self.link else command

    def uplink(self, rate: float | None) -> list[str]:
        """Set the uplink (None: unshaped); the edge command's options for it."""
        if self.link:
            self.link.shape(rate)
            return []
        return [] if rate is None else ["--uplink", f"{int(rate)}bit", "--burst", "0"]

    def burst_ms(self, rate: float) -> float:
        """What the uplink passes at once, in milliseconds at its rate (the client's bucket has no burst)."""
        return 1000 * 8 * self.link.burst_bytes(rate) / rate if self.link else 0.0

    def uplink_bytes(self) -> int | None:
        return self.link.uplink_bytes() if self.link else None


def edgesplit_command() -> list[str]:
    found = shutil.which("edgesplit")
    return [found] if found else [sys.executable, "-m", "edgesplit"]


def start_server(testbed: Testbed, bundle: Path, port: int, log: Path, options: tuple = ()) -> subprocess.Popen:
    """`edgesplit serve [options]` on the cloud's side, once it listens (its messages go to `log`)."""
    with open(log, "w") as messages:
        server = subprocess.Popen(testbed.cloud([*edgesplit_command(), "serve", "--bundle", str(bundle), "--host",
                                                 testbed.host, "--port", str(port), "--no-auth", *options]),
                                  stderr=messages, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while "serving bundle" not in log.read_text():
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            raise TestbedError(f"edgesplit serve did not start: {log.read_text().strip()[-300:]}")
        time.sleep(0.05)
    return server


@contextmanager
def serving(testbed: Testbed, bundle: Path, work: Path, options: tuple = ()) -> Iterator[list[str]]:
    """`edgesplit serve [options]` for the bundle on the cloud's side while the block runs (none for an edge-only
    bundle); yields the edge's start of its command line: `edgesplit edge --bundle B [--server HOST:PORT]`."""
    edge = [*edgesplit_command(), "edge", "--bundle", str(bundle)]
    if json.loads((bundle / "manifest.json").read_text()).get("strategy") == "edge-only":
        yield edge
        return
    port = free_port()
    server = start_server(testbed, bundle, port, work / "serve.log", options)
    try:
        yield [*edge, "--server", f"{testbed.host}:{port}"]
    finally:
        server.terminate()
        server.wait(timeout=30)


def stream(testbed: Testbed, bundle: Path, rate: float | None, frames: int, work: Path, exits: bool = False,
           source: Path = DEFAULT_CALIBRATION, serve_options: tuple = ()) -> dict:
    """`frames` frames of `source` through `edgesplit edge` (and serve, unless the bundle is edge-only): seconds,
    bytes, accuracy over every frame from the per-frame CSV. Without `exits` every frame is answered by the
    cloud."""
    summary_path, rows_path = work / "edge-summary.json", work / "edge-frames.csv"
    with serving(testbed, bundle, work, serve_options) as edge:
        options = testbed.uplink(rate)
        before = testbed.uplink_bytes()
        done = subprocess.run(testbed.edge([
            *edge, "--source", str(source), "--limit", str(frames), "--in-flight", str(IN_FLIGHT),
            "--threads", "1", *([] if exits else ["--exit-threshold", "0"]), "--timeout", "300",
            "--summary-json", str(summary_path), "--output", str(rows_path), *options]), capture_output=True, text=True)
        after = testbed.uplink_bytes()
    served = "--server" in edge
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    answered = summary.get("cloud_answers", 0) + (summary.get("edge_answers", 0) if exits or not served else 0)
    if done.returncode != 0 or answered != frames:
        raise TestbedError(f"the edge did not get {frames} answers: {done.stderr.strip()[-300:]}")
    with open(rows_path, newline="") as rows:
        outcomes = list(csv.DictReader(rows))
    return {"seconds": summary["seconds"], "wire_bytes_per_frame": summary["wire_bytes_per_frame"],
            "link_bytes_per_frame": None if before is None else (after - before) / frames,
            "accuracy": sum(row["prediction"] == row["label"] for row in outcomes) / len(outcomes),
            "sent": summary["cloud_answers"] / frames}


def steady_stream(testbed: Testbed, bundle: Path, rate: float | None, frames: int, work: Path, repeats: int,
                  exits: bool = False, source: Path = DEFAULT_CALIBRATION, serve_options: tuple = ()) -> dict:
    """`stream`, the median of `repeats` where the emulated edge, not the link, may set the time: runs of
    the same edge-bound stream vary by 10-15 % with the host's scheduling, while tbf times a thin link's
    rows to within a percent (those, over REPEAT_BELOW_S, run once)."""
    runs = [stream(testbed, bundle, rate, frames, work, exits, source, serve_options)]
    if runs[0]["seconds"] < REPEAT_BELOW_S:
        runs += [stream(testbed, bundle, rate, frames, work, exits, source, serve_options)
                 for _ in range(repeats - 1)]
    return sorted(runs, key=lambda run: run["seconds"])[len(runs) // 2]


def edge_only_ms(testbed: Testbed, whole_model: Path, frames: int, repeats: int) -> float:
    """The whole model on the (emulated) edge, one image after another: ms per frame over `frames`, the
    median of `repeats` runs."""
    command = testbed.edge(time_command(whole_model, edge_backend(testbed.target), frames, threads=1))
    return statistics.median(run_json(command)["ms"] for _ in range(repeats))


class Candidates(NamedTuple):
    host: dict  # the profile measured here: the cloud's (and, for --device host, the edge's)
    edge: dict  # the same candidates timed on the (emulated) edge device
    bundles: dict  # option name -> bundle directory
    whole_model: Path
    pictures: tuple[str, ...]  # the image uploads streamed: raw, and PNG but in --quick


def learned_candidates(target: str, learned, frames: int, work: Path, calibration_frames: int,
                       holdout_frames: int | None) -> list[dict]:
    """Profile entries (this machine) for learned codecs with committed weights: (label, split, weights)."""
    model = load_model(None)
    timed = load_images(str(DEFAULT_CALIBRATION), "test", model.spec()).inputs()[:frames]
    graph = trace(model.module, model.spec().shape)
    entries = []
    for label, split, weights in learned:
        output = work / f"learned-{split}"
        report = build_engines(BuildOptions(target=target, cloud="cpu", split=split, codec_weights=weights,
                                            output=output, lossless="none", max_loss=math.inf,
                                            calibration_frames=calibration_frames, holdout_frames=holdout_frames),
                               show_progress=False)
        point = resolve_point(graph, report.manifest["split"]["node"])
        entries.append(dict(candidate(point, label, "none", output, report.manifest["checks"], timed, None),
                            bundle=str(output)))
    return entries


def edge_profile(testbed: Testbed, host: dict, uploads: dict[str, Path], whole_model: Path, work: Path,
                 streamed: int, repeats: int) -> dict:
    """The host profile with every edge time measured on the (emulated) edge: each bundle's edge through
    `edgesplit edge` over the link at PROFILE_RATE, as many frames as a measured row streams (the start-up a stream
    pays is then spread as in the rows), the whole model on its own."""
    def ms_per_frame(bundle: Path) -> float:
        return 1000 * steady_stream(testbed, bundle, PROFILE_RATE, streamed, work, repeats)["seconds"] / streamed

    edge = copy.deepcopy(host)
    for entry in edge["candidates"]:
        entry["edge"] = {"ms": ms_per_frame(Path(entry["bundle"]))}
    factor = testbed.calibration.factor if testbed.calibration else 1.0
    for upload in edge["cloud_only"]["uploads"]:  # an image format without a bundle here (JPEG): scaled
        upload["encode"] = {"ms": ms_per_frame(uploads[upload["format"]]) if upload["format"] in uploads
                            else factor * upload["encode"]["ms"]}
    edge["edge_only"]["ms"] = edge_only_ms(testbed, whole_model, 40, repeats)
    return edge


def profiles(testbed: Testbed, splits, codecs, learned, frames: int, work: Path, streamed: int, repeats: int,
             calibration_frames: int, pictures: tuple[str, ...], holdout_frames: int | None) -> Candidates:
    """Build every candidate, profile the cloud here and the edge on the testbed."""
    # the cloud's times with serve's own threads (the backend's default); edge times are measured on the testbed
    host = profile_target(ProfileOptions(target=testbed.target, cloud="cpu", splits=splits, codecs=codecs,
                                         frames=frames, keep=work, calibration_frames=calibration_frames,
                                         holdout_frames=holdout_frames))
    host["candidates"] += learned_candidates(testbed.target, learned, frames, work, calibration_frames, holdout_frames)
    uploads = {picture: build_engines(BuildOptions(
        strategy="cloud-only", image_format=picture, target=testbed.target, cloud="cpu",
        output=work / f"cloud-only-{picture}", max_loss=math.inf, calibration_frames=calibration_frames,
        holdout_frames=holdout_frames), show_progress=False).bundle for picture in pictures}
    bundles = {f"{c['split']} {c['codec']}": Path(c["bundle"]) for c in host["candidates"]}
    bundles.update({f"cloud-only {picture}": path for picture, path in uploads.items()})
    whole_model = next(work.glob(f"whole-*-edge{exporter(get_device(testbed.target, 'edge')).suffix}"))
    edge = edge_profile(testbed, host, uploads, whole_model, work, streamed, repeats)
    return Candidates(host, edge, bundles, whole_model, pictures)


def plan_row(option: PlanOption, strategy: str, rate: float, frames: int, burst_ms: float, measured_s: float,
             measured: dict, accuracy: float | None, choice: str) -> dict:
    predicted = option.stream_ms(frames, IN_FLIGHT, burst_ms) / 1000
    return {"bandwidth": format_rate(rate), "bandwidth_bps": rate, "strategy": strategy, "option": option.name,
            "frame_bytes": round(option.frame_bytes, 1),
            "link_bytes_per_frame": None if measured.get("link_bytes_per_frame") is None
            else round(measured["link_bytes_per_frame"], 1),
            "frames": frames, "s_per_100": round(100 * measured_s / frames, 3),
            "predicted_s_per_100": round(100 * predicted / frames, 3),
            "prediction_error": round(predicted / measured_s - 1, 3),
            "accuracy": None if accuracy is None else round(accuracy, 4), "planner_choice": choice}


def measure_rows(testbed: Testbed, found: Candidates, rates: list[float], frames: int, max_loss: float,
                 work: Path, progress: Progress, repeats: int) -> list[dict]:
    rows = []
    task = progress.add_task("bandwidths", total=len(rates))
    edge_only_s = edge_only_ms(testbed, found.whole_model, frames, repeats) * frames / 1000
    accuracy = {f"{c['split']} {c['codec']}": c["accuracy"] for c in found.host["candidates"]}
    for rate in rates:
        # TCP/IP headers cross the kernel's link; the client's token bucket counts frames only
        options = [o for o in plan_options(found.edge, found.host, rate, headers=testbed.link is not None)
                   if o.strategy != "cloud-only" or o.name in found.bundles]  # JPEG q90 costs accuracy: not here
        burst_ms = testbed.burst_ms(rate)

        def cost(option: PlanOption) -> float:
            return option.stream_ms(frames, IN_FLIGHT, burst_ms)

        choice = fastest(options, max_loss, cost=cost).name
        split = fastest(options, max_loss, "split", cost=cost)
        uploads = [(f"cloud-only {name}" if name != "raw" else "cloud-only",
                    next(o for o in options if o.name == f"cloud-only {name}")) for name in found.pictures]
        edge_only = next(o for o in options if o.strategy == "edge-only")
        for strategy, option in (*uploads, ("edgesplit", split)):
            progress.update(task, description=f"{format_rate(rate)}: {option.name}")
            measured = steady_stream(testbed, found.bundles[option.name], rate, frames, work, repeats)
            rows.append(plan_row(option, strategy, rate, frames, burst_ms, measured["seconds"], measured,
                                 accuracy.get(option.name, found.host["cloud_only"].get("accuracy")), choice))
        rows.append(plan_row(edge_only, "edge-only", rate, frames, burst_ms, edge_only_s, {},
                             found.host["edge_only"].get("accuracy"), choice))
        progress.advance(task)
    return rows


def write_profiles(found: Candidates, output: Path) -> None:
    """profile-cloud.json and profile-edge.json, without the bundles' scratch paths."""
    output.mkdir(parents=True, exist_ok=True)
    for side, profile in (("cloud", found.host), ("edge", found.edge)):
        kept = dict(profile, candidates=[{k: v for k, v in c.items() if k != "bundle"} for c in profile["candidates"]])
        (output / f"profile-{side}.json").write_text(json.dumps(kept, indent=1) + "\n")


def optimized(testbed: Testbed, rates: list[float], max_loss: float, work: Path, progress: Progress, quick: bool,
              output: Path):
    """`edgesplit optimize` for the testbed's device at `rates`, given the edge profile measured on the testbed
    (`--profile-edge`, written to `output` first): the whole model's time there over its time here is the factor
    every edge time is scaled by; the quota's own calibration (the reference model's) under-counted what a small
    model's frame costs under it by about a third. Each rate's winner is built as a bundle; the report goes to
    `output`/optimize; trained pieces are kept in EDGESPLIT_CACHE's folder where set."""
    from toolchain.cache import folder
    from toolchain.optimize import OptimizeOptions, optimize
    from toolchain.optimize_report import write_report

    result = optimize(OptimizeOptions(target=testbed.target, cloud="cpu", uplinks=tuple(rates), max_loss=max_loss,
                                      profile_edge=output / "profile-edge.json", output=work / "optimize",
                                      cache_dir=folder("optimize"),
                                      **(QUICK_OPTIMIZE if quick else OPTIMIZE)), progress)
    write_report(result, output / "optimize")
    return result


def float_top1(frames: int, model=None, source: Path = DEFAULT_CALIBRATION) -> float:
    """The float model's (default: the bundled one's) top-1 on the first `frames` held-out images of `source`, as
    `edgesplit edge` reads them."""
    import numpy as np
    import torch

    from runtime.images import open_source

    model = model or load_model(None)
    source = list(open_source(str(source), model.spec(), "test"))[:frames]
    with torch.no_grad():
        logits = model.module(torch.from_numpy(np.stack([frame.image for frame in source])))
    return float((logits.argmax(1).numpy() == np.array([frame.label for frame in source])).mean())


def measure_optimized(testbed: Testbed, result, frames: int, work: Path, progress: Progress,
                      repeats: int) -> tuple[list[dict], list[dict]]:
    """Each rate's winner streamed with its exits on: the bandwidth rows, and the details (share of frames sent,
    loss against the float model on the same frames)."""
    rows, details = [], []
    reference = float_top1(frames)
    for choice in result.choices:
        option = choice.winner
        if option.name not in result.bundles:
            raise TestbedError(f"the optimizer's choice at {format_rate(choice.rate)}, {option.name}, was not built: "
                               f"{result.refused.get(option.name, 'no bundle')}")
        progress.console.log(f"{format_rate(choice.rate)}: the optimizer's {option.name}")
        measured = steady_stream(testbed, Path(result.bundles[option.name]), choice.rate, frames, work, repeats,
                                 exits=True)
        row = plan_row(option, "optimized", choice.rate, frames, testbed.burst_ms(choice.rate), measured["seconds"],
                       measured, measured["accuracy"], option.name)
        rows.append(row)
        details.append({"bandwidth": row["bandwidth"], "bandwidth_bps": choice.rate, "choice": option.name,
                        "strategy": option.strategy, "sent": round(measured["sent"], 3),
                        "accuracy": round(measured["accuracy"], 4), "float_accuracy": round(reference, 4),
                        "loss_points": round(100 * (reference - measured["accuracy"]), 2),
                        "predicted_loss_points": round(option.loss_points, 2),
                        "s_per_100": row["s_per_100"], "predicted_s_per_100": row["predicted_s_per_100"],
                        "prediction_error": row["prediction_error"]})
    return rows, details


def plot(output: Path, rows: list[dict], candidates: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (times, splits) = plt.subplots(1, 2, figsize=(12, 4.5))
    for strategy, style in (("edge-only", ":"), ("cloud-only", "--"), ("cloud-only png", (0, (1, 3))),
                            ("edgesplit", "-"), ("optimized", "-.")):
        chosen = [r for r in rows if r["strategy"] == strategy]
        if not chosen:
            continue
        kbits = [r["bandwidth_bps"] / 1e3 for r in chosen]
        times.plot(kbits, [r["s_per_100"] for r in chosen], linestyle=style, marker="o", label=f"{strategy} (measured)")
        times.plot(kbits, [r["predicted_s_per_100"] for r in chosen], linestyle=style, color="grey", alpha=0.6,
                   label=f"{strategy} (planner's prediction)")
    times.set_xscale("log")
    times.set_yscale("log")
    times.set_xlabel("uplink (kbit/s)")
    times.set_ylabel("seconds per 100 frames")
    times.legend(fontsize=7)
    times.grid(True, which="both", alpha=0.3)
    order = sorted({c["position"]: c["split"] for c in candidates}.items())
    depth = {name: index for index, (_, name) in enumerate(order)}
    chosen = [r for r in rows if r["strategy"] == "edgesplit"]
    splits.plot([r["bandwidth_bps"] / 1e3 for r in chosen], [depth[r["option"].split(" ")[0]] for r in chosen],
                "o-")
    changes = [row for index, row in enumerate(chosen) if index == 0 or row["option"] != chosen[index - 1]["option"]]
    for row in changes:
        splits.annotate(row["option"].split(" ", 1)[1], (row["bandwidth_bps"] / 1e3, depth[row["option"].split(" ")[0]]),
                        fontsize=7, textcoords="offset points", xytext=(0, 6), ha="center")
    splits.set_yticks(range(len(order)), [name for _, name in order])
    splits.set_xscale("log")
    splits.set_xlabel("uplink (kbit/s)")
    splits.set_ylabel("planner's best split (deeper: up)")
    splits.grid(True, alpha=0.3)
    figure.tight_layout()
    figure.savefig(output / "bandwidth.png", dpi=120)
    plt.close(figure)


def faster(ratio: float) -> str:
    return f"{ratio:.2f}x faster" if ratio >= 1 else f"{1 / ratio:.2f}x slower"


def arithmetic(summary: dict, rows: list[dict]) -> list[str]:
    """Why a figure is in reach or not, from the measured numbers: what a frame costs the link alone."""
    header = summary["frame_header_bytes"] + SEGMENT_OVERHEAD_BYTES
    lines = []
    for row in rows:
        if row["strategy"] != "edge-only" or row["bandwidth_bps"] > 1e5:
            continue
        rate = row["bandwidth_bps"]
        floor = 100 * 8 * header / rate
        lines.append(
            f"- At {row['bandwidth']}, the headers of one frame alone ({summary['frame_header_bytes']} B of edgesplit's "
            f"frame + {SEGMENT_OVERHEAD_BYTES} B of TCP/IPv4/Ethernet) take {floor / 100 * 1000:.1f} ms on the link: {floor:.2f} s per "
            f"100 frames before any feature byte, against {row['s_per_100']:.2f} s for the whole model on the "
            f"emulated edge. A split needs the link and its head both under {row['s_per_100'] / 1.5:.2f} s per "
            "100 frames to beat edge-only 1.5x.")
    split = [r for r in rows if r["strategy"] == "edgesplit" and r["bandwidth_bps"] <= 1e5 and r["link_bytes_per_frame"]]
    for row in split:  # what TCP costs a frame even when every segment carries all the frames in flight
        payload = row["frame_bytes"] - summary["frame_header_bytes"]
        floor = row["frame_bytes"] + SEGMENT_OVERHEAD_BYTES / summary["in_flight"]
        lines.append(
            f"- At {row['bandwidth']} the split's {payload:.0f}-byte payloads cost {row['link_bytes_per_frame']:.1f} B "
            f"per frame on the link, ACKs included ({row['link_bytes_per_frame'] - payload:.1f} over the payload). "
            f"With {summary['in_flight']} frames in flight a segment carries at most {summary['in_flight']} of them, "
            f"so even one segment per {summary['in_flight']} frames and no ACK cost {row['frame_bytes']:.0f} + "
            f"{SEGMENT_OVERHEAD_BYTES}/{summary['in_flight']} = {floor:.2f} B per frame: "
            f"{floor - payload:.2f} over the payload.")
    wins = [s for s in summary["speedups"] if s["vs_best"] > 1]
    lines.append("- The split beats both baselines at " + ", ".join(
        f"{s['bandwidth']} ({s['vs_best']:.2f}x the better one)" for s in wins)
        + "; at the other bandwidths the whole model on the device or sending the image is faster." if wins
        else "- The split beats both baselines at no bandwidth measured.")
    bbnet = {20e3: BBNET_SPEEDUP_20KBIT, 100e3: BBNET_ROWS[100][0] / BBNET_ROWS[100][1]}
    for speedup in summary["speedups"]:
        if speedup["bandwidth_bps"] in bbnet:
            lines.append(f"- At {speedup['bandwidth']} the split is {faster(speedup['vs_cloud'])} than "
                         f"cloud-only (BBNet's: {faster(bbnet[speedup['bandwidth_bps']])}).")
    cloud = [r for r in rows if r["strategy"] == "cloud-only"]
    if cloud:
        lines.append(f"- Cloud-only sends {cloud[0]['frame_bytes']:.0f} B per frame (a 32x32 grayscale image, raw, and "
                     f"the header) where BBNet sends CIFAR's 3,072 B: at the same bandwidth sending the "
                     "image costs a third of BBNet's time, and so does the split's speed-up over it.")
    return lines


# issue 30's goals for the optimizer's choice on the default model, 20 kbit/s to 1 Mbit/s
GOAL_VS_BEST, GOAL_VS_RAW, GOAL_LOSS, GOAL_PREDICTION = 1.5, {20e3: 40.0, 100e3: 10.0}, 0.5, 0.15


def composed_lines(summary: dict) -> list[str]:
    """The optimizer's choice per rate, and each goal met or missed with the numbers that say why."""
    details = summary.get("optimized")
    if not details:
        return []
    speedups = {s["bandwidth_bps"]: s for s in summary["speedups"]}
    rows = [dict(d, **{"vs better baseline": f"{speedups[d['bandwidth_bps']]['optimized_vs_best']:.2f}x",
                       "vs cloud-only raw": f"{speedups[d['bandwidth_bps']]['optimized_vs_cloud']:.2f}x"})
            for d in details]
    columns = ["bandwidth", "choice", "sent", "s_per_100", "predicted_s_per_100", "prediction_error", "accuracy",
               "float_accuracy", "loss_points", "predicted_loss_points", "vs better baseline", "vs cloud-only raw"]
    lines = ["## The optimizer's choice, composed", "",
             f"`edgesplit optimize` for the device ({summary['optimize']['words']}; report: "
             "[optimize/REPORT.md](optimize/REPORT.md)); each rate's winner streamed with its exits on. `sent`: the "
             "share of frames the edge sent; `accuracy` over every frame from the edge's per-frame CSV, against the "
             "float model's on the same frames; the better baseline is the fastest of edge-only, the raw image and "
             "the PNG image, as measured here.", "", table(rows, columns), ""]
    for d in details:
        speedup = speedups[d["bandwidth_bps"]]
        misses = []
        if 20e3 <= d["bandwidth_bps"] <= 1e6 and speedup["optimized_vs_best"] < GOAL_VS_BEST:
            misses.append(f"{speedup['optimized_vs_best']:.2f}x the better baseline, not {GOAL_VS_BEST}x: it would "
                          f"need {d['s_per_100'] * speedup['optimized_vs_best'] / GOAL_VS_BEST:.2f} s per 100 frames, "
                          f"it took {d['s_per_100']:.2f}")
        wanted = GOAL_VS_RAW.get(d["bandwidth_bps"])
        if wanted and speedup["optimized_vs_cloud"] < wanted:
            misses.append(f"{speedup['optimized_vs_cloud']:.1f}x the raw image, not {wanted:g}x: {wanted:g}x needs "
                          f"{d['s_per_100'] * speedup['optimized_vs_cloud'] / wanted:.2f} s per 100 frames")
        if d["loss_points"] > GOAL_LOSS:
            misses.append(f"loses {d['loss_points']:.1f} points on these {summary['frames']} frames, over {GOAL_LOSS} "
                          f"(one frame is {100 / summary['frames']:.1f} points)")
        if abs(d["prediction_error"]) > GOAL_PREDICTION:
            misses.append(f"predicted {d['predicted_s_per_100']:.2f} s, measured {d['s_per_100']:.2f} s "
                          f"({d['prediction_error']:+.0%}, beyond ±{GOAL_PREDICTION:.0%})")
        lines.append(f"- {d['bandwidth']}, {d['choice']}: " + ("every goal met." if not misses else "; ".join(misses)
                                                               + "."))
    return lines + [""]


def reach_lines(output: Path, summary: dict) -> list[str]:
    """Where the choice missed 1.5x the better baseline: what the search's own candidates would have needed, from
    its predictions (optimize/predictions.csv): the fastest within --max-loss, and those fast enough at any loss."""
    path = output / "optimize" / "predictions.csv"
    if not path.exists() or not summary.get("optimized"):
        return []
    with open(path) as stream:
        predictions = list(csv.DictReader(stream))
    speedups = {s["bandwidth_bps"]: s for s in summary["speedups"]}
    lines = []
    for d in summary["optimized"]:
        rate, speedup = d["bandwidth_bps"], speedups[d["bandwidth_bps"]]
        if not 20e3 <= rate <= 1e6 or speedup["optimized_vs_best"] >= GOAL_VS_BEST:
            continue
        target = d["s_per_100"] * speedup["optimized_vs_best"] / GOAL_VS_BEST
        at_rate = [p for p in predictions if float(p["uplink_bps"]) == rate and p["strategy"] == "split"]
        allowed = [p for p in at_rate if p["within_max_loss"] == "True"]
        fast = sorted((p for p in at_rate if float(p["s_per_100"]) <= target), key=lambda p: float(p["loss_points"]))
        words = (f"- {d['bandwidth']}: 1.5x needs {target:.2f} s per 100 frames ({10 * target:.1f} ms a frame on the "
                 "slowest stage). ")
        if allowed:
            best = min(allowed, key=lambda p: float(p["s_per_100"]))
            words += (f"The fastest split within --max-loss, {best['option']}, was predicted at "
                      f"{float(best['s_per_100']):.2f} s (edge {float(best['edge_ms']):.1f} ms, link "
                      f"{float(best['upload_ms']):.1f} ms a frame). ")
        words += (f"{len(fast)} of {len(at_rate)} split candidates were predicted under {target:.2f} s; the one losing "
                  f"least, {fast[0]['option']}, loses {float(fast[0]['loss_points']):.1f} points." if fast else
                  f"None of the {len(at_rate)} split candidates was predicted under {target:.2f} s.")
        lines.append(words)
    if not lines:
        return []
    return ["What the 1.5x goal would have needed, from the search's own predictions on the device (every candidate "
            "the search measured: heads unpruned and pruned, codecs, exits):", "", *lines, ""]


WIRE_COLUMNS = ("bandwidth", "bandwidth_bps", "strategy", "option", "frame_bytes", "link_bytes_per_frame")


def wire_before(earlier: dict, header_bytes: int) -> dict | None:
    """The bytes per frame of the last full run whose frames had another header, carried from run to run so that a
    change of the wire stays in view after it."""
    if not earlier:
        return None
    if earlier.get("frame_header_bytes") == header_bytes:
        return earlier.get("wire_before")
    return {"date": earlier["date"], "frame_header_bytes": earlier["frame_header_bytes"],
            "rows": [{k: r.get(k) for k in WIRE_COLUMNS} for r in earlier["rows"] if r["strategy"] != "edge-only"]}


def wire_lines(summary: dict, rows: list[dict]) -> list[str]:
    """Bytes per frame on the link, the frames with the earlier header against this run's, row by row."""
    before = summary.get("wire_before")
    if not before:
        return []
    earlier = {(r["bandwidth_bps"], r["strategy"]): r for r in before["rows"]}
    compared = []
    for row in rows:
        old = earlier.get((row["bandwidth_bps"], row["strategy"]))  # the earlier rows hold no edge-only
        if old is not None:
            pairs = {f"{k} before": old[k] for k in WIRE_COLUMNS[3:]} | {k: row[k] for k in WIRE_COLUMNS[3:]}
            compared.append({"bandwidth": row["bandwidth"], "strategy": row["strategy"],
                             **{k: "–" if v is None else v for k, v in pairs.items()}})
    if not compared:
        return []
    return ["## Bytes per frame on the link, before and after", "",
            f"Before: the run of {before['date']}, frames with a {before['frame_header_bytes']}-byte header; after: "
            f"this run, {summary['frame_header_bytes']} bytes of header for payloads under 128 bytes (protocol "
            f"{summary['protocol']}). The link's bytes are the edge interface's, TCP/IP headers and ACKs included.", "",
            table(compared, list(compared[0])), ""]


def write_report(output: Path, summary: dict, rows: list[dict]) -> None:
    columns = ["bandwidth", "strategy", "option", "frame_bytes", "link_bytes_per_frame", "s_per_100",
               "predicted_s_per_100", "prediction_error", "accuracy", "planner_choice"]
    bbnet = [{"bandwidth": f"{kbps} kbps", "cloud-only s/100": cloud, "BBNet s/100": split,
              "BBNet speed-up": f"{cloud / split:.2f}x"} for kbps, (cloud, split) in BBNET_ROWS.items()]
    speedups = [{"bandwidth": s["bandwidth"], "planner's choice": s["choice"], "split vs cloud-only": f"{s['vs_cloud']:.2f}x",
                 "split vs edge-only": f"{s['vs_edge']:.2f}x", "split vs the better baseline": f"{s['vs_best']:.2f}x"}
                for s in summary["speedups"]]
    calibration = summary["calibration"]
    setup = ("no emulated device (`--device host`): this CPU is the edge and the cloud; uplink: the edge client's "
             "token bucket" if calibration is None else
             f"{calibration['words']}: the reference takes {calibration['here_ms']:.2f} ms here and "
             f"{calibration['confined_ms']:.2f} ms under the quota ({calibration['quota_us']} us per "
             f"{calibration['period_us']} us), against {calibration['published_ms']} ms published. Uplink: a veth "
             f"between network namespaces shaped by tbf (measured {summary['link_check']['link_bps'] / 1e3:.1f} kbit/s "
             f"at {summary['link_check']['configured_bps'] / 1e3:.0f} kbit/s configured)")
    lines = [
        "# Time for 100 frames vs uplink bandwidth (BBNet Table 4)", "",
        f"Generated by `python -m benchmarks bandwidth` on {summary['machine']} ({summary['cpus']} CPUs, no GPU), "
        f"{summary['date']}. Edge: {setup}. Cloud: `edgesplit serve` on this CPU, unconfined. "
        f"{summary['frames']} frames per row: streamed with {IN_FLIGHT} in flight and every one answered by the "
        "cloud (cloud-only, edgesplit), or run through the whole model on the edge (edge-only); "
        f"float accuracy {summary['float_accuracy']:.2%} on {summary['holdout_frames']} held-out Fashion-MNIST images.",
        "", table([{k: "–" if v is None else v for k, v in row.items()} for row in rows], columns), "",
        "`s_per_100`: measured end to end; `predicted_s_per_100`: the planner's prediction from the two "
        "profiles (the first frame's latency, then one frame per slowest stage, less the link's one-packet burst; "
        "TCP/IP headers counted on the kernel's link); "
        "`link_bytes_per_frame`: what the edge's interface sent, headers and ACKs included (– where no link "
        "was crossed or the link is the client's token bucket).", "",
        table(speedups, list(speedups[0]) if speedups else []), "",
        "![bandwidth](bandwidth.png)", "", *wire_lines(summary, rows), *composed_lines(summary),
        *reach_lines(output, summary),
        f"BBNet's Table 4 (Jetson Nano edge, GTX 1060 PC cloud, ResNet-18 on CIFAR-10, seconds per 100 images; "
        f"Nano alone {BBNET_NANO_ONLY_S} s; {BBNET_SPEEDUP_20KBIT}x over cloud-only at 20 kbit/s in its abstract):", "",
        table(bbnet, ["bandwidth", "cloud-only s/100", "BBNet s/100", "BBNet speed-up"]), "",
        "## What the numbers allow", "", *arithmetic(summary, rows),
    ]
    (output / "RESULTS.md").write_text("\n".join(lines) + "\n")


def speedup_rows(rows: list[dict]) -> list[dict]:
    result = []
    for rate in dict.fromkeys(r["bandwidth_bps"] for r in rows):
        by = {r["strategy"]: r for r in rows if r["bandwidth_bps"] == rate}
        split, cloud, edge = by["edgesplit"]["s_per_100"], by["cloud-only"]["s_per_100"], by["edge-only"]["s_per_100"]
        best = min(cloud, edge, by.get("cloud-only png", by["cloud-only"])["s_per_100"])  # device, raw or PNG
        entry = {"bandwidth": by["edgesplit"]["bandwidth"], "bandwidth_bps": rate,
                 "choice": by["edgesplit"]["planner_choice"], "vs_cloud": cloud / split, "vs_edge": edge / split,
                 "vs_best": best / split}
        if "optimized" in by:
            composed = by["optimized"]["s_per_100"]
            entry.update(optimized=by["optimized"]["option"], optimized_vs_cloud=cloud / composed,
                         optimized_vs_best=best / composed)
        result.append(entry)
    return result


def open_testbed(device: str, work: Path, stack, calibration_file: Path | None) -> Testbed:
    """Calibrate the device (or read its calibration) and build the link; the host testbed where `device` is
    'host'."""
    if device == "host":
        return Testbed(None, None, None)
    reason = missing_root()
    if reason:
        raise TestbedError(f"{reason}; or measure without an emulated device: --device host")
    calibration = Calibration.read(calibration_file, device) if calibration_file else calibrate(device, work)
    period, quota = quota_for(calibration.factor)
    return Testbed(calibration, stack.enter_context(CpuQuota(device, period, quota)),
                   stack.enter_context(NamespaceLink()))


def main() -> None:
    from contextlib import ExitStack

    def options(parser):
        parser.add_argument("--device", default=DEFAULT_DEVICE, choices=(*REFERENCES, "host"),
                            help="The emulated edge device (root), or host: this CPU, token-bucket uplink.")
        parser.add_argument("--max-loss", type=float, default=GOAL_LOSS,
                            help="Accuracy points a split (and the optimizer's choice) may lose.")
        parser.add_argument("--calibration", type=Path, default=None,
                            help="The device's calibration from an earlier run on this machine (what `python -m "
                                 "benchmarks.testbed.devices calibrate DEVICE` prints, or a summary.json) instead "
                                 "of calibrating again.")
        parser.add_argument("--no-optimize", action="store_true",
                            help="Leave out the optimizer's choice (its search trains and builds for ~30 minutes).")

    args = parse_arguments(__doc__, "bandwidth", "Two bandwidths, 20 frames, the raw image only, one candidate split: "
                           "the shipped learned codec at layer3; every build calibrated on 128 images.", options,
                           folder=lambda a: "bandwidth" if a.device == DEFAULT_DEVICE else f"bandwidth-{a.device}")
    rates = [parse_rate(b) for b in (QUICK_BANDWIDTHS if args.quick else BANDWIDTHS)]
    splits, codecs = (("layer3",), ()) if args.quick else (SPLITS, CODECS)
    learned = LEARNED[:1] if args.quick else LEARNED
    frames = QUICK_FRAMES if args.quick else FRAMES
    interrupt_on_sigterm()
    with ExitStack() as stack, Progress() as progress:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        try:
            testbed = open_testbed(args.device, work, stack, args.calibration)
            repeats = 1 if args.quick else REPEATS
            found = profiles(testbed, splits, codecs, learned, 20 if args.quick else 200, work, frames, repeats,
                             QUICK_BUILD["calibration_frames"] if args.quick else BuildOptions().calibration_frames,
                             QUICK_UPLOADS if args.quick else UPLOADS, QUICK_BUILD["holdout_frames"] if args.quick else None)
            link_check = None
            if testbed.link:  # long enough that the one-packet burst does not count
                testbed.link.shape(LINK_CHECK_BPS)
                link_check = testbed.link.measure_rate(int(LINK_CHECK_BPS / 8 * 2))
            rows = measure_rows(testbed, found, rates, frames, args.max_loss, work, progress, repeats)
            write_profiles(found, args.output)
            details, optimize_words = [], None
            if not args.no_optimize:
                result = optimized(testbed, rates, args.max_loss, work, progress, args.quick, args.output)
                composed, details = measure_optimized(testbed, result, frames, work, progress, repeats)
                rows += composed
                optimize_words = {"words": result.speed.words(), "seconds": round(result.seconds, 1)}
        except (TestbedError, EdgesplitError, ValueError, OSError) as error:
            sys.exit(f"error: {error}")
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the namespaces, cgroup and scratch folder are gone now
            sys.exit(130)
    from runtime.protocol import VERSION, frame_bytes

    summary = {"quick": args.quick, "machine": cpu_name(), "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d"),
               "device": args.device, "testbed": testbed.words(),
               "calibration": None if testbed.calibration is None else testbed.calibration.as_dict(),
               "link_check": link_check, "frames": frames, "in_flight": IN_FLIGHT,
               "frame_header_bytes": frame_bytes(0), "float_accuracy": found.host["data"]["float_accuracy"],
               "holdout_frames": found.host["data"]["holdout_frames"], "speedups": speedup_rows(rows), "rows": rows,
               "optimized": details, "optimize": optimize_words, "protocol": VERSION,
               "wire_before": wire_before(earlier_run(args.output), frame_bytes(0))}
    write_csv(args.output / "bandwidth.csv", rows)
    if details:
        write_csv(args.output / "optimized.csv", details)
    (args.output / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot(args.output, rows, found.host["candidates"])
    write_report(args.output, summary, rows)
    print(table(rows, ["bandwidth", "strategy", "option", "s_per_100", "predicted_s_per_100", "planner_choice"]))
    print(f"wrote {args.output}/RESULTS.md")


if __name__ == "__main__":
    main()
