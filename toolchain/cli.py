"""The `edgesplit` and `build-engines` commands.

Heavy imports (torch, onnx) happen inside the commands that need them, so that runtime
commands added later start on an edge device that has neither.
"""

from __future__ import annotations

import functools
import math
import sys
from pathlib import Path
from typing import NamedTuple

import click
from click.core import ParameterSource

from runtime.bundle import STRATEGIES
from runtime.errors import EdgesplitError, one_line
from runtime.inputs import RESIZE_POLICIES, parse_floats
from runtime.coding import LOSSLESS
from toolchain.image_formats import IMAGE_FORMATS
from toolchain.lossless import CHOICES as LOSSLESS_CHOICES
from targets import DEFAULT_EDGE, PRECISIONS, names as device_names


NO_ARGUMENTS = getattr(click.exceptions, "NoArgsIsHelpError", ())  # click >= 8.2


class ReportingGroup(click.Group):
    """Prints an EdgesplitError as one line and exits 1, and wrong arguments as one line (not click's usage
    block; `--help` shows that) and exits 2, as the runtime's commands do; `--debug` shows the traceback."""

    def make_context(self, info_name, args, parent=None, **extra):
        try:  # the group's own options
            return super().make_context(info_name, args, parent, **extra)
        except click.UsageError as error:
            self.refuse(error, info_name)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except EdgesplitError as error:
            if ctx.params.get("debug"):
                raise
            click.secho(f"error: {one_line(error)}", fg="red", err=True)
            sys.exit(1)
        except click.UsageError as error:
            if ctx.params.get("debug"):
                raise
            self.refuse(error, ctx.command_path)

    @staticmethod
    def refuse(error: click.UsageError, command: str):
        if isinstance(error, NO_ARGUMENTS):  # bare `edgesplit`: its help, as click shows it
            raise error
        command = error.ctx.command_path if error.ctx else command
        click.secho(f"{command}: error: {error.format_message()}", fg="red", err=True)
        sys.exit(2)


@click.group(cls=ReportingGroup)
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
def main(debug: bool) -> None:
    """edgesplit: split a CNN between an edge device and a cloud GPU.

    \b
    Runtime commands (no torch needed; each has its own --help):
      edgesplit serve --bundle B --port P                      the cloud half
      edgesplit edge --bundle B --server HOST:PORT --source S  the edge half
      edgesplit demo --bundle B                                both, over loopback
    """


MODEL_OPTIONS = [
    click.option("--model", "model_spec", default=None,
                 help="Bundled model name, a .pt2 torch.export archive, or package.module:factory."),
    click.option("--weights", type=click.Path(dir_okay=False, path_type=Path), default=None,
                 help="state_dict for a package.module:factory model (loaded with weights_only=True)."),
    click.option("--input-shape", default=None,
                 help="C,H,W of one input image when the model spec does not say it (e.g. 3,32,32)."),
    click.option("--resize", type=click.Choice(RESIZE_POLICIES), default=None,
                 help="Images of another size: none refuses them, pad centres them in zeros, resize scales them "
                      "(bilinear) [default: the bundled model's, else none]."),
    click.option("--mean", default=None,
                 help="Per-channel mean the model expects its [0, 1] input normalized with, when its graph does not "
                      "normalize (e.g. 0.485,0.456,0.406); folded into the edge half."),
    click.option("--std", default=None, help="Per-channel std for --mean (e.g. 0.229,0.224,0.225)."),
]


class Finite(click.FloatRange):
    """A FloatRange that also refuses nan and infinities: nan compares with no bound, so it would pass any."""

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return number


POINTS = Finite(min=0)  # accuracy points a bound allows to lose
SHARE = Finite(min=0, max=1)


HOLDOUT_FRAMES = click.option("--holdout-frames", type=click.IntRange(min=1), default=None,
                              help="Evaluate bundles on this many held-out images, drawn at random [default: all "
                                   "of them].")


class ModelArgs(NamedTuple):
    spec: str | None
    weights: Path | None
    inputs: object  # toolchain.load.InputOptions

    def load(self):
        from toolchain.load import load_model

        return load_model(self.spec, self.weights, self.inputs)


def option_group(options):
    def decorate(command):
        for option in reversed(options):
            command = option(command)
        return command
    return decorate


def model_options(command):
    """Adds the model options; the command receives them as one `model: ModelArgs`."""
    @functools.wraps(command)
    def with_model(*args, model_spec, weights, input_shape, resize, mean, std, **kwargs):
        from toolchain.load import InputOptions, parse_input_shape

        inputs = InputOptions(input_shape and parse_input_shape(input_shape), resize, parse_floats(mean, "mean"),
                              parse_floats(std, "std"))
        return command(*args, model=ModelArgs(model_spec, weights, inputs), **kwargs)
    return option_group(MODEL_OPTIONS)(with_model)


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
    from toolchain.load import load_model, zoo_entry
    from toolchain.train import train_classifier
    import torch

    entry = zoo_entry(model_name)
    model = entry.factory()
    spec = load_model(model_name).spec()
    result = train_classifier(model, load_images(data, "train", spec), load_images(data, "test", spec),
                              epochs=epochs, seed=seed)
    weights = output or entry.weights
    torch.save(model.state_dict(), weights)
    card = write_model_card(model_name, model, weights, data, epochs, seed, result,
                            command=" ".join(["edgesplit", *sys.argv[1:]]))
    click.echo(f"test accuracy {result.test_accuracy:.2%} after {epochs} epochs; wrote {weights} and {card}")


@main.command("build-engines")
@model_options
@click.option("--target", default=DEFAULT_EDGE, show_default=True,
              help=f"Edge device: {', '.join(device_names('edge'))}.")
@click.option("--cloud", default=None,
              help=f"Cloud device: {', '.join(device_names('cloud'))} [default: cloud-gpu for a device edge, "
                   "cpu for --target cpu].")
@click.option("--strategy", type=click.Choice(list(STRATEGIES)), default="split", show_default=True,
              help="Where the model runs: split between the devices, edge-only (the whole model on the edge device, "
                   "no server), or cloud-only (the image sent, the whole model in the cloud). `optimize` picks one.")
