"""How a bundle is judged against its float model, output by output, and the bounds it must meet.

Classification outputs are compared by top-1 agreement (and accuracy where labels exist),
regression outputs (boxes, say) by relative error: ||deployed - float|| / ||float||. A build
fails on the first bound it misses, and says which.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from runtime.local import batch_size_for
from runtime.scores import PixelScores
from toolchain import cache
from toolchain.errors import EdgesplitError
from toolchain.load import LoadedModel, state_dict_sha256
from toolchain.planning import loss_points

KINDS = ("class", "regression")
# quantization-only codecs keep >= 98 % top-1 agreement; a learned codec keeps what its training measured,
# less this slack for the int8 halves and another held-out set
AGREEMENT = 0.98
LEARNED_SLACK = 0.02


class Bounds(NamedTuple):
    max_loss_points: float
    min_agreement: float | None  # None: not bounded (a learned codec trained in this build, without a score)
    max_relative_error: float


def output_kinds(names: tuple[str, ...], requested: tuple[str, ...] | None,
                 shapes: list[tuple[int, ...]]) -> tuple[str, ...]:
    """Per output: the requested kinds, or the first output a classification when it is one score per class
    (a map, a detector's grid or a segmenter's, is not) and the rest regressions. A model with no class output
    is held to agreement and relative error only."""
    kinds = requested or (("class",) if len(shapes[0]) == 1 else ("regression",)) + ("regression",) * (len(names) - 1)
    if len(kinds) != len(names) or set(kinds) - set(KINDS):
        raise EdgesplitError(f"--output-kinds needs one of {', '.join(KINDS)} per model output "
                             f"({', '.join(names)}), got {','.join(kinds)}")
    for name, kind, shape in zip(names, kinds, shapes):
        if kind == "class" and len(shape) != 1:
            raise EdgesplitError(f"output {name!r} is {'x'.join(map(str, shape))} per image, not one score per "
                                 "class: it cannot be a class output (--output-kinds regression for it)")
    return tuple(kinds)


def first_output(result):
    """The first of a model's outputs (a tensor, a tuple or a dict of them)."""
    if isinstance(result, dict):
        return next(iter(result.values()))
    return result[0] if isinstance(result, (tuple, list)) else result


@torch.no_grad()
def batched(module: nn.Module, images: np.ndarray):
    """module(images) computed a batch at a time: a tensor, or a tuple where the module returns several."""
    size = batch_size_for(images)
    pieces = [module(torch.from_numpy(images[start:start + size])) for start in range(0, len(images), size)]
    if isinstance(pieces[0], tuple):
        return tuple(torch.cat(parts) for parts in zip(*pieces))
    return torch.cat(pieces)


@torch.no_grad()
def predict_outputs(model: nn.Module, inputs: np.ndarray | list[np.ndarray], batch_size: int = 500) \
        -> list[np.ndarray]:
    """Every output of a model in eval mode, one array per output; `inputs` a list where the model takes several."""
    model.eval()
    parts = inputs if isinstance(inputs, list) else [inputs]
    batch_size = min(batch_size_for(part, batch_size) for part in parts)
    batches = []
    for start in range(0, len(parts[0]), batch_size):
        result = model(*(torch.from_numpy(part[start:start + batch_size]) for part in parts))
        values = result.values() if isinstance(result, dict) else result if isinstance(result, (tuple, list)) \
            else (result,)
        batches.append([tensor.numpy() for tensor in values])
    return [np.concatenate(parts) for parts in zip(*batches)]


# (model source, weights, their content hash, inputs' hash) -> outputs: profiling and the benchmarks build many
# bundles of one model, and each build compares against the float model on the same held-out images
_REFERENCES: OrderedDict[tuple, list[np.ndarray]] = OrderedDict()
REMEMBERED_REFERENCES = 8


def reference_outputs(loaded: LoadedModel, inputs: np.ndarray) -> list[np.ndarray]:
    """`predict_outputs` of a loaded model, computed once per model and inputs in a process (and across
    processes with EDGESPLIT_CACHE set). A module changed since it was loaded (its content hash differs) is
    run again, not looked up."""
    if state_dict_sha256(loaded.module) != loaded.sha256:
        return predict_outputs(loaded.module, inputs)
    key = (loaded.name, loaded.weights, loaded.sha256, inputs.dtype.str, inputs.shape,
           hashlib.sha256(np.ascontiguousarray(inputs).data).hexdigest())
    if key not in _REFERENCES:
        stored = cache.content_key(*key, cache.module_code(loaded.module), cache.code_version())
        _REFERENCES[key] = cache.arrays("reference-outputs", stored, lambda: predict_outputs(loaded.module, inputs))
        for output in _REFERENCES[key]:
            output.flags.writeable = False  # shared by every caller
        if len(_REFERENCES) > REMEMBERED_REFERENCES:
            _REFERENCES.popitem(last=False)
    _REFERENCES.move_to_end(key)
    return _REFERENCES[key]


def labeled_output(names, reference: list[np.ndarray], labels: np.ndarray) -> int:
    """The output dense labels score: per-pixel class indices (N, H, W) an N x classes x H x W map, float
    targets an output of their very shape."""
    classes = np.issubdtype(labels.dtype, np.integer)
    for index, wanted in enumerate(reference):
        if (classes and wanted.ndim == labels.ndim + 1 and wanted.shape[2:] == labels.shape[1:]) or \
                (not classes and wanted.shape == labels.shape):
            return index
    shapes = ", ".join(f"{name} {'x'.join(map(str, wanted.shape[1:]))}" for name, wanted in zip(names, reference))
    raise EdgesplitError(f"labels shaped {'x'.join(map(str, labels.shape[1:]))} per image ({labels.dtype}) fit none "
                         f"of the model's outputs ({shapes}): per-pixel class indices fit a classes x H x W map, "
                         "float targets an output of their own shape")


