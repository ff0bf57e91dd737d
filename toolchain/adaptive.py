"""Operating points in one bundle: several built bundles of one model, and the table of which runs at which rate.

`compose` copies each point's files into one folder — a file two points hold alike is stored once (a cloud half
two heads share, one head with two exits) — renames the rest per point, and writes the adaptive manifest: each
point's own manifest, rewritten for the new names, and the table (runtime/bundle.py verifies it; the edge follows
it in runtime/adaptive.py). The table comes from a plan: `edgesplit optimize` writes one from its winners per rate,
`edgesplit compose-bundle --at RATE BUNDLE ...` from the user's.
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

from runtime.bundle import ADAPTIVE, MAX_POINTS, SCHEMA_VERSION, Bundle, camera, compute_bundle_id, open_bundle
from toolchain.bundle import finish_bundle, staging_directory
from toolchain.errors import BundleError


def point_name(bundle: Bundle) -> str:
    """A point in words: where the model runs, and for a split its cut, codec and exit."""
    manifest = bundle.manifest
    if bundle.strategy == "cloud-only":
        return f"cloud-only {bundle.wire.picture or 'raw'}"
    if bundle.strategy != "split":
        return bundle.strategy
    codec = manifest["codec"]["name"] + "".join(f",{k}={v}" for k, v in manifest["codec"].get("params", {}).items())
    exits = f" exit {manifest['exit']['threshold']:.3g}" if (manifest.get("exit") or {}).get("threshold") else ""
    return f"{manifest['split']['requested']} {codec.replace(',', ':', 1)}{exits}"


def check_alike(points: list[Bundle]) -> None:
    """One camera's images on one edge device, every point answering with the same outputs (one model, pruned
    or not): the edge runs any of them on any frame."""
    first = points[0]
    for point in points[1:]:
        if camera(point.manifest) != camera(first.manifest):
            raise BundleError(f"{point.directory} takes other images than {first.directory} (input shape or resize): "
                              "an adaptive bundle's points run on the same frames")
        if point.manifest["deployment"].get("edge", {}).get("name") != first.manifest["deployment"].get(
                "edge", {}).get("name") and "edge" in point.roles and "edge" in first.roles:
            raise BundleError(f"{point.directory} runs on another edge device than {first.directory}")
        if [(t["name"], t["shape"][1:]) for t in point.answers] != [(t["name"], t["shape"][1:]) for t in first.answers]:
            raise BundleError(f"{point.directory} answers with other outputs than {first.directory}")


def renamed(point: Bundle, index: int, stored: dict[str, str], staging: Path) -> dict:
    """The point's manifest with its files stored in `staging` (`stored`: sha256 -> name there, shared across
    points), each artefact naming its file's new name, and its own id again."""
    manifest = copy.deepcopy(point.manifest)
    names = {}
    for name, entry in manifest["files"].items():
        if entry["sha256"] not in stored:
            stored[entry["sha256"]] = f"p{index}-{name}"
            shutil.copy2(point.directory / name, staging / stored[entry["sha256"]])
        names[name] = stored[entry["sha256"]]
    manifest["files"] = {names[name]: entry for name, entry in manifest["files"].items()}
    for artefact in manifest["artefacts"].values():
        artefact["file"] = names[artefact["file"]]
        engine = artefact.get("engine") or {}
        if engine.get("plan"):
            engine["plan"] = names[engine["plan"]]
    manifest["bundle_id"] = compute_bundle_id(manifest)
    return manifest


def compose(plan: list[tuple[float, Path]], output: Path, trust: Path | None = None) -> dict:
    """An adaptive bundle at `output` from (lowest uplink rate in bits/s, bundle) rows: from each rate up to the
    next, that bundle runs; below the lowest, the lowest's. A bundle named at several rates is one point."""
    rates = [rate for rate, _ in plan]
    if len(set(rates)) != len(rates) or any(not 0 <= rate < float("inf") for rate in rates):
        raise BundleError(f"each rate of an adaptive bundle's table must be a distinct number >= 0, got {rates}")
    plan = sorted(plan, key=lambda row: row[0])
    if any(Path(path).resolve() == Path(output).resolve() for _, path in plan):
        raise BundleError(f"--output {output} is one of the bundles to compose: write the adaptive bundle elsewhere")
    opened = {}
    for _, path in plan:
        if str(path) not in opened:
            bundle = open_bundle(path, trust)
            if bundle.strategy == ADAPTIVE:
                raise BundleError(f"{path} is adaptive already: compose the bundles of its points instead")
            opened[str(path)] = bundle
    points = list({bundle.bundle_id: bundle for bundle in opened.values()}.values())
    if not 2 <= len(points) <= MAX_POINTS:
        raise BundleError(f"an adaptive bundle holds 2 to {MAX_POINTS} different bundles, got {len(points)}")
    check_alike(points)
    staging, stored = staging_directory(output), {}
    names = [point_name(point) for point in points]
    entries = [{"name": name if names.count(name) == 1 else f"{name} ({index})",
                "manifest": renamed(point, index, stored, staging)} for index, (name, point) in
               enumerate(zip(names, points))]
    index_of = {point.bundle_id: index for index, point in enumerate(points)}
    first = points[0].manifest
    manifest = {"schema_version": SCHEMA_VERSION, "strategy": ADAPTIVE, "source_model": first["source_model"],
                "deployment": first["deployment"], "tools": first["tools"], "artefacts": {}, "points": entries,
                "table": [{"rate_bps": float(rate), "point": index_of[opened[str(path)].bundle_id]}
                          for rate, path in plan]}
    return finish_bundle(staging, output, manifest, tar=False)


def compose_winners(choices, bundles: dict[str, str], output: Path) -> Path | None:
    """`edgesplit optimize`'s winners per rate (`choices`, their bundles by name) as one adaptive bundle at `output`:
    from each rate up, the point that won there. None when one point won every rate that was built."""
    plan = {choice.rate: Path(bundles[choice.winner.name]) for choice in choices if choice.winner.name in bundles}
    if len(set(plan.values())) < 2:
        return None
    compose(list(plan.items()), output)
    return output


def carried_from(bundle: Bundle, fps: float, headroom: float = 1.5) -> float:
    """The uplink rate (bits/s) that carries a point's frames at a camera's `fps` with `headroom` to spare: its
    mean frame on the wire (the protocol's header and TCP/IP's counted) for the share its exit sends; 0 for the
    whole model on the device."""
    from runtime.protocol import frame_bytes
    from toolchain.planning import bundle_payload, estimate_rate, link_bytes

    if bundle.strategy == "edge-only":
        return 0.0
    sent = (bundle.manifest["checks"].get("exit") or {}).get("offload_rate", 1.0)
    frame = link_bytes(frame_bytes(bundle_payload(bundle.manifest)))
    return headroom * estimate_rate(1, fps, sent, frame).per_camera_bps
