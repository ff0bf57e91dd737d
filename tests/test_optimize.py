"""`edgesplit optimize`: pruned heads, codecs trained on them and exits composed, measured, predicted per rate,
and the winner built; what it stores lets a second run resume without training or measuring again."""

import csv
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from click.testing import CliRunner

from runtime.bundle import load_bundle
from runtime.local import SplitInference, deployed
from toolchain.cli import main
from toolchain.optimize import BUILD_ATTEMPTS, Budget, Choice, built_winner, winner_build_s
from toolchain.planning import PlanOption, link_bytes

from conftest import TINY_MODEL

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent


def optimize(output: Path, *arguments: str) -> dict:
    environment = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-m", "edgesplit", "optimize", *arguments, "--output", str(output)],
                          cwd=ROOT, env=environment, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    return json.loads((output / "summary.json").read_text())


def read_csv(path: Path) -> list[dict]:
    with open(path) as stream:
        return list(csv.DictReader(stream))


def stored_files(folder: Path) -> dict[str, int]:
    return {str(path.relative_to(folder)): path.stat().st_mtime_ns for path in folder.rglob("*") if path.is_file()}


@pytest.fixture(scope="module")
def composed(tmp_path_factory, fashion_mnist):
    """The tiny model cut after its second block, its head pruned or not, int8 and two learned codecs at each,
    an exit branch: the search alone (no build)."""
    output = tmp_path_factory.mktemp("composed")
    summary = optimize(output, *TINY_MODEL, "--train-data", "fashion-mnist", "--splits", "features.8", "--prune",
                       "0,0.5", "--train-frames", "1500", "--holdout-frames", "300", "--frames", "10",
                       "--uplink", "20kbit,10mbit", "--max-loss", "100", "--no-build")
    return output, summary


def test_codecs_and_exits_are_trained_on_the_pruned_heads_own_features(composed):
    output, summary = composed
    points = read_csv(output / "points.csv")
    pruned = [p for p in points if p["strategy"] == "split" and float(p["ratio"]) == 0.5]
    unpruned = [p for p in points if p["strategy"] == "split" and float(p["ratio"]) == 0]
    codecs = {"int8", "bbnet:bits=4,c=8,s=4", "bbnet:bits=4,c=2,s=4"}  # a quarter and a sixteenth of 32 channels
    assert {p["codec"] for p in pruned} == {p["codec"] for p in unpruned} == codecs
    # every pruned head is its own model: its codecs and exit branch were trained for it, not for the original
    archives = list((output / "cache" / "pruned").glob("*.pt2"))
    assert len(archives) == 1
    trained_for = {torch.load(path, weights_only=True)["model_sha256"]
                   for kind in ("codecs", "exits") for path in (output / "cache" / kind).glob("*.pt")}
    assert len(trained_for) == 2 and summary["model"]["sha256"] in trained_for
    # exits: 'send everything' and thresholds that send fewer frames, each scored on the held-out half
    offloads = sorted({float(p["offload_rate"]) for p in unpruned if p["codec"] == "int8"})
    assert offloads[-1] == 1.0 and offloads[0] < 1.0
    assert summary["evaluated_frames"] == 150


def test_each_rate_picks_the_fastest_prediction_from_measured_times_and_real_frame_bytes(composed):
    output, summary = composed
    factor = summary["speed"]["factor"]
    points = {p["name"]: p for p in read_csv(output / "points.csv")}
    predictions = read_csv(output / "predictions.csv")
    for choice in summary["choices"]:
        at_rate = [p for p in predictions if float(p["uplink_bps"]) == choice["uplink_bps"]]
        fastest = min(at_rate, key=lambda p: float(p["s_per_100"]))
        assert [p["option"] for p in at_rate if p["chosen"] == "True"] == [choice["choice"]]
        assert float(fastest["s_per_100"]) == choice["s_per_100"]
        for prediction in at_rate:
            point = points[prediction["option"]]
            sent, frame = float(point["offload_rate"]), float(point["frame_bytes"])
            # the upload: the protocol's whole frame plus TCP/IP headers per segment, for the share still sent
            expected = sent * 1000 * 8 * link_bytes(frame) / choice["uplink_bps"] if frame else 0.0
            assert float(prediction["upload_ms"]) == pytest.approx(expected, rel=1e-3, abs=2e-3)
            # the edge: its head and the client's own work (edge-only's frames too), both at the device's speed
            expected = factor * (float(point["edge_ms_here"]) + summary["client_ms"])
            assert float(prediction["edge_ms"]) == pytest.approx(expected, rel=1e-3, abs=1e-3)
    assert 0.05 < summary["client_ms"] < 20  # CPU ms per frame for reading, encoding and the socket
    for name in ("points.csv", "predictions.csv", "choices.csv", "optimize.png", "REPORT.md"):
        assert (output / name).stat().st_size > 0


