"""The test suite's own rules (tests/README.md): a mistyped marker expression is refused, and a test skips only
for a GPU or for root."""

import re
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent
# what a skip may wait for: TensorRT and a CUDA GPU, root (apt, cgroups, network namespaces), or a machine of
# another kind than this project's (the packaged tritonserver is x86-64 Linux only)
ALLOWED = re.compile(r"GPU|TensorRT|DEVICE|root|needs Debian's|unsupported\(\)")


def test_a_marker_expression_naming_no_marker_is_refused():
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "not slwo", "--collect-only"],
                          cwd=TESTS.parent, capture_output=True, text=True, timeout=120)
    assert done.returncode == 4
    assert "-m names slwo, which no test is marked with (the quick tier is -m 'not slow')" in done.stdout + done.stderr


def test_every_skip_waits_for_a_gpu_or_root():
    skips = [(path.name, line.strip()) for path in sorted(TESTS.glob("*.py")) if path.name != "test_suite.py"
             for line in path.read_text().splitlines() if re.search(r"\b(skip|skipif|importorskip)\(", line)]
    assert skips and [skip for skip in skips if not ALLOWED.search(skip[1])] == []
