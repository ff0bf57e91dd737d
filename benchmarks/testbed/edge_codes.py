"""A bundle's edge codes for the first N images of a source, saved as .npz — the same script on x86
and inside the aarch64 userland (`aarch64.sh`), where only the installed wheel (no torch) exists.

    python edge_codes.py --bundle B.tar --source images.npz --limit 200 --output codes.npz
"""

import argparse
import os
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
    parser.add_argument("--kernels", choices=("xnnpack", "builtin"), default="xnnpack",
                        help="TFLite's XNNPACK delegate (the default) or its builtin kernels.")
    args = parser.parse_args()
    bundle = open_bundle(args.bundle)
    images = np.stack([frame.image for frame in islice(open_source(args.source, bundle.input_spec()), args.limit)])
    codes = EdgeHalf(bundle, threads=1, xnnpack=args.kernels == "xnnpack").codes(images)
    emulated = os.environ.get("QEMU_CPU")  # set by aarch64.sh: the core QEMU emulates
    run = f"{platform.machine()} {args.kernels}" + (f" ({emulated} under QEMU)" if emulated else "")
    np.savez(args.output, codes=codes, run=run)
    print(f"{run}: {codes.shape} codes of {len(images)} images -> {args.output}")


if __name__ == "__main__":
    main()
