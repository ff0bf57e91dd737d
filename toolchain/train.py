"""Supervised training of a classifier on an ImageSet (used to make the bundled default model)."""

from __future__ import annotations

import time
from typing import NamedTuple

import numpy as np
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import nn

from toolchain.data import ImageSet, to_model_input


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
    outputs = [model(torch.from_numpy(inputs[i:i + batch_size])).numpy()
               for i in range(0, len(inputs), batch_size)]
    return np.concatenate(outputs)


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((logits.argmax(1) == labels).mean())


def train_classifier(
    model: nn.Module, train: ImageSet, test: ImageSet, input_shape: tuple[int, int, int],
    epochs: int, seed: int, batch_size: int = 128, max_lr: float = 0.1,
) -> TrainResult:
    """SGD with a OneCycle schedule; deterministic for a seed on one machine."""
    if train.labels is None:
        raise ValueError("training a classifier needs labeled images")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    inputs = torch.from_numpy(to_model_input(train.images, input_shape))
    labels = torch.from_numpy(train.labels)
    steps_per_epoch = len(inputs) // batch_size
    model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=max_lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr, epochs=epochs, steps_per_epoch=steps_per_epoch)
    loss_fn = nn.CrossEntropyLoss()
    started = time.perf_counter()
    with progress_bar() as progress:
        task = progress.add_task("training", total=epochs * steps_per_epoch, status="")
        for epoch in range(epochs):
            model.train()
            order = torch.from_numpy(rng.permutation(len(inputs)))
            for step in range(steps_per_epoch):
                batch = order[step * batch_size:(step + 1) * batch_size]
                x = inputs[batch].contiguous(memory_format=torch.channels_last)
                loss = loss_fn(model(x), labels[batch])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                progress.update(task, advance=1, status=f"epoch {epoch + 1}/{epochs} loss {loss.item():.3f}")
    model = model.to(memory_format=torch.contiguous_format)
    test_accuracy = accuracy(predict(model, to_model_input(test.images, input_shape)), test.labels)
    return TrainResult(test_accuracy, time.perf_counter() - started)
