"""Model specs → nn.Module: a bundled name, a .pt2 torch.export archive, or package.module:factory."""

from __future__ import annotations

import hashlib
import importlib
import operator
import os
import pickle
import sys
import zipfile
from pathlib import Path
from typing import NamedTuple

import torch
from torch import fx, nn

from runtime.inputs import InputSpec
from toolchain.errors import ModelLoadError
from toolchain.zoo import DEFAULT_MODEL, ZOO, Shipped, ZooModel


class LoadedModel(NamedTuple):
    module: nn.Module  # with the declared input normalization folded in, if any
    name: str
    input_spec: InputSpec | None  # None: the model does not say its input shape, and --input-shape was not given
    default_split: str | None
    sha256: str
    dataset: str | None = None  # labeled images the bundled model was trained on
    weights: str = ""  # where the weights came from
    shipped: Shipped | None = None  # a bundled model's trained codec and exit branch, when its own weights are used

    @property
    def input_shape(self) -> tuple[int, int, int] | None:
        return None if self.input_spec is None else self.input_spec.shape

    def spec(self) -> InputSpec:
        """The input spec, or a one-line refusal when the input shape is unknown."""
        if self.input_spec is None:
            raise ModelLoadError(f"the input shape of {self.name} is unknown: give --input-shape C,H,W")
        return self.input_spec


class InputOptions(NamedTuple):
    """How the user describes the model's input where the model cannot say it."""

    shape: tuple[int, int, int] | None = None
    resize: str | None = None  # default: the bundled model's, else "none"
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None


def zoo_entry(name: str) -> ZooModel:
    if name not in ZOO:
        raise ModelLoadError(f"unknown bundled model {name!r}; bundled: {', '.join(sorted(ZOO))}")
    return ZOO[name]


def state_dict_sha256(module: nn.Module) -> str:
    """Content hash of a model's parameters and buffers, independent of the file they came from."""
    digest = hashlib.sha256()
    for key, tensor in sorted(module.state_dict().items()):
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def parse_input_shape(text: str) -> tuple[int, int, int]:
    try:
        shape = tuple(int(part) for part in text.split(","))
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) <= 0:
        raise ModelLoadError(f"--input-shape must be C,H,W with positive integers, got {text!r}")
    return shape


def _load_state_dict(module: nn.Module, weights: Path) -> None:
    if not weights.is_file():
        raise ModelLoadError(f"weights file {weights} {'is not a regular file' if weights.exists() else 'does not exist'}")
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as error:
        expected = "; expected torch.save(model.state_dict(), path)"
        if not zipfile.is_zipfile(weights):
            raise ModelLoadError(f"{weights} is not a torch.save file (not a zip archive){expected}") from error
        if isinstance(error, pickle.UnpicklingError):  # torch's advice, weights_only=False, is not taken here
            raise ModelLoadError(f"{weights} holds objects other than tensors{expected}") from error
        raise ModelLoadError(f"cannot read {weights} as a torch.save state_dict "
                             f"({type(error).__name__}: {str(error).splitlines()[0][:200]})") from error
    if not isinstance(state, dict):
        raise ModelLoadError(f"{weights} holds a {type(state).__name__}, not a state_dict")
    expected = module.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    misshapen = sorted(key for key in set(expected) & set(state)
                       if getattr(state[key], "shape", None) != expected[key].shape)
    if missing or unexpected or misshapen:
        raise ModelLoadError(f"weights {weights} do not fit {type(module).__name__}: " + "; ".join(
            f"{len(keys)} {what} ({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})"
            for what, keys in (("missing", missing), ("unexpected", unexpected), ("of another shape", misshapen))
            if keys))
    module.load_state_dict(state)


