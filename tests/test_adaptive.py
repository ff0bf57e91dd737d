"""Adaptive bundles (issue 34): several operating points in one bundle, an edge that follows its uplink between
them on one connection, a server that serves them all."""

import csv
import json
import os
import subprocess
import sys
from itertools import islice

import pytest
from click.testing import CliRunner

from runtime import protocol
from runtime.adaptive import Switcher, UplinkEstimate
from runtime.backends.tensorrt.engine import probe_device
from runtime.bundle import compute_bundle_id, open_bundle
from runtime.cloud import BackgroundServer, ServerConfig
from runtime.edge import CLOUD, ClientConfig, EdgeClient
from runtime.errors import BundleError, ProtocolError
from runtime.images import open_source, paced
from runtime.link import EmulatedLink
from runtime.local import edge_half
from toolchain.adaptive import compose
from toolchain.build import BuildOptions, build_engines
from toolchain.cli import main as toolchain_main

from calibration_data import DEFAULT_CALIBRATION
from tests.test_network import KEY, ROOT, free_port, start_serve_process

FPS = 30.0
DEVICE = probe_device()


@pytest.fixture(scope="module")
def points(default_build, tmp_path_factory):
    """The default model three ways: the whole model on the edge, the bundled split, the image sent as PNG."""
    work = tmp_path_factory.mktemp("points")
    return {"edge-only": build_engines(BuildOptions(strategy="edge-only", output=work / "edge-only",
                                                    holdout_frames=200), show_progress=False).bundle,
            "split": default_build[0],
            "png": build_engines(BuildOptions(strategy="cloud-only", image_format="png", output=work / "png",
                                              holdout_frames=200), show_progress=False).bundle}


@pytest.fixture(scope="module")
def adaptive(points, tmp_path_factory):
    """Edge-only below 20 kbit/s, the split from there, PNG from 200 kbit/s (PNG frames need ~130 at 30/s)."""
    output = tmp_path_factory.mktemp("adaptive") / "bundle"
    compose([(0, points["edge-only"]), (20e3, points["split"]), (200e3, points["png"])], output)
    return output


def frames(bundle, count):
    return islice(open_source(str(DEFAULT_CALIBRATION), bundle.input_spec(), None), count)


def test_compose_bundle_and_verify_bundle_list_the_points_and_their_table(points, tmp_path):
    output = tmp_path / "adaptive"
    runner = CliRunner()
    composed = runner.invoke(toolchain_main, ["compose-bundle", "--at", "0kbit", str(points["edge-only"]), "--at",
                                              "20kbit", str(points["split"]), "--at", "2mbit", str(points["png"]),
                                              "--output", str(output)])
    assert composed.exit_code == 0, composed.output
    verified = runner.invoke(toolchain_main, ["verify-bundle", str(output)])
    assert verified.exit_code == 0, verified.output
    lines = verified.output.splitlines()
    assert "adaptive: 3 operating points), 4 files verified" in lines[0]
    assert lines[1].split() == ["from", "0:", "point", "0,", "edge-only", "(edge)"]
    assert lines[2].startswith("  from  20 kbit/s: point 1, layer3 bbnet:") and lines[2].endswith("(edge, cloud)")
    assert lines[3] == "  from   2 Mbit/s: point 2, cloud-only png (cloud)"


def test_points_that_hold_the_same_file_store_it_once(points, tmp_path):
    surer = build_engines(BuildOptions(exit_threshold=0.3, output=tmp_path / "surer", holdout_frames=200),
                          show_progress=False).bundle
    manifest = compose([(0, surer), (50e3, points["split"])], tmp_path / "adaptive")
    assert len(manifest["files"]) == 2  # one head and one tail: only the thresholds differ
    bundle = open_bundle(tmp_path / "adaptive")
    assert [point.manifest["exit"]["threshold"] for point in bundle.points][0] == 0.3


def resealed(point: dict, change) -> None:
    """A point changed by a forger who recomputes its id too."""
    change(point)
    point["bundle_id"] = compute_bundle_id(point)


