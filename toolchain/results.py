"""Writing what people compare: CSV rows and the machine they were measured on."""

from __future__ import annotations

import csv
import platform
from pathlib import Path


def write_csv(path: Path, rows: list) -> None:
    """Rows as dicts or NamedTuples (field names become the header)."""
    records = [row._asdict() if hasattr(row, "_asdict") else row for row in rows]
    with open(path, "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows(records)


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.partition(":")[2].strip()
    return platform.processor() or platform.machine()
