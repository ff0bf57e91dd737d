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
