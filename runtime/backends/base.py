"""What every backend runner is (after Polygraphy's backend/base/runner.py). Python 3.6.

A runner is built from one artefact and owns whatever it allocates (sessions, interpreters,
device buffers) until `close()`; it is a context manager. `inputs` / `outputs` list
(name, dtype, shape) with "batch" (or -1 / None) for the batch axis. `infer(feed)` checks the
feed against `inputs` (names, dtypes, ranks, fixed sizes, one batch size), then calls the
backend's `infer_impl`. `quantization(name)` gives (scale, zero point) of an integer tensor.
"""

from typing import Dict, Optional, Tuple

import numpy as np

from runtime.errors import BundleError

TensorInfo = Tuple[str, str, list]  # name, dtype, shape


class Runner(object):
    inputs = []  # type: List[TensorInfo]
    outputs = []  # type: List[TensorInfo]

    def infer(self, feed: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        self.check_feed(feed)
        return self.infer_impl(feed)

    def infer_impl(self, feed: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        raise NotImplementedError

    def quantization(self, name: str) -> Optional[Tuple[float, int]]:
        """(scale, zero point) of an integer input or output; None for float tensors or backends without."""
        return None

    def close(self) -> None:
        """Free what the runner allocated; it cannot infer afterwards."""

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def check_feed(self, feed: Dict[str, np.ndarray]) -> None:
        names = sorted(name for name, _, _ in self.inputs)
        if sorted(feed) != names:
            raise BundleError("the artefact takes inputs {}, got {}".format(names, sorted(feed)))
        batches = set()
        for name, dtype, shape in self.inputs:
            array = feed[name]
            if array.dtype != np.dtype(dtype):
                raise BundleError("input {!r} must be {}, got {}".format(name, dtype, array.dtype))
            if array.ndim != len(shape):
                raise BundleError("input {!r} must have {} axes, got shape {}".format(name, len(shape), array.shape))
            fixed = [(axis, size) for axis, size in enumerate(shape) if axis > 0 and isinstance(size, int) and size > 0]
            if any(array.shape[axis] != size for axis, size in fixed):
                raise BundleError("input {!r} must be shaped {}, got {}".format(name, shape, list(array.shape)))
            batches.add(array.shape[0])
        if len(batches) > 1:
            raise BundleError("inputs disagree on the batch size: {}".format(sorted(batches)))
