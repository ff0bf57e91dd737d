"""Gather every suite's latest RESULTS.md into benchmarks/RESULTS.md, one section per suite.

Each suite writes its own tables beside the seed's numbers and what differs; this only joins
them (each under a heading named after its suite, figure paths relative to benchmarks/), so the page never holds a
number that a script did not write.
"""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

from benchmarks.common import ROOT, cpu_name

# (results folder, heading, what follows `python -m benchmarks`)
SECTIONS = [("default", "default", "default"), ("bandwidth", "bandwidth", "bandwidth"),
            ("bandwidth-raspberry-pi", "bandwidth-raspberry-pi", "bandwidth --device raspberry-pi"),
            ("foreign", "foreign", "foreign"),
            ("accuracy", "accuracy", "accuracy"), ("early_exit", "early-exit", "early-exit"),
            ("lossless", "lossless", "lossless"), ("runtime", "server", "server"), ("pruning", "pruning", "pruning"),
            ("codecs", "codecs", "codecs"), ("entropy", "entropy", "entropy"), ("tflite", "tflite", "tflite"),
            ("quantized", "quantized", "quantized"),
            ("triton", "triton", "triton"),
            ("reliability", "reliability", "reliability")]
PREAMBLE = """# Benchmark results

Joined by `python -m benchmarks report` from `benchmarks/results/*/RESULTS.md`, {date}. Every
number below was written by a benchmark script (`python -m benchmarks SUITE`, see
[README.md](README.md)); the seeds' numbers are quoted beside ours in each section.

**What differs from the seeds, everywhere:** one machine ({cpu}, 2 cores, no GPU) stands in
for the Jetson Nano, the Raspberry Pi and the cloud GPU; edge latencies are this x86 CPU running
the devices' backends (ONNX Runtime, int8 TFLite through ai-edge-litert), not the devices — except
in the bandwidth sections, whose edge is an emulated device: a CPU quota calibrated from a published
time on the real one, behind a kernel-shaped link. The
data is Fashion-MNIST (10 classes, 32x32 grayscale after padding), not CIFAR-10 or ImageNet; the
model is a ResNet-18 at width 0.5. TensorRT engines could not be built here (no GPU), so no
section reports TensorRT latency. No seed reports server load or faults; those sections have no
comparison.

"""


def section(results: Path, folder: str, heading: str, command: str) -> str:
    report = results / folder / "RESULTS.md"
    if not report.exists():
        return f"## {heading}\n\nNot run yet: `python -m benchmarks {command}`.\n"
    text = report.read_text()
    text = re.sub(r"^(#+) ", lambda m: "##" + m.group(1) + " ", text, flags=re.MULTILINE)
    text = re.sub(r"\]\((?!https?:|/)([^)]+)\)", lambda m: f"](results/{folder}/{m.group(1)})", text)
    return (f"## {heading}\n\n`python -m benchmarks {command}`; files in [results/{folder}/](results/{folder}/)\n\n"
            + text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "RESULTS.md")
    args = parser.parse_args()
    index = "\n".join(f"- [{heading}](#{heading})" for _, heading, _ in SECTIONS)
    body = "\n".join(section(args.results, *entry) for entry in SECTIONS)
    page = PREAMBLE.format(date=time.strftime("%Y-%m-%d"), cpu=cpu_name()) + index + "\n\n" + body
    args.output.write_text(page)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
