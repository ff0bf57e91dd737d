"""The `edgesplit` and `build-engines` commands.

Heavy imports (torch, onnx) happen inside the commands that need them, so that runtime
commands added later start on an edge device that has neither.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import click

from runtime.errors import EdgesplitError


class ReportingGroup(click.Group):
    """Prints an EdgesplitError as one line and exits 1; `--debug` shows the traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except EdgesplitError as error:
            if ctx.params.get("debug"):
                raise
            click.secho(f"error: {error}", fg="red", err=True)
            sys.exit(1)


@click.group(cls=ReportingGroup)
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
def main(debug: bool) -> None:
    """edgesplit: split a CNN between an edge device and a cloud GPU."""


MODEL_OPTIONS = [
    click.option("--model", "model_spec", default=None,
                 help="Bundled model name, a .pt2 torch.export archive, or package.module:factory."),
    click.option("--weights", type=click.Path(dir_okay=False, path_type=Path), default=None,
                 help="state_dict for a package.module:factory model (loaded with weights_only=True)."),
    click.option("--input-shape", default=None,
                 help="C,H,W of one input image when the model spec does not say it (e.g. 3,32,32)."),
]


def model_options(command):
    for option in reversed(MODEL_OPTIONS):
        command = option(command)
    return command


@main.command("train-model")
@click.option("--model", "model_name", default="resnet18w05-fmnist", show_default=True,
              help="Bundled model to train.")
