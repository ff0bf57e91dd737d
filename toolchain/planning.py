"""Pick the split for a bandwidth (BBNet's Algorithm 1, eq. 5) and size the uplink for n cameras.

For every option i — each profiled split and codec, the whole model on the edge ("edge-only"),
the image sent to the cloud ("cloud-only", raw / PNG / JPEG) — the latency of one frame is

    T_i = TM_i + TU_i + TC_i,   TU_i = 8 * bytes_i / bandwidth + rtt

with TM_i measured in the edge device's profile and TC_i in the cloud's. The plan is the
option with the least T_i among those losing at most `max_loss` accuracy points.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from statistics import NormalDist
from typing import Callable, NamedTuple

from runtime.protocol import frame_bytes
from toolchain.errors import EdgesplitError

PROFILE_FORMAT = "edgesplit-profile/2"  # what `edgesplit profile` writes (2: devices per half)
# What a frame costs a TCP link beyond its own bytes: Ethernet 14 + IPv4 20 + TCP 20 + timestamps 12
# per segment of at most 1448 bytes (MTU 1500)
SEGMENT_OVERHEAD_BYTES = 66
SEGMENT_BYTES = 1448
PROFILE_KEYS = ("target", "devices", "device", "model", "data", "candidates", "edge_only", "cloud_only")


class PlanOption(NamedTuple):
    strategy: str  # "split", "edge-only" or "cloud-only"
    name: str  # e.g. "layer2 int8", "cloud-only png"
    position: float  # graph order: cloud-only -inf, edge-only +inf
    frame_bytes: float
    edge_ms: float
    upload_ms: float
    cloud_ms: float
    loss_points: float | None  # None: no labels in the profiles

    @property
    def total_ms(self) -> float:
        return self.edge_ms + self.upload_ms + self.cloud_ms

    def stream_ms(self, frames: int, in_flight: int, burst_ms: float = 0.0) -> float:
        """Time for `frames` sent back to back, at most `in_flight` unanswered: the first frame's latency,
        then one frame per slowest stage — or per round trip / in_flight where the window is the limit.
        A token-bucket link passes its first burst (`burst_ms` at its rate) at once: where the link is the
        slowest stage, the stream ends that much sooner."""
        step = max(self.edge_ms, self.upload_ms, self.cloud_ms, self.total_ms / in_flight)
        saved = min(burst_ms, (frames - 1) * step) if 0 < self.upload_ms == step else 0.0
        return self.total_ms + (frames - 1) * step - saved


class Decision(NamedTuple):
    bandwidth: float  # bits per second
    options: list[PlanOption]
    choice: PlanOption
    speedup_vs_cloud_only: float | None
    speedup_vs_edge_only: float


def load_profile(path: Path) -> dict:
    try:
        profile = json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise EdgesplitError(f"cannot read profile {path} ({error}); expected the JSON `edgesplit profile` writes") \
            from error
    if not isinstance(profile, dict) or profile.get("format") != PROFILE_FORMAT:
        found = profile.get("format") if isinstance(profile, dict) else type(profile).__name__
        raise EdgesplitError(f"{path} is not an edgesplit profile (format {found!r}, expected {PROFILE_FORMAT!r}); "
                             "write one with `edgesplit profile --target T`")
    missing = [key for key in PROFILE_KEYS if key not in profile]
    if missing:
        raise EdgesplitError(f"profile {path} lacks {', '.join(missing)}; write it again with `edgesplit profile`")
    return profile


def _model_words(profile: dict) -> str:
    model = profile["model"]
    return f"{model['name']} (sha256 {model['sha256'][:12]}…, input {'x'.join(map(str, model['input_shape']))})"


def check_profiles(edge: dict, cloud: dict, bundle_manifest: dict | None = None) -> None:
    """Both profiles must describe the same model (and the bundle's, when one is given)."""
    if (edge["model"]["sha256"], edge["model"]["input_shape"]) != (cloud["model"]["sha256"],
                                                                   cloud["model"]["input_shape"]):
        raise EdgesplitError(f"the profiles describe different models: edge profile {_model_words(edge)}, "
                             f"cloud profile {_model_words(cloud)}; profile both with the same --model")
    if bundle_manifest is not None:
        source = bundle_manifest["source_model"]
        if source["sha256"] != edge["model"]["sha256"]:
            raise EdgesplitError(f"the bundle was built from {source['name']} (sha256 {source['sha256'][:12]}…) "
                                 f"but the profiles describe {_model_words(edge)}; profile the bundle's model")


def _key(candidate: dict) -> tuple:
    return candidate["node"], candidate["codec"], candidate["lossless"]


def loss_points(float_accuracy: float | None, accuracy: float | None) -> float | None:
    """Accuracy points lost against the float model, rounded past float noise: one frame in 100 lost is 1.0,
    within `--max-loss 1` wherever it is compared."""
    if float_accuracy is None or accuracy is None:
        return None
    return round(100 * (float_accuracy - accuracy), 9)


def link_bytes(frame: float) -> float:
    """A frame's bytes on a TCP/IPv4 Ethernet link: its own and one set of headers per segment."""
    return frame + SEGMENT_OVERHEAD_BYTES * max(1, math.ceil(frame / SEGMENT_BYTES))


def plan_options(edge: dict, cloud: dict, bandwidth: float, rtt_ms: float = 0.0,
                 edge_slowdown: float = 1.0, headers: bool = False) -> list[PlanOption]:
    """Every option at one bandwidth (bits/s), splits in graph order between the two baselines.

    `edge_slowdown` scales every edge time: a what-if for a device slower than the one profiled.
    `headers` counts TCP/IP headers on the link (`link_bytes`), which BBNet's bytes / bandwidth leaves out.

    A split's accuracy depends on both halves' precisions; each profile measured it with its
    own target's pair, and the larger loss of the two is taken."""
    float_accuracy = edge["data"]["float_accuracy"]

    def upload(frame: float) -> float:
        return 1000 * 8 * (link_bytes(frame) if headers else frame) / bandwidth + rtt_ms

    options = []
    uploads_cloud = {u["format"]: u for u in cloud["cloud_only"]["uploads"]}
    for sent in edge["cloud_only"]["uploads"]:
        received = uploads_cloud.get(sent["format"])
        if received is None:
            continue
        losses = [loss_points(float_accuracy, sent.get("accuracy")),
                  loss_points(float_accuracy, cloud["cloud_only"].get("accuracy"))]
        loss = None if None in losses else losses[0] + losses[1]  # image coding and cloud precision add up
        options.append(PlanOption("cloud-only", f"cloud-only {sent['format']}", -math.inf, sent["frame_bytes"],
                                  edge_slowdown * sent["encode"]["ms"], upload(sent["frame_bytes"]),
                                  received["decode"]["ms"] + cloud["cloud_only"]["ms"], loss))
    cloud_candidates = {_key(c): c for c in cloud["candidates"]}
    for candidate in sorted(edge["candidates"], key=lambda c: c["position"]):
        other = cloud_candidates.get(_key(candidate))
        if other is None:
            continue
        losses = [loss_points(float_accuracy, candidate["accuracy"]), loss_points(float_accuracy, other["accuracy"])]
        loss = None if None in losses else max(losses)
        options.append(PlanOption("split", f"{candidate['split']} {candidate['codec']}", candidate["position"],
                                  candidate["frame_bytes"], edge_slowdown * candidate["edge"]["ms"], upload(candidate["frame_bytes"]),
                                  other["cloud"]["ms"], loss))
    if not any(o.strategy == "split" for o in options):
        raise EdgesplitError("the profiles share no candidate split: the edge profile has "
                             f"{sorted({c['split'] for c in edge['candidates']})}, the cloud profile "
                             f"{sorted({c['split'] for c in cloud['candidates']})}; profile the same --splits and --codecs")
    options.append(PlanOption("edge-only", "edge-only", math.inf, 0.0, edge_slowdown * edge["edge_only"]["ms"], 0.0, 0.0,
                              loss_points(float_accuracy, edge["edge_only"].get("accuracy"))))
    return options


def within(option: PlanOption, max_loss: float) -> bool:
    return option.loss_points is None or option.loss_points <= max_loss


def fastest(options: list[PlanOption], max_loss: float, strategy: str | None = None,
            cost: Callable[[PlanOption], float] = lambda option: option.total_ms) -> PlanOption:
    """The least cost (default: one frame's latency) among options (of `strategy`, if given) losing at most
    `max_loss` points."""
    allowed = [o for o in options if within(o, max_loss) and strategy in (None, o.strategy)]
    if not allowed:
        kind = "option" if strategy is None else f"{strategy} option"
        raise EdgesplitError(f"no {kind} loses at most {max_loss} accuracy points; the least is "
                             f"{min(o.loss_points for o in options):.2f} — raise --max-loss")
    # equal latency: the deeper split, which sends less and leaves the cloud more headroom
    return min(allowed, key=lambda o: (cost(o), -o.position))


def decide(options: list[PlanOption], bandwidth: float, max_loss: float) -> Decision:
    choice = fastest(options, max_loss)
    cloud_only = [o.total_ms for o in options if o.strategy == "cloud-only" and within(o, max_loss)]
    edge_only = next(o for o in options if o.strategy == "edge-only")
    return Decision(bandwidth, options, choice,
                    min(cloud_only) / choice.total_ms if cloud_only else None, edge_only.total_ms / choice.total_ms)


def plan(edge: dict, cloud: dict, bandwidths: list[float], max_loss: float = 1.0, rtt_ms: float = 0.0,
         edge_slowdown: float = 1.0) -> list[Decision]:
    check_profiles(edge, cloud)
    return [decide(plan_options(edge, cloud, bandwidth, rtt_ms, edge_slowdown), bandwidth, max_loss)
            for bandwidth in bandwidths]


def format_rate(bits_per_second: float) -> str:
    for unit, size in (("Gbit/s", 1e9), ("Mbit/s", 1e6), ("kbit/s", 1e3)):
        if bits_per_second >= size:
            return f"{bits_per_second / size:g} {unit}"
    return f"{bits_per_second:g} bit/s"


def plan_rows(decisions: list[Decision]) -> list[dict]:
    """One row per bandwidth and option, as written to plan.csv."""
    rows = []
    for decision in decisions:
        for option in decision.options:
            rows.append({"bandwidth_bps": decision.bandwidth, "option": option.name, "strategy": option.strategy,
                         "frame_bytes": round(option.frame_bytes, 1), "edge_ms": round(option.edge_ms, 3),
                         "upload_ms": round(option.upload_ms, 3), "cloud_ms": round(option.cloud_ms, 3),
                         "total_ms": round(option.total_ms, 3),
                         "loss_points": None if option.loss_points is None else round(option.loss_points, 2),
                         "chosen": option == decision.choice})
    return rows


def draw_plan(decisions: list[Decision], path: Path) -> None:
    """Total latency against bandwidth per option, the plan's choice marked (BBNet Fig. 9/10)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bandwidths = [d.bandwidth for d in decisions]
    figure, axes = plt.subplots(figsize=(8, 5))
    for index, option in enumerate(decisions[0].options):
        totals = [d.options[index].total_ms for d in decisions]
        style = {"split": "-", "cloud-only": "--", "edge-only": ":"}[option.strategy]
        axes.plot(bandwidths, totals, style, marker=".", label=option.name, linewidth=1.2)
    axes.plot(bandwidths, [d.choice.total_ms for d in decisions], "k-", linewidth=3, alpha=0.35, label="plan")
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlabel("uplink bandwidth (bit/s)")
    axes.set_ylabel("latency per frame (ms): edge + upload + cloud")
    axes.legend(fontsize=7, ncol=2)
    axes.grid(True, which="both", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


class RateEstimate(NamedTuple):
    per_camera_bps: float
    aggregate_bps: float
    provisioned_bps: float  # at the requested quantile; equals the mean when the load does not vary
    max_cameras: int | None  # on the given link, provisioned at the quantile


def bundle_payload(manifest: dict) -> float:
    """A bundle's mean payload bytes per frame, measured at build time (a lossless stage makes it
    vary). An edge-only bundle sends nothing."""
    if "cloud" not in manifest["artefacts"]:
        raise EdgesplitError("this bundle is edge-only: its edge sends nothing, so it needs no uplink (0 bit/s)")
    return manifest["checks"]["mean_payload_bytes"]


def estimate_rate(cameras: int, fps: float, offload_rate: float, frame_bytes_sent: float,
                  link_bps: float | None = None) -> RateEstimate:
    """Seed 001's transfer rate at the cloud: n cameras x fps x share offloaded x bytes x 8."""
    if not 0 <= offload_rate <= 1:
        raise EdgesplitError(f"--offload-rate is a share of frames, 0..1, got {offload_rate}")
    per_camera = fps * offload_rate * frame_bytes_sent * 8
    aggregate = cameras * per_camera
    return RateEstimate(per_camera, aggregate, aggregate,
                        None if link_bps is None or per_camera == 0 else int(link_bps // per_camera))


class CrowdModel(NamedTuple):
    """Seed 001's detection variant: people per camera ~ Normal(mean, std), each covering
    `cells_per_person` of the grid x grid cells; a share `cloud_ratio` of those cells is not
    resolved at the edge and its features go to the cloud (the rest of the frame is not sent)."""
    people_mean: float
    people_std: float
    cells_per_person: float = 1.0
    cloud_ratio: float = 0.3
    grid: int = 7
    quantile: float = 0.99


def estimate_crowd_rate(cameras: int, fps: float, model: CrowdModel, payload_bytes: float,
                        link_bps: float | None = None) -> tuple[RateEstimate, list[str]]:
    """Mean and quantile uplink when each frame sends only the cells where people still need the cloud.

    Bits per frame = 8 * (r * c * P * payload / grid^2 + header): linear in the people count P, so
    the mean uses the mean count and, counts being independent across cameras, the aggregate's
    standard deviation is sqrt(n) * fps * 8 * r * c * std * payload / grid^2 (normal quantile)."""
    if not 0 <= model.cloud_ratio <= 1:
        raise EdgesplitError(f"the cloud cell ratio r is a share, 0..1, got {model.cloud_ratio}")
    if model.people_mean < 0 or model.people_std < 0:
        raise EdgesplitError("people per camera: the mean and standard deviation must be >= 0")
    cells = model.grid ** 2
    per_person_bytes = model.cloud_ratio * model.cells_per_person * payload_bytes / cells
    mean_payload = per_person_bytes * model.people_mean
    header = frame_bytes(mean_payload) - mean_payload  # the frame's header at the mean payload
    per_camera = fps * 8 * (per_person_bytes * model.people_mean + header)

    def provisioned(count: int) -> float:
        spread = math.sqrt(count) * fps * 8 * per_person_bytes * model.people_std
        return count * per_camera + NormalDist().inv_cdf(model.quantile) * spread

    notes = []
    busiest = (model.people_mean + 3 * model.people_std) * model.cells_per_person
    if busiest > cells:
        notes.append(f"mean + 3 std people cover {busiest:.0f} cells, more than the {cells} of the grid: "
                     "the linear model overestimates busy cameras")
    max_cameras = None
    if link_bps is not None:  # provisioned(n) grows with n: the largest n that fits, by bisection
        low, high = 0, int(link_bps // per_camera) + 1
        while low < high:
            middle = (low + high + 1) // 2
            low, high = (middle, high) if provisioned(middle) <= link_bps else (low, middle - 1)
        max_cameras = low
    return RateEstimate(per_camera, cameras * per_camera, provisioned(cameras), max_cameras), notes