def _load_factory(spec: str) -> nn.Module:
    module_name, _, attribute = spec.partition(":")
    if os.getcwd() not in sys.path:  # a console script does not look in the current folder; `python -m` does
        sys.path.insert(0, os.getcwd())
    try:
        factory = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise ModelLoadError(f"cannot import {spec!r} (from the current folder or the installed packages): "
                             f"{error}") from error
    except Exception as error:  # the module itself failed while it was imported
        raise ModelLoadError(f"importing {module_name} raised {type(error).__name__}: {error}") from error
    try:
        model = factory()
    except Exception as error:
        raise ModelLoadError(f"{spec}() raised {type(error).__name__}: {error}; expected it to return the model "
                             "called with no arguments") from error
    if not isinstance(model, nn.Module):
        raise ModelLoadError(f"{spec} returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def _load_exported(path: Path) -> tuple[nn.Module, tuple[int, int, int] | None]:
    problem = _not_an_archive(path)
    if problem:  # said before torch reads it: torch logs a traceback of its own before raising
        raise ModelLoadError(f"{path} {problem}; expected a file written by torch.export.save")
    try:
        program = torch.export.load(path)
    except Exception as error:
        raise ModelLoadError(f"cannot load {path} as a torch.export archive: {error}") from error
    batch = _static_batch(program)
    if batch is not None:
        raise ModelLoadError(
            f"{path} was exported for batches of exactly {batch} image(s); edgesplit runs it on batches of any size: "
            "export it with a dynamic batch dimension from an example batch of 2, e.g. torch.export.export(model, "
            "(torch.zeros(2, C, H, W),), dynamic_shapes=({0: torch.export.Dim('batch')},))")
    args = program.example_inputs[0] if program.example_inputs else ()
    shape = tuple(args[0].shape[1:]) if len(args) == 1 and args[0].dim() == 4 else None
    unlifted = program.module()
    # the unlifted module refuses .eval(); a plain GraphModule over the same graph does not
    return torch.fx.GraphModule(unlifted, unlifted.graph), shape


def _not_an_archive(path: Path) -> str | None:
    if not path.is_file():
        return "does not exist"
    if not zipfile.is_zipfile(path):
        return "is not a .pt2 archive (not a zip file)"
    with zipfile.ZipFile(path) as archive:
        if not any(name.endswith("/archive_format") for name in archive.namelist()):
            return "is a zip file but no torch.export archive (a torch.save checkpoint? give it as --weights)"
    return None


def _static_batch(program) -> int | None:
    """The batch size a program was specialized to, None when its first input's batch dimension is dynamic."""
    user_inputs = set(program.graph_signature.user_inputs)
    image = next((node for node in program.graph.nodes if node.op == "placeholder" and node.name in user_inputs), None)
    value = None if image is None else image.meta.get("val")
    if value is None or value.dim() == 0 or not isinstance(value.shape[0], int):
        return None
    return value.shape[0]


def with_normalization(module: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]) -> fx.GraphModule:
    """The model with (x - mean) / std inserted right after its input: node and module names are kept, so
    split points are named as before, and the normalization travels inside the edge half."""
    try:
        graph_module = module if isinstance(module, fx.GraphModule) else fx.symbolic_trace(module)
    except Exception as error:
        raise ModelLoadError(f"folding --mean/--std into {type(module).__name__} needs a torch.fx trace: {error}") \
            from error
    graph = graph_module.graph
    image = next(node for node in graph.nodes if node.op == "placeholder")
    graph_module.register_buffer("input_mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
    graph_module.register_buffer("input_std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
    with graph.inserting_after(image):
        mean_node = graph.get_attr("input_mean")
    with graph.inserting_after(mean_node):
        std_node = graph.get_attr("input_std")
    with graph.inserting_after(std_node):
        centred = graph.call_function(operator.sub, (image, mean_node))
    with graph.inserting_after(centred):
        normalized = graph.call_function(operator.truediv, (centred, std_node))
    image.replace_all_uses_with(normalized, delete_user_cb=lambda user: user is not centred)
    graph_module.recompile()
    return graph_module


class _Source(NamedTuple):
    module: nn.Module
    name: str
    shape: tuple[int, int, int] | None
    weights: str  # where the weights came from, said in the build summary
    zoo: ZooModel | None = None


def _source(spec: str, weights: Path | None) -> _Source:
    if spec in ZOO:
        entry = ZOO[spec]
        if not entry.weights.exists():
            raise ModelLoadError(f"bundled weights {entry.weights} are missing: run `edgesplit train-model --model {spec}`")
        module = entry.factory()
        _load_state_dict(module, weights or entry.weights)
        return _Source(module, spec, entry.input_shape, str(weights or entry.weights), entry)
    if spec.endswith(".pt2"):
        if weights is not None:
            raise ModelLoadError("--weights does not apply to a .pt2 archive: it carries its own weights")
        module, shape = _load_exported(Path(spec))
        return _Source(module, Path(spec).stem, shape, f"{spec} (torch.export archive)")
    if ":" in spec:
        module = _load_factory(spec)
        if weights is not None:
            _load_state_dict(module, weights)
        origin = str(weights) if weights else "none given: the factory's own initialization (random?)"
        return _Source(module, spec.rpartition(":")[2], None, origin)
    raise ModelLoadError(f"unknown model {spec!r}: give a bundled name ({', '.join(sorted(ZOO))}), "
                         "a .pt2 file, or package.module:factory")


def load_model(spec: str | None, weights: Path | None = None, inputs: InputOptions = InputOptions()) -> LoadedModel:
    source = _source(spec or DEFAULT_MODEL, weights)
    module, zoo = source.module, source.zoo
    shape = inputs.shape or source.shape
    resize = inputs.resize or (zoo.resize if zoo else "none")
    input_spec = None if shape is None else InputSpec(*shape, resize, inputs.mean, inputs.std).checked()
    if inputs.mean is not None or inputs.std is not None:
        if input_spec is None:
            raise ModelLoadError(f"--mean/--std need the input shape of {source.name}: give --input-shape C,H,W")
        module = with_normalization(module, input_spec.mean, input_spec.std)
    lazy = [name for name, p in module.named_parameters() if isinstance(p, nn.parameter.UninitializedParameter)]
    if lazy:
        raise ModelLoadError(f"{spec} has parameters not yet made ({', '.join(lazy[:3])}: a lazy module such "
                             "as LazyLinear): run one forward pass before returning the model, or give --weights")
    module.eval()
    # the shipped checkpoints belong to the bundled weights as they are (their sha256 is checked when loaded)
    as_shipped = zoo is not None and weights is None and inputs.mean is None and inputs.std is None
    return LoadedModel(module, source.name, input_spec, zoo and zoo.default_split, state_dict_sha256(module),
                       zoo and zoo.dataset, source.weights, zoo.shipped if as_shipped else None)