@click.option("--image-format", type=click.Choice(IMAGE_FORMATS), default="raw", show_default=True,
              help="How a cloud-only bundle sends the image (JPEG at quality 90).")
@click.option("--split", default=None, help="fx node name or module path (e.g. layer2); see list-splits.")
@click.option("--codec", default=None,
              help="Codec spec: int8, int8:per=channel, affine:bits=4, bbnet:c=8,s=2,bits=4, safbmp:c=8,s=2,bits=4 "
                   "[default: a bundled model's shipped codec and exit branch when no split, codec or exit option "
                   "is given; else int8].")
@click.option("--codec-weights", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Checkpoint of a learned codec from train-codec or search-codec.")
@click.option("--lossless", type=click.Choice(LOSSLESS_CHOICES), default="auto", show_default=True,
              help="Lossless stage applied to the (bit-packed) codes of every frame; auto: the smallest on the "
                   "calibration images of none, zlib and, for a codec trained for rate whose frames hold at most "
                   "1,024 codes, rans (the stages every edge has); rans: entropy-coded with a prior fitted to the "
                   "calibration images' codes (pure Python on the edge).")
@click.option("--train-data", default=None,
              help="Labeled images to train a learned codec given without --codec-weights "
                   "[default: the bundled model's dataset].")
@click.option("--calib", default=None,
              help="Calibration/held-out images: .npz/.npy, a folder of image files (class subfolders give "
                   "labels), fashion-mnist, an IDX or CIFAR-10 binary folder [default: the bundled Fashion-MNIST "
                   "slice].")
@click.option("--output", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Bundle directory [default: bundles/<model>-<edge>[-with-<cloud>]].")
@HOLDOUT_FRAMES
@click.option("--max-loss", type=POINTS, default=1.0, show_default=True,
              help="Accuracy points the bundle may lose against the float model before the build fails.")
@click.option("--min-agreement", type=SHARE, default=None,
              help="Top-1 agreement with the float model the bundle must keep (0..1) [default: 0.98 for int8/affine "
                   "codecs; for a learned codec what its training measured, less 0.02].")
@click.option("--max-relative-error", type=Finite(min=0, min_open=True), default=0.1, show_default=True,
              help="Bound on a regression output's ||bundle - float|| / ||float||.")
@click.option("--output-kinds", default=None,
              help="class or regression per model output, comma-separated [default: the first class, the rest "
                   "regression].")
@click.option("--codec-epochs", type=click.IntRange(min=1), default=None,
              help="Epochs for a learned codec trained during the build (no --codec-weights) [default: about 900 "
                   "steps of 128 images: 2 epochs of 60,000 images, 113 of 1,000].")
@click.option("--tar", is_flag=True, help="Also write <output>.tar.")
@click.option("--precision", type=click.Choice(PRECISIONS), default=None,
              help="Precision of the edge half [default: the edge device's].")
@click.option("--cloud-precision", type=click.Choice(PRECISIONS), default=None,
              help="Precision of the cloud half [default: the cloud device's].")
@click.option("--strict-int8", is_flag=True,
              help="Refuse an INT8 half that misses the bounds instead of keeping its most sensitive layers in "
                   "fp16 until it meets them.")
@click.option("--early-exit", is_flag=True, help="Add an exit branch to the edge half, trained on --train-data.")
@click.option("--exit-weights", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="An exit branch from `edgesplit train-exit` instead of training one during the build.")
@click.option("--exit-epochs", default=2, show_default=True, help="Epochs for training the exit branch.")
@click.option("--exit-threshold", type=float, default=None,
              help="Entropy under which the edge answers itself [default: calibrated, see --exit-max-loss].")
@click.option("--exit-max-loss", type=POINTS, default=None,
              help="Accuracy points the exits may cost: the threshold is the least offloading one whose exits "
                   "change at most this % of the cloud's answers on the calibration images [default: the shipped "
                   "exit's, else 0.3].")
def build_engines(model, target, cloud, strategy, image_format, split, codec, codec_weights, lossless, train_data, calib, output,
                  holdout_frames, max_loss, min_agreement, max_relative_error, output_kinds, codec_epochs, tar, precision, cloud_precision,
                  strict_int8, early_exit, exit_weights, exit_epochs, exit_threshold, exit_max_loss) -> None:
    """Split, quantize, export and bundle a model for an edge device and a cloud device.

    `build-engines --bundle PATH` (the runtime's command, on the device) builds that bundle's
    TensorRT engines there instead.
    """
    from rich.console import Console

    from toolchain.build import BuildOptions, build_engines as build, unused_bounds
    from toolchain.summary import build_summary

    report = build(BuildOptions(
        strategy=strategy, image_format=image_format, model=model.spec, weights=model.weights, inputs=model.inputs,
        target=target, cloud=cloud, split=split, codec=codec, codec_weights=codec_weights, lossless=lossless,
        train_data=train_data, calib=calib, output=output, holdout_frames=holdout_frames, max_loss=max_loss,
        min_agreement=min_agreement,
        max_relative_error=max_relative_error, output_kinds=None if output_kinds is None else tuple(output_kinds.split(",")),
        codec_epochs=codec_epochs, tar=tar, precision=precision,
        cloud_precision=cloud_precision, strict_int8=strict_int8, early_exit=early_exit, exit_weights=exit_weights, exit_epochs=exit_epochs,
        exit_threshold=exit_threshold, exit_max_loss=exit_max_loss,
    ))
    Console().print(build_summary(report))
    context = click.get_current_context()
    given = {name for name in context.params if context.get_parameter_source(name) == ParameterSource.COMMANDLINE}
    for name in unused_bounds(report.manifest, given):
        click.echo(f"note: no output of this model is a regression, so --{name.replace('_', '-')} is not used", err=True)


@main.command("devices")
@click.option("--markdown", is_flag=True, help="Print the tables as Markdown (the README's copy).")
def devices_command(markdown: bool) -> None:
    """The devices a deployment pairs (edge, cloud) and the backends that build their halves."""
    from toolchain.backends import export_formats
    from toolchain.summary import device_rows, markdown_table, rich_table

    tables = (("Devices", device_rows()), ("Backends", export_formats()))
    if markdown:
        click.echo("\n\n".join(markdown_table(rows) for _, rows in tables))
        return
    from rich.console import Console

    for title, rows in tables:
        Console().print(rich_table(title, rows))


@main.command("prune")
@model_options
@click.option("--split", default=None, help="Split point whose head is pruned [default: the model's].")
@click.option("--criterion", type=click.Choice(["bn-scale", "feature-bias"]), default="bn-scale", show_default=True,
              help="bn-scale: BBNet's network slimming (global); feature-bias: SAFBMP's (per layer).")
@click.option("--ratio", type=float, default=0.4, show_default=True, help="Share of prunable head channels to remove.")
@click.option("--data", default=None, help="Labeled images [default: the bundled model's dataset].")
@click.option("--frames", type=int, default=None, help="Train on the first N training images only.")
@click.option("--sparsity-epochs", default=1, show_default=True, help="L1 sparsity training before (bn-scale).")
@click.option("--finetune-epochs", default=1, show_default=True, help="Distillation fine-tuning after.")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="The pruned model as a torch.export .pt2 (then: build-engines --model it).")
def prune_command(model, split, criterion, ratio, data, frames, sparsity_epochs, finetune_epochs, output) -> None:
    """Remove channels from the edge half; the split tensor and everything after it stay as they are."""
    import copy

    from calibration_data import DEFAULT_CALIBRATION
    from toolchain.data import load_images
    from toolchain.pruning import check_ratio, fine_tune, head_modules, prune, save_pruned, sparsity_train
    from toolchain.train import accuracy, predict

    check_ratio(ratio)
    loaded, data = _load_for_codec(model, data)
    split, spec, shape = _split_or_default(loaded, split), loaded.spec(), loaded.input_shape
    train = load_images(data, "train", spec)
    train = train if frames is None else train.take(frames)
    test = load_images(data, "test", spec)
    train_inputs, test_inputs = train.inputs(), test.inputs()
    calibration = load_images(str(DEFAULT_CALIBRATION), "train", spec).inputs()
    teacher = copy.deepcopy(loaded.module).eval()
    model = copy.deepcopy(loaded.module)
    if criterion == "bn-scale":
        sparsity_train(model, head_modules(model, split, shape), train_inputs, train.labels, sparsity_epochs)
    pruned, report = prune(model, split, shape, criterion, ratio, calibration)
    pruned_accuracy = accuracy(predict(pruned, test_inputs), test.labels)
    fine_tune(pruned, teacher, train_inputs, train.labels, finetune_epochs)
    save_pruned(pruned, shape, output)
    click.echo(f"head: {report.head_params_before:,} → {report.head_params_after:,} params, "
               f"{report.head_macs_before / 1e6:.1f} → {report.head_macs_after / 1e6:.1f} M MACs per frame; "
               f"top-1 {accuracy(predict(teacher, test_inputs), test.labels):.2%} → {pruned_accuracy:.2%} pruned "
               f"→ {accuracy(predict(pruned, test_inputs), test.labels):.2%} fine-tuned; written to {output}")


@main.command("train-exit")
@model_options
@click.option("--split", default=None, help="Split point (default: the model's).")
@click.option("--data", default=None, help="Labeled images [default: the bundled model's dataset].")
@click.option("--epochs", default=2, show_default=True)
@click.option("--frames", type=int, default=None, help="Train on the first N training images only.")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), required=True)
def train_exit_command(model, split, data, epochs, frames, output) -> None:
    """Train an exit branch at the split with the backbone frozen (distillation + labels)."""
    from toolchain.codec_training import prepare_training
    from toolchain.exit_branch import save_exit, train_exit

    loaded, data = _load_for_codec(model, data)
    split = _split_or_default(loaded, split)
    frozen = prepare_training(loaded.module, split, loaded.spec(), data, train_frames=frames, test_frames=0)
    branch = train_exit(frozen.train, int(frozen.train.teacher.shape[1]), epochs=epochs)
    save_exit(output, branch, frozen.point.node, loaded.sha256)
    click.echo(f"exit branch for {loaded.name} at {split} written to {output}")


