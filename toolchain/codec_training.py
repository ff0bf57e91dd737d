"""Accuracy-aware codec training with the backbone frozen (BBNet §3.2.3).

The head never changes, so its outputs are computed once and cached (float16); each step
runs only codec + tail. Loss: distillation from the unsplit model's logits (works without
labels) plus cross-entropy where labels exist.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from toolchain.codecs import FeatureCodec, make_codec
from toolchain.errors import EdgesplitError
from runtime.inputs import InputSpec
from toolchain.data import load_images
from toolchain.split import SplitPoint, split_model
from toolchain.train import fit, progress_bar, steps_per_epoch

TEMPERATURE = 2.0
CHECKPOINT_VERSION = 1
# What two epochs of Fashion-MNIST's 60,000 images in batches of 128 give the default model's codecs; a
# build's own training takes as many epochs as its data needs for these steps
TRAINING_STEPS, BATCH_SIZE, MAX_EPOCHS = 900, 128, 200
PRIOR_LR_SCALE = 50


def epochs_for(frames: int, batch_size: int = BATCH_SIZE) -> int:
    """Epochs for about TRAINING_STEPS optimizer steps over `frames` (2 on 60,000 images, 113 on 1,000)."""
    return max(2, min(MAX_EPOCHS, -(-TRAINING_STEPS // steps_per_epoch(frames, batch_size))))


class FeatureCache(NamedTuple):
    features: torch.Tensor  # head outputs, float16
    teacher: torch.Tensor  # unsplit model's logits
    labels: torch.Tensor | None

    def __len__(self) -> int:
        return len(self.features)


class CodecScore(NamedTuple):
    accuracy: float | None  # vs labels, when there are labels
    teacher_accuracy: float | None  # the unsplit model on the same frames
    agreement: float  # top-1 agreement with the unsplit model

    @property
    def loss_points(self) -> float | None:
        if self.accuracy is None:
            return None
        return 100 * (self.teacher_accuracy - self.accuracy)


@torch.no_grad()
def cache_features(head: nn.Module, tail: nn.Module, inputs: np.ndarray, labels: np.ndarray | None,
                   batch_size: int = 256, description: str = "caching head outputs") -> FeatureCache:
    features, teacher = [], []
    with progress_bar() as progress:
        task = progress.add_task(description, total=len(inputs), status="")
        for start in range(0, len(inputs), batch_size):
            batch = head(torch.from_numpy(inputs[start:start + batch_size]))
            features.append(batch.half())
            teacher.append(tail(batch))
            progress.advance(task, len(batch))
    return FeatureCache(torch.cat(features), torch.cat(teacher),
                        None if labels is None else torch.from_numpy(labels))


def distillation_loss(logits: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    soft = F.kl_div(F.log_softmax(logits / TEMPERATURE, 1), F.softmax(teacher / TEMPERATURE, 1),
                    reduction="batchmean") * TEMPERATURE ** 2
    return soft if labels is None else soft + F.cross_entropy(logits, labels)


@torch.no_grad()
def score_codec(codec: FeatureCodec, tail: nn.Module, cache: FeatureCache, batch_size: int = 500) -> CodecScore:
    """Codec in deployment arithmetic (eval mode, real rounding) between frozen head and tail."""
    codec.eval()
    predictions = torch.cat([tail(codec(cache.features[i:i + batch_size].float())).argmax(1)
                             for i in range(0, len(cache), batch_size)])
    reference = cache.teacher.argmax(1)
    agreement = float((predictions == reference).float().mean())
    if cache.labels is None:
        return CodecScore(None, None, agreement)
    return CodecScore(float((predictions == cache.labels).float().mean()),
                      float((reference == cache.labels).float().mean()), agreement)


def save_checkpoint(path: Path, codec: FeatureCodec, spec: str, split: str, model_sha256: str,
                    epoch: int, optimizer: torch.optim.Optimizer | None = None,
                    schedule: torch.optim.lr_scheduler.LRScheduler | None = None,
                    agreement: float | None = None) -> None:
    """Plain tensors and numbers only, so it loads with torch.load(weights_only=True). `agreement`: the top-1
    agreement with the unsplit model its training measured on held-out images; builds bound by it."""
    state = {"version": CHECKPOINT_VERSION, "codec": spec, "split": split, "model_sha256": model_sha256,
             "epoch": epoch, "state_dict": codec.state_dict()}
    if agreement is not None:
        state["agreement"] = float(agreement)
    if optimizer is not None:
        state["optimizer"] = optimizer.state_dict()
        state["schedule"] = schedule.state_dict()
    torch.save(state, path)


def record_agreement(path: Path, agreement: float) -> None:
    """Add the held-out top-1 agreement a trained codec measured to its checkpoint: builds are bound by it."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    state["agreement"] = float(agreement)
    torch.save(state, path)


