"""Real images shipped with edgesplit so that the default build needs neither apt nor a network."""

from pathlib import Path

DEFAULT_CALIBRATION = Path(__file__).with_name("fashion_mnist.npz")
