"""Early exit on the edge (BranchyNet; ECNet's offload controller): a small classifier on the split
tensor, trained with the backbone frozen. The edge answers a frame itself when the softmax
entropy of this classifier is below a threshold, and sends only the uncertain ones.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from toolchain.codec_training import FeatureCache, distillation_loss
from toolchain.train import fit, steps_per_epoch
from toolchain.errors import EdgesplitError

EXIT_OUTPUT = "exit_logits"


class ExitBranch(nn.Module):
    """conv 3x3 stride 2 + BN + ReLU, global average pool, linear: a few % of the head's cost."""

    def __init__(self, feature_shape: tuple[int, ...], classes: int, width: int = 64) -> None:
        super().__init__()
        if len(feature_shape) != 3:
            raise EdgesplitError(f"an exit branch needs a C,H,W split tensor, got shape {feature_shape}")
        self.feature_shape, self.classes, self.width = tuple(feature_shape), int(classes), int(width)
        self.body = nn.Sequential(
            nn.Conv2d(feature_shape[0], width, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(width),
            nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, classes))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.body(features)


class EdgeWithExit(nn.Module):
    """The edge half with two outputs: the codes for the cloud and the exit logits."""

    def __init__(self, head: nn.Module, encoder: nn.Module, branch: ExitBranch) -> None:
        super().__init__()
        self.head, self.encoder, self.branch = head, encoder, branch

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.head(images)
        return self.encoder(features), self.branch(features)


def train_exit(cache: FeatureCache, classes: int, epochs: int = 2, batch_size: int = 128, seed: int = 0,
               learning_rate: float = 3e-3) -> ExitBranch:
    """Distillation from the full model's logits (+ labels where present) on cached head outputs."""
    torch.manual_seed(seed)
    branch = ExitBranch(tuple(cache.features.shape[1:]), classes)
    optimizer = torch.optim.AdamW(branch.parameters(), lr=learning_rate, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, learning_rate, total_steps=epochs * steps_per_epoch(
        len(cache), batch_size))

    def loss_of(batch: torch.Tensor) -> torch.Tensor:
        labels = None if cache.labels is None else cache.labels[batch]
        return distillation_loss(branch(cache.features[batch].float()), cache.teacher[batch], labels)

    fit(branch, loss_of, len(cache), optimizer, schedule, epochs, batch_size, seed, "training the exit branch")
    return branch


def save_exit(path: Path, branch: ExitBranch, split: str, model_sha256: str) -> None:
    torch.save({"state_dict": branch.state_dict(), "feature_shape": list(branch.feature_shape),
                "classes": branch.classes, "width": branch.width, "split": split, "model_sha256": model_sha256},
               path)


def load_exit(path: Path, split: str, model_sha256: str) -> ExitBranch:
    checkpoint = torch.load(path, weights_only=True)
    if checkpoint["split"] != split or checkpoint["model_sha256"] != model_sha256:
        raise EdgesplitError(f"{path} is an exit branch for split {checkpoint['split']} of model "
                             f"{checkpoint['model_sha256'][:12]}, not {split} of {model_sha256[:12]}")
    branch = ExitBranch(tuple(checkpoint["feature_shape"]), checkpoint["classes"], checkpoint["width"])
    branch.load_state_dict(checkpoint["state_dict"])
    return branch.eval()
