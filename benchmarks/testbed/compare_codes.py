"""Compare two runs of `edge_codes.py` (x86 and aarch64): at most one code apart per element.

    python compare_codes.py codes-x86_64.npz codes-aarch64.npz --output codes.json
Exits 1 when the shapes differ or any element is more than one code apart.
"""

import argparse
import json
import sys

import numpy as np


def compare(reference: np.ndarray, other: np.ndarray) -> dict:
    if reference.shape != other.shape:
        return {"same_shape": False, "shapes": [list(reference.shape), list(other.shape)]}
    difference = np.abs(reference.astype(np.int32) - other.astype(np.int32))
    return {"same_shape": True, "shape": list(reference.shape), "elements": int(difference.size),
            "max_code_difference": int(difference.max()), "mismatched_fraction": float((difference > 0).mean()),
            "equal_images": int((difference.reshape(len(difference), -1).max(1) == 0).sum())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("reference")
    parser.add_argument("other")
    parser.add_argument("--output", required=True)
    args = parser.parse_args()
    runs = [np.load(path) for path in (args.reference, args.other)]
    result = dict(compare(runs[0]["codes"], runs[1]["codes"]), machines=[str(run["machine"]) for run in runs])
    with open(args.output, "w") as stream:
        json.dump(result, stream, indent=1)
    print(json.dumps(result))
    sys.exit(0 if result["same_shape"] and result["max_code_difference"] <= 1 else 1)


if __name__ == "__main__":
    main()
