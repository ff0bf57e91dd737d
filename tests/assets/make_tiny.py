"""Makes tiny.pt, the small trained model the deployment tests build for every device pair.

    PYTHONPATH=tests python tests/assets/make_tiny.py   # needs Debian's dataset-fashion-mnist; ~4 min on 2 cores

A trained model, not a random one: int8 agreement is only meaningful on confident logits.
"""

from pathlib import Path

import torch

from conftest import TinyNet
from toolchain.data import load_images
from toolchain.train import train_classifier

if __name__ == "__main__":
    model = TinyNet()
    result = train_classifier(model, load_images("fashion-mnist", "train"), load_images("fashion-mnist", "test"),
                              (1, 32, 32), epochs=2, seed=0)
    torch.save(model.state_dict(), Path(__file__).with_name("tiny.pt"))
    print(f"test accuracy {result.test_accuracy:.2%} in {result.seconds:.0f} s")
