"""Triton Inference Server vs `edgesplit serve`: the same bundle's cloud side under the same load.

    python -m benchmarks triton [--quick] [--bundle DIR] [--edges 1,10,30] [--fps 30]

The bundle (default: the server suite's, int8 codes at layer2, 16,384 B per frame) is exported with
`edgesplit export-triton --tail python` — the CPU variant, as the tritonserver that runs here has the
Python backend only (benchmarks/tritonserver.py) — and served by a real tritonserver; `edgesplit serve`
runs the same tail on ONNX Runtime. Both batch up to 32 frames waiting at most 2 ms. N synthetic edges
send the edge half's real payloads open-loop at --fps each (the server suite's load generator; for
Triton the same through tritonclient's asyncio gRPC client) and time each reply.

server.csv/.png: answered frames/s and p50/p99 latency per server and edge count, and mean batch.
overhead.csv: the gRPC path's per-frame cost against edgesplit's protocol — bytes each way on the
wire (a counting TCP proxy in front of each server, one edge, connection set-up included) and
latency at one edge.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.progress import Progress

from benchmarks.common import (add_bundle_option, cpu_name, free_port,
                               int8_bundle, parse_arguments, table, write_csv)
from benchmarks.runtime import drive, scrape, serving
from benchmarks.tritonserver import TritonServer, missing
from calibration_data import DEFAULT_CALIBRATION
from runtime import protocol
from runtime.bundle import load_bundle
from runtime.images import open_source
from runtime.local import CloudHalf, EdgeHalf
from runtime.transports.triton import BUNDLE_ID, COMPRESSION, PAYLOAD, padded, payload_size
from runtime.wire import encode_frame

MODEL = "edgesplit"
MAX_BATCH, MAX_WAIT_MS = 32, 2.0


async def triton_edge(url: str, bundle_id: np.ndarray, payloads: list[bytes], size: int, expected: np.ndarray,
                      fps: float, start: float, warm_until: float, stop_at: float, latencies: list,
                      counts: dict) -> None:
    """One edge at `fps` through Triton's gRPC, open-loop like benchmarks.runtime.synthetic_edge; each payload padded
    to PAYLOAD's `size` and compressed, as the edge's transport sends it."""
    import tritonclient.grpc.aio as grpc_aio
    from tritonclient.grpc import InferInput
    from tritonclient.utils import InferenceServerException

    client = grpc_aio.InferenceServerClient(url)

    async def one(index: int) -> None:
        payload = payloads[index % len(payloads)]
        inputs = [InferInput(PAYLOAD, [1, size], "UINT8"), InferInput(BUNDLE_ID, [1, 16], "UINT8")]
        inputs[0].set_data_from_numpy(padded(payload, size))
        inputs[1].set_data_from_numpy(bundle_id)
        started = time.monotonic()
        warm = started >= warm_until
        counts["sent"] += warm
        try:
            result = await client.infer(MODEL, inputs, compression_algorithm=COMPRESSION)
        except InferenceServerException:
            counts["errors"] += warm
            return
        if warm:
            latencies.append(time.monotonic() - started)
            counts["wrong"] += int(result.as_numpy("logits")[0].argmax() != expected[index % len(payloads)])

    tasks, index = [], 0
    while start + index / fps < stop_at:
        await asyncio.sleep(max(0.0, start + index / fps - time.monotonic()))
        tasks.append(asyncio.ensure_future(one(index)))
        index += 1
    _, waiting = await asyncio.wait(tasks, timeout=5.0)
    counts["unanswered"] += len(waiting)
    for task in waiting:
        task.cancel()
    await client.close()


async def drive_triton(url: str, edges: int, fps: float, seconds: float, bundle, payloads, expected) -> dict:
    latencies: list[float] = []
    counts = {"sent": 0, "errors": 0, "unanswered": 0, "wrong": 0}
    now = time.monotonic()
    warm_until, stop_at = now + 1.0, now + 1.0 + seconds
    bundle_id = np.frombuffer(protocol.bundle_id_bytes(bundle.bundle_id), np.uint8).reshape(1, -1)
    rng = np.random.default_rng(0)
    size = payload_size(bundle.wire)
    await asyncio.gather(*(triton_edge(url, bundle_id, payloads, size, expected, fps, now + rng.uniform(0, 1 / fps),
                                       warm_until, stop_at, latencies, counts) for _ in range(edges)))
    latency_ms = np.array(latencies) * 1000 if latencies else np.array([np.nan])
    return {"answered": len(latencies), **counts, "throughput_fps": len(latencies) / seconds,
            "latency_ms_p50": float(np.median(latency_ms)), "latency_ms_p99": float(np.percentile(latency_ms, 99))}


def tail_counts(metrics: str) -> np.ndarray:
    """(frames, executions) of the tail so far, from Triton's Prometheus text."""
    values = {}
    for line in metrics.splitlines():
        if line.startswith(("nv_inference_count{", "nv_inference_exec_count{")) and f'model="{MODEL}_tail"' in line:
            values[line.split("{")[0]] = float(line.rpartition(" ")[2])
    return np.array([values.get("nv_inference_count", 0.0), values.get("nv_inference_exec_count", 0.0)])


