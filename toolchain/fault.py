"""Which half of a bundle that missed its bound is at fault, and the option that would keep it in float.

Each deployed half is run beside the other in float (PyTorch, the codec's own quantization kept), on the
same held-out images: the half that misses the bound alone is the one to build in higher precision."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from runtime.bundle import Bundle
from runtime.local import CloudHalf, batch_size_for, edge_half, in_batches
from targets import ROLES
from toolchain.backends import check_precision, exporter
from toolchain.errors import TargetError
from toolchain.evaluate import Bounds, compare_outputs, failed_bound, predict_outputs

if TYPE_CHECKING:
    from toolchain.build import Build

PRECISION_OPTION = {"edge": "--precision", "cloud": "--cloud-precision"}
HIGHER = {"int8": "fp16", "fp16": "fp32"}


def at_fault(build: Build, bundle: Bundle, inputs: np.ndarray, reference: list[np.ndarray], bounds: Bounds) -> str:
    """One clause naming what is at fault (the codec, or a half with its precision), what it scores alone,
    and what would pass."""
    if bundle.strategy != "split":  # one half runs the whole model
        role = bundle.answering_role
        return f"{describe(build, role)} runs the whole model{unstrict(build, [role])}{hint(build, role)}"
    codes = float_codes(build, inputs)
    codec = codec_checks(build, inputs, reference, codes)
    missed = failed_bound(codec, bounds, "it")
    if missed:
        return f"with both halves in float (PyTorch) the codec alone ({build.codec.name} at split " \
               f"{build.halves.point.node}) misses a bound too: {missed}; try another --codec or --split"
    checks = halves_alone(build, bundle, inputs, reference, codes)
    failing = [role for role in checks if failed_bound(checks[role], bounds)]
    scores = "; ".join(f"{describe(build, role)} beside the other in float: {score(found)}"
                       for role, found in checks.items())
    named = failing or list(checks)
    return f"{scores}: {verdict(failing)}{unstrict(build, named)}" + "".join(hint(build, role) for role in named)


def halves_at_fault(build: Build, bundle: Bundle, inputs: np.ndarray, reference: list[np.ndarray],
                    bounds: Bounds) -> list[str]:
    """The halves below float that miss the bound alone (every one of them where each meets it alone and the
    two together do not); none where the codec alone misses it, or the bundle has no halves below float."""
    if bundle.strategy != "split":
        return [bundle.answering_role] if build.precisions[bundle.answering_role] in HIGHER else []
    codes = float_codes(build, inputs)
    if failed_bound(codec_checks(build, inputs, reference, codes), bounds):
        return []
    checks = halves_alone(build, bundle, inputs, reference, codes)
    return [role for role in checks if failed_bound(checks[role], bounds)] or list(checks)


def halves_alone(build: Build, bundle: Bundle, inputs: np.ndarray, reference: list[np.ndarray], codes) -> dict:
    """Per half below float, the checks with it deployed beside the other in PyTorch."""
    return {role: alone(build, bundle, role, inputs, reference, codes) for role in ROLES
            if build.precisions[role] in HIGHER}


def codec_checks(build: Build, inputs: np.ndarray, reference: list[np.ndarray], codes) -> dict:
    """The checks with both halves in PyTorch and the codec's own quantization between them."""
    return checks_of(build, inputs, reference, predict_outputs(build.parts.cloud(), codes))


def verdict(failing: list[str]) -> str:
    if not failing:
        return "each half alone meets the bound, the two together do not"
    return f"the {failing[0]} half misses it alone" if len(failing) == 1 else "both halves miss it alone"


def float_codes(build: Build, inputs: np.ndarray) -> np.ndarray | list[np.ndarray]:
    """The codes PyTorch's head and encoder give (a list when several tensors cross)."""
    codes = build.parts.codes(inputs, torch.uint8)
    return [part.numpy() for part in codes] if isinstance(codes, tuple) else codes.numpy()


def alone(build: Build, bundle: Bundle, role: str, inputs: np.ndarray, reference: list[np.ndarray],
          codes: np.ndarray | list[np.ndarray]) -> dict:
    """The checks of the bundle with only `role` deployed, the other half in PyTorch; a batch at a time (a
    224x224 ResNet-50's cloud half over all held-out frames at once took 1.6 GB more)."""
    size = batch_size_for(inputs)
    if role == "edge":
        edge, torch_cloud = edge_half(bundle, verified=True), build.parts.cloud()
        outputs = in_batches(lambda batch: predict_outputs(torch_cloud, edge.codes(batch[0])), [inputs], size)
    else:
        cloud, several = CloudHalf(bundle, verified=True), isinstance(codes, list)
        outputs = in_batches(lambda batch: cloud.outputs_of(batch if several else batch[0]),
                             codes if several else [codes], size)
    return checks_of(build, inputs, reference, outputs)


def checks_of(build: Build, inputs: np.ndarray, reference: list[np.ndarray], outputs: list[np.ndarray]) -> dict:
    checks = compare_outputs(build.halves.outputs, build.output_kinds, reference, outputs, build.holdout.labels)
    return {**checks, "holdout_frames": len(inputs)}


def describe(build: Build, role: str) -> str:
    return f"the {role} half ({build.precisions[role]} on {build.deployment.device(role).name})"


def score(checks: dict) -> str:
    """Top-1 agreement, and the accuracy lost when labels are known; a model without a class output, the
    largest relative error of its outputs."""
    if "top1_agreement" not in checks:
        return f"relative error {max(result['relative_error'] for result in checks['outputs'].values()):.3g}"
    words = f"{checks['top1_agreement']:.2%} top-1 agreement"
    if "bundle_accuracy" in checks:
        words += f", {100 * (checks['float_accuracy'] - checks['bundle_accuracy']):.2f} pt lost"
    return words


def unstrict(build: Build, roles) -> str:
    """Once for a refusal under --strict-int8 of halves of which one could keep layers in higher precision."""
    searchable = any(build.precisions[role] == "int8" and exporter(build.deployment.device(role)).requantizable
                     for role in roles)
    return "; without --strict-int8 the build first keeps its most sensitive layers in higher precision" \
        if build.options.strict_int8 and searchable else ""


def hint(build: Build, role: str) -> str:
    """The option that builds `role` one precision higher, where its device does; else what else could pass."""
    device, precision = build.deployment.device(role), build.precisions[role]
    higher = HIGHER.get(precision)
    try:
        check_precision(device, role, higher)
    except TargetError:
        return f"; {device.name} builds its {role} half in {precision} at most: try another --split or --codec"
    return f"; {PRECISION_OPTION[role]} {higher} would build the {role} half in {higher}"
