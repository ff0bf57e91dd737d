"""Model cards for bundled weights, written by `edgesplit train-model` (numbers never typed by hand)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import nn

from toolchain.train import TrainResult


def write_model_card(
    name: str, model: nn.Module, weights: Path, data: str, epochs: int, seed: int,
    result: TrainResult, command: str,
) -> Path:
    card = weights.with_suffix(".md")
    params = sum(p.numel() for p in model.parameters())
    card.write_text(
        f"# Model card: {name}\n\n"
        f"Written by `edgesplit train-model`; regenerate rather than edit.\n\n"
        f"| | |\n|---|---|\n"
        f"| architecture | {type(model).__name__} ({params / 1e6:.2f} M parameters) |\n"
        f"| training data | {data} (train split) |\n"
        f"| test accuracy | {result.test_accuracy:.2%} on the {data} test split |\n"
        f"| epochs | {epochs} (SGD, Nesterov momentum 0.9, OneCycle max lr 0.1, batch 128) |\n"
        f"| seed | {seed} |\n"
        f"| training time | {result.seconds:.0f} s on {torch.get_num_threads()} CPU threads |\n"
        f"| torch | {torch.__version__} |\n"
        f"| weights file sha256 | `{hashlib.sha256(weights.read_bytes()).hexdigest()}` |\n\n"
        f"Reproduce: `{command}`\n\n"
        f"Inputs are float images in [0, 1], NCHW, 1x32x32 (28x28 Fashion-MNIST zero-padded at the\n"
        f"centre); the model normalizes inside its graph.\n"
    )
    return card