@pytest.mark.parametrize("change, message", [
    (lambda m: m["table"].append({"rate_bps": 9e9, "point": 3}), "table must be 1 to 64 rows"),
    (lambda m: m["table"].reverse(), "table must be 1 to 64 rows"),
    (lambda m: m["points"].pop(), "table must be 1 to 64 rows"),
    (lambda m: m["points"][1]["manifest"]["exit"].update(threshold=0.1),
     "point 'layer3 bbnet:bits=4,c=32,s=4 exit 0.672': bundle id .* does not match the manifest's contents"),
    (lambda m: m["points"][0]["manifest"].update(strategy="adaptive"), "points must be 2 to 16 operating points"),
    (lambda m: resealed(m["points"][2]["manifest"], lambda point: point["files"]["p2-cloud.onnx"].update(bytes=1)),
     "lists files the bundle does not hold"),
])
def test_a_tampered_adaptive_manifest_is_refused_in_one_line(adaptive, tmp_path, change, message):
    copied = tmp_path / "bundle"
    copied.mkdir()
    for path in adaptive.iterdir():
        (copied / path.name).write_bytes(path.read_bytes())
    manifest = json.loads((adaptive / "manifest.json").read_text())
    change(manifest)
    manifest["bundle_id"] = compute_bundle_id(manifest)  # a forger recomputes the outer id
    (copied / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=message):
        open_bundle(copied)


def test_compose_refuses_one_bundle_and_an_adaptive_one(points, adaptive, tmp_path):
    with pytest.raises(BundleError, match="holds 2 to 16 different bundles, got 1"):
        compose([(0, points["split"]), (1e6, points["split"])], tmp_path / "one")
    with pytest.raises(BundleError, match="adaptive already"):
        compose([(0, points["split"]), (1e6, adaptive)], tmp_path / "nested")
    with pytest.raises(BundleError, match="is one of the bundles to compose"):
        compose([(0, points["split"]), (1e6, points["png"])], points["png"])
    assert (points["png"] / "manifest.json").is_file()
    result = CliRunner().invoke(toolchain_main, ["compose-bundle", "--at", "fast", str(points["split"]), "--at",
                                                 "0", str(points["png"]), "--output", str(tmp_path / "x")])
    assert result.exit_code == 2 and "a rate must look like 1mbit" in result.output


def test_the_server_serves_every_point_on_one_connection_and_refuses_a_point_without_a_cloud_half(adaptive):
    bundle = open_bundle(adaptive)
    image = next(frames(bundle, 1)).image[None]
    head = edge_half(bundle.points[1])
    codes = bytes([1]) + head.coding.encode(head.coding.frames(head.codes(image))[0])
    with BackgroundServer(bundle, ServerConfig(key=KEY)) as server:
        answer = server.server.answer
        assert server.call(answer(codes, None)).shape == (10,)
        for payload, words in ((bytes([0, 1, 2]), "no operating point 0 with a cloud half"),
                               (bytes([7, 1, 2]), "no operating point 7"), (b"", "an empty FEATURES payload")):
            with pytest.raises(ProtocolError, match=words) as refused:
                server.call(answer(payload, None))
            assert refused.value.code == protocol.BAD_REQUEST


