"""Toolchain errors; all derive from the runtime's EdgesplitError so one handler catches both."""

from runtime.errors import BundleError, EdgesplitError, TargetError

__all__ = ["BundleError", "EdgesplitError", "ModelLoadError", "SplitError", "TargetError"]


class ModelLoadError(EdgesplitError):
    """A model spec names nothing loadable, or its weights do not fit it."""


class SplitError(EdgesplitError):
    """A split point is unknown, crosses several tensors, or the model cannot be traced."""
