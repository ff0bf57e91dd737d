"""The cloud half's TensorRT engine on a real GPU against ONNX Runtime, on the same held-out frames.

    python -m benchmarks tensorrt --prepare [--output DIR]          here: the bundle and its frames
    python -m benchmarks tensorrt --bundle B --frames F [--output DIR]  on a machine with a GPU

--prepare builds the default model with `build-engines --target cpu --cloud cloud-gpu` (the cloud half
INT8 Q/DQ, built for TensorRT), and writes frames.npz: the 2,000 held-out images with their labels, the
edge half's codes for them and ONNX Runtime's cloud logits on this machine (Q/DQ run unfused).

On the GPU machine (runtime only: no torch, no toolchain) the run builds the engine with
`edgesplit build-engines --bundle` as a user does, runs every frame's codes through the engine and
through ONNX Runtime there, then serves the bundle with `edgesplit serve` (the engine) and streams the
images to it with `edgesplit edge`. summary.json holds the agreement of top-1 answers, each one's
accuracy, the largest logit difference and batch timings; engine.log holds the commands' output.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.common import free_port

ROOT = Path(__file__).resolve().parents[1]
BATCHES = (1, 32, 256)


def prepare(output: Path) -> None:
    from calibration_data import DEFAULT_CALIBRATION
    from runtime.bundle import load_bundle
    from runtime.inputs import InputSpec
    from runtime.local import CloudHalf, edge_half
    from toolchain.data import load_images

    bundle_dir = output / "bundle"
    _run([sys.executable, "-m", "edgesplit", "build-engines", "--target", "cpu", "--cloud", "cloud-gpu",
          "--output", str(bundle_dir)], output / "prepare.log")
    held_out = load_images(DEFAULT_CALIBRATION, "test", InputSpec(1, 32, 32, "pad"))
    bundle = load_bundle(bundle_dir)
    codes = edge_half(bundle).codes(bundle.input_spec().prepare(held_out.images, "images"))
    logits = CloudHalf(bundle, verified=True).logits(codes)
    np.savez_compressed(output / "frames.npz", images=held_out.images, labels=held_out.labels, codes=codes,
                        logits=logits)
    print("wrote {} and {}".format(bundle_dir, output / "frames.npz"))


def _run(command: list, log: Path, **options) -> subprocess.CompletedProcess:
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, **options)
    with open(log, "a") as stream:
        stream.write("$ {}\n{}{}exit {} after {:.1f} s\n\n".format(" ".join(command), done.stdout, done.stderr,
                                                                  done.returncode, time.perf_counter() - started))
    if done.returncode != 0:
        sys.exit("{} failed (exit {}); see {}".format(" ".join(command[2:4]), done.returncode, log))
    return done


def _timings(half, codes: np.ndarray) -> dict:
    """Median ms of one batch of each size (after a warm-up batch), through the half's runner."""
    found = {}
    for size in BATCHES:
        batch = codes[:size]
        half.logits(batch)
        times = []
        for _ in range(20):
            started = time.perf_counter()
            half.logits(batch)
            times.append(time.perf_counter() - started)
        found[str(size)] = round(1000 * float(np.median(times)), 3)
    return found


def _stream(bundle: Path, frames: Path, output: Path, log: Path) -> dict:
    """`edgesplit serve` (the engine) and `edgesplit edge` over TCP on this machine: the edge's summary."""
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "edgesplit", "serve", "--bundle", str(bundle), "--port",
                               str(port), "--no-auth"], cwd=ROOT, stdout=open(output / "serve.log", "w"),
                              stderr=subprocess.STDOUT)
    try:
        summary = output / "edge.json"
        for _ in range(120):  # the server builds nothing (the engine is cached) but loads it
            time.sleep(0.5)
            done = subprocess.run([sys.executable, "-m", "edgesplit", "edge", "--bundle", str(bundle), "--server",
                                   "127.0.0.1:{}".format(port), "--source", str(frames), "--summary-json",
                                   str(summary)], cwd=ROOT, capture_output=True, text=True)
            if "unreachable" not in done.stderr:
                break
        with open(log, "a") as stream:
            stream.write("$ edgesplit edge ... (serve on the engine)\n{}{}exit {}\n\n".format(
                done.stdout, done.stderr, done.returncode))
        return json.loads(summary.read_text()) if done.returncode == 0 else {"error": done.stderr.strip()[-300:]}
    finally:
        server.terminate()
        server.wait(timeout=30)


def measure(bundle_dir: Path, frames_path: Path, output: Path) -> None:
    from runtime.backends.tensorrt.engine import probe_device
    from runtime.bundle import load_bundle
    from runtime.local import CloudHalf

    log = output / "engine.log"
    log.write_text("")
    device = probe_device()
    if "reason" in device:
        sys.exit("no engine can be built here: " + device["reason"])
    _run([sys.executable, "-m", "edgesplit", "build-engines", "--bundle", str(bundle_dir)], log)
    frames = np.load(frames_path)
    codes, labels, here = frames["codes"], frames["labels"], frames["logits"]
    bundle = load_bundle(bundle_dir)
    engine, onnx = CloudHalf(bundle), CloudHalf(bundle, verified=True)
    on_gpu, on_cpu = engine.logits(codes), onnx.logits(codes)
    summary = {
        "device": device, "frames": len(codes), "precision": bundle.artefact("cloud")["precision"],
        "top1_agreement_engine_vs_onnxruntime": float((on_gpu.argmax(1) == on_cpu.argmax(1)).mean()),
        "top1_agreement_onnxruntime_vs_build_host": float((on_cpu.argmax(1) == here.argmax(1)).mean()),
        "accuracy": {"engine": float((on_gpu.argmax(1) == labels).mean()),
                     "onnxruntime": float((on_cpu.argmax(1) == labels).mean()),
                     "onnxruntime_on_build_host": float((here.argmax(1) == labels).mean())},
        "max_abs_logit_difference": float(np.abs(on_gpu - on_cpu).max()),
        "batch_ms": {"engine": _timings(engine, codes), "onnxruntime_cpu": _timings(onnx, codes)},
        "served": _stream(bundle_dir, frames_path, output, log),
    }
    (output / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prepare", action="store_true", help="Build the bundle and frames here.")
    parser.add_argument("--bundle", type=Path, help="The bundle --prepare wrote (on the GPU machine).")
    parser.add_argument("--frames", type=Path, help="The frames.npz --prepare wrote.")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "tensorrt")
    args = parser.parse_args()
    args.output.mkdir(parents=True, exist_ok=True)
    if args.prepare:
        prepare(args.output)
    elif args.bundle is None or args.frames is None:
        parser.error("give --prepare, or --bundle and --frames")
    else:
        measure(args.bundle, args.frames, args.output)


if __name__ == "__main__":
    main()
