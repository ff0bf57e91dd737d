"""Scores of a class map against per-pixel labels (a segmenter's answers): pixel accuracy and mean IoU, from
a confusion matrix that grows with the classes, not the frames. The build and the edge both score this way."""

from typing import Optional

import numpy as np

from runtime.errors import EdgesplitError


class PixelScores:
    """Accumulates (label, prediction) pixel counts over frames."""

    def __init__(self, classes: int) -> None:
        self.classes = classes
        self.confusion = np.zeros((classes, classes), np.int64)  # [label, prediction]

    def add(self, scores: np.ndarray, labels: np.ndarray) -> float:
        """One or more frames: `scores` (..., classes, H, W), `labels` (..., H, W) class indices. Returns their
        pixel accuracy."""
        predicted = scores.argmax(-3).astype(np.int64)
        labels = np.asarray(labels, np.int64)
        if labels.shape != predicted.shape:
            raise EdgesplitError("per-pixel labels of shape {} for a class map of {}: expected {}".format(
                labels.shape, scores.shape, predicted.shape))
        if labels.size and (labels.min() < 0 or labels.max() >= self.classes):
            raise EdgesplitError("per-pixel labels hold class {}, the output scores classes 0 to {}".format(
                int(labels.max() if labels.max() >= self.classes else labels.min()), self.classes - 1))
        counts = np.bincount((labels * self.classes + predicted).ravel(), minlength=self.classes ** 2)
        self.confusion += counts.reshape(self.classes, self.classes)
        return float((predicted == labels).mean())

    @property
    def accuracy(self) -> Optional[float]:
        total = self.confusion.sum()
        return float(np.trace(self.confusion) / total) if total else None

    @property
    def mean_iou(self) -> Optional[float]:
        """Intersection over union per class present in the labels or the predictions, averaged."""
        union = self.confusion.sum(0) + self.confusion.sum(1) - np.diag(self.confusion)
        present = union > 0
        return float((np.diag(self.confusion)[present] / union[present]).mean()) if present.any() else None