def profile_of(summary: dict, edge_only_ms: float, sha256: str | None = None) -> dict:
    """What `edgesplit profile` writes on a device, as far as optimize reads it."""
    return {"format": "edgesplit-profile/2", "target": "cpu", "devices": {"edge": "cpu", "cloud": "cpu"},
            "device": {}, "model": {"name": summary["model"]["name"], "sha256": sha256 or summary["model"]["sha256"],
                                    "input_shape": [1, 32, 32]},
            "data": {}, "candidates": [], "edge_only": {"ms": edge_only_ms}, "cloud_only": {"uploads": []}}


def test_a_second_run_resumes_and_a_profile_measured_on_the_device_sets_its_factor(composed, tmp_path):
    output, summary = composed
    before = stored_files(output / "cache")
    here = next(float(p["edge_ms_here"]) for p in read_csv(output / "points.csv") if p["strategy"] == "edge-only")
    profile = tmp_path / "device.json"
    profile.write_text(json.dumps(profile_of(summary, 5 * here)))
    arguments = [*TINY_MODEL, "--train-data", "fashion-mnist", "--splits", "features.8", "--prune", "0,0.5",
                 "--train-frames", "1500", "--holdout-frames", "300", "--frames", "10", "--uplink", "20kbit,10mbit",
                 "--max-loss", "100", "--no-build", "--cache", str(output / "cache")]
    profiled = optimize(tmp_path / "profiled", *arguments, "--profile-edge", str(profile))
    assert stored_files(output / "cache") == before  # nothing trained, built or measured again
    assert profiled["speed"]["factor"] == pytest.approx(5, rel=0.01)  # points.csv rounds the time here
    edge_only = [p for p in read_csv(tmp_path / "profiled" / "predictions.csv") if p["option"] == "edge-only"]
    # the whole model as profiled, and the client's own work at the profile's factor
    expected = 5 * here + profiled["speed"]["factor"] * profiled["client_ms"]
    assert len(edge_only) == 2 and all(float(p["edge_ms"]) == pytest.approx(expected, abs=1e-3) for p in edge_only)
    profile.write_text(json.dumps(profile_of(summary, 5 * here, sha256="0" * 64)))
    result = CliRunner().invoke(main, ["optimize", *arguments, "--profile-edge", str(profile), "--output",
                                       str(tmp_path / "other")])
    assert result.exit_code == 1 and "profiles model" in result.output.strip().splitlines()[-1], result.output


def test_the_edge_clients_timing_server_takes_a_bundle_relative_to_the_users_folder(int8_built, monkeypatch):
    """`optimize --output optimized/` (the README's example) times the edge client against `edgesplit serve`
    started from the repository; a server that cannot start says why."""
    from toolchain.client_cost import serve
    from toolchain.errors import EdgesplitError

    monkeypatch.chdir(int8_built.bundle.parent)
    server, port = serve(Path(int8_built.bundle.name))
    server.terminate()
    server.wait(timeout=30)
    assert port > 0
    with pytest.raises(EdgesplitError, match=r"^edgesplit serve did not start to time the edge client: error: "
                                             r"bundle directory \S*missing does not exist"):
        serve(Path("missing"))