@click.option("--data", default="fashion-mnist", show_default=True, help="Labeled image source.")
@click.option("--epochs", default=3, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Weights file; defaults to the bundled weights of the model, with its model card.")
def train_model(model_name: str, data: str, epochs: int, seed: int, output: Path | None) -> None:
    """Train a bundled model from scratch and write its weights and model card."""
    from toolchain.model_card import write_model_card
    from toolchain.data import load_images
    from toolchain.load import zoo_entry
    from toolchain.train import train_classifier
    import torch

    entry = zoo_entry(model_name)
    model = entry.factory()
    result = train_classifier(model, load_images(data, "train"), load_images(data, "test"),
                              entry.input_shape, epochs=epochs, seed=seed)
    weights = output or entry.weights
    torch.save(model.state_dict(), weights)
    card = write_model_card(model_name, model, weights, data, epochs, seed, result,
                            command=" ".join(["edgesplit", *sys.argv[1:]]))
    click.echo(f"test accuracy {result.test_accuracy:.2%} after {epochs} epochs; wrote {weights} and {card}")


@main.command("build-engines")
@model_options
@click.option("--target", default="cpu", show_default=True,
              help="cpu, raspberry-pi, jetson-nano, jetson-orin or cloud-gpu.")
@click.option("--split", default=None, help="fx node name or module path (e.g. layer2); see list-splits.")
@click.option("--codec", default="int8", show_default=True, help="Codec spec, e.g. int8 or int8:per=channel.")
@click.option("--calib", default=None,
              help="Calibration/held-out images: .npz, fashion-mnist, IDX or CIFAR-10 binary folder "
                   "[default: the bundled Fashion-MNIST slice].")
@click.option("--output", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Bundle directory [default: bundles/<model>-<target>].")
@click.option("--max-loss", default=1.0, show_default=True,
              help="Accuracy points the bundle may lose against the float model before the build fails.")
@click.option("--tar", is_flag=True, help="Also write <output>.tar.")
def build_engines(model_spec, weights, input_shape, target, split, codec, calib, output, max_loss, tar) -> None:
    """Split, quantize, export and bundle a model for a target."""
    from rich.console import Console
    from rich.table import Table

    from toolchain.build import BuildOptions, build_engines as build
    from toolchain.load import parse_input_shape

    report = build(BuildOptions(
        model=model_spec, weights=weights, input_shape=input_shape and parse_input_shape(input_shape),
        target=target, split=split, codec=codec, calib=calib, output=output, max_loss=max_loss, tar=tar,
    ))
    manifest, checks = report.manifest, report.manifest["checks"]
    split_info, input_spec = manifest["split"], manifest["source_model"]["input"]
    input_bytes = math.prod(input_spec["shape"][1:])
    table = Table(title=f"bundle {manifest['bundle_id']} → {report.bundle}", show_header=False)
    table.add_row("model / target", f"{manifest['source_model']['name']} / {manifest['target']['name']}")
    table.add_row("split", f"{split_info['module'] or split_info['node']} (node {split_info['node']}), "
                           f"tensor {'x'.join(map(str, split_info['shape']))}")
    table.add_row("codec", manifest["codec"]["name"] + "".join(f" {k}={v}" for k, v in manifest["codec"]["params"].items()))
    if "float_accuracy" in checks:
        table.add_row("float accuracy", f"{checks['float_accuracy']:.2%} on {checks['holdout_frames']} held-out images")
        table.add_row("bundle accuracy", f"{checks['bundle_accuracy']:.2%} "
                      f"({100 * (checks['bundle_accuracy'] - checks['float_accuracy']):+.2f} pt)")
    table.add_row("top-1 agreement", f"{checks['top1_agreement']:.2%}")
    table.add_row("bytes per frame", f"{split_info['fp32_bytes']:,} fp32 → {checks['wire_bytes_per_frame']:,} on the wire "
                                     f"(input image {input_bytes:,} bytes as uint8)")
    table.add_row("ONNX vs PyTorch", f"edge max |Δ| {checks['edge_max_abs_error']:g} code(s), "
                                     f"cloud max |Δ| {checks['cloud_max_abs_error']:.2g}")
    table.add_row("build time", f"{report.seconds:.1f} s")
    Console().print(table)


@main.command("list-splits")
@model_options
def list_splits(model_spec, weights, input_shape) -> None:
    """Every point where exactly one tensor crosses, with its size per frame."""
    from rich.console import Console
    from rich.table import Table

    from toolchain.errors import SplitError
    from toolchain.load import load_model, parse_input_shape
    from toolchain.split import candidate_points, trace

    loaded = load_model(model_spec, weights, input_shape and parse_input_shape(input_shape))
    if loaded.input_shape is None:
        raise SplitError(f"the input shape of {loaded.name} is unknown: give --input-shape C,H,W")
    points = candidate_points(trace(loaded.module, loaded.input_shape))
    table = Table(title=f"split points of {loaded.name} (input {'x'.join(map(str, loaded.input_shape))})")
    for column in ("#", "node", "module", "tensor", "fp32 bytes", "int8 bytes"):
        table.add_column(column, justify="right" if "bytes" in column or column == "#" else "left")
    for index, point in enumerate(points):
        marker = " (default)" if point.module and point.module == loaded.default_split else ""
        table.add_row(str(index), point.node, (point.module or "") + marker, "x".join(map(str, point.shape)),
                      f"{point.fp32_bytes:,}", f"{point.int8_bytes:,}")
    Console().print(table)


@main.command("verify-bundle")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
def verify_bundle(path: Path) -> None:
    """Check a bundle directory or .tar: manifest, hashes, bundle id, artefact inputs/outputs."""
    import tempfile

    from runtime.bundle import check_artefact_io, extract_tar, load_bundle

    with tempfile.TemporaryDirectory() as scratch:
        directory = extract_tar(path, Path(scratch)) if path.is_file() else path
        bundle = load_bundle(directory)
        check_artefact_io(bundle)
    click.echo(f"ok: bundle {bundle.bundle_id} ({bundle.manifest['source_model']['name']} for "
               f"{bundle.manifest['target']['name']}), {len(bundle.manifest['files'])} files verified")


def build_engines_command():
    """`build-engines` is `edgesplit build-engines` under its own name."""
    return main(["build-engines", *sys.argv[1:]])
