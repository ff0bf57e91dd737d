"""Planner (BBNet Algorithm 1) on synthetic profiles with a hand-computed optimum, the rate
estimators against hand calculations, and `profile` → `plan` end to end on this CPU."""

from __future__ import annotations

import json
import math

import pytest
from click.testing import CliRunner

from toolchain.cli import main
from toolchain.errors import EdgesplitError
from toolchain.planning import (PROFILE_FORMAT, CrowdModel, check_profiles, estimate_crowd_rate, estimate_rate,
                                load_profile, plan)

MODEL_SHA = "a" * 64
FLOAT_ACCURACY = 0.90


def timing(ms: float) -> dict:
    return {"ms": ms, "p90_ms": ms, "mean_ms": ms}


def synthetic_profile(candidates, edge_only_ms=50.0, cloud_only_ms=4.0, sha=MODEL_SHA, raw_bytes=5000.0) -> dict:
    """`candidates`: (split, position, frame bytes, edge ms, cloud ms, accuracy)."""
    return {
        "format": PROFILE_FORMAT, "target": "synthetic", "devices": {"edge": "e", "cloud": "c"},
        "device": {"cpu": "none"},
        "model": {"name": "m", "sha256": sha, "input_shape": [1, 32, 32]},
        "data": {"float_accuracy": FLOAT_ACCURACY},
        "candidates": [{"split": split, "node": split, "position": position, "codec": "int8", "lossless": "none",
                        "frame_bytes": size, "payload_bytes": size - 64, "edge": timing(edge_ms),
                        "cloud": timing(cloud_ms), "accuracy": accuracy}
                       for split, position, size, edge_ms, cloud_ms, accuracy in candidates],
        "edge_only": dict(timing(edge_only_ms), accuracy=FLOAT_ACCURACY),
        "cloud_only": dict(timing(cloud_only_ms), accuracy=FLOAT_ACCURACY, uploads=[
            {"format": "raw", "frame_bytes": raw_bytes, "payload_bytes": raw_bytes - 64, "encode": timing(0.0),
             "decode": timing(0.0), "accuracy": FLOAT_ACCURACY}]),
    }


# Three splits: deeper ones send less but cost the edge more.
SPLITS = [("A", 1, 10_000.0, 1.0, 3.0, 0.90), ("B", 2, 1_000.0, 5.0, 2.0, 0.90), ("C", 3, 100.0, 20.0, 1.0, 0.90)]


def test_planner_picks_the_hand_computed_optimum_and_goes_deeper_as_bandwidth_drops():
    profile = synthetic_profile(SPLITS)
    decisions = plan(profile, profile, [1e8, 1e6, 1e5, 1e4])
    # 100 Mbit/s: raw 5000 B → 0.4 ms + 4 ms cloud = 4.4 ms beats A (0.8 + 1 + 3 = 4.8 ms)
    # 1 Mbit/s:   B = 5 + 8 + 2 = 15 ms (A 84, C 21.8, raw 44, edge-only 50)
    # 100 kbit/s: C = 20 + 8 + 1 = 29 ms (B 87, edge-only 50)
    # 10 kbit/s:  edge-only 50 ms (C 101)
    assert [d.choice.name for d in decisions] == ["cloud-only raw", "B int8", "C int8", "edge-only"]
    assert [round(d.choice.total_ms, 6) for d in decisions] == [4.4, 15.0, 29.0, 50.0]
    positions = [d.choice.position for d in decisions]
    assert positions == sorted(positions) and positions[0] == -math.inf and positions[-1] == math.inf
    assert decisions[1].speedup_vs_cloud_only == pytest.approx(44 / 15)
    assert decisions[1].speedup_vs_edge_only == pytest.approx(50 / 15)


def test_planner_respects_the_accuracy_bound_and_takes_the_worse_of_the_two_profiles():
    edge = synthetic_profile(SPLITS)
    cloud = synthetic_profile(SPLITS[:2] + [("C", 3, 100.0, 20.0, 1.0, 0.88)])  # C loses 2 points with this cloud
    (decision,) = plan(edge, cloud, [1e5], max_loss=1.0)
    assert decision.choice.name == "edge-only"  # C (29 ms) is out: 2.0 > 1.0 points
    assert next(o for o in decision.options if o.name == "C int8").loss_points == pytest.approx(2.0)
    (relaxed,) = plan(edge, cloud, [1e5], max_loss=2.5)
    assert relaxed.choice.name == "C int8"
    hopeless = synthetic_profile([split[:5] + (0.5,) for split in SPLITS])
    hopeless["edge_only"]["accuracy"] = hopeless["cloud_only"]["accuracy"] = 0.5
    with pytest.raises(EdgesplitError, match="no option loses at most 0.5 accuracy points; the least is 40.00"):
        plan(hopeless, hopeless, [1e6], max_loss=0.5)


