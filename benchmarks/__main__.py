"""`python -m benchmarks <suite> [options]`: one command per suite; `--help` after a suite shows its options."""

import runpy
import sys

SUITES = {
    "default": ("benchmarks.default", "the default bundle (learned codec, early exit) against sending the image"),
    "bandwidth": ("benchmarks.bandwidth", "latency vs uplink bandwidth: edge-only, cloud-only, planner's split (BBNet Table 4)"),
    "accuracy": ("benchmarks.accuracy", "quantization loss per split point and bit width (seed 001 Table 1, ECNet)"),
    "early-exit": ("benchmarks.early_exit", "accuracy and offload rate vs entropy threshold and bits (ECNet Fig. 2/3)"),
    "lossless": ("benchmarks.lossless", "lossless stages on a bundle's real codes (ECNet Table III)"),
    "server": ("benchmarks.runtime", "protocol overhead, server load (edges x fps), emulated links"),
    "pruning": ("benchmarks.pruning", "channel pruning of the edge half (BBNet Table 3)"),
    "codecs": ("benchmarks.codecs", "accuracy vs bytes for affine and learned codecs"),
    "entropy": ("benchmarks.entropy", "learned codecs trained for rate, entropy-coded (rANS) on the edge"),
    "tflite": ("benchmarks.tflite", "int8 TFLite edge: accuracy, size, latency"),
    "tensorrt": ("benchmarks.tensorrt", "the cloud half's TensorRT engine on a GPU against ONNX Runtime (prepare here, run there)"),
    "triton": ("benchmarks.triton", "the cloud side on Triton Inference Server vs edgesplit serve; gRPC overhead"),
    "traces": ("benchmarks.traces", "static deployments on real cellular uplink traces: frames within a deadline (issue 34)"),
    "foreign": ("benchmarks.foreign", "edgesplit optimize on three models nobody here designed, measured on the testbed"),
    "quantized": ("benchmarks.quantized", "INT8 builds of seven architectures (EfficientNet, DenseNet, ViT, ResNet-50, detector, U-Net, keyword spotting) on every device"),
    "reliability": ("benchmarks.reliability", "faults an attacker can cause, and what they cost the server now"),
    "report": ("benchmarks.report", "gather every suite's results into benchmarks/RESULTS.md"),
}


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in SUITES:
        width = max(map(len, SUITES))
        lines = ["usage: python -m benchmarks SUITE [--quick] [--output DIR] [suite options]", "", "suites:"]
        lines += ["  {}  {}".format(name.ljust(width), about) for name, (_, about) in SUITES.items()]
        print("\n".join(lines), file=sys.stderr)
        sys.exit(0 if len(sys.argv) > 1 and sys.argv[1] in ("-h", "--help") else 2)
    module, _ = SUITES[sys.argv[1]]
    sys.argv = ["python -m benchmarks " + sys.argv[1]] + sys.argv[2:]
    runpy.run_module(module, run_name="__main__")  # sys.argv as set above: the suite parses its options


main()