@pytest.mark.slow
def test_the_winning_split_is_built_for_the_real_devices_and_sends_what_was_predicted(tmp_path, fashion_mnist,
                                                                                       holdout):
    # the default model on an edge four times as slow as this machine, at 1 Mbit/s: the image (PNG) takes ~5 ms a
    # frame on the link, the whole model ~8 ms on the edge; a layer1 head with a 256-byte codec ~3 ms on either. At
    # 10 Gbit/s the raw image costs nothing on the link and the cloud (~1 ms a frame here) leads the edge's head by
    # ~3x, a margin a busy machine's timing does not undo (at factor 2 it was 1.5x, and CI once chose the split):
    # cloud-only wins, and is built as a bundle too
    summary = optimize(tmp_path, "--target", "jetson-nano", "--edge-factor", "4", "--uplink", "1mbit,10gbit",
                       "--splits", "layer1", "--prune", "0", "--codec", "bbnet:bits=4,c=8,s=4", "--no-exit",
                       "--train-frames", "1000", "--holdout-frames", "100", "--frames", "30", "--max-loss", "100")
    choice, fast = summary["choices"]
    assert fast["strategy"] == "cloud-only", fast
    image = load_bundle(Path(fast["bundle"]))  # the cloud GPU's half runs here as it was verified
    assert image.strategy == "cloud-only" and image.manifest["deployment"]["cloud"]["name"] == "cloud-gpu"
    sent = deployed(image, holdout.inputs()[:20], verified=True)
    assert sent.payload_bytes.tolist() == [1024] * 20 and fast["choice"] == "cloud-only raw"
    assert choice["strategy"] == "split" and choice["choice"] == "layer1 bbnet:bits=4,c=8,s=4", choice
    assert choice["speedup_vs_better_baseline"] > 1
    bundle = load_bundle(Path(choice["bundle"]))
    manifest = bundle.manifest
    assert manifest["deployment"]["edge"]["name"] == "jetson-nano"
    assert (manifest["codec"]["name"], manifest["codec"]["params"]) == ("bbnet", {"bits": 4, "c": 8, "s": 4})
    assert manifest["split"]["module"] == "layer1"
    adaptive = load_bundle(Path(summary["adaptive_bundle"]))  # both winners in one, switched by the uplink
    assert [point.strategy for point in adaptive.points] == ["split", "cloud-only"]
    assert adaptive.table == [(1e6, 0), (1e10, 1)]
    for path in (choice["bundle"], fast["bundle"], summary["adaptive_bundle"]):
        verified = subprocess.run([sys.executable, "-m", "edgesplit", "verify-bundle", path], cwd=ROOT,
                                  capture_output=True, text=True)
        assert verified.returncode == 0, verified.stderr
    # what the built bundle sends is what the prediction counted
    run = SplitInference(bundle, verified=True).deployed(holdout.inputs()[:100])
    point = next(p for p in read_csv(tmp_path / "points.csv") if p["name"] == choice["choice"])
    assert run.payload_bytes.mean() == pytest.approx(float(point["payload_bytes"]), abs=1)


@pytest.mark.parametrize("arguments,expected", [
    (["--uplink", "0kbit"], "Invalid value for --uplink: a rate must be positive"),
    (["--prune", "0,1.5"], "pruning ratio must be between 0 and 1"),
    (["--prune", "half"], "'half' is not a comma-separated list of numbers"),
    (["--splits", "nosuch"], "nosuch"),
    (["--budget", "soon"], "a duration must look like 20ms"),
    (["--budget", "-5min"], "Invalid value for --budget: a duration cannot be negative, got '-5min'"),
    (["--edge-factor", "0"], "--edge-factor is how many times slower"),
    (["--max-loss", "-1"], "--max-loss must be at least 0 and finite, got -1"),
    (["--codec", "nosuch"], "unknown codec 'nosuch'"),
    (["--uplink", "20kbit,,1mbit"], "a rate must look like 1mbit"),
    (["--input-shape", "3,32,32"], "does not run on an input of shape 1x3x32x32"),
    (["--model", "conftest:TinyNet", "--weights", None], "near chance for 10 classes: are its weights given"),
])
def test_wrong_options_get_one_line(arguments, expected, tmp_path, fashion_mnist):
    model, holdout = list(TINY_MODEL), "40"
    if None in arguments:  # the factory without its weights: random ones, the same every run
        del model[2:4]
        arguments, holdout = [], "400"
        torch.manual_seed(0)
    result = CliRunner().invoke(main, ["optimize", *model, "--train-data", "fashion-mnist", "--train-frames",
                                       "200", "--holdout-frames", holdout, *arguments, "--output", str(tmp_path)])
    assert result.exit_code in (1, 2) and "Traceback" not in result.output, result.output
    lines = [line for line in result.output.strip().splitlines() if line.startswith("error") or ": error:" in line]
    assert len(lines) == 1 and expected in lines[0], result.output


