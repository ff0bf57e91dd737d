"""Regenerate fashion_mnist.npz from Debian's dataset-fashion-mnist: python -m calibration_data.make"""

import numpy as np

from calibration_data import DEFAULT_CALIBRATION
from toolchain.data import load_images

TRAIN_FRAMES, TEST_FRAMES, SEED = 512, 2000, 0


def main() -> None:
    rng = np.random.default_rng(SEED)
    arrays = {}
    for split, count in (("train", TRAIN_FRAMES), ("test", TEST_FRAMES)):
        images = load_images("fashion-mnist", split)
        chosen = np.sort(rng.choice(len(images), size=count, replace=False))
        arrays[f"{split}_images"] = images.images[chosen, 0]
        arrays[f"{split}_labels"] = images.labels[chosen].astype(np.uint8)
        arrays[f"{split}_indices"] = chosen.astype(np.uint32)
    np.savez_compressed(DEFAULT_CALIBRATION, **arrays)
    print(f"wrote {DEFAULT_CALIBRATION}")


if __name__ == "__main__":
    main()
