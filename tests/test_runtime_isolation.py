"""Invariant 1: the runtime runs where torch and the toolchain are absent, the edge on Python 3.6."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# what a Jetson Nano (JetPack 4.6, Python 3.6) imports: each transport's package and edge end; runtime/cloud.py,
# metrics.py and the transports' server ends are server-only
EDGE_MODULES = ["runtime/__init__.py", "runtime/errors.py", "runtime/wire.py", "runtime/bundle.py",
                "runtime/protocol.py", "runtime/coding", "runtime/edge.py", "runtime/images.py", "runtime/link.py",
                "runtime/local.py", "runtime/cli.py", "runtime/signing.py", "runtime/backends",
                "runtime/transports/__init__.py", *(f"runtime/transports/{name}/{part}.py" for name in ("tcp", "triton")
                                                    for part in ("__init__", "edge")), "targets", "edgesplit"]


def test_runtime_modules_import_without_torch_or_toolchain():
    code = (
        "import sys\n"
        "import runtime.coding.rans, runtime.coding.packed, runtime.coding.picture\n"
        "import runtime.bundle, runtime.local, runtime.wire, runtime.backends.onnxrt.runner, targets\n"
        "import runtime.protocol, runtime.edge, runtime.cloud, runtime.images, runtime.link, runtime.cli\n"
        "loaded = [m for m in sys.modules if m.split('.')[0] in ('torch', 'toolchain', 'onnx', 'click', 'rich')]\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=str(ROOT))


def test_runtime_commands_start_without_the_toolchain():
    code = (
        "import sys\n"
        "from edgesplit.cli import main\n"
        "try:\n"
        "    main(['edge', '--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "assert not [m for m in sys.modules if m.split('.')[0] in ('torch', 'toolchain', 'click')]\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=str(ROOT), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "--server" in result.stdout


def test_edge_modules_need_nothing_newer_than_python_3_6():
    result = subprocess.run([sys.executable, "-c", "import sys, vermin; sys.exit(vermin.main())", "-t=3.6-", "--no-tips", "--violations",
                             "--eval-annotations"] + EDGE_MODULES, cwd=str(ROOT), capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Minimum required versions: 3.6" in result.stdout
