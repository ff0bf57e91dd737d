"""Compare runs of `edge_codes.py` with a reference run: codes element by element, and the cloud's answers.

    python compare_codes.py --bundle B.tar --source images.npz --output codes.json REF.npz OTHER.npz [...] \
        [--context OTHER.npz ...]
Exits 1 unless every OTHER run has the reference's shape, codes at most one apart and the cloud's
top-1 answers agreeing on 99 % of the images. `--context` runs are reported, not judged: TFLite's
builtin int8 kernels round differently from XNNPACK's, and one code early in the network can grow
to several by the split.
"""

import argparse
import json
import sys

import numpy as np

MIN_AGREEMENT = 0.99
MAX_DIFFERENCE = 1


def compare(reference: np.ndarray, other: np.ndarray) -> dict:
    if reference.shape != other.shape:
        return {"same_shape": False, "shapes": [list(reference.shape), list(other.shape)]}
    difference = np.abs(reference.astype(np.int32) - other.astype(np.int32))
    return {"same_shape": True, "shape": list(reference.shape), "elements": int(difference.size),
            "max_code_difference": int(difference.max()), "mismatched_fraction": float((difference > 0).mean()),
            "equal_images": int((difference.reshape(len(difference), -1).max(1) == 0).sum())}


def main() -> None:
    from runtime.bundle import open_bundle
    from runtime.images import open_source
    from runtime.local import CloudHalf

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("reference")
    parser.add_argument("others", nargs="+")
    parser.add_argument("--context", nargs="*", default=[], help="Runs reported beside, not judged.")
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--source", required=True, help="The images the codes came from (for their labels).")
    parser.add_argument("--output", required=True)
    args = parser.parse_args()
    bundle = open_bundle(args.bundle)
    reference = np.load(args.reference)
    labels = np.array([frame.label for frame in open_source(args.source, bundle.input_spec())])
    cloud = CloudHalf(bundle, threads=1)

    def answers(codes: np.ndarray) -> np.ndarray:
        return cloud.logits(codes).argmax(1)

    expected = answers(reference["codes"])
    results = {"reference": str(reference["run"]), "reference_accuracy": float((expected == labels[:len(expected)]).mean()),
               "runs": []}
    passed = True
    for path in args.others + args.context:
        run = np.load(path)
        result = dict(compare(reference["codes"], run["codes"]), run=str(run["run"]))
        if result["same_shape"]:
            got = answers(run["codes"])
            result.update(top1_agreement=float((got == expected).mean()),
                          accuracy=float((got == labels[:len(got)]).mean()))
        result["judged"] = path in args.others
        if result["judged"]:
            passed = passed and result.get("top1_agreement", 0) >= MIN_AGREEMENT \
                and result["max_code_difference"] <= MAX_DIFFERENCE
        results["runs"].append(result)
    with open(args.output, "w") as stream:
        json.dump(results, stream, indent=1)
    print(json.dumps(results))
    sys.exit(0 if passed else 1)


if __name__ == "__main__":
    main()