def test_the_edge_switches_down_within_two_frames_of_a_step_it_can_see_without_reconnecting(adaptive):
    """The link carries PNG frames, then drops to 30 kbit/s: the edge leaves PNG for the split as soon as a frame
    waits in the uplink's queue, on the same connection; every frame records its point and gets an answer."""
    bundle = open_bundle(adaptive)
    link = EmulatedLink(4e6, 0.02, burst_bytes=1500)
    step_frame, step = int(6 * FPS), {}
    with BackgroundServer(bundle, ServerConfig(key=KEY)) as server, \
            EdgeClient(bundle, ClientConfig(*server.address, key=KEY, link=link)) as client:
        def camera():
            for frame in paced(frames(bundle, int(9 * FPS)), FPS):
                if frame.index == step_frame:
                    link.rate, step["at"] = 30e3 / 8, frame.due
                yield frame
        outcomes = client.run_all(camera())
    assert client.stats.connects == 1 and client.stats.outcomes["error"] == 0
    assert {o.point for o in outcomes[:30]} == {1}, "starts at the split, the least-sending point that sends"
    assert outcomes[step_frame - 1].point == 2, "probed up to PNG while the link carried it"
    pngs = [o for o in outcomes if o.point == 2 and o.answered_by == CLOUD]
    assert sum(o.logits.argmax() == o.label for o in pngs) / len(pngs) > 0.85
    down = next(s for s in client.switcher.switches if s.at > step["at"])
    assert (down.old, down.new) == (2, 1)
    # visible: the first PNG frame captured after the step waited beyond the least reply time and the queue allowance
    base = min(o.latency_s for o in outcomes[:step_frame] if o.answered_by == CLOUD)
    estimate = client.switcher.source
    first = next(o for o in outcomes[step_frame:] if o.point == 2 and o.latency_s > base + estimate.queue_s)
    visible = step["at"] + (first.index - step_frame) / FPS + base + estimate.queue_s
    assert down.at - visible <= 2 / FPS
    assert all(o.point == 1 for o in outcomes[-30:])


class Scripted:
    def __init__(self):
        self.value = 0.0

    def rate(self, now):
        return self.value


def test_the_switcher_does_not_flap_and_backs_off_a_probe_that_fails():
    source = Scripted()
    source.value = 50.0
    switcher = Switcher([(0, 0), (100, 1)], source, hold_s=1.0, margin=1.25)
    start = switcher._since
    points = []
    for step, rate in enumerate([110, 90, 120, 95, 124] * 4):  # around the boundary, never past the margin
        source.value = rate
        points.append(switcher.choose(start + 2 + step * 0.1))
    assert set(points) == {0} and not switcher.switches
    source.value = 130.0
    assert switcher.choose(start + 5) == 1  # past the margin, the hold long over
    source.value = 50.0
    assert switcher.choose(start + 5.5) == 0  # down at once: a failed probe
    source.value = 130.0
    assert switcher.choose(start + 6.6) == 0  # the hold has doubled to 2 s
    assert switcher.choose(start + 7.6) == 1
    assert [(s.old, s.new) for s in switcher.switches] == [(0, 1), (1, 0), (0, 1)]


def test_the_estimate_falls_to_what_was_delivered_once_a_frame_queues_and_probes_up_when_none_does():
    estimate = UplinkEstimate(initial_bps=100e3, ceiling_bps=1e6, queue_s=0.05, growth=2.0, window_s=1.0)
    for request in range(20):  # frames of 125 B every 100 ms, each answered within 20 ms
        estimate.sent(request, 125, request * 0.1)
        estimate.replied(request, request * 0.1 + 0.02)
    assert estimate.rate(0.95) == pytest.approx(100e3)
    assert estimate.rate(1.95) == pytest.approx(200e3)  # calm: doubled in a second
    estimate.sent(20, 125, 1.96)
    assert estimate.rate(2.0) == pytest.approx(200e3 * 2 ** 0.05)  # 40 ms in flight: within 20 + 50
    # 80 ms: queued; 9 replies in the last second, less what 40 ms of queueing takes off
    assert estimate.rate(2.04) == pytest.approx(8 * 125 * 9 / 2 ** 0.04)
    assert estimate.rate(3.5) == 0.0  # an outage: nothing delivered
    estimate.dropped(20)
    assert estimate.rate(4.5) == pytest.approx(2000.0)  # nothing in flight: probing from the floor of 1 kbit/s
    assert UplinkEstimate(5e6, 1e6).rate(0.0) == 1e6


