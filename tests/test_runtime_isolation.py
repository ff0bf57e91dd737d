"""Invariant 1: the runtime runs where torch and the toolchain are absent."""

import subprocess
import sys


def test_runtime_modules_import_without_torch_or_toolchain():
    code = (
        "import sys\n"
        "import runtime.bundle, runtime.local, runtime.wire, runtime.backends.onnxrt.runner, targets\n"
        "loaded = [m for m in sys.modules if m.split('.')[0] in ('torch', 'toolchain', 'onnx')]\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
