"""The codec benchmark runs end to end in --quick mode and writes what it promises."""

import csv
import json
import subprocess
import sys

import pytest

import toolchain.data as data


@pytest.mark.skipif(not data.FASHION_MNIST_DIR.exists(), reason="needs Debian's dataset-fashion-mnist package")
def test_codec_benchmark_quick_run_writes_results(tmp_path):
    subprocess.run([sys.executable, "-m", "benchmarks.codecs", "--quick", "--output", str(tmp_path)],
                   check=True, capture_output=True)
    with open(tmp_path / "accuracy_vs_bytes.csv") as stream:
        rows = list(csv.DictReader(stream))
    summary = json.loads((tmp_path / "summary.json").read_text())
    affine8 = next(r for r in rows if r["codec"] == "affine:bits=8,per=channel")
    assert abs(100 * (summary["unsplit_accuracy"] - float(affine8["accuracy"]))) <= 0.5
    assert {r["codec"].split(":")[0] for r in rows} == {"affine", "bbnet", "safbmp"}
    with open(tmp_path / "lossless.csv") as stream:
        stages = {r["stage"] for r in csv.DictReader(stream)}
    assert {"none", "zlib", "zstd", "lz4", "zstd+bitpack"} <= stages
    assert (tmp_path / "accuracy_vs_bytes.png").stat().st_size > 10_000


def test_runtime_benchmark_quick_run_writes_results(built, tmp_path):
    subprocess.run([sys.executable, "-m", "benchmarks.runtime", "--quick", "--bundle", str(built.bundle),
                    "--output", str(tmp_path)], check=True, capture_output=True)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [(r["edges"], r["batching"]) for r in summary["server"]] == [
        (edges, batching) for edges in (1, 10) for batching in ("off", "greedy", "wait 2 ms")]
    # a light load is fully answered; what differs between settings is latency
    assert all(r["answered"] == r["sent"] > 0 and r["errors"] == 0 for r in summary["server"])
    assert [r["edgesplit_wire_bytes"] - r["payload_bytes"] for r in summary["loopback"]] == [64.0] * 3
    one_mbit = summary["links"][0]
    assert one_mbit["fps"] <= one_mbit["link_bound_fps"] * 1.05  # the emulated uplink is the bottleneck
    for name in ("RESULTS.md", "server.png", "loopback.png", "server.csv", "loopback.csv", "link.csv"):
        assert (tmp_path / name).stat().st_size > 0


def test_early_exit_benchmark_quick_run_writes_results(tmp_path):
    subprocess.run([sys.executable, "-m", "benchmarks.early_exit", "--quick", "--output", str(tmp_path)],
                   check=True, capture_output=True)
    summary = json.loads((tmp_path / "summary.json").read_text())
    with open(tmp_path / "curve.csv") as stream:
        rows = list(csv.DictReader(stream))
    assert {row["bits"] for row in rows} == {"8", "6", "4"}
    eight = [row for row in rows if row["bits"] == "8"]
    assert float(eight[0]["offload_rate"]) == 1.0 and float(eight[-1]["offload_rate"]) == 0.0
    chosen = summary["chosen"]
    assert 100 * (summary["cloud_always_accuracy"] - chosen["accuracy"]) <= summary["tolerance_points"] + 1e-9
    assert summary["mean_payload_bytes_all_frames"] == pytest.approx(chosen["offload_rate"] * 16384)
    for name in ("fig2_entropy.png", "fig3_threshold.png", "entropy.csv", "RESULTS.md"):
        assert (tmp_path / name).stat().st_size > 0


def test_pruning_benchmark_quick_run_writes_results(tmp_path):
    pytest.importorskip("litert_torch", reason="the TFLite edge latency needs the [tflite] extra")
    pytest.importorskip("torch_pruning", reason="pruning is in the [prune] extra")
    subprocess.run([sys.executable, "-m", "benchmarks.pruning", "--quick", "--output", str(tmp_path)],
                   check=True, capture_output=True)
    rows = json.loads((tmp_path / "summary.json").read_text())["rows"]
    assert [(r["criterion"], r["ratio"]) for r in rows] == [("none", 0.0), ("bn-scale", 0.5), ("feature-bias", 0.5)]
    for row in rows[1:]:
        assert row["head_macs_m"] < rows[0]["head_macs_m"] and row["params"] < rows[0]["params"]
        assert row["onnxrt_fp32_ms"] > 0 and row["tflite_int8_ms"] > 0
    assert (tmp_path / "pruning.png").stat().st_size > 0 and (tmp_path / "pruning.csv").exists()