def dense_checks(names, reference: list[np.ndarray], deployed: list[np.ndarray], labels: np.ndarray,
                 outputs: dict) -> dict:
    """Per-pixel classes: pixel accuracy (the accuracy --max-loss bounds) and mean IoU, float and bundle, and the
    map's pixel agreement (bounded by --min-agreement in place of its relative error); float targets: each one's
    relative error to them."""
    index = labeled_output(names, reference, labels)
    name, wanted, found = names[index], reference[index], deployed[index]
    if not np.issubdtype(labels.dtype, np.integer):
        return {"labeled_output": name, "float_target_error": relative_error(wanted, labels),
                "bundle_target_error": relative_error(found, labels)}
    outputs[name].update(kind="class map", pixel_agreement=float((found.argmax(1) == wanted.argmax(1)).mean()))
    scored = {}
    for model, scores in (("float", wanted), ("bundle", found)):
        scored[model] = PixelScores(scores.shape[1])
        scored[model].add(scores, labels)
    return {"labeled_output": name, "accuracy_metric": "pixel accuracy",
            "float_accuracy": scored["float"].accuracy, "bundle_accuracy": scored["bundle"].accuracy,
            "float_miou": scored["float"].mean_iou, "bundle_miou": scored["bundle"].mean_iou}


def relative_error(deployed: np.ndarray, reference: np.ndarray) -> float:
    scale = float(np.linalg.norm(reference))
    return float(np.linalg.norm(deployed - reference)) / (scale if scale else 1.0)


def compare_outputs(names, kinds, reference: list[np.ndarray], deployed: list[np.ndarray],
                    labels: np.ndarray | None) -> dict:
    """Per-output agreement or relative error; top-1 agreement and accuracy from the first class output, if any
    (without one, labels are not used and the checks say so); labels shaped like an output (per-pixel classes,
    targets) score that output instead."""
    outputs = {}
    for name, kind, wanted, found in zip(names, kinds, reference, deployed):
        outputs[name] = {"kind": kind}
        if kind == "class":
            outputs[name]["top1_agreement"] = float((found.argmax(1) == wanted.argmax(1)).mean())
        else:
            outputs[name]["relative_error"] = relative_error(found, wanted)
    if labels is not None and labels.ndim > 1:
        return {"outputs": outputs, **dense_checks(names, reference, deployed, labels, outputs)}
    if "class" not in kinds:
        return {"outputs": outputs, "labels_unused": labels is not None}
    scored = kinds.index("class")
    checks = {"outputs": outputs, "top1_agreement": outputs[names[scored]]["top1_agreement"]}
    if labels is not None:
        classes = reference[scored].shape[1]
        if len(labels) and labels.max() >= classes:
            raise EdgesplitError(f"labels go up to {labels.max()}, but output {names[scored]!r} scores {classes} "
                                 f"classes: labels must be its class indices, 0 to {classes - 1}")
        checks["float_accuracy"] = float((reference[scored].argmax(1) == labels).mean())
        checks["bundle_accuracy"] = float((deployed[scored].argmax(1) == labels).mean())
    return checks


def code_differences(deployed: np.ndarray, expected: torch.Tensor) -> dict:
    """Codes through the runtime against PyTorch's (an integer-only edge computes them its own way)."""
    difference = np.abs(deployed.astype(np.int16) - expected.numpy().astype(np.int16))
    return {"edge_max_abs_error": float(difference.max()), "edge_mismatched_fraction": float((difference > 0).mean())}


def agreement_bound(requested: float | None, codec: dict) -> float | None:
    """--min-agreement, else 98 % for quantization-only codecs, else what a learned codec's training measured
    (less a slack), else no bound."""
    if requested is not None:
        return requested
    if not codec["learned"]:
        return AGREEMENT
    measured = codec.get("measured_agreement")
    return None if measured is None else measured - LEARNED_SLACK


def failed_bound(checks: dict, bounds: Bounds, subject: str = "the bundle") -> str:
    """'' when the bundle (or what `subject` names) meets every bound, else which one it missed, with the
    numbers."""
    accuracies = ((subject, checks.get("bundle_accuracy"), ""),
                  (f"with its early exits {subject}", checks.get("exit", {}).get("accuracy"),
                   "; --exit-max-loss sets how much exits may cost"))
    for what, accuracy, hint in accuracies:
        loss = None if accuracy is None else loss_points(checks["float_accuracy"], accuracy)
        if loss is not None and loss > bounds.max_loss_points:
            frames = checks["holdout_frames"]
            return (f"{what} loses {loss:.2f} {checks.get('accuracy_metric', 'accuracy')} points on the {frames} "
                    f"held-out images (one image is {100 / frames:.2g} pt; limit --max-loss "
                    f"{bounds.max_loss_points}{hint})")
    for name, result in checks["outputs"].items():
        agreement = result.get("top1_agreement", result.get("pixel_agreement"))
        error = None if "pixel_agreement" in result else result.get("relative_error")  # scored by its labels
        if agreement is not None and bounds.min_agreement is not None and agreement < bounds.min_agreement:
            counted = "the held-out images' pixels" if "pixel_agreement" in result else "held-out images"
            return (f"output {name!r} agrees with the float model on {agreement:.2%} of {counted} "
                    f"(bound --min-agreement {bounds.min_agreement:.2%})")
        if error is not None and error > bounds.max_relative_error:
            return (f"output {name!r} is {error:.3f} away from the float model's, relative "
                    f"(bound --max-relative-error {bounds.max_relative_error:g})")
    return ""