def read_checkpoint(path: Path) -> dict:
    """A codec checkpoint's contents (plain tensors and numbers), or one line saying why not."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise EdgesplitError(f"cannot read codec checkpoint {path}: {str(error).splitlines()[0]}") from error
    if not isinstance(state, dict) or state.get("version") != CHECKPOINT_VERSION or "codec" not in state:
        raise EdgesplitError(f"{path} is not an edgesplit codec checkpoint (version {CHECKPOINT_VERSION}, "
                             "from `edgesplit train-codec`)")
    return state


def load_checkpoint(path: Path, split: str, model_sha256: str, feature_shape: tuple[int, ...]) -> tuple[FeatureCodec, dict]:
    """A trained codec for this model and split; refuses one trained for another."""
    state = read_checkpoint(path)
    if state["model_sha256"] != model_sha256 or state["split"] != split:
        raise EdgesplitError(f"codec checkpoint {path} was trained for split {state['split']!r} of model "
                             f"{state['model_sha256'][:12]}, not split {split!r} of model {model_sha256[:12]}")
    codec = make_codec(state["codec"], feature_shape)
    try:
        codec.load_state_dict(state["state_dict"])
    except RuntimeError as error:  # tensors of another shape: saved by another version of the codec
        mismatch = next((line.strip() for line in str(error).splitlines() if "size mismatch" in line or "Missing" in line
                         or "Unexpected" in line), str(error).splitlines()[0])
        raise EdgesplitError(f"codec checkpoint {path} does not fit codec {state['codec']} as this edgesplit builds it "
                             f"({mismatch.rstrip('.')}): train it again with train-codec") from None
    return codec, state


def train_codec(
    codec: FeatureCodec, tail: nn.Module, cache: FeatureCache, epochs: int, seed: int,
    batch_size: int = BATCH_SIZE, lr: float = 2e-3, checkpoint: Path | None = None,
    checkpoint_facts: dict | None = None, resume: bool = False,
) -> float:
    """Train the codec's parameters only; returns seconds. Checkpoints after every epoch."""
    if not codec.learned:
        raise EdgesplitError(f"codec {codec.name!r} has no parameters to train")
    torch.manual_seed(seed)
    for parameter in tail.parameters():
        parameter.requires_grad_(False)
    tail.eval()
    # a rate codec's prior (logits) must follow the codes' histogram within a few hundred steps: its own rate
    named = dict(codec.named_parameters())
    groups = [{"params": [p for name, p in named.items() if name != "prior"], "lr": lr}]
    groups += [{"params": [named["prior"]], "lr": lr * PRIOR_LR_SCALE, "weight_decay": 0.0}] if "prior" in named else []
    optimizer = torch.optim.AdamW(groups, lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, [group["lr"] for group in groups],
                                                   total_steps=epochs * steps_per_epoch(len(cache), batch_size))
    first_epoch = 0
    if resume and checkpoint is not None and checkpoint.exists():
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        codec.load_state_dict(state["state_dict"])
        if "optimizer" in state:
            optimizer.load_state_dict(state["optimizer"])
            schedule.load_state_dict(state["schedule"])
        first_epoch = state["epoch"]

    def loss_of(batch: torch.Tensor) -> torch.Tensor:
        labels = None if cache.labels is None else cache.labels[batch]
        features, bits = codec.forward_with_bits(cache.features[batch].float())
        loss = distillation_loss(tail(features), cache.teacher[batch], labels)
        return loss if bits is None else loss + codec.rate * bits.mean()

    def save(epoch: int) -> None:
        if checkpoint is not None:
            save_checkpoint(checkpoint, codec, epoch=epoch, optimizer=optimizer, schedule=schedule,
                            **(checkpoint_facts or {}))

    return fit(codec, loss_of, len(cache), optimizer, schedule, epochs, batch_size, seed, f"training {codec.name}",
               first_epoch, save)


class FrozenSplit(NamedTuple):
    head: nn.Module
    tail: nn.Module
    point: SplitPoint
    train: FeatureCache
    test: FeatureCache | None


def prepare_training(module: nn.Module, split: str, spec: InputSpec, data: str,
                     train_frames: int | None = None, test_frames: int | None = None) -> FrozenSplit:
    """Split the model and cache head outputs of the data's train and test splits
    (frames: None for all, 0 to skip a split)."""
    halves = split_model(module, split, spec.shape)
    if len(halves.outputs) > 1:
        raise EdgesplitError(f"codecs and exit branches train by distillation on one output; the model returns "
                             f"{len(halves.outputs)} ({', '.join(halves.outputs)})")
    caches = []
    for part, frames in (("train", train_frames), ("test", test_frames)):
        if frames == 0:
            caches.append(None)
            continue
        images = load_images(data, part, spec)
        images = images if frames is None else images.take(frames)
        caches.append(cache_features(halves.head, halves.tail, images.inputs(), images.labels,
                                     description=f"caching {part} head outputs"))
    return FrozenSplit(halves.head, halves.tail, halves.point, *caches)