def test_edge_command_follows_a_rate_trace_on_one_connection(adaptive, tmp_path):
    """`edgesplit edge --rate-trace` (the benchmark's oracle) through `edgesplit serve` as users run them: PNG while
    the trace is fast, the whole model on the device once it knows an outage is a second away."""
    trace = tmp_path / "trace.csv"
    trace.write_text("ms,kbit_s\n" + "".join(f"{ms},{5000 if ms < 3000 else 10}\n" for ms in range(0, 8000, 100)))
    port = free_port()
    server = start_serve_process(adaptive, port)
    try:
        rows_path, summary_path = tmp_path / "frames.csv", tmp_path / "summary.json"
        result = subprocess.run(
            [sys.executable, "-m", "runtime.cli", "edge", "--bundle", str(adaptive), "--server", f"127.0.0.1:{port}",
             "--source", str(DEFAULT_CALIBRATION), "--limit", "150", "--fps", "30", "--rate-trace", str(trace),
             "--output", str(rows_path), "--summary-json", str(summary_path)],
            cwd=str(ROOT), env=dict(os.environ, EDGESPLIT_KEY=KEY.decode()), capture_output=True, text=True,
            timeout=120)
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(rows_path.open()))
    assert [row["point"] for row in rows[:20]] == ["2"] * 20 and [row["point"] for row in rows[-20:]] == ["0"] * 20
    summary = json.loads(summary_path.read_text())
    assert summary["connects"] == 1 and summary["errors"] == 0 and sum(summary["point_frames"].values()) == 150
    assert [(s["from"], s["to"]) for s in summary["switches"]] == [(2, 0)]
    assert "operating points: edge-only " in result.stdout


@pytest.mark.parametrize("options, message", [
    (["--point", "7"], "has 3 operating point(s), numbered from 0: there is no point 7"),
    (["--rate-trace", "README.md"], "README.md line 1: expected `ms,kbit_s` (two numbers >= 0), got '# edgesplit'"),
    (["--rate-trace", "calibration_data/fashion_mnist.npz"], "is not a text file of `ms,kbit_s` rows"),
    (["--point", "1", "--rate-trace", "README.md"], "--point holds one operating point and --rate-trace switches "
                                                    "between them: give one"),
])
def test_edge_command_refuses_a_point_or_trace_that_is_not_there_in_one_line(adaptive, options, message):
    result = subprocess.run(
        [sys.executable, "-m", "runtime.cli", "edge", "--bundle", str(adaptive), "--server", "127.0.0.1:9",
         "--source", str(DEFAULT_CALIBRATION), "--limit", "1", *options],
        cwd=str(ROOT), env=dict(os.environ, EDGESPLIT_KEY=KEY.decode()), capture_output=True, text=True, timeout=60)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: ") and lines[0].endswith(message)


def test_rate_trace_on_a_bundle_of_one_point_is_refused_in_one_line(points, tmp_path):
    trace = tmp_path / "trace.csv"
    trace.write_text("ms,kbit_s\n0,100\n")
    result = subprocess.run(
        [sys.executable, "-m", "runtime.cli", "edge", "--bundle", str(points["split"]), "--server", "127.0.0.1:9",
         "--source", str(DEFAULT_CALIBRATION), "--limit", "1", "--rate-trace", str(trace)],
        cwd=str(ROOT), env=dict(os.environ, EDGESPLIT_KEY=KEY.decode()), capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "--rate-trace chooses among an adaptive bundle's operating points" in result.stderr


@pytest.mark.skipif("reason" not in DEVICE, reason="this machine can build engines")
def test_build_engines_on_the_device_builds_every_points_tensorrt_halves(device_bundle, points, tmp_path):
    """A Nano split and the PNG upload in one bundle: `edgesplit build-engines --bundle` on the device reaches the
    split point's TensorRT half (here, without a GPU, it says why in one line)."""
    nano = device_bundle("jetson-nano")
    compose([(0, nano.bundle), (200e3, points["png"])], tmp_path / "adaptive")
    result = subprocess.run([sys.executable, "-m", "edgesplit", "build-engines", "--bundle", str(tmp_path / "adaptive")],
                            cwd=str(ROOT), capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: cannot build or run the TensorRT artefact p0-edge.onnx: {DEVICE['reason']}"]