def test_rtt_is_added_to_every_upload():
    profile = synthetic_profile(SPLITS)
    (decision,) = plan(profile, profile, [1e6], rtt_ms=40.0)
    assert decision.choice.name == "edge-only"  # B would take 15 + 40 = 55 ms
    assert next(o for o in decision.options if o.name == "B int8").total_ms == pytest.approx(55.0)


def test_edge_slowdown_scales_every_edge_time():
    profile = synthetic_profile(SPLITS)
    # x2: at 100 kbit/s C = 40 + 8 + 1 = 49 ms still beats edge-only (100 ms) and B (10 + 80 + 2)
    slow = plan(profile, profile, [1e5], edge_slowdown=2.0)[0]
    assert slow.choice.name == "C int8" and slow.choice.total_ms == pytest.approx(49.0)
    assert next(o for o in slow.options if o.strategy == "edge-only").total_ms == pytest.approx(100.0)


def test_profiles_of_different_models_or_another_bundle_are_refused(tmp_path):
    edge = synthetic_profile(SPLITS)
    with pytest.raises(EdgesplitError, match="the profiles describe different models: edge profile m .sha256 aaaaaaaaaaaa"):
        plan(edge, synthetic_profile(SPLITS, sha="b" * 64), [1e6])
    manifest = {"source_model": {"name": "other", "sha256": "c" * 64}}
    with pytest.raises(EdgesplitError, match="the bundle was built from other .sha256 cccccccccccc"):
        check_profiles(edge, edge, manifest)
    with pytest.raises(EdgesplitError, match="share no candidate split"):
        plan(edge, synthetic_profile([("D", 4, 10.0, 1.0, 1.0, 0.9)]), [1e6])
    stray = tmp_path / "manifest.json"
    stray.write_text(json.dumps({"schema_version": 1}))
    with pytest.raises(EdgesplitError, match="is not an edgesplit profile"):
        load_profile(stray)
    cut = synthetic_profile(SPLITS)
    del cut["edge_only"], cut["candidates"]
    stray.write_text(json.dumps(cut))
    with pytest.raises(EdgesplitError, match="lacks candidates, edge_only"):
        load_profile(stray)


def test_estimate_rate_matches_a_hand_calculation():
    # 10 fps x 0.3 offloaded x 16,448 B x 8 = 394,752 bit/s per camera; 100 cameras: 39.4752 Mbit/s;
    # a 100 Mbit/s link: floor(1e8 / 394,752) = 253 cameras
    estimate = estimate_rate(100, 10, 0.3, 16_448, link_bps=1e8)
    assert estimate.per_camera_bps == pytest.approx(394_752)
    assert estimate.aggregate_bps == pytest.approx(39_475_200)
    assert estimate.max_cameras == 253
    with pytest.raises(EdgesplitError, match="share of frames, 0..1, got 1.5"):
        estimate_rate(1, 1, 1.5, 100)


def test_crowd_rate_matches_a_hand_calculation():
    # r 0.5 x 1 cell/person x 4,900 B / 49 cells = 50 B per person; per frame 4 x 50 + 9 header = 209 B (a
    # 200-byte payload's length takes 2 bytes) → 10 fps x 8 x 209 = 16,720 bit/s per camera, 1.672 Mbit/s for 100;
    # the spread is sqrt(100) x 10 x 8 x 50 x 2 = 80,000 bit/s, p99: 1,672,000 + 2.3263 x 80,000
    model = CrowdModel(people_mean=4, people_std=2, cells_per_person=1, cloud_ratio=0.5, grid=7, quantile=0.99)
    estimate, notes = estimate_crowd_rate(100, 10, model, payload_bytes=4_900, link_bps=1e6)
    assert estimate.per_camera_bps == pytest.approx(16_720)
    assert estimate.aggregate_bps == pytest.approx(1_672_000)
    assert estimate.provisioned_bps == pytest.approx(1_672_000 + 2.3263479 * 80_000, rel=1e-6)
    # 51 cameras: 852,720 + 2.3263 x sqrt(51) x 8,000 = 985,628 ≤ 1e6; 52 cameras: 1,003,645 > 1e6
    assert estimate.max_cameras == 51
    assert notes == []
    _, crowded = estimate_crowd_rate(1, 1, model._replace(people_mean=40, people_std=5), 4_900)
    assert "more than the 49 of the grid" in crowded[0]