def test_a_budget_too_short_for_any_split_point_still_chooses_between_the_baselines(tmp_path, fashion_mnist):
    """The ResNet-50-like's 720 s left no time for one split point at 224x224: the whole model on the device and
    the image uploads were measured all the same, and one of them is the choice, built and reported."""
    summary = optimize(tmp_path, *TINY_MODEL, "--train-data", "fashion-mnist", "--train-frames", "200",
                       "--holdout-frames", "40", "--frames", "5", "--splits", "features.8", "--budget", "1ms",
                       "--uplink", "20kbit,10gbit", "--max-loss", "100")
    assert summary["not_tried"][0] == "features.8: over the budget" and all(
        line.endswith(": over the budget") for line in summary["not_tried"])
    assert [c["strategy"] for c in summary["choices"]] == ["edge-only", "cloud-only"], summary["choices"]
    assert all(Path(choice["bundle"]).is_dir() for choice in summary["choices"])
    assert [p.strategy for p in load_bundle(Path(summary["adaptive_bundle"])).points] == ["edge-only", "cloud-only"]
    for choice in summary["choices"]:  # strict JSON: bounded by --max-loss, as the split points are, not Infinity
        manifest = json.loads((Path(choice["bundle"]) / "manifest.json").read_text(), parse_constant=pytest.fail)
        assert manifest["checks"]["bounds"]["max_loss_points"] == 100
    assert "features.8: over the budget" in (tmp_path / "REPORT.md").read_text()
    with open(tmp_path / "points.csv") as points:  # the last resort's build, reserved before any head starts
        assert float(next(r for r in csv.DictReader(points) if r["strategy"] == "edge-only")["build_s"]) > 0


def test_a_model_without_a_class_output_is_refused_in_one_line(tmp_path, fashion_mnist):
    result = CliRunner().invoke(main, [
        "optimize", "--model", "architectures:tiny_segmenter", "--input-shape", "1,32,32", "--resize", "pad",
        "--train-data", "fashion-mnist", "--train-frames", "200", "--holdout-frames", "40", "--edge-factor", "3",
        "--output", str(tmp_path)])
    assert result.exit_code == 1 and result.output.strip().splitlines()[-1] == (
        "error: optimize ranks deployments by top-1 accuracy; the model's first output is 3x8x8 per image, not one "
        "score per class"), result.output


def option(name: str, strategy: str, edge_ms: float, loss: float = 0.0) -> PlanOption:
    return PlanOption(strategy, name, 1.0 if strategy == "split" else math.inf, 0.0, edge_ms, 0.0, 0.0, loss)


def test_a_point_its_build_refuses_gives_way_to_the_next_fastest():
    options = [option("a", "split", 1), option("b", "split", 2), option("c", "split", 3, loss=5),
               option("edge-only", "edge-only", 4), option("d", "split", 5)]
    choice = Choice(1e5, options, options[0], options[3], None)
    tried = []

    def build(point):
        tried.append(point.name)
        return point.name == "b"
    assert built_winner(choice, 1.0, build).winner.name == "b" and tried == ["a", "b"]
    tried.clear()  # the baseline is built too; where it builds, no split slower than it is tried
    assert built_winner(choice, 1.0, lambda point: tried.append(point.name) or point.name == "edge-only").winner.name \
        == "edge-only"
    assert tried == ["a", "b", "edge-only"]
    tried.clear()  # nothing builds: every point within --max-loss in rank order, then edge-only as the answer
    assert built_winner(choice, 1.0, lambda point: tried.append(point.name) or False).winner.name == "edge-only"
    assert tried == ["a", "b", "edge-only", "d"]
    many = [option(str(i), "split", i) for i in range(1, 6)] + [options[3]]
    tried.clear()  # at most BUILD_ATTEMPTS split builds per rate
    assert built_winner(Choice(1e5, many, many[0], options[3], None), 1.0,
                        lambda point: tried.append(point.name) or False).winner.name == "edge-only"
    assert tried == [str(i) for i in range(1, BUILD_ATTEMPTS + 1)] + ["edge-only"]


def test_the_budget_starts_nothing_that_would_leave_no_time_to_build_the_winners():
    budget = Budget(time.monotonic() - 9.0, 10.0, winners=2)
    assert budget.allows("head", "point")  # nothing timed yet: 9 s spent of 10
    with budget.timed("point"):
        time.sleep(0.05)
    assert 0.05 <= budget.longest["point"] < 1.0
    # 9.05 s spent; 2 builds of 0.25 s and a head of 0.15 s, reckoned at 1.25x, fit; with a point of 0.25 s they
    # do not, though at 1x (9.95 s) they would
    budget.longest.update(build=0.25, head=0.15, point=0.25)
    assert budget.allows("head") and not budget.allows("head", "point")
    budget.longest["build"] = 0.6  # two winners' builds alone would end past the budget
    assert not budget.allows()


def test_a_winner_is_reckoned_to_evaluate_every_held_out_image_its_candidate_evaluated_a_sample_of():
    search = SimpleNamespace(select=range(300), evaluate=range(300))
    candidate = {"build_s": 10.0, "evaluate_s": 4.0, "evaluated_frames": 200}
    assert winner_build_s(search, candidate) == pytest.approx(10.0 + 4.0 * 2)  # 600 frames, not 200
    assert winner_build_s(search, dict(candidate, evaluated_frames=600)) == pytest.approx(10.0)