class CountingProxy:
    """A TCP proxy on a free port that counts the bytes crossing it each way."""

    def __init__(self, target_port: int):
        self.target_port, self.port = target_port, free_port()
        self.up = self.down = 0

    async def __aenter__(self) -> "CountingProxy":
        self.server = await asyncio.start_server(self._connection, "127.0.0.1", self.port)
        return self

    async def __aexit__(self, *_) -> None:
        self.server.close()
        await self.server.wait_closed()

    async def _connection(self, reader, writer) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        try:
            await asyncio.gather(self._pipe(reader, upstream_writer, "up"), self._pipe(upstream_reader, writer, "down"),
                                 return_exceptions=True)
        except asyncio.CancelledError:  # the run is over; its connections end with it
            pass

    async def _pipe(self, reader, writer, direction: str) -> None:
        try:
            while chunk := await reader.read(65536):
                setattr(self, direction, getattr(self, direction) + len(chunk))
                writer.write(chunk)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()


async def counted(port: int, run) -> tuple[dict, int, int]:
    """`run(proxy_port)` through a counting proxy to `port`: its result and the bytes up and down."""
    async with CountingProxy(port) as proxy:
        result = await run(proxy.port)
    return result, proxy.up, proxy.down


def measure(bundle, payloads, expected, edge_counts, fps: float, seconds: float, work: Path,
            progress: Progress) -> tuple[list[dict], list[dict]]:
    from toolchain.triton import RepositoryOptions, export_repository

    repository = work / "repository"
    export_repository(RepositoryOptions(bundle.directory, repository, MODEL, max_batch=MAX_BATCH,
                                        max_queue_delay_us=int(MAX_WAIT_MS * 1000), tail="python"))
    task = progress.add_task("servers under load", total=2 * len(edge_counts) + 2)
    rows, overhead = [], []
    for edges in edge_counts:
        with serving(bundle.directory, MAX_BATCH, MAX_WAIT_MS, None) as (port, metrics_port):
            result = asyncio.run(drive(port, edges, fps, seconds, bundle, payloads, expected))
            metrics = scrape(metrics_port)
        calls = metrics.get("edgesplit_batch_size_count", 0.0)
        rows.append(row("edgesplit serve", edges, fps, result, metrics.get("edgesplit_batch_size_sum", 0) / max(calls, 1)))
        progress.advance(task)
    one_edge = seconds / 2
    with serving(bundle.directory, MAX_BATCH, MAX_WAIT_MS, None) as (port, _):
        result, up, down = asyncio.run(counted(port, lambda p: drive(p, 1, fps, one_edge, bundle, payloads, expected)))
    overhead.append(overhead_row("edgesplit serve (TCP)", result, up, down, bundle, round((1 + one_edge) * fps)))
    progress.advance(task)
    with TritonServer(repository, work / "tritonserver.log") as triton:
        for edges in edge_counts:
            before = tail_counts(triton.metrics())
            result = asyncio.run(drive_triton(triton.grpc_url, edges, fps, seconds, bundle, payloads, expected))
            frames, executions = tail_counts(triton.metrics()) - before
            rows.append(row("Triton (gRPC, Python tail)", edges, fps, result, frames / max(executions, 1)))
            progress.advance(task)
        result, up, down = asyncio.run(counted(triton.grpc_port, lambda p: drive_triton(
            f"127.0.0.1:{p}", 1, fps, one_edge, bundle, payloads, expected)))
        overhead.append(overhead_row("Triton (gRPC)", result, up, down, bundle, round((1 + one_edge) * fps)))
        progress.advance(task)
    return rows, overhead


