"""Channel pruning of the edge half, in Torch-Pruning's three layers.

- analysis: which channels matter. `bn-scale` is BBNet's network slimming (|BN gamma| after L1
  sparsity training, one global threshold); `feature-bias` is SAFBMP's criterion (the shift of
  the mean activation a removed channel causes downstream, measured on calibration data,
  pruned per layer so no layer goes over-sparse).
- mutation: Torch-Pruning's dependency graph removes channels consistently (residual groups
  together) from the head only: the tail and every layer sharing the split tensor's channels are
  ignored, so the boundary tensor, and with it the codec and the cloud half's input, is unchanged.
- policy: ratio, criterion, then fine-tuning with distillation from the unpruned model.
"""

from __future__ import annotations

import copy
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from toolchain.codec_training import distillation_loss
from toolchain.errors import EdgesplitError
from toolchain.split import split_model
from toolchain.train import fit, steps_per_epoch

CRITERIA = ("bn-scale", "feature-bias")


class PruneReport(NamedTuple):
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    head_params_before: int
    head_params_after: int
    head_macs_before: int
    head_macs_after: int


def check_ratio(ratio: float) -> None:
    if not 0 < ratio < 1:
        raise EdgesplitError(f"pruning ratio must be between 0 and 1 (exclusive), got {ratio}")


def _torch_pruning():
    try:
        import torch_pruning
    except ImportError as error:
        raise EdgesplitError("pruning needs Torch-Pruning: pip install 'edgesplit[prune]'") from error
    return torch_pruning


def head_modules(model: nn.Module, split: str, input_shape: tuple[int, int, int]) -> list[nn.Module]:
    """The model's modules that run in the head (edge half), by module path."""
    head = split_model(model, split, input_shape).head
    names = {node.target for node in head.graph.nodes if node.op == "call_module"}
    return [module for name, module in model.named_modules() if name in names]


def protected_modules(model: nn.Module, head: list[nn.Module], input_shape: tuple[int, int, int]) -> set[nn.Module]:
    """Everything outside the head, and every layer whose output channels make up the split tensor."""
    tp = _torch_pruning()
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=torch.zeros(1, *input_shape))
    last_norm = [m for m in head if isinstance(m, nn.BatchNorm2d)][-1:]
    protected = {m for m in model.modules() if not list(m.children())} - set(head)
    for norm in last_norm:  # the head's last BN sets the boundary's channels; its group shares them
        group = graph.get_pruning_group(norm, tp.prune_batchnorm_out_channels, idxs=[0])
        protected |= {dep.target.module for dep, _ in group}
    return protected


class FeatureBiasImportance:
    """SAFBMP's feature bias: per channel, the mean post-BN-ReLU activation that removing it takes away
    from every consumer, measured on calibration images; summed over a group's BN layers."""

    def __init__(self, model: nn.Module, calibration: np.ndarray):
        self.means = {}
        hooks = [module.register_forward_hook(self._recorder(module)) for module in model.modules()
                 if isinstance(module, nn.BatchNorm2d)]
        with torch.no_grad():
            model.eval()(torch.from_numpy(calibration))
        for hook in hooks:
            hook.remove()

    def _recorder(self, module):
        def record(_, __, output):
            self.means[module] = torch.relu(output).mean(dim=(0, 2, 3))
        return record

    def __call__(self, group) -> torch.Tensor:
        tp = _torch_pruning()
        score = None
        for dep, idxs in group:
            module = dep.target.module
            if isinstance(module, nn.BatchNorm2d) and dep.handler == tp.prune_batchnorm_out_channels:
                part = self.means[module][idxs]
                score = part if score is None else score + part
        return score


def count(model: nn.Module, input_shape: tuple[int, int, int]) -> tuple[int, int]:
    """(MACs, params) for one frame."""
    macs, params = _torch_pruning().utils.count_ops_and_params(model, torch.zeros(1, *input_shape))
    return int(macs), int(params)


