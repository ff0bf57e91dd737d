"""`calibrate-exit`: threshold → offload rate → overall accuracy, measured with the bundle as deployed.

A frame is answered on the edge when the exit branch's softmax entropy is below the threshold,
else sent. On a labeled set, every candidate threshold (midpoints between the observed
entropies, so rates are exact) gets its offload rate and the accuracy of the mixed answers; the
chosen threshold goes into the manifest, where the edge client reads it.
"""

from __future__ import annotations

import json
from typing import NamedTuple

import numpy as np

from runtime.bundle import MANIFEST_NAME, Bundle, compute_bundle_id
from runtime.local import SplitInference, softmax_entropy
from toolchain.errors import EdgesplitError

DEFAULT_EXIT_MAX_LOSS = 0.3  # accuracy points exits may cost against sending every frame


class ExitMeasurement(NamedTuple):
    entropy: np.ndarray
    exit_correct: np.ndarray
    cloud_correct: np.ndarray


class CurvePoint(NamedTuple):
    threshold: float
    offload_rate: float
    accuracy: float


def measure(bundle: Bundle, inputs: np.ndarray, labels: np.ndarray | None = None,
            batch: int | None = None) -> ExitMeasurement:
    """Entropy and correctness per frame, through the bundle's halves as verified. Without labels the cloud's
    answers stand in for them: 'accuracy' is then agreement with sending every frame, which bounds what the
    exits cost."""
    if bundle.manifest.get("exit") is None:
        raise EdgesplitError(f"bundle {bundle.bundle_id} has no exit branch: build it with --early-exit")
    deployed = SplitInference(bundle, verified=True).deployed(inputs, batch)
    cloud_predictions = deployed.outputs[0].argmax(1)
    reference = cloud_predictions if labels is None else labels
    return ExitMeasurement(softmax_entropy(deployed.exit_logits), deployed.exit_logits.argmax(1) == reference,
                           cloud_predictions == reference)


def curve(measured: ExitMeasurement) -> list[CurvePoint]:
    """From 'send everything' (threshold 0) to 'send nothing' (above every entropy)."""
    values = np.unique(measured.entropy)
    thresholds = np.concatenate([[0.0], (values[:-1] + values[1:]) / 2, [values[-1] + 1.0]])
    points = []
    for threshold in thresholds:
        local = measured.entropy < threshold
        correct = np.where(local, measured.exit_correct, measured.cloud_correct)
        points.append(CurvePoint(float(threshold), float(1 - local.mean()), float(correct.mean())))
    return points


def pick(points: list[CurvePoint], max_loss_points: float | None = None,
         offload_rate: float | None = None) -> CurvePoint:
    """The least offloading point within `max_loss_points` of cloud-always, or the first reaching
    `offload_rate` or less."""
    if (max_loss_points is None) == (offload_rate is None):
        raise EdgesplitError("give exactly one of a maximum accuracy loss or a target offload rate")
    if offload_rate is not None:
        return next(p for p in reversed(points) if p.offload_rate >= offload_rate - 1e-12)
    cloud_always = points[0].accuracy
    return min((p for p in points if 100 * (cloud_always - p.accuracy) <= max_loss_points + 1e-9),
               key=lambda p: (p.offload_rate, -p.threshold))


def store_threshold(bundle: Bundle, point: CurvePoint, summary: dict) -> str:
    """Write the threshold into the bundle's manifest; returns the new bundle id (the manifest changed)."""
    manifest = json.loads(json.dumps(bundle.manifest))
    manifest["exit"]["threshold"] = point.threshold
    manifest["exit"]["calibration"] = summary
    manifest["bundle_id"] = compute_bundle_id(manifest)
    (bundle.directory / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest["bundle_id"]


def exit_checks(threshold: float, exit_logits: np.ndarray, cloud_logits: np.ndarray, float_logits: np.ndarray,
                labels: np.ndarray | None, payload_bytes: np.ndarray) -> dict:
    """The bundle with exits, on held-out frames: the share sent, the mixed answers against the float model
    (and labels), and payload bytes averaged over all frames (an exit sends nothing)."""
    local = softmax_entropy(exit_logits) < threshold
    answers = np.where(local, exit_logits.argmax(1), cloud_logits.argmax(1))
    checks = {"threshold": float(threshold), "offload_rate": float(1 - local.mean()),
              "top1_agreement": float((answers == float_logits.argmax(1)).mean()),
              "mean_payload_bytes_all_frames": float(np.where(local, 0, payload_bytes).mean())}
    if labels is not None:
        checks["accuracy"] = float((answers == labels).mean())
    return checks
