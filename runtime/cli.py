"""`edgesplit edge`, `serve` and `demo`: the runtime commands, with no torch and no click.

`edgesplit` (edgesplit/cli.py) hands these commands here, so an edge device with numpy and
one backend runs `edgesplit edge`. Python 3.6 syntax.
"""

import argparse
import csv
import json
import logging
import signal
import sys
import time
from pathlib import Path

import numpy as np

from runtime.errors import EdgesplitError, one_line

def _server(text: str):
    from runtime.transports import parse_server

    try:
        return parse_server(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from error


def _rate(text: str) -> float:
    from runtime.link import parse_rate

    try:
        return parse_rate(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from error


def _duration(text: str) -> float:
    from runtime.link import parse_duration

    try:
        return parse_duration(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from error


def _whole(text: str, least: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("expected a whole number >= {}, got {!r}".format(least, text)) from None
    if value < least:
        raise argparse.ArgumentTypeError("expected a whole number >= {}, got {}".format(least, value))
    return value


def _count(text: str) -> int:
    """Frames, threads: at least 1."""
    return _whole(text, 1)


def _bytes(text: str) -> int:
    """A size in bytes; 0 is one (an emulated link's empty bucket paces every byte)."""
    return _whole(text, 0)


def _number(text: str, within, expected: str) -> float:
    """`text` as a float for which `within(value)` holds (a comparison NaN fails), or one line saying `expected`."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("expected a number, got {!r}".format(text)) from None
    if not within(value):
        raise argparse.ArgumentTypeError("expected {}, got {}".format(expected, text))
    return value


def _positive(text: str) -> float:
    """Seconds, frames per second: > 0 and at most a day's worth."""
    return _number(text, lambda value: 0 < value <= 86400, "a number > 0 and <= 86400")


def _threshold(text: str) -> float:
    return _number(text, lambda value: 0 <= value < float("inf"), "an entropy >= 0 (nats)")


def _port(text: str) -> int:
    value = int(text) if text.isdigit() else -1
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError("expected a port 0-65535 (0: any free one), got {!r}".format(text))
    return value


def _output(text: str) -> str:
    """A file to write: its folder must exist (checked before the run, not after it)."""
    folder = Path(text).parent
    if not folder.is_dir():
        raise argparse.ArgumentTypeError("cannot write {}: the folder {} does not exist".format(text, folder))
    return text


def _existing(text: str) -> str:
    if not Path(text).is_file():
        raise argparse.ArgumentTypeError("{}: {}".format("not a file" if Path(text).exists() else "no such file", text))
    return text


class _Parser(argparse.ArgumentParser):
    """Wrong arguments are one line naming the problem (`--help` shows the usage), like every other error."""

    def error(self, message: str):
        self.exit(2, "{}: error: {}\n".format(self.prog, message))


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="edgesplit", description="edgesplit runtime commands.")
    parser.add_argument("--debug", action="store_true", help="Show tracebacks instead of one-line errors.")
    commands = parser.add_subparsers(dest="command")

    edge = commands.add_parser("edge", help="Run the edge half on a source and send features to a server (an "
                                             "edge-only bundle answers every frame on the device).")
    _bundle_arguments(edge)
    edge.add_argument("--server", default=None, type=_server,
                      help="HOST:PORT of `edgesplit serve`, or grpc://HOST:PORT[/MODEL] of a Triton server holding "
                           "an `edgesplit export-triton` repository (MODEL: its ensemble, default edgesplit). "
                           "Needed by every bundle but an edge-only one.")
    edge.add_argument("--source", required=True,
                      help="An .npz/.npy of uint8 images, a folder of image files, or camera[:N].")
    edge.add_argument("--split", default=None, choices=("train", "test"),
                      help="Which set of a source holding both (.npz with train_/test_ arrays, folder with "
                           "train/ and test/) [default: test].")
    edge.add_argument("--limit", type=_count, default=None, help="Stop after this many frames.")
    edge.add_argument("--fps", type=_positive, default=None, help="Pace the source to this frame rate, as a camera; latency counts from each frame's capture.")
    edge.add_argument("--in-flight", type=_count, default=8, help="Frames sent but not yet answered (default 8).")
    edge.add_argument("--timeout", type=_positive, default=10.0, help="Seconds to wait for one reply (default 10).")
    edge.add_argument("--key-file", default=None,
                      help="Shared key file for `edgesplit serve` (default: the EDGESPLIT_KEY variable).")
    edge.add_argument("--tls", action="store_true", help="Connect with TLS, checking the server's certificate.")
    edge.add_argument("--tls-ca", default=None, type=_existing,
                      help="CA file that signed the server's certificate (implies --tls).")
    edge.add_argument("--tls-server-name", default=None, help="Name the certificate must carry (default: host).")
    edge.add_argument("--tls-cert", default=None, type=_existing,
                      help="This edge's certificate chain, for mutual TLS (implies --tls).")
    edge.add_argument("--tls-key", default=None, type=_existing, help="Private key of --tls-cert.")
    edge.add_argument("--uplink", type=_rate, default=None, help="Emulated uplink rate, e.g. 1mbit (tc units).")
    edge.add_argument("--rtt", type=_duration, default=0.0, help="Emulated round-trip delay, e.g. 20ms.")
    edge.add_argument("--burst", type=_bytes, default=4096, help="Emulated token-bucket depth in bytes (default 4096).")
    edge.add_argument("--threads", type=_count, default=None, help="Threads for the edge backend.")
    edge.add_argument("--exit-threshold", type=_threshold, default=None,
                      help="Answer frames whose exit-branch entropy is below this on the edge [default: the "
                           "bundle's, from calibrate-exit].")
    edge.add_argument("--point", type=int, default=None,
                      help="An adaptive bundle: hold to this operating point (numbered from 0, as verify-bundle "
                           "lists them) instead of following the uplink.")
    edge.add_argument("--rate-trace", default=None, type=_existing,
                      help="An adaptive bundle, for benchmarks: switch on the rate this `ms,kbit_s` trace gives the "
                           "link over the next second (an oracle), not on the edge's own estimate.")
    edge.add_argument("--rate-trace-start", type=float, default=None,
                      help="When the link started playing --rate-trace, in seconds since the epoch [default: now].")
    edge.add_argument("--output", default=None, type=_output, help="CSV with one row per frame.")
    edge.add_argument("--summary-json", default=None, type=_output, help="Write the summary as JSON too.")
    edge.add_argument("--save-outputs", default=None, type=_output,
                      help="An .npz with every output of each frame the cloud answered (boxes too), by name, "
                           "and their frame indices.")

    demo = commands.add_parser("demo", help="Serve a bundle and run its edge half against it over loopback: "
                                             "features cross a real socket, in one terminal.")
    _bundle_arguments(demo)
    demo.add_argument("--source", default=None,
                      help="Images as for `edge --source` [default: the bundled Fashion-MNIST held-out images].")
    demo.add_argument("--split", default=None, choices=("train", "test"),
                      help="Which set of a source holding both [default: test].")
    demo.add_argument("--frames", type=_count, default=300, help="Frames to send (default 300).")

    engines = commands.add_parser("build-engines", help="Build a bundle's TensorRT engines on this device.")
    _bundle_arguments(engines)

    serve = commands.add_parser("serve", help="Serve a bundle's cloud half to edges over TCP.")
    _bundle_arguments(serve)
    serve.add_argument("--host", default="127.0.0.1", help="Address to listen on (0.0.0.0: all interfaces).")
    serve.add_argument("--port", type=_port, default=9000)
    serve.add_argument("--key-file", default=None, help="Shared key file (default: the EDGESPLIT_KEY variable).")
    serve.add_argument("--no-auth", action="store_true", help="Accept edges without a shared key.")
    serve.add_argument("--tls-cert", default=None, help="Certificate chain (PEM) to serve TLS with.")
    serve.add_argument("--tls-key", default=None, help="Private key (PEM) of --tls-cert.")
    serve.add_argument("--max-batch", type=int, default=32, help="Most frames per backend call (1: no batching).")
    serve.add_argument("--max-wait-ms", type=float, default=2.0,
                       help="How long a batch waits to fill up while other edges are connected.")
    serve.add_argument("--max-in-flight", type=int, default=256, help="Unanswered frames allowed per edge.")
    serve.add_argument("--threads", type=_count, default=None, help="Threads for the cloud backend.")
    serve.add_argument("--metrics-port", type=_port, default=None, help="Serve Prometheus metrics on this port.")
    serve.add_argument("--metrics-host", default="127.0.0.1",
                       help="Address of the metrics endpoint (default loopback: it tells how busy the server is).")
    serve.add_argument("--max-connections", type=int, default=1024,
                       help="Edges served at once; more are refused as busy (lowered to the file limit).")
    serve.add_argument("--idle-timeout", type=float, default=300.0,
                       help="Seconds without a frame after which a connection is closed.")
    serve.add_argument("--frame-timeout", type=float, default=10.0,
                       help="Seconds a frame may take to arrive whole from its first byte (slow senders are dropped); "
                            "raise it for large frames on a thin uplink: an image of 150 kB takes 12 s at 100 "
                            "kbit/s.")
    serve.add_argument("--shutdown-timeout", type=float, default=10.0,
                       help="Seconds Ctrl-C/SIGTERM waits for accepted frames to be answered before closing.")
    serve.add_argument("--batch-timeout", type=float, default=30.0,
                       help="Seconds the backend may take for a batch; then its frames get TIMEOUT errors.")
    return parser


def _client_tls(args):
    from runtime.transports import Tls

    if not (args.tls or args.tls_ca or args.tls_cert):
        return None
    if bool(args.tls_cert) != bool(args.tls_key):
        raise EdgesplitError("mutual TLS needs both --tls-cert and --tls-key")
    return Tls(args.tls_ca, args.tls_cert, args.tls_key, args.tls_server_name)


def _percentile(values, q: float) -> float:
    return float(np.percentile(values, q)) if len(values) else float("nan")


def run_edge(args) -> dict:
    from itertools import islice

    from runtime.bundle import open_bundle
    from runtime.images import open_source

    bundle = open_bundle(args.bundle, args.trust)
    frames = open_source(args.source, bundle.input_spec(), args.split)
    if args.limit is not None:
        frames = islice(frames, args.limit)
    config = _client_config(args, bundle)
    summary, outcomes = _edge_session(bundle, config, frames, args.fps, args.threads)
    if args.output:
        _write_outcomes(args.output, outcomes)
    if args.summary_json:
        Path(args.summary_json).write_text(json.dumps(summary, indent=2) + "\n")
    if args.save_outputs:
        _save_outputs(args.save_outputs, bundle, outcomes)
    return _finish(summary)


def _client_config(args, bundle):
    """How the edge reaches its server; None for an edge-only bundle, which needs none."""
    from runtime.edge import ClientConfig
    from runtime.link import EmulatedLink
    from runtime.protocol import read_key

    server = args.server
    if bundle.strategy == "edge-only":
        given = (("--server", server), ("--exit-threshold", args.exit_threshold), ("--uplink", args.uplink),
                 ("--rtt", args.rtt or None), ("--point", args.point), ("--rate-trace", args.rate_trace))
        unused = [name for name, value in given if value is not None]
        if unused:
            print("note: bundle {} is edge-only: the whole model answers on this device, so {} {} not used".format(
                bundle.bundle_id, ", ".join(unused), "is" if len(unused) == 1 else "are"), file=sys.stderr)
        return None
    if server is None:
        raise EdgesplitError("bundle {} is {}: it sends frames to a cloud server; give --server HOST:PORT".format(
            bundle.bundle_id, bundle.strategy))
    link = EmulatedLink(args.uplink, args.rtt, args.burst) if (args.uplink or args.rtt) else None
    return ClientConfig(server.host, server.port, key=read_key(args.key_file), tls=_client_tls(args),
                        in_flight=args.in_flight, reply_timeout_s=args.timeout, link=link,
                        exit_threshold=args.exit_threshold, transport=server.transport, model=server.path,
                        rate=_oracle(args, bundle), point=args.point)


def _oracle(args, bundle):
    """The rate an adaptive edge follows instead of its own estimate, from --rate-trace; None without one."""
    from runtime.adaptive import KnownRate, read_steps
    from runtime.bundle import ADAPTIVE

    if args.rate_trace is None:
        if args.rate_trace_start is not None:
            raise EdgesplitError("--rate-trace-start says when --rate-trace started playing; give --rate-trace too")
        return None
    if args.point is not None:
        raise EdgesplitError("--point holds one operating point and --rate-trace switches between them: give one")
    if args.rate_trace_start is not None and not 0 < args.rate_trace_start < float("inf"):
        raise EdgesplitError("--rate-trace-start is a time in seconds since the epoch (as `date +%s.%N` prints), got "
                             "{}".format(args.rate_trace_start))
    if bundle.strategy != ADAPTIVE:
        raise EdgesplitError("--rate-trace chooses among an adaptive bundle's operating points; bundle {} is {}, "
                             "one point".format(bundle.bundle_id, bundle.strategy))
    try:
        steps = read_steps(args.rate_trace)
    except (OSError, ValueError) as error:
        raise EdgesplitError(str(error)) from error
    return KnownRate(steps, time.time() if args.rate_trace_start is None else args.rate_trace_start)


def _edge_session(bundle, config, frames, fps=None, threads=None):
    """Run frames through the bundle's client, with progress on stderr; (summary, outcomes in frame order)."""
    from runtime.edge import CLOUD, ERROR, open_client
    from runtime.images import paced

    outcomes = []
    with open_client(bundle, config, threads=threads) as client:
        started = last_report = time.monotonic()  # the frames' time, not the backend's loading
        started_unix = time.time()
        for outcome in client.run(paced(frames, fps)):
            outcomes.append(outcome)
            if time.monotonic() - last_report >= 2.0:
                last_report = time.monotonic()
                counts = client.stats.outcomes  # counted as outcomes happen: ahead of what was yielded
                print("{} frames: {} cloud, {} edge, {} errors".format(
                    sum(counts.values()), counts[CLOUD], counts["edge"], counts[ERROR]), file=sys.stderr)
        stats = dict(client.stats.as_dict(), started_unix=round(started_unix, 3),
                     **_points(bundle, client, outcomes, started))
    elapsed = time.monotonic() - started
    outcomes.sort(key=lambda outcome: outcome.index)
    answered = [o for o in outcomes if o.answered_by != ERROR]
    labeled = [o for o in answered if isinstance(o.label, int) and o.logits is not None]
    latencies = [o.latency_s * 1000 for o in answered]
    summary = dict(stats, seconds=round(elapsed, 3), frames_per_second=round(len(outcomes) / elapsed, 2),
                   accuracy=(sum(int(o.logits.argmax() == o.label) for o in labeled) / len(labeled)
                             if labeled else None), **_pixel_scores(answered),
                   payload_bytes_per_frame=stats["payload_bytes"] / max(1, stats["frames"]),
                   wire_bytes_per_frame=stats["bytes_sent"] / max(1, stats["frames"]),
                   latency_ms_p50=_percentile(latencies, 50), latency_ms_p99=_percentile(latencies, 99),
                   first_error=next((o.error for o in outcomes if o.answered_by == ERROR), None))
    return summary, outcomes


def _points(bundle, client, outcomes, started: float) -> dict:
    """An adaptive bundle's: frames per operating point, and the switches between them (seconds from `started`)."""
    from runtime.bundle import ADAPTIVE

    if bundle.strategy != ADAPTIVE:
        return {}
    switches = client.switcher.switches if client.switcher else []
    return {"point_frames": {bundle.point_name(index): sum(o.point == index for o in outcomes)
                             for index in range(len(bundle.points))},
            "switches": [{"seconds": round(s.at - started, 3), "from": s.old, "to": s.new, "rate_bps": round(s.rate_bps)}
                         for s in switches]}


def _pixel_labeled(outcomes) -> list:
    """(outcome, its class map) for each answered frame with per-pixel labels: the output of classes x H x W
    they fit, the same for every frame."""
    labeled = [o for o in outcomes if isinstance(o.label, np.ndarray) and o.outputs is not None]
    if not labeled:
        return []
    first = labeled[0]
    index = next((i for i, output in enumerate(first.outputs)
                  if output.ndim == first.label.ndim + 1 and output.shape[1:] == first.label.shape), None)
    if index is None:
        raise EdgesplitError("per-pixel labels of {} fit none of the bundle's outputs ({}): they score a classes x H "
                             "x W map".format("x".join(map(str, first.label.shape)),
                                              ", ".join("x".join(map(str, o.shape)) for o in first.outputs)))
    return [(o, o.outputs[index]) for o in labeled]


def _pixel_scores(outcomes) -> dict:
    """Pixel accuracy and mean IoU over the frames with per-pixel labels (None without any)."""
    from runtime.scores import PixelScores

    labeled = _pixel_labeled(outcomes)
    if not labeled:
        return {"pixel_accuracy": None, "mean_iou": None}
    scores = PixelScores(labeled[0][1].shape[0])
    for outcome, scored in labeled:
        scores.add(scored, outcome.label)
    return {"pixel_accuracy": scores.accuracy, "mean_iou": scores.mean_iou}


def _write_outcomes(path: str, outcomes) -> None:
    pixels = {o.index: float((scored.argmax(0) == o.label).mean()) for o, scored in _pixel_labeled(outcomes)}
    with open(path, "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["index", "answered_by", "prediction", "label", "latency_ms", "error", "pixel_accuracy",
                         "point"])
        for o in outcomes:
            writer.writerow([o.index, o.answered_by, "" if o.logits is None else int(o.logits.argmax()),
                             o.label if isinstance(o.label, int) else "", round(o.latency_s * 1000, 3), o.error,
                             round(pixels[o.index], 6) if o.index in pixels else "", o.point])


def run_demo(args) -> dict:
    """A server on a loopback port and one edge sending to it, with a one-off key: no second terminal."""
    import os
    from itertools import islice

    from calibration_data import DEFAULT_CALIBRATION
    from runtime.bundle import open_bundle
    from runtime.cloud import BackgroundServer, ServerConfig
    from runtime.edge import ClientConfig
    from runtime.images import open_source

    bundle = open_bundle(args.bundle, args.trust)
    frames = islice(open_source(args.source or str(DEFAULT_CALIBRATION), bundle.input_spec(), args.split),
                    args.frames)
    key = os.urandom(32)
    with BackgroundServer(bundle, ServerConfig(key=key)) as server:
        host, port = server.address
        print("serving bundle {} on {}:{}; the edge sends {} frames to it over TCP".format(
            bundle.bundle_id, host, port, args.frames), file=sys.stderr)
        summary, _ = _edge_session(bundle, ClientConfig(host, port, key=key), frames)
    return _finish(summary)


def _finish(summary: dict) -> dict:
    """Print the summary; a run where no frame got an answer fails."""
    _print_summary(summary)
    if summary["frames"] and not summary["cloud_answers"] + summary["edge_answers"]:
        raise EdgesplitError("no frame was answered: {}".format(summary["first_error"]))
    return summary


def _save_outputs(path: str, bundle, outcomes) -> None:
    """The cloud's answers with all their outputs; edge (exit) answers carry the class output only, so they
    are left out."""
    from runtime.edge import CLOUD
    from runtime.local import output_sizes

    answered = [o for o in outcomes if o.answered_by == CLOUD]
    arrays = {name: np.stack([o.outputs[i] for o in answered]) if answered else np.zeros((0,) + shape, np.float32)
              for i, (name, shape) in enumerate(output_sizes(bundle))}
    np.savez(path, index=np.array([o.index for o in answered], dtype=np.int64), **arrays)


def _print_summary(summary: dict) -> None:
    accuracy = "" if summary["accuracy"] is None else ", top-1 {:.2%} on labeled frames".format(summary["accuracy"])
    if summary["pixel_accuracy"] is not None:
        accuracy += ", pixel accuracy {:.2%} and mean IoU {:.3f} on labeled frames".format(
            summary["pixel_accuracy"], summary["mean_iou"])
    print("{frames} frames in {seconds:.1f} s ({frames_per_second:.1f}/s): {cloud_answers} answered by the cloud, "
          "{edge_answers} on the edge, {errors} errors".format(**summary) + accuracy)
    wire = "nothing sent" if not summary["bytes_sent"] else "{:.1f} payload bytes/frame, {:.1f} with headers{}".format(
        summary["payload_bytes_per_frame"], summary["wire_bytes_per_frame"],
        " (over all frames: one answered on the edge or never sent counts none)"
        if summary["cloud_answers"] < summary["frames"] else "")
    latency = "no answers" if summary["latency_ms_p50"] != summary["latency_ms_p50"] else \
        "p50 {:.1f} ms, p99 {:.1f} ms".format(summary["latency_ms_p50"], summary["latency_ms_p99"])
    print("wire: {}; latency {}; {} connection(s)".format(wire, latency, summary["connects"]))
    if "point_frames" in summary:
        print("operating points: {}; {} switch(es)".format(", ".join(
            "{} {} frames".format(name, count) for name, count in summary["point_frames"].items()),
            len(summary["switches"])))
    if summary["first_error"]:
        print("first error: {}".format(summary["first_error"]))


def run_serve(args) -> None:
    import ssl

    from runtime.bundle import open_bundle
    from runtime.cloud import ServerConfig, serve_forever
    from runtime.protocol import read_key

    if bool(args.tls_cert) != bool(args.tls_key):
        raise EdgesplitError("TLS needs both --tls-cert and --tls-key")
    context = None
    if args.tls_cert:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(args.tls_cert, args.tls_key)
        except (OSError, ssl.SSLError) as error:
            raise EdgesplitError("cannot load TLS certificate {}: {}".format(args.tls_cert, error)) from error
    key = b"" if args.no_auth else read_key(args.key_file)
    config = ServerConfig(args.host, args.port, key=key, allow_unauthenticated=args.no_auth,
                          max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, max_in_flight=args.max_in_flight,
                          threads=args.threads, ssl_context=context, metrics_port=args.metrics_port,
                          metrics_host=args.metrics_host, max_connections=args.max_connections,
                          idle_timeout_s=args.idle_timeout, frame_timeout_s=args.frame_timeout,
                          shutdown_timeout_s=args.shutdown_timeout,
                          batch_timeout_s=args.batch_timeout)
    bundle = open_bundle(args.bundle, args.trust)

    def ready(server):
        host, port = server.address
        metrics = "" if server.metrics_address is None else ", metrics on http://{}:{}/metrics".format(
            *server.metrics_address)
        print("serving bundle {} on {}:{}{} (Ctrl-C stops after answering accepted frames)".format(
            bundle.bundle_id, host, port, metrics), flush=True)

    serve_forever(bundle, config, on_ready=ready)


def run_build_engines(args) -> None:
    from runtime.backends.tensorrt.engine import rebuild_engines
    from runtime.bundle import open_bundle

    for plan, stamp in rebuild_engines(open_bundle(args.bundle, args.trust)):
        print("built {} for {} (sm {}), TensorRT {}, {}".format(
            plan, stamp["gpu"], stamp["compute_capability"], stamp["tensorrt"], stamp["precision"]))


COMMANDS = {"edge": run_edge, "serve": run_serve, "demo": run_demo, "build-engines": run_build_engines}


def _bundle_arguments(command) -> None:
    command.add_argument("--bundle", required=True, help="Bundle directory or .tar.")
    command.add_argument("--trust", default=None, metavar="PUBKEY",
                         help="Ed25519 public key (PEM): refuse a bundle it did not sign (sign-bundle).")


def _terminate(*_) -> None:
    raise SystemExit(128 + signal.SIGTERM)


def main(argv=None) -> None:
    args = _parser().parse_args(argv)
    if args.command is None:
        _parser().error("give a command: edge, serve, demo or build-engines --bundle")
    logging.basicConfig(level=logging.INFO if args.command == "serve" else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    signal.signal(signal.SIGTERM, _terminate)  # unwind, so an unpacked .tar bundle is removed (serve has its own)
    try:
        COMMANDS[args.command](args)
    except EdgesplitError as error:
        if args.debug:
            raise
        print("error: {}".format(one_line(error)), file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