@main.command("calibrate-exit")
@click.option("--bundle", "bundle_path", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True)
@click.option("--data", default=None, help="Labeled images [default: the bundled Fashion-MNIST held-out slice].")
@click.option("--max-loss", type=POINTS, default=None,
              help="Accuracy points the mix may lose against sending every frame [default: 0.3].")
@click.option("--min-accuracy", type=SHARE, default=None, help="Instead: the overall top-1 to keep (0..1).")
@click.option("--offload-rate", type=SHARE, default=None, help="Instead: the share of frames to send.")
@click.option("--output", type=click.Path(file_okay=False, path_type=Path), default=Path("exit-calibration"),
              show_default=True, help="Where curve.csv goes.")
def calibrate_exit(bundle_path: Path, data: str | None, max_loss: float | None, min_accuracy: float | None,
                   offload_rate: float | None, output: Path) -> None:
    """Measure threshold → offload rate → accuracy on labeled images and store a threshold in the bundle."""
    from calibration_data import DEFAULT_CALIBRATION
    from runtime.bundle import load_bundle
    from runtime.inputs import InputSpec
    from toolchain.data import load_images
    from toolchain.exit_calibration import DEFAULT_EXIT_MAX_LOSS, curve, measure, pick, store_threshold
    from toolchain.results import write_csv

    bundle = load_bundle(bundle_path)
    images = load_images(data or str(DEFAULT_CALIBRATION), "test", InputSpec.from_manifest(
        bundle.manifest["source_model"]["input"]))
    if images.labels is None:
        raise EdgesplitError(f"{data} has no labels: calibrate-exit needs labeled images")
    points = curve(measure(bundle, images.inputs(), images.labels))
    if min_accuracy is not None:
        if max_loss is not None:
            raise EdgesplitError("give one of --max-loss, --min-accuracy, --offload-rate")
        max_loss = 100 * (points[0].accuracy - min_accuracy)
        if max_loss < 0:
            raise EdgesplitError(f"--min-accuracy {min_accuracy:.2%} is above sending every frame "
                                 f"({points[0].accuracy:.2%}): no threshold reaches it")
    if max_loss is None and offload_rate is None:
        max_loss = DEFAULT_EXIT_MAX_LOSS
    chosen = pick(points, max_loss, offload_rate)
    output.mkdir(parents=True, exist_ok=True)
    write_csv(output / "curve.csv", points)
    summary = {"frames": len(images.labels), "offload_rate": chosen.offload_rate, "accuracy": chosen.accuracy,
               "cloud_always_accuracy": points[0].accuracy, "edge_only_accuracy": points[-1].accuracy}
    new_id = store_threshold(bundle, chosen, summary)
    click.echo(f"threshold {chosen.threshold:.4f} nats: {chosen.offload_rate:.1%} of frames sent, accuracy "
               f"{chosen.accuracy:.2%} (cloud-always {points[0].accuracy:.2%}, edge-only {points[-1].accuracy:.2%}) "
               f"on {len(images.labels)} frames; bundle is now {new_id}; curve in {output / 'curve.csv'}")


