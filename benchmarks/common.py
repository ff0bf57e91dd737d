"""What every benchmark suite shares: its command line, the labeled data it uses, and its outputs."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from calibration_data import DEFAULT_CALIBRATION
from toolchain.data import FASHION_MNIST_DIR
from toolchain.results import cpu_name, write_csv  # noqa: F401  (every suite takes them from here)

ROOT = Path(__file__).resolve().parents[1]

# --quick: what a suite's builds calibrate on and check their accuracy on (a full-int8 conversion alone takes
# ~20 s on the default 512 images; each check runs the split on every held-out image)
QUICK_BUILD = {"calibration_frames": 128, "holdout_frames": 500}


def parse_arguments(doc: str, suite: str, quick_help: str, add_options=None, folder=None) -> argparse.Namespace:
    """`--quick` and `--output` (default benchmarks/results/<suite>, created; `folder(args)` names it
    where a suite's options decide), plus a suite's own options."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--output", type=Path, default=None, help=f"default: benchmarks/results/{suite}")
    if add_options is not None:
        add_options(parser)
    args = parser.parse_args()
    if args.output is None:
        args.output = ROOT / "benchmarks" / "results" / (folder(args) if folder else suite)
    try:
        args.output.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        parser.error(f"--output {args.output}: {error.strerror} (a folder is expected)")
    return args


def earlier_run(output: Path) -> dict:
    """The summary.json a full run wrote to `output` before, or {}: a suite that reruns some of its models keeps
    the others' results."""
    path = output / "summary.json"
    if not path.exists():
        return {}
    earlier = json.loads(path.read_text())
    return {} if earlier.get("quick") else earlier


def add_bundle_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bundle", type=Path, default=None,
                        help="Bundle directory (default: build the default model's int8 bundle at layer2, "
                             "uncompressed, for the cpu).")


def int8_bundle(given: Path | None, scratch: Path) -> Path:
    """The suite's bundle: `given`, or the int8 one built into `scratch`."""
    if given is not None:
        return given
    from toolchain.build import BuildOptions, build_engines

    return build_engines(BuildOptions(split="layer2", codec="int8", lossless="none", output=scratch / "int8-cpu"),
                         show_progress=False).bundle


def labeled_data(quick: bool) -> str:
    """Debian's full Fashion-MNIST for full runs, the bundled slice for --quick or when it is missing."""
    return "fashion-mnist" if FASHION_MNIST_DIR.exists() and not quick else str(DEFAULT_CALIBRATION)


def table(rows: list[dict], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(row.get(c)) for c in columns) + " |" for row in rows]  # an earlier run's: fewer
    return "\n".join(lines)


def free_port() -> int:
    """A TCP port nothing listens on now (the OS picks it)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def train_briefly(model, images, loss, epochs: int, batch: int, progress, label: str, rate: float = 1e-3) -> None:
    """Adam at `rate` over an ImageSet's images in shuffled batches (torch's global seed decides): a model someone
    trained, not a tuned one."""
    import torch

    optimizer = torch.optim.Adam(model.parameters(), lr=rate)
    inputs, labels = torch.from_numpy(images.inputs()), torch.from_numpy(images.labels)
    task = progress.add_task(f"training {label}", total=epochs * -(-len(labels) // batch))
    model.train()
    for _ in range(epochs):
        for chosen in torch.randperm(len(labels)).split(batch):
            optimizer.zero_grad()
            loss(model(inputs[chosen]), labels[chosen]).backward()
            optimizer.step()
            progress.advance(task)
    progress.remove_task(task)