def test_estimate_rate_command_reads_the_bundle(int8_built):
    result = CliRunner().invoke(main, ["estimate-rate", "--bundle", str(int8_built.bundle), "--cameras", "100",
                                       "--fps", "10", "--offload-rate", "0.3", "--link", "100mbit"])
    assert result.exit_code == 0, result.output
    # the default bundle: 16,384 payload bytes + 10 of header → 0.3 x 10 fps x 8 x 16,394 = 393,456 bit/s per camera
    assert "16,394 B per frame" in result.output
    assert "393.456 kbit/s per camera" in result.output
    assert "39.3456 Mbit/s at the cloud for 100 cameras" in result.output
    assert "a link of 100 Mbit/s carries 254 cameras" in result.output
    refused = CliRunner().invoke(main, ["estimate-rate", "--cameras", "1", "--fps", "1"])
    assert refused.exit_code != 0 and "--bundle or --payload-bytes" in refused.output


def test_profile_then_plan_on_this_cpu(tmp_path):
    """Real bundles timed with ONNX Runtime; the plan reads the JSON and draws the figure."""
    profile_path = tmp_path / "cpu.json"
    result = CliRunner().invoke(main, ["profile", "--target", "cpu", "--splits", "layer2,pool", "--frames", "20",
                                       "--holdout-frames", "500", "--output", str(profile_path)])
    assert result.exit_code == 0, result.output
    profile = json.loads(profile_path.read_text())
    assert [c["split"] for c in profile["candidates"]] == ["layer2", "pool"]
    assert profile["data"]["holdout_frames"] == 500
    layer2, pool = profile["candidates"]
    assert layer2["frame_bytes"] == 64 * 16 * 16 + 10 and pool["frame_bytes"] == 256 + 9
    assert all(c["edge"]["ms"] > 0 and c["cloud"]["ms"] > 0 for c in profile["candidates"])
    assert abs(layer2["accuracy"] - profile["data"]["float_accuracy"]) <= 0.005
    assert {u["format"] for u in profile["cloud_only"]["uploads"]} == {"raw", "png", "jpeg"}
    raw = next(u for u in profile["cloud_only"]["uploads"] if u["format"] == "raw")
    assert raw["payload_bytes"] == 32 * 32 and raw["accuracy"] == profile["data"]["float_accuracy"]
    assert profile["edge_only"]["accuracy"] == pytest.approx(profile["data"]["float_accuracy"], abs=1e-9)

    output = tmp_path / "plan"
    result = CliRunner().invoke(main, ["plan", "--profile-edge", str(profile_path), "--profile-cloud",
                                       str(profile_path), "--bandwidth", "10kbit,10gbit", "--output", str(output)])
    assert result.exit_code == 0, result.output
    summary = json.loads((output / "plan.json").read_text())
    assert len(summary["choices"]) == 2 and (output / "plan.png").stat().st_size > 10_000
    # at 10 kbit/s even the 320-byte pool frame takes 256 ms: nothing beats computing on the edge
    assert summary["choices"][0]["choice"] == "edge-only"
    rows = (output / "plan.csv").read_text().splitlines()
    assert len(rows) == 1 + 2 * (3 + 2 + 1)  # header + per bandwidth: 3 uploads, 2 splits, edge-only

    other = synthetic_profile(SPLITS)
    other_path = tmp_path / "other.json"
    other_path.write_text(json.dumps(other))
    refused = CliRunner().invoke(main, ["plan", "--profile-edge", str(profile_path), "--profile-cloud",
                                        str(other_path)])
    assert refused.exit_code == 1 and "the profiles describe different models" in refused.output


def test_profiling_a_tensorrt_device_without_a_gpu_says_where_to_run_it():
    from runtime.backends.tensorrt.engine import probe_device

    reason = probe_device().get("reason")
    if reason is None:
        pytest.skip("this machine has TensorRT and a GPU: the profile would run")
    result = CliRunner().invoke(main, ["profile", "--target", "raspberry-pi"])  # its default cloud is cloud-gpu
    assert result.exit_code == 1
    assert "profiling times the cloud half on cloud-gpu's backend, which cannot run here" in result.output
    assert reason in result.output and "run `edgesplit profile` on that device" in result.output
    refused = CliRunner().invoke(main, ["profile", "--target", "cloud-gpu"])
    assert refused.exit_code == 1 and "'cloud-gpu' is a cloud device, not an edge device" in refused.output
