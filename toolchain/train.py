"""The one training loop (`fit`) that every trainer uses: the classifier behind the bundled model,
codecs, exit branches and pruning's sparsity and fine-tuning phases. Each trainer supplies the
loss of a batch of sample indices, its optimizer and its schedule.
"""

from __future__ import annotations

import time
from typing import Callable, NamedTuple

import numpy as np
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import nn

from toolchain.data import ImageSet
from toolchain.evaluate import first_output


class TrainResult(NamedTuple):
    test_accuracy: float
    seconds: float


def progress_bar() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeRemainingColumn(), TextColumn("{task.fields[status]}"),
    )


@torch.no_grad()
def predict(model: nn.Module, inputs: np.ndarray, batch_size: int = 500) -> np.ndarray:
    """Logits of a model in eval mode for float NCHW inputs."""
    model.eval()
    outputs = [first_output(model(torch.from_numpy(inputs[i:i + batch_size]))).numpy()
               for i in range(0, len(inputs), batch_size)]
    return np.concatenate(outputs)


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((logits.argmax(1) == labels).mean())


def steps_per_epoch(size: int, batch_size: int) -> int:
    """Batches per epoch: the last partial batch counts unless it holds a single sample (BatchNorm in
    training mode cannot normalize one)."""
    return max(1, size // batch_size + (size % batch_size > 1))


def fit(model: nn.Module, loss_of: Callable[[torch.Tensor], torch.Tensor], size: int,
        optimizer: torch.optim.Optimizer, schedule: torch.optim.lr_scheduler.LRScheduler, epochs: int,
        batch_size: int, seed: int, description: str, first_epoch: int = 0,
        on_epoch_end: Callable[[int], None] | None = None) -> float:
    """Train `model` for epochs first_epoch..epochs-1 on `size` samples; returns seconds.

    Each epoch's order depends only on (seed, epoch), so a run resumed at `first_epoch` matches an
    unbroken one. `loss_of(indices)` is the loss of those samples; `on_epoch_end(epoch + 1)` runs
    after each epoch (checkpoints)."""
    steps = steps_per_epoch(size, batch_size)
    started = time.perf_counter()
    with progress_bar() as progress:
        task = progress.add_task(description, total=epochs * steps, completed=first_epoch * steps, status="")
        for epoch in range(first_epoch, epochs):
            model.train()
            order = torch.from_numpy(np.random.default_rng([seed, epoch]).permutation(size))
            for step in range(steps):
                loss = loss_of(order[step * batch_size:(step + 1) * batch_size])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                progress.update(task, advance=1, status=f"epoch {epoch + 1}/{epochs} loss {loss.item():.3f}")
            if on_epoch_end is not None:
                on_epoch_end(epoch + 1)
    model.eval()
    return time.perf_counter() - started


def train_classifier(
    model: nn.Module, train: ImageSet, test: ImageSet, epochs: int, seed: int, batch_size: int = 128,
    max_lr: float = 0.1,
) -> TrainResult:
    """SGD with a OneCycle schedule, channels-last; deterministic for a seed on one machine."""
    if train.labels is None:
        raise ValueError("training a classifier needs labeled images")
    torch.manual_seed(seed)
    inputs = torch.from_numpy(train.inputs())
    labels = torch.from_numpy(train.labels)
    model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=max_lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr, total_steps=epochs * steps_per_epoch(
        len(inputs), batch_size))
    loss_fn = nn.CrossEntropyLoss()

    def loss_of(batch: torch.Tensor) -> torch.Tensor:
        return loss_fn(model(inputs[batch].contiguous(memory_format=torch.channels_last)), labels[batch])

    seconds = fit(model, loss_of, len(inputs), optimizer, schedule, epochs, batch_size, seed, "training")
    model = model.to(memory_format=torch.contiguous_format)
    test_accuracy = accuracy(predict(model, test.inputs()), test.labels)
    return TrainResult(test_accuracy, seconds)