def row(server: str, edges: int, fps: float, result: dict, mean_batch: float) -> dict:
    return {"server": server, "edges": edges, "offered_fps": edges * fps,
            **{k: round(v, 2) if isinstance(v, float) else v for k, v in result.items()},
            "mean_batch": round(mean_batch, 2)}


def overhead_row(path: str, result: dict, up: int, down: int, bundle, frames: int) -> dict:
    """Bytes per frame over every frame that crossed (the warm-up second's too: `frames` were sent)."""
    return {"path": path, "frames": frames, "payload_bytes": bundle.wire.packed_bytes,
            "uplink_bytes_per_frame": round(up / frames, 1), "downlink_bytes_per_frame": round(down / frames, 1),
            "uplink_overhead_bytes": round(up / frames - bundle.wire.packed_bytes, 1),
            "latency_ms_p50": round(result["latency_ms_p50"], 2), "latency_ms_p99": round(result["latency_ms_p99"], 2)}


def plot(output: Path, rows: list[dict], fps: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for server in dict.fromkeys(r["server"] for r in rows):
        mine = [r for r in rows if r["server"] == server]
        left.plot([r["edges"] for r in mine], [r["throughput_fps"] for r in mine], "o-", label=server)
        right.plot([r["edges"] for r in mine], [r["latency_ms_p50"] for r in mine], "o--", label=f"{server} p50")
        right.plot([r["edges"] for r in mine], [r["latency_ms_p99"] for r in mine], "o-", label=f"{server} p99")
    edges = sorted({r["edges"] for r in rows})
    left.plot(edges, [e * fps for e in edges], "k:", label=f"offered ({fps:g} fps/edge)")
    for axis, label in ((left, "answered frames/s"), (right, "latency, ms")):
        axis.set_xscale("log")
        axis.set_xlabel("concurrent edges")
        axis.set_ylabel(label)
        axis.legend(fontsize=7)
    right.set_yscale("log")
    figure.suptitle("The same tail behind edgesplit serve and Triton (2-core CPU, batch <= 32, wait <= 2 ms)")
    figure.tight_layout()
    figure.savefig(output / "server.png", dpi=120)
    plt.close(figure)


def write_report(output: Path, summary: dict, rows: list[dict], overhead: list[dict]) -> None:
    tcp, grpc = overhead
    text = f"""# Triton Inference Server vs edgesplit serve

`python -m benchmarks triton{' --quick' if summary['quick'] else ''}` on {summary['machine']} ({summary['cpus']} cores),
{summary['date']}. Bundle {summary['bundle_id']} ({summary['payload_bytes']} payload bytes per frame); Triton
{summary['triton']} with the repository `edgesplit export-triton --tail python` writes (the tail is ONNX Runtime
inside a Python model: this tritonserver has no onnxruntime backend). Both batch up to {MAX_BATCH} frames,
waiting at most {MAX_WAIT_MS:g} ms; {summary['fps_per_edge']:g} frames/s per edge, {summary['seconds']:g} s per row
after a 1 s warm-up. The load generator shares the two cores with the server.

{table(rows, ["server", "edges", "offered_fps", "throughput_fps", "latency_ms_p50", "latency_ms_p99", "errors",
              "unanswered", "wrong", "mean_batch"])}

![servers](server.png)

## What the gRPC path costs per frame (one edge, a counting proxy in front of each server)

{table(overhead, ["path", "frames", "payload_bytes", "uplink_bytes_per_frame", "uplink_overhead_bytes",
                  "downlink_bytes_per_frame", "latency_ms_p50", "latency_ms_p99"])}

- Uplink: a frame through Triton's gRPC costs {grpc['uplink_bytes_per_frame']:.0f} bytes against edgesplit's
  {tcp['uplink_bytes_per_frame']:.0f} ({grpc['uplink_overhead_bytes']:+.0f} and {tcp['uplink_overhead_bytes']:+.0f} beyond the
  payload). gRPC's side holds HTTP/2 and protobuf framing, tensor names and shapes and the bundle id, and its
  request is gzip-compressed: PAYLOAD has a fixed size ({summary['payload_size']} bytes, the bundle's largest frame
  and a length; Triton refuses any other before a model copies it), and deflate turns its zero padding into a
  few bytes. On a wire without a lossless stage deflate compresses the codes too: compare with the
  bundle's own `--lossless zstd`, not with a gain of the gRPC path. Downlink: {grpc['downlink_bytes_per_frame']:.0f} vs
  {tcp['downlink_bytes_per_frame']:.0f} bytes.
- Latency at one edge: p50 {grpc['latency_ms_p50']:.2f} ms through Triton vs {tcp['latency_ms_p50']:.2f} ms through
  `edgesplit serve` (the decode and the tail each a Python-backend model here, an ensemble step apart).
"""
    (output / "RESULTS.md").write_text(text)


def main() -> None:
    def options(parser):
        add_bundle_option(parser)
        parser.add_argument("--fps", type=float, default=30.0, help="Frames per second each edge sends.")
        parser.add_argument("--edges", type=lambda text: tuple(int(n) for n in text.split(",")), default=(1, 10, 30),
                            help="Comma-separated numbers of concurrent edges.")

    args = parse_arguments(__doc__, "triton", "1 and 5 edges, 2 s per run.", options)
    reason = missing()
    if reason:
        raise SystemExit(f"error: {reason}")
    work = Path(tempfile.mkdtemp())
    args.bundle = int8_bundle(args.bundle, work)
    bundle = load_bundle(args.bundle)
    source = list(open_source(str(DEFAULT_CALIBRATION), bundle.input_spec()))[:64 if args.quick else 256]
    codes = EdgeHalf(bundle).codes(np.stack([frame.image for frame in source]))
    payloads = [encode_frame(frame, bundle.wire) for frame in codes]
    expected = CloudHalf(bundle).logits(codes).argmax(1)
    edges, seconds = ((1, 5), 2.0) if args.quick else (args.edges, 8.0)
    with Progress() as progress:
        rows, overhead = measure(bundle, payloads, expected, edges, args.fps, seconds, work, progress)
    summary = {"quick": args.quick, "machine": cpu_name(), "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d"),
               "bundle_id": bundle.bundle_id, "payload_bytes": bundle.wire.packed_bytes,
               "payload_size": payload_size(bundle.wire), "triton": "2.51 (nvidia-pytriton 0.7.0)",
               "fps_per_edge": args.fps, "seconds": seconds, "servers": rows, "overhead": overhead}
    write_csv(args.output / "server.csv", rows)
    write_csv(args.output / "overhead.csv", overhead)
    (args.output / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot(args.output, rows, args.fps)
    write_report(args.output, summary, rows, overhead)
    print(table(rows, ["server", "edges", "throughput_fps", "latency_ms_p50", "latency_ms_p99", "mean_batch"]))
    print(table(overhead, ["path", "uplink_bytes_per_frame", "downlink_bytes_per_frame", "latency_ms_p50"]))
    print(f"wrote {args.output}/RESULTS.md")


if __name__ == "__main__":
    main()
