"""A bundle's edge codes for the first N images of a source, saved as .npz — the same script on x86
and inside the aarch64 userland (`aarch64.sh`), where only the installed wheel (no torch) exists.

    python edge_codes.py --bundle B.tar --source images.npz --limit 200 --output codes.npz
"""

import argparse
import platform
from itertools import islice

import numpy as np

from runtime.bundle import open_bundle
from runtime.images import open_source
from runtime.local import EdgeHalf


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--source", required=True)
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--output", required=True)
    args = parser.parse_args()
    bundle = open_bundle(args.bundle)
    images = np.stack([frame.image for frame in islice(open_source(args.source, bundle.input_spec()), args.limit)])
    codes = EdgeHalf(bundle, threads=1).codes(images)
    np.savez(args.output, codes=codes, machine=platform.machine())
    print(f"{platform.machine()}: {codes.shape} codes of {len(images)} images -> {args.output}")


if __name__ == "__main__":
    main()
