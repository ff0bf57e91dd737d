"""The testbed: a slow edge device and a thin link, emulated on this machine with the kernel's own tools.

- `devices`: a CPU quota (cgroup) makes a process as slow as a device; the factor is calibrated
  from a published time for a reference model on that device, never guessed.
- `link`: the cloud and the edge in two network namespaces joined by a veth pair whose uplink
  is shaped by `tbf` — real TCP over a real bottleneck.

Both need root. `missing_root()` says in one line why the testbed cannot run here; the benchmarks
then stop (or fall back to the edge client's own token bucket where they say so).
"""

from __future__ import annotations

import os
import shutil


def missing_root() -> str | None:
    """Why the testbed cannot run here, or None when it can."""
    from benchmarks.testbed.devices import cgroup_root  # not at import: `python -m` runs that module itself

    if os.geteuid() != 0:
        return "the testbed needs root (cgroup CPU quotas and network namespaces); run it as root or on the real device"
    if cgroup_root() is None:
        return "no writable cgroup cpu controller (/sys/fs/cgroup/cpu or cgroup v2 with cpu.max)"
    missing = [tool for tool in ("ip", "tc") if shutil.which(tool) is None]
    if missing:
        return f"{' and '.join(missing)} not found (Debian package iproute2)"
    return None


def interrupt_on_sigterm() -> None:
    """SIGTERM (kill, a CI timeout) unwinds like Ctrl-C, so the namespaces and cgroups are removed too."""
    import signal

    def interrupt(*_):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
