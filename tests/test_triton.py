"""The cloud side on a real Triton Inference Server (the tritonserver inside the nvidia-pytriton wheel,
Python backend only, so the repositories are the CPU variant: --tail python): `edgesplit export-triton`
writes them, `edgesplit edge --server grpc://...` streams to them, and answers equal in-process inference."""

import collections
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as tritonclient

from benchmarks.common import free_port
from benchmarks.reliability import rss_mb
from benchmarks.tritonserver import TritonServer
from calibration_data import DEFAULT_CALIBRATION
from runtime import protocol
from runtime.bundle import load_bundle
from runtime.edge import CLOUD, ClientConfig, EdgeClient
from runtime.images import open_source
from runtime.local import SplitInference
from runtime.transports.triton import LENGTH_BYTES, padded, payload_size

ROOT = Path(__file__).resolve().parents[1]
FRAMES = 40

pytestmark = pytest.mark.usefixtures("tritonserver")  # fetched into its cache the first time (conftest)


def edgesplit(*words, check=True) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "edgesplit", *map(str, words)], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert not check or done.returncode == 0, done.stderr
    return done


@pytest.fixture(scope="module")
def learned(tmp_path_factory):
    """The default bundle (the shipped learned codec at layer3, an exit branch) with zstd on the wire."""
    from toolchain.build import BuildOptions, build_engines

    return build_engines(BuildOptions(lossless="zstd", output=tmp_path_factory.mktemp("triton") / "learned-zstd"))


@pytest.fixture(scope="module")
def bundles(int8_built, learned) -> dict:
    return {"int8": load_bundle(int8_built.bundle), "learned": load_bundle(learned.bundle)}


@pytest.fixture(scope="module")
def repositories(bundles, tmp_path_factory) -> list:
    """One repository per bundle, written by the command, each its own ensemble name."""
    folder = tmp_path_factory.mktemp("repositories")
    for name, bundle in bundles.items():
        edgesplit("export-triton", "--bundle", bundle.directory, "--output", folder / name, "--name", name,
                  "--tail", "python", "--threads", "1", "--max-queue-delay-us", "5000")
    return [folder / name for name in bundles]


@pytest.fixture(scope="module")
def triton(repositories, tmp_path_factory):
    with TritonServer(repositories, tmp_path_factory.mktemp("triton-log") / "tritonserver.log") as server:
        yield server


def images(bundle, count: int = FRAMES) -> np.ndarray:
    frames = open_source(str(DEFAULT_CALIBRATION), bundle.input_spec())
    return np.stack([frame.image for frame, _ in zip(frames, range(count))])


def grpc_config(triton, model: str, **options) -> ClientConfig:
    host, port = triton.grpc_url.split(":")
    return ClientConfig(host, int(port), transport="grpc", model=model, **options)


@pytest.mark.parametrize("name", ["int8", "learned"])
def test_the_edge_command_over_grpc_gets_the_in_process_logits(bundles, triton, name, tmp_path):
    bundle = bundles[name]
    saved = tmp_path / "outputs.npz"
    done = edgesplit("edge", "--bundle", bundle.directory, "--server", f"grpc://{triton.grpc_url}/{name}",
                     "--source", DEFAULT_CALIBRATION, "--limit", FRAMES, "--exit-threshold", "0",
                     "--save-outputs", saved)
    assert f"{FRAMES} answered by the cloud, 0 on the edge, 0 errors" in done.stdout
    reference = SplitInference(bundle)(images(bundle))
    answers = np.load(saved)
    logits = answers["logits"][np.argsort(answers["index"])]
    assert np.array_equal(logits.argmax(1), reference.argmax(1))
    assert np.abs(logits - reference).max() <= 1e-4


