"""What `edgesplit edge` costs per frame beyond its model: reading and preparing the frame, encoding it, the
socket, the sender and receiver threads, matching the reply.

Measured here as CPU time, streaming the image raw to a real `edgesplit serve` on loopback (a cloud-only bundle:
the edge runs no model), so that only the client's own work is counted. A device slower than this machine by a
factor spends that factor times as long on it, frame after frame: on a quota-bound edge it is part of every
frame's edge time, beside the head's (the optimizer adds it to every frame, edge-only's too: its frames are read,
prepared and answered by the same loop, only without the socket).
"""

from __future__ import annotations

import math
import subprocess
import sys
import tempfile
import time
from itertools import islice
from pathlib import Path

from runtime.bundle import load_bundle
from runtime.edge import ClientConfig, EdgeClient
from runtime.images import open_source
from toolchain.errors import EdgesplitError

FRAMES, WARM_UP = 200, 20
ROOT = Path(__file__).resolve().parents[1]


def serve(bundle: Path) -> tuple[subprocess.Popen, int]:
    """`edgesplit serve` on a free loopback port, once it listens (it runs from the repository: the bundle's path
    is made absolute)."""
    with tempfile.TemporaryFile("w+") as errors:
        server = subprocess.Popen([sys.executable, "-m", "runtime.cli", "serve", "--bundle", str(bundle.resolve()),
                                   "--port", "0", "--no-auth"], cwd=str(ROOT), stdout=subprocess.PIPE,
                                  stderr=errors, text=True)
        line = server.stdout.readline()
        if "serving bundle" not in line:
            server.kill()
            server.wait()
            errors.seek(0)
            said = [text.strip() for text in errors.read().splitlines() if text.strip()]
            raise EdgesplitError("edgesplit serve did not start to time the edge client: "
                                 + (said[-1] if said else f"exit status {server.returncode}"))
    return server, int(line.split(" on ")[1].split()[0].rsplit(":", 1)[1])


def client_ms(model: str | None, weights: Path | None, inputs, images: str, work: Path) -> float:
    """CPU milliseconds per frame the edge client spends on `images` (a source as `edgesplit edge --source`
    takes), beyond any model."""
    from toolchain.build import BuildOptions, build_engines

    bundle = build_engines(BuildOptions(strategy="cloud-only", model=model, weights=weights, inputs=inputs,
                                        target="cpu", cloud="cpu", calib=images, holdout_frames=100,
                                        output=work / "client-cost", max_loss=math.inf), show_progress=False).bundle
    server, port = serve(bundle)
    try:
        opened = load_bundle(bundle)
        with EdgeClient(opened, ClientConfig("127.0.0.1", port)) as client:
            list(client.run(islice(open_source(images, opened.input_spec(), "test"), WARM_UP)))
            started = time.process_time()
            outcomes = list(client.run(islice(open_source(images, opened.input_spec(), "test"), FRAMES)))
            spent = time.process_time() - started
    finally:
        server.terminate()
        server.wait(timeout=30)
    if sum(outcome.answered_by == "cloud" for outcome in outcomes) != len(outcomes):
        raise EdgesplitError("timing the edge client: the local server did not answer every frame")
    return 1000 * spent / len(outcomes)