@main.command("list-splits")
@model_options
def list_splits(model) -> None:
    """Every cut with its size per frame: the single-tensor points, then those crossed by several tensors
    (build-engines --split cuts there too, one codec per tensor)."""
    from rich.console import Console
    from rich.table import Table

    from toolchain.split import candidate_points, several_tensor_points, trace

    loaded = model.load()
    graph = trace(loaded.module, loaded.spec().shape)
    table = Table(title=f"split points of {loaded.name} (input {'x'.join(map(str, loaded.input_shape))})")
    for column in ("#", "node", "module", "tensors", "fp32 bytes", "int8 bytes"):
        table.add_column(column, justify="right" if "bytes" in column or column == "#" else "left", overflow="fold")
    for index, point in enumerate(candidate_points(graph) + several_tensor_points(graph)):
        marker = " (default)" if point.module and point.module == loaded.default_split else ""
        table.add_row(str(index), point.node, (point.module or "") + marker,
                      " + ".join("x".join(map(str, shape)) for shape in point.shapes),
                      f"{point.fp32_bytes:,}", f"{point.int8_bytes:,}")
    Console().print(table)


@main.command("verify-bundle")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("--trust", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Ed25519 public key (PEM): the manifest must be signed by it (sign-bundle).")
def verify_bundle(path: Path, trust: Path | None) -> None:
    """Check a bundle directory or .tar: signature (with --trust), manifest, hashes, bundle id, artefact
    inputs/outputs and shapes."""
    from runtime.bundle import check_artefact_io, open_bundle

    from runtime.bundle import ADAPTIVE
    from toolchain.planning import format_rate

    bundle = open_bundle(path, trust)
    check_artefact_io(bundle)
    signed = f", signed by {trust}" if trust else ""
    if bundle.strategy == ADAPTIVE:
        click.echo(f"ok: bundle {bundle.bundle_id} ({bundle.manifest['source_model']['name']}, adaptive: "
                   f"{len(bundle.points)} operating points), {len(bundle.manifest['files'])} files verified{signed}")
        for rate, index in bundle.table:
            click.echo(f"  from {format_rate(rate) if rate else '0':>10}: point {index}, {bundle.point_name(index)} "
                       f"({', '.join(bundle.points[index].roles)})")
        return
    devices = bundle.manifest["deployment"]
    halves = ", ".join(f"{role} {devices[role]['name']}" for role in bundle.roles)
    picture = f" {bundle.wire.picture or 'raw'}" if bundle.strategy == "cloud-only" else ""
    click.echo(f"ok: bundle {bundle.bundle_id} ({bundle.manifest['source_model']['name']}, {bundle.strategy}{picture}: "
               f"{halves}), {len(bundle.manifest['files'])} files verified{signed}")


@main.command("compose-bundle")
@click.option("--at", "plan", nargs=2, multiple=True, required=True, metavar="RATE BUNDLE",
              help="From this uplink rate up (tc units, or 0), run this bundle; repeat for each point.")
@click.option("--output", type=click.Path(path_type=Path), required=True, help="The adaptive bundle's folder.")
@click.option("--trust", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Ed25519 public key (PEM) each given bundle must be signed by.")
def compose_bundle_command(plan, output: Path, trust: Path | None) -> None:
    """One adaptive bundle from several bundles of one model (its operating points) and the table of which runs
    at which uplink rate: `edgesplit edge` switches between them as its uplink changes, on one connection."""
    from toolchain.adaptive import compose

    rows = [(_rate_or_zero(rate), Path(path)) for rate, path in plan]
    manifest = compose(rows, output, trust)
    click.echo(f"wrote {output}: bundle {manifest['bundle_id']}, {len(manifest['points'])} operating points, "
               f"{len(manifest['files'])} files")


@main.command("sign-bundle")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("--key", "key", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Ed25519 private key (PEM): openssl genpkey -algorithm ed25519 -out signing.pem")
def sign_bundle_command(path: Path, key: Path) -> None:
    """Sign a bundle (directory or .tar) so that verify-bundle/serve/edge --trust PUBKEY accept it."""
    from toolchain.bundle import sign_bundle

    sign_bundle(path, key)
    click.echo(f"signed {path}: give servers and edges the public key (openssl pkey -in {key} -pubout)")


@main.command("export-triton")
@click.option("--bundle", "bundle_path", required=True, type=click.Path(exists=True, path_type=Path),
              help="Bundle directory or .tar whose cloud side Triton serves.")
@click.option("--output", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="The model repository to write (tritonserver --model-repository).")
@click.option("--name", default="edgesplit", show_default=True,
              help="The ensemble edges call; its models are NAME_decode and NAME_tail.")
@click.option("--instances", default=1, show_default=True, help="Tail instances (Triton instance_group count).")
@click.option("--max-batch", default=32, show_default=True, help="Largest dynamic batch.")
@click.option("--max-queue-delay-us", default=2000, show_default=True,
              help="How long a request may wait for others to batch with.")
@click.option("--tail", type=click.Choice(["native", "python"]), default="native", show_default=True,
              help="native: Triton's onnxruntime / tensorrt backend runs the cloud artefact; python: ONNX Runtime "
                   "inside a Python-backend model (for Triton builds without those backends).")
@click.option("--threads", type=int, default=None, help="ONNX Runtime threads per Python tail instance.")
@click.option("--trust", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Ed25519 public key: the bundle must be signed by it, here and when Triton loads the models.")
def export_triton_command(bundle_path, output, name, instances, max_batch, max_queue_delay_us, tail, threads,
                          trust) -> None:
    """Write a Triton model repository serving a bundle's cloud side: decode → tail as an ensemble."""
    from toolchain.triton import RepositoryOptions, export_repository, server_command

    names = export_repository(RepositoryOptions(bundle_path, output, name, instances, max_batch, max_queue_delay_us,
                                                tail, threads, trust))
    click.echo(f"wrote {output}: ensemble {names['ensemble']} ({names['decode']} → {names['tail']}) for bundle "
               f"{names['bundle_id']}; serve it with {server_command(output)}, and point edges at "
               f"grpc://HOST:8001/{names['ensemble']}")


def _load_for_codec(model: ModelArgs, data):
    """The model (its input spec known) and the labeled data a codec trains on."""
    from toolchain.errors import ModelLoadError

    loaded = model.load()
    loaded.spec()
    data = data or loaded.dataset
    if data is None:
        raise ModelLoadError("give --data: labeled images to train on")
    return loaded, data


def _split_or_default(loaded, split):
    from toolchain.split import default_point, trace

    return split or loaded.default_split or default_point(trace(loaded.module, loaded.spec().shape)).node


CODEC_TRAINING_OPTIONS = [
    click.option("--split", default=None, help="Split point [default: the model's default]."),
    click.option("--data", default=None, help="Labeled images [default: the bundled model's dataset]."),
    click.option("--train-frames", type=int, default=None, help="Use the first N training images [default: all]."),
    click.option("--epochs", default=2, show_default=True),
    click.option("--seed", default=0, show_default=True),
]

codec_training_options = option_group(CODEC_TRAINING_OPTIONS)


@main.command("train-codec")
@model_options
@codec_training_options
@click.option("--codec", "codec_spec", required=True, help="Learned codec spec, e.g. bbnet:c=8,s=2,bits=4.")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Checkpoint [default: codecs/<model>-<split>-<codec>.pt].")
@click.option("--resume", is_flag=True, help="Continue from --output's last finished epoch.")
def train_codec_command(model, split, data, train_frames, epochs, seed,
                        codec_spec, output, resume) -> None:
    """Train a learned codec at a split with the backbone frozen (KD + CE), checkpointing each epoch."""
    import torch

    from toolchain.codec_training import prepare_training, record_agreement, score_codec, train_codec
    from toolchain.codecs import make_codec, parse_codec_spec

    loaded, data = _load_for_codec(model, data)
    split = _split_or_default(loaded, split)
    spec = parse_codec_spec(codec_spec)
    frozen = prepare_training(loaded.module, split, loaded.spec(), data, train_frames)
    torch.manual_seed(seed)  # the codec's initial weights are part of what the seed fixes
    codec = make_codec(spec, frozen.point.shape)
    output = output or Path("codecs") / f"{loaded.name}-{frozen.point.node}-{str(spec).replace(':', '_').replace(',', '_')}.pt"
    output.parent.mkdir(parents=True, exist_ok=True)
    facts = {"spec": str(spec), "split": frozen.point.node, "model_sha256": loaded.sha256}
    seconds = train_codec(codec, frozen.tail, frozen.train, epochs, seed, checkpoint=output,
                          checkpoint_facts=facts, resume=resume)
    score = score_codec(codec, frozen.tail, frozen.test)
    record_agreement(output, score.agreement)
    bits = codec.wire_format().packed_bytes * 8
    accuracy = "" if score.accuracy is None else \
        f"test accuracy {score.accuracy:.2%} ({-score.loss_points:+.2f} pt), "
    click.echo(f"{spec} at {frozen.point.node}: {bits} bits per frame "
               f"({32 * frozen.point.elements / bits:,.0f}x vs fp32), {accuracy}"
               f"agreement {score.agreement:.2%}, trained in {seconds:.0f} s; wrote {output}")


def _int_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a comma-separated list of integers") from None


def _float_list(text: str) -> list[float]:
    try:
        values = [float(part) for part in text.split(",")]
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a comma-separated list of numbers") from None
    if not all(0 <= value < float("inf") for value in values):
        raise click.BadParameter(f"{text!r}: each rate must be a number >= 0")
    return values


@main.command("search-codec")
@model_options
@codec_training_options
@click.option("--family", default="bbnet", show_default=True, help="A learned codec (one of toolchain/codecs/).")
@click.option("--channels", default="16,8,4", show_default=True, help="Candidate c' values.")
@click.option("--strides", default="4", show_default=True, help="Candidate strides s.")
@click.option("--bits", default="8,4,2", show_default=True, help="Candidate bits n.")
@click.option("--rates", default="0", show_default=True,
              help="Candidate rate weights (loss per bit per frame; 0: trained for accuracy alone). With a rate the "
                   "codes are priced by a learned prior and the rans stage sends them, e.g. 0,0.02,0.05.")
@click.option("--budget", default=1.0, show_default=True, help="Accuracy points the codec may lose.")
@click.option("--output", type=click.Path(file_okay=False, path_type=Path), default=Path("codec-search"),
              show_default=True, help="Folder for search.csv, search.png and best.pt.")
def search_codec_command(model, split, data, train_frames, epochs, seed,
                         family, channels, strides, bits, rates, budget, output) -> None:
    """BBNet Algorithm 1 (train phase): the most compressed codec within an accuracy budget."""
    from toolchain.codec_search import grid, plot_rows, search
    from toolchain.codecs import LEARNED
    from toolchain.results import write_csv
    from toolchain.codec_training import prepare_training, save_checkpoint

    # the family and the lists are checked before the model and its data are loaded
    if family not in LEARNED:
        raise click.BadParameter(f"{family!r} is not a learned codec; learned codecs: {', '.join(sorted(LEARNED))}",
                                 param_hint="'--family'")
    candidates = (_int_list(channels), _int_list(strides), _int_list(bits), _float_list(rates))
    loaded, data = _load_for_codec(model, data)
    split = _split_or_default(loaded, split)
    frozen = prepare_training(loaded.module, split, loaded.spec(), data, train_frames)
    specs = grid(family, *candidates)
    rows, best = search(specs, frozen.point.shape, frozen.tail, frozen.train, frozen.test, budget, epochs, seed)
    output.mkdir(parents=True, exist_ok=True)
    write_csv(output / "search.csv", rows)
    plot_rows(rows, output / "search.png", f"{family} at {frozen.point.node}, budget {budget} pt")
    for row in rows:
        click.echo(f"{row.codec:26s} {row.bytes_per_frame:9.1f} B/frame ({row.lossless}) {row.compression:9.1f}x "
                   f"loss {row.loss_points:+.2f} pt")
    if best is None:
        raise EdgesplitError(f"no configuration stays within {budget} pt; see {output / 'search.csv'}")
    agreement, lossless = next((row.agreement, row.lossless) for row in rows if row.codec == str(best.spec()))
    save_checkpoint(output / "best.pt", best, str(best.spec()), frozen.point.node, loaded.sha256, epoch=epochs,
                    agreement=agreement)
    click.echo(f"best within {budget} pt: {best.spec()}; wrote {output / 'best.pt'} "
               f"(use: build-engines --split {frozen.point.node} --codec {best.spec()} "
               f"--codec-weights {output / 'best.pt'} --lossless {lossless})")


@main.command("profile")
@model_options
@click.option("--target", default=DEFAULT_EDGE, show_default=True,
              help=f"Edge device whose backend times the edge half: {', '.join(device_names('edge'))}.")
@click.option("--cloud", default=None,
              help="Cloud device whose backend times the cloud half [default: the edge device's default cloud].")
@click.option("--splits", default=None,
              help="Comma-separated split points [default: the end of every top-level module].")
@click.option("--codec", "codecs", multiple=True, default=("int8",), show_default=True,
              help="Codec spec to profile at every split; repeat for several (--codec int8 --codec affine:bits=4).")
@click.option("--lossless", type=click.Choice(list(LOSSLESS)), default="none", show_default=True)
@click.option("--calib", default=None, help="Calibration/held-out images [default: the bundled Fashion-MNIST slice].")
@HOLDOUT_FRAMES
@click.option("--frames", default=200, show_default=True, help="Frames timed per half, one at a time.")
@click.option("--threads", type=int, default=None, help="Backend threads [default: the backend's].")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Profile JSON [default: profile-<target>.json].")
def profile_command(model, target, cloud, splits, codecs, lossless, calib, holdout_frames, frames, threads,
                    output) -> None:
    """Time every candidate split's edge and cloud half on this machine with the target's backends,
    and the edge-only and cloud-only baselines; write a device profile for `edgesplit plan`."""
    import json

    from toolchain.profile import ProfileOptions, profile_target

    profile = profile_target(ProfileOptions(
        target=target, cloud=cloud, model=model.spec, weights=model.weights, inputs=model.inputs,
        splits=tuple(s.strip() for s in splits.split(",")) if splits else None,
        codecs=codecs, lossless=lossless, calib=calib, holdout_frames=holdout_frames, frames=frames,
        threads=threads))
    output = output or Path(f"profile-{profile['target']}.json")
    output.write_text(json.dumps(profile, indent=1) + "\n")
    for candidate in profile["candidates"]:
        click.echo(f"{candidate['split']:>10} {candidate['codec']:<14} {candidate['frame_bytes']:>9,.0f} B  "
                   f"edge {candidate['edge']['ms']:.3f} ms  cloud {candidate['cloud']['ms']:.3f} ms")
    click.echo(f"edge-only {profile['edge_only']['ms']:.3f} ms, cloud-only compute {profile['cloud_only']['ms']:.3f} ms;"
               f" wrote {output}")


def _rate_or_zero(text: str) -> float:
    """A table's rate: tc units (20kbit, 1mbit), or 0 (with or without a unit)."""
    import re

    return 0.0 if re.fullmatch(r"\s*0*\.?0+\s*[a-zA-Z]*\s*", text) else _rates(text, "--at")[0]


def _rates(text: str, option: str) -> list[float]:
    from runtime.link import parse_rate

    try:
        return [parse_rate(item) for item in text.split(",")]
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint=option) from None


@main.command("plan")
@click.option("--profile-edge", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True)
@click.option("--profile-cloud", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True)
@click.option("--bandwidth", default="100kbit,1mbit,10mbit", show_default=True,
              help="Comma-separated uplink rates in tc units (kbit, mbit; kbps means kilobytes/s).")
@click.option("--max-loss", type=POINTS, default=1.0, show_default=True, help="Accuracy points an option may lose.")
@click.option("--rtt", default="0ms", show_default=True, help="Round trip added to every upload (e.g. 20ms).")
@click.option("--edge-slowdown", default=1.0, show_default=True,
              help="What-if: the edge is this many times slower than the device its profile was measured on.")
@click.option("--bundle", "bundle_path", type=click.Path(exists=True, path_type=Path), default=None,
              help="Refuse profiles that describe another model than this bundle's.")
@click.option("--output", type=click.Path(file_okay=False, path_type=Path), default=Path("plan"), show_default=True,
              help="Directory for plan.csv, plan.json and plan.png.")
def plan_command(profile_edge, profile_cloud, bandwidth, max_loss, rtt, edge_slowdown, bundle_path, output) -> None:
    """Pick the split with the least edge + upload + cloud time per bandwidth (BBNet Algorithm 1)."""
    import json

    from rich.console import Console
    from rich.table import Table

    from runtime.bundle import open_bundle
    from runtime.link import parse_duration
    from toolchain.planning import check_profiles, draw_plan, format_rate, load_profile, plan, plan_rows
    from toolchain.results import write_csv

    edge, cloud = load_profile(profile_edge), load_profile(profile_cloud)
    check_profiles(edge, cloud, open_bundle(bundle_path).manifest if bundle_path else None)
    decisions = plan(edge, cloud, _rates(bandwidth, "--bandwidth"), max_loss, 1000 * parse_duration(rtt), edge_slowdown)
    console = Console()
    for decision in decisions:
        slower = f" x{edge_slowdown:g} slower" if edge_slowdown != 1 else ""
        table = Table(title=f"{format_rate(decision.bandwidth)}: edge {edge['devices']['edge']} "
                            f"({edge['device']['cpu']}{slower}), cloud {cloud['devices']['cloud']} "
                            f"({cloud['device']['cpu']})")
        for column in ("option", "bytes", "TM ms", "TU ms", "TC ms", "total ms", "loss pt"):
            table.add_column(column, justify="left" if column == "option" else "right")
        for option in decision.options:
            chosen = option == decision.choice
            table.add_row(("→ " if chosen else "  ") + option.name, f"{option.frame_bytes:,.0f}",
                          f"{option.edge_ms:.2f}", f"{option.upload_ms:.2f}", f"{option.cloud_ms:.2f}",
                          f"{option.total_ms:.2f}", "?" if option.loss_points is None else f"{option.loss_points:.2f}",
                          style="bold green" if chosen else None)
        console.print(table)
        versus_cloud = "" if decision.speedup_vs_cloud_only is None else \
            f"{decision.speedup_vs_cloud_only:.2f}x vs cloud-only, "
        console.print(f"choice: {decision.choice.name}, {decision.choice.total_ms:.2f} ms per frame; "
                      f"{versus_cloud}{decision.speedup_vs_edge_only:.2f}x vs edge-only\n")
    output.mkdir(parents=True, exist_ok=True)
    rows = plan_rows(decisions)
    write_csv(output / "plan.csv", rows)
    choices = [{"bandwidth_bps": d.bandwidth, "choice": d.choice.name, "total_ms": d.choice.total_ms,
                "speedup_vs_cloud_only": d.speedup_vs_cloud_only, "speedup_vs_edge_only": d.speedup_vs_edge_only}
               for d in decisions]
    summary = {"edge_profile": str(profile_edge), "cloud_profile": str(profile_cloud), "max_loss": max_loss,
               "rtt": rtt, "edge_slowdown": edge_slowdown, "choices": choices}
    (output / "plan.json").write_text(json.dumps(summary, indent=1) + "\n")
    draw_plan(decisions, output / "plan.png")
    console.print(f"wrote {output / 'plan.csv'}, plan.json and plan.png")


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(part) for part in text.split(","))
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a comma-separated list of numbers") from None


@main.command("optimize")
@model_options
@click.option("--train-data", default=None,
              help="Labeled images the pruned heads, codecs and exit branches train on [default: the bundled "
                   "model's dataset].")
@click.option("--calib", default=None, help="Calibration/held-out images [default: the bundled Fashion-MNIST slice].")
@click.option("--target", default=DEFAULT_EDGE, show_default=True,
              help=f"Edge device: {', '.join(device_names('edge'))}.")
@click.option("--cloud", default=None, help="Cloud device [default: the edge device's default cloud].")
@click.option("--uplink", default="20kbit,100kbit,1mbit", show_default=True,
              help="Comma-separated uplink rates in tc units; the winner is picked (and built) per rate.")
@click.option("--max-loss", default=1.0, show_default=True,
              help="Accuracy points a deployment may lose against the float model, exits included.")
@click.option("--budget", default="30min", show_default=True,
              help="Time for the whole run (e.g. 90s, 20min, 1h): no new piece is started past what the builds "
                   "of the winners need.")
@click.option("--splits", default=None, help="Comma-separated split points [default: the end of every top-level "
                                             "module].")
@click.option("--prune", "ratios", default="0,0.3,0.5", show_default=True,
              help="Head pruning ratios to try (0: unpruned).")
@click.option("--criterion", type=click.Choice(["feature-bias", "bn-scale"]), default="feature-bias",
              show_default=True, help="Pruning criterion: SAFBMP's feature bias or BBNet's BN scale.")
@click.option("--codec", "codecs", multiple=True, default=None,
              help="Codec spec to try at every split; repeat for several [default: int8 and two 4-bit BBNet "
                   "codecs sized to each split].")
@click.option("--no-exit", is_flag=True, help="Try no early-exit branch.")
@click.option("--train-frames", type=click.IntRange(min=1), default=20_000, show_default=True,
              help="Training images for fine-tuning, codecs and exits.")
@click.option("--epochs", type=click.IntRange(min=0), default=2, show_default=True,
              help="Epochs of fine-tuning, codec and exit training each.")
@click.option("--holdout-frames", type=click.IntRange(min=20), default=2000, show_default=True,
              help="Labeled held-out images, drawn at random: half pick exit thresholds, half score every point.")
@click.option("--frames", type=click.IntRange(min=1), default=100, show_default=True,
              help="Frames timed per point, one at a time.")
@click.option("--rtt", default="0ms", show_default=True, help="Round trip added to every upload (e.g. 20ms).")
@click.option("--edge-factor", type=float, default=None,
              help="How many times slower than this machine the edge device is, measured elsewhere (the testbed's "
                   "calibration) [default: timed against the device's speed reference in targets/].")
@click.option("--profile-edge", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="`edgesplit profile` of this model run on the edge device: its whole-model time over the same "
                   "model's here sets the factor.")
@click.option("--output", type=click.Path(file_okay=False, path_type=Path), default=Path("optimized"),
              show_default=True, help="Folder for the report and the winners' bundles.")
@click.option("--cache", "cache_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Trained pieces and measured points, kept by what they were made from [default: OUTPUT/cache].")
@click.option("--no-build", is_flag=True, help="Report only: build no winner.")
def optimize_command(model, train_data, calib, target, cloud, uplink, max_loss, budget, splits, ratios, criterion,
                     codecs, no_exit, train_frames, epochs, holdout_frames, frames, rtt, edge_factor,
                     profile_edge, output, cache_dir, no_build) -> None:
    """From a model and a link to the deployment that wins: pruned heads x splits x codecs x exits, and both
    baselines, measured, predicted per uplink rate, and the winners built."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from toolchain.optimize import OptimizeOptions, optimize
    from toolchain.optimize_report import write_report

    options = OptimizeOptions(
        model=model.spec, weights=model.weights, inputs=model.inputs, train_data=train_data, calib=calib,
        target=target, cloud=cloud, uplinks=tuple(_rates(uplink, "--uplink")), max_loss=max_loss,
        budget_s=_duration(budget, "--budget"), splits=tuple(s.strip() for s in splits.split(",")) if splits else None,
        ratios=_floats(ratios), criterion=criterion, codecs=tuple(codecs) or None, early_exit=not no_exit,
        train_frames=train_frames, epochs=epochs, holdout_frames=holdout_frames, frames=frames,
        rtt_ms=_duration(rtt, "--rtt") * 1000, edge_factor=edge_factor,
        profile_edge=profile_edge, output=output, cache_dir=cache_dir, build=not no_build)
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, transient=True) as progress:  # gone when done: what is left is the outcome
        result = optimize(options, progress)
    summary = write_report(result, output)
    for choice in summary["choices"]:
        click.echo(f"{choice['uplink']:>12}: {choice['choice']} — {choice['s_per_100']:.2f} s per 100 frames, "
                   f"{choice['speedup_vs_better_baseline']:.2f}x the better baseline, "
                   f"{choice['loss_points']:+.2f} pt; {choice['bundle']}")
    if summary["adaptive_bundle"]:
        click.echo(f"every winner in one adaptive bundle, switched by the uplink: {summary['adaptive_bundle']}")
    click.echo(f"wrote {output / 'REPORT.md'} ({summary['points']} points in {summary['seconds']:.0f} s)")


def _duration(text: str, option: str) -> float:
    from runtime.link import parse_duration

    try:
        return parse_duration(text)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint=option) from None


@main.command("estimate-rate")
@click.option("--cameras", type=int, required=True, help="Edges (cameras) sending to one cloud.")
@click.option("--fps", type=float, required=True, help="Frames per second per camera.")
@click.option("--offload-rate", type=float, default=None,
              help="Share of frames sent to the cloud (from calibrate-exit) [default: 1].")
@click.option("--bundle", "bundle_path", type=click.Path(exists=True, path_type=Path), default=None,
              help="Bundle whose features frame is sent (its measured mean payload).")
@click.option("--payload-bytes", type=float, default=None, help="Instead of --bundle: payload bytes per frame.")
@click.option("--link", default=None, help="Uplink capacity at the cloud (e.g. 100mbit): how many cameras it carries.")
@click.option("--people-mean", type=float, default=None,
              help="Detection variant (seed 001): mean people per camera; only their cells are sent.")
@click.option("--people-std", type=float, default=0.0, show_default=True, help="Standard deviation of people per camera.")
@click.option("--cells-per-person", type=float, default=1.0, show_default=True)
@click.option("--cloud-cell-ratio", type=float, default=0.3, show_default=True,
              help="Share r of the cells with people that the edge cannot resolve and sends.")
@click.option("--grid", type=int, default=7, show_default=True, help="Cells per side (YOLO's 7x7).")
@click.option("--quantile", type=float, default=0.99, show_default=True,
              help="Detection variant: provision the aggregate for this quantile of the people count.")
def estimate_rate_command(cameras, fps, offload_rate, bundle_path, payload_bytes, link, people_mean, people_std,
                          cells_per_person, cloud_cell_ratio, grid, quantile) -> None:
    """Uplink rate at the cloud for n cameras, per camera, and the cameras a link carries (seed 001)."""
    from runtime.bundle import open_bundle
    from runtime.link import parse_rate
    from runtime.protocol import frame_bytes
    from toolchain.errors import EdgesplitError
    from toolchain.planning import CrowdModel, bundle_payload, estimate_crowd_rate, estimate_rate, format_rate

    if (bundle_path is None) == (payload_bytes is None):
        raise EdgesplitError("give the features' size: --bundle or --payload-bytes (one of them)")
    if bundle_path is not None:
        payload_bytes = bundle_payload(open_bundle(bundle_path).manifest)
    link_bps = parse_rate(link) if link else None
    notes = []
    if people_mean is None:
        size = frame_bytes(payload_bytes)
        estimate = estimate_rate(cameras, fps, 1.0 if offload_rate is None else offload_rate, size, link_bps)
        click.echo(f"features frame: {size:,.0f} B per frame ({payload_bytes:,.0f} payload + header), "
                   f"{1.0 if offload_rate is None else offload_rate:.0%} of {fps:g} fps sent")
    else:
        if offload_rate is not None:
            raise EdgesplitError("the detection variant sends cells, not frames: give --cloud-cell-ratio, "
                                 "not --offload-rate")
        model = CrowdModel(people_mean, people_std, cells_per_person, cloud_cell_ratio, grid, quantile)
        estimate, notes = estimate_crowd_rate(cameras, fps, model, payload_bytes, link_bps)
        click.echo(f"cells: {grid}x{grid} of {payload_bytes / grid ** 2:,.1f} B each; people per camera "
                   f"{people_mean:g} ± {people_std:g}, {cells_per_person:g} cell(s) each, r = {cloud_cell_ratio:g}")
    click.echo(f"{format_rate(estimate.per_camera_bps)} per camera; "
               f"{format_rate(estimate.aggregate_bps)} at the cloud for {cameras} cameras")
    if people_mean is not None:
        click.echo(f"provision {format_rate(estimate.provisioned_bps)} for the {quantile:.0%} quantile")
    if link_bps is not None:
        click.echo(f"a link of {format_rate(link_bps)} carries {estimate.max_cameras} cameras "
                   f"({estimate.provisioned_bps / link_bps:.0%} used by {cameras})")
    for note in notes:
        click.echo(f"note: {note}")