def test_ten_edges_at_once_are_batched_by_triton(bundles, triton):
    bundle = bundles["learned"]
    frames = list(open_source(str(DEFAULT_CALIBRATION), bundle.input_spec()))[:30]
    results = [None] * 10

    def edge(slot: int) -> None:
        with EdgeClient(bundle, grpc_config(triton, "learned", exit_threshold=0.0)) as client:
            results[slot] = client.run_all(frames)

    threads = [threading.Thread(target=edge, args=(slot,)) for slot in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert all(r is not None and [o.answered_by for o in r] == [CLOUD] * 30 for r in results)
    metrics = triton.metrics()

    def sample(name: str) -> float:
        return float(re.search(r'^{}{{model="learned_tail",version="1"}} (\S+)$'.format(name), metrics, re.M).group(1))

    inferences, executions = sample("nv_inference_count"), sample("nv_inference_exec_count")
    assert inferences >= 300 and inferences / executions > 1  # frames per backend call: batches formed


def infer(triton, model: str, bundle, payload, served=None):
    """One request as an edge sends it: `payload` (bytes, or PAYLOAD's array as it is) padded to the size of the
    bundle the model serves (`served`, default `bundle`), with `bundle`'s id."""
    data = payload if isinstance(payload, np.ndarray) else padded(payload, payload_size((served or bundle).wire))
    inputs = [tritonclient.InferInput("PAYLOAD", list(data.shape), "UINT8"),
              tritonclient.InferInput("BUNDLE_ID", [1, 16], "UINT8")]
    inputs[0].set_data_from_numpy(data)
    inputs[1].set_data_from_numpy(np.frombuffer(protocol.bundle_id_bytes(bundle.bundle_id), np.uint8).reshape(1, -1))
    return tritonclient.InferenceServerClient(triton.grpc_url).infer(model, inputs)


def test_the_decode_model_refuses_a_wrong_payload_and_keeps_serving(bundles, triton):
    bundle = bundles["learned"]
    payload = SplitInference(bundle).edge(images(bundle, 1))[0]
    claims_5000 = padded(b"", payload_size(bundle.wire))
    claims_5000[0, :LENGTH_BYTES] = np.frombuffer((5000).to_bytes(LENGTH_BYTES, "little"), np.uint8)
    wrong_payloads = [(b"\0" + payload[1:], "is not valid zstd data"),  # no zstd magic
                      (payload[:-3], r"has \d+ bytes after zstd decoding, the bundle's wire format needs 64"),
                      (bytes(1000), "is not valid zstd data"),
                      (claims_5000, "of 5000 bytes is over this bundle's limit of 4096")]  # before decompressing
    for wrong, reason in wrong_payloads:
        with pytest.raises(tritonclient.InferenceServerException, match="in ensemble 'learned', payload " + reason) \
                as refused:
            infer(triton, "learned", bundle, wrong)
        assert refused.value.status() == "StatusCode.INVALID_ARGUMENT"
    int8 = bundles["int8"]
    with pytest.raises(tritonclient.InferenceServerException, match="payload has 100 bytes, the bundle's wire "
                                                                  "format needs 16384"):
        infer(triton, "int8", int8, bytes(100))
    with pytest.raises(tritonclient.InferenceServerException, match="frame is for bundle"):
        infer(triton, "int8", bundle, bytes(int8.wire.packed_bytes), served=int8)
    answer = infer(triton, "learned", bundle, payload).as_numpy("logits")  # still serving
    assert np.abs(answer - SplitInference(bundle).cloud([payload])).max() <= 1e-4


def test_four_64_mb_requests_are_refused_before_a_model_copies_them(bundles, triton):
    """PAYLOAD has a fixed size: Triton refuses another shape on arrival, and (started as export-triton says)
    copies none of the requests: its memory peaks below what they carry and does not grow with more of them."""
    bundle = bundles["int8"]
    refusals = []

    def send():
        try:
            infer(triton, "int8", bundle, np.zeros((1, 64 << 20), np.uint8))
        except tritonclient.InferenceServerException as error:
            refusals.append(error.message())

    def four_at_once() -> float:
        threads = [threading.Thread(target=send) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        time.sleep(1.0)
        return rss_mb(triton.process.pid)

    before = rss_mb(triton.process.pid)
    first, second = four_at_once(), four_at_once()
    assert len(refusals) == 8 and all("unexpected shape for input 'PAYLOAD'" in r for r in refusals), refusals
    # what the allocator keeps varies (+64 to +190 MB after the first four here; once nothing after them and +53
    # after the next four), but over both rounds it stays under the 256 MB one round carried: a model that copied
    # them kept +515 after the first round alone
    assert first - before < 4 * 64 and second - before < 4 * 64, (before, first, second)
    assert infer(triton, "int8", bundle, bytes(bundle.wire.packed_bytes)).as_numpy("logits").shape == (1, 10)


@pytest.mark.parametrize("model, key, problem", [
    ("learned", "", r"Triton at grpc://\S+ serves bundle \w+ as model learned, this edge runs bundle \w+: export the "
                    r"repository from this bundle"),
    ("int8_tail", "", r"Triton at grpc://\S+ model int8_tail takes \['codes'\], not an edge's PAYLOAD and BUNDLE_ID: "
                      r"point the edge at the ensemble \(grpc://HOST:PORT/NAME, not NAME_decode or NAME_tail\)"),
    ("int8", "a shared key of 128 bits at least", r"this edge holds a shared key \(--key-file or EDGESPLIT_KEY\), but "
                                                  r"Triton's gRPC has no shared-key authentication: use TLS .*"),
])
def test_an_edge_the_server_cannot_serve_is_refused_in_one_line(bundles, triton, model, key, problem):
    done = subprocess.run([sys.executable, "-m", "edgesplit", "edge", "--bundle", str(bundles["int8"].directory),
                           "--server", f"grpc://{triton.grpc_url}/{model}", "--source", str(DEFAULT_CALIBRATION),
                           "--limit", "5"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, EDGESPLIT_KEY=key))
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert re.fullmatch(f"error: {problem}\n", done.stderr), done.stderr


def test_triton_named_without_grpc_scheme_is_refused_with_how_to_reach_it(bundles, triton):
    """HOST:PORT means `edgesplit serve`; Triton's gRPC port answers HELLO with HTTP/2 and hangs up."""
    done = subprocess.run([sys.executable, "-m", "edgesplit", "edge", "--bundle", str(bundles["int8"].directory),
                           "--server", triton.grpc_url, "--source", str(DEFAULT_CALIBRATION), "--limit", "5"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and done.stderr == (
        f"error: {triton.grpc_url} is not an edgesplit server: it answered with bytes 00 00 18 04 (HTTP/2: a gRPC "
        "server? Triton is reached with --server grpc://HOST:PORT)\n"), done.stderr


def test_a_repository_whose_bundle_or_tail_was_changed_does_not_load(bundles, tmp_path):
    bundle = bundles["int8"]
    python_tail, native_tail = tmp_path / "python", tmp_path / "native"
    edgesplit("export-triton", "--bundle", bundle.directory, "--output", python_tail, "--tail", "python")
    edgesplit("export-triton", "--bundle", bundle.directory, "--output", native_tail)
    copy = python_tail / "edgesplit_decode" / "1" / "bundle" / "cloud.onnx"
    copy.write_bytes(copy.read_bytes()[:-1] + b"\0")
    plan = native_tail / "edgesplit_tail" / "1" / "model.onnx"
    plan.write_bytes(plan.read_bytes() + b"\0")
    for repository, problem in ((python_tail, "cloud.onnx does not match its sha256 in the manifest"),
                                (native_tail, f"edgesplit_tail/1/model.onnx is not bundle {bundle.bundle_id}'s "
                                              "cloud.onnx: export the repository again")):
        log = tmp_path / f"{repository.name}.log"
        with pytest.raises(RuntimeError, match="tritonserver did not become ready"):
            with TritonServer(repository, log, startup_s=60):
                pass
        assert problem in log.read_text()


def test_the_edge_reaches_triton_over_tls_and_refuses_an_untrusted_certificate(bundles, repositories, tmp_path):
    bundle = bundles["int8"]
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost"],
                   check=True, capture_output=True)
    tls = ("--grpc-use-ssl=true", f"--grpc-server-cert={cert}", f"--grpc-server-key={key}")
    with TritonServer(repositories[0], tmp_path / "tls.log", options=tls) as triton:
        server = f"grpc://{triton.grpc_url}/int8"
        done = edgesplit("edge", "--bundle", bundle.directory, "--server", server, "--source", DEFAULT_CALIBRATION,
                         "--limit", 10, "--tls-ca", cert, "--tls-server-name", "localhost")
        assert "10 answered by the cloud" in done.stdout
        refused = edgesplit("edge", "--bundle", bundle.directory, "--server", server, "--source", DEFAULT_CALIBRATION,
                            "--limit", 10, "--tls", "--tls-server-name", "localhost", check=False)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert refused.stderr.startswith(f"error: TLS with {server} failed: ") and refused.stderr.count("\n") == 1


HAPROXY = """global
  maxconn 256
defaults
  mode http
  timeout connect 1s
  timeout client 30s
  timeout server 30s
  retries 3
  option redispatch 1
frontend edges
  bind 127.0.0.1:{port} proto h2
  default_backend triton
backend triton
  balance roundrobin
  server first {first} proto h2 check inter 200ms fall 1 rise 1
  server second {second} proto h2 check inter 200ms fall 1 rise 1
"""


@pytest.mark.slow
def test_killing_one_of_two_triton_servers_behind_haproxy_loses_no_frame(haproxy, bundles, repositories, tmp_path):
    bundle = bundles["int8"]
    port = free_port()
    with TritonServer(repositories[0], tmp_path / "first.log") as first, \
            TritonServer(repositories[0], tmp_path / "second.log") as second:
        config = tmp_path / "haproxy.cfg"
        config.write_text(HAPROXY.format(port=port, first=first.grpc_url, second=second.grpc_url))
        balancer = subprocess.Popen([haproxy, "-f", str(config)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            frames = list(open_source(str(DEFAULT_CALIBRATION), bundle.input_spec()))[:400]

            def camera():  # 100 frames/s: the kill is followed by 3 s of frames
                for frame in frames:
                    if frame.index == 100:
                        first.kill()  # mid-stream, frames in flight on it
                    time.sleep(0.01)
                    yield frame

            config = ClientConfig("127.0.0.1", port, transport="grpc", model="int8", backoff_s=0.05,
                                  reply_timeout_s=10)
            with EdgeClient(bundle, config) as client:
                outcomes = client.run_all(camera())
            served_by_second = re.search(r'^nv_inference_count{model="int8_tail",version="1"} (\S+)$',
                                         second.metrics(), re.M).group(1)
        finally:
            balancer.terminate()
            balancer.wait(timeout=10)
    assert [o.index for o in outcomes] == [f.index for f in frames]  # exactly one outcome each
    errors = collections.Counter(o.error for o in outcomes[-100:] if o.answered_by != CLOUD)
    assert not errors, errors  # the stream goes on, on the second
    assert float(served_by_second) >= 300  # round-robin before the kill, everything after it
    reference = SplitInference(bundle).cloud(SplitInference(bundle).edge(np.stack([f.image for f in frames[-100:]])))
    assert np.abs(np.stack([o.logits for o in outcomes[-100:]]) - reference).max() <= 1e-4