def sparsity_train(model: nn.Module, head: list[nn.Module], inputs: np.ndarray, labels: np.ndarray,
                   epochs: int, l1: float = 1e-4, batch_size: int = 128, seed: int = 0) -> None:
    """Network slimming's sparsity phase: cross-entropy + L1 on the head's BN scale factors."""
    norms = [m for m in head if isinstance(m, nn.BatchNorm2d)]
    _train(model, inputs, labels, epochs, batch_size, seed, "sparsity training",
           lambda logits, batch_labels, _: nn.functional.cross_entropy(logits, batch_labels)
           + l1 * sum(norm.weight.abs().sum() for norm in norms))


def fine_tune(model: nn.Module, teacher: nn.Module, inputs: np.ndarray, labels: np.ndarray | None,
              epochs: int, batch_size: int = 128, seed: int = 0) -> None:
    """Distillation from the unpruned model (+ labels where present)."""
    _train(model, inputs, labels, epochs, batch_size, seed, "fine-tuning",
           lambda logits, batch_labels, x: distillation_loss(logits, teacher(x).detach(), batch_labels))


def _train(model, inputs, labels, epochs, batch_size, seed, description, loss_of) -> None:
    """SGD with cosine annealing; `loss_of(logits, labels, inputs)` is the phase's loss."""
    if epochs == 0:
        return
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs * steps_per_epoch(len(inputs), batch_size))
    tensor_inputs = torch.from_numpy(inputs)
    tensor_labels = None if labels is None else torch.from_numpy(labels)

    def batch_loss(batch: torch.Tensor) -> torch.Tensor:
        x = tensor_inputs[batch]
        return loss_of(model(x), None if tensor_labels is None else tensor_labels[batch], x)

    fit(model, batch_loss, len(inputs), optimizer, schedule, epochs, batch_size, seed, description)


def prune(model: nn.Module, split: str, input_shape: tuple[int, int, int], criterion: str, ratio: float,
          calibration: np.ndarray) -> tuple[nn.Module, PruneReport]:
    """A pruned copy of `model`: `ratio` of the head's prunable channels removed by `criterion`."""
    check_ratio(ratio)
    if criterion not in CRITERIA:
        raise EdgesplitError(f"unknown pruning criterion {criterion!r}; criteria: {', '.join(CRITERIA)}")
    tp = _torch_pruning()
    pruned = copy.deepcopy(model).eval()
    head = head_modules(pruned, split, input_shape)
    halves = split_model(pruned, split, input_shape)
    boundary = halves.point.shape
    macs_before, params_before = count(pruned, input_shape)
    head_macs_before, head_before = count(halves.head, input_shape)
    importance = tp.importance.BNScaleImportance() if criterion == "bn-scale" else \
        FeatureBiasImportance(pruned, calibration)
    pruner = tp.pruner.MetaPruner(
        pruned, torch.zeros(1, *input_shape), importance=importance, pruning_ratio=ratio,
        global_pruning=criterion == "bn-scale", ignored_layers=list(protected_modules(pruned, head, input_shape)))
    pruner.step()
    halves = split_model(pruned, split, input_shape)
    if halves.point.shape != boundary:  # the guarantee the rest of the pipeline relies on
        raise EdgesplitError(f"pruning changed the split tensor from {boundary} to {halves.point.shape}")
    macs_after, params_after = count(pruned, input_shape)
    head_macs_after, head_after = count(halves.head, input_shape)
    return pruned, PruneReport(params_before, params_after, macs_before, macs_after, head_before, head_after,
                               head_macs_before, head_macs_after)


def save_pruned(model: nn.Module, input_shape: tuple[int, int, int], path) -> None:
    """A torch.export archive: the pruned architecture travels with its weights (`--model pruned.pt2`)."""
    exported = torch.export.export(model.eval(), (torch.zeros(2, *input_shape),),
                                   dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},))
    torch.export.save(exported, str(path))
