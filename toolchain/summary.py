"""The table `build-engines` ends with: what was built for which devices, and how well it does."""

from __future__ import annotations


from rich.table import Table

from runtime.bundle import STRATEGIES, strategy_of
from targets import DEVICES
from toolchain.backends import EXPORTERS
from toolchain.image_formats import TITLES


def half_row(entry: dict, device: dict) -> str:
    """'jetson-nano: TensorRT fp16, opset 13; engine not built here: <reason>' for one half."""
    text = f"{device['name']}: {EXPORTERS[entry['backend']].title} {entry['precision']}"
    if "opset" in entry:
        text += f", opset {entry['opset']}"
    engine = entry.get("engine")
    if engine is not None:
        text += f"; engine built ({engine['plan']})" if engine["plan"] else \
            f"; engine not built here ({engine['not_built']}), the device builds it at first start"
    return text


STRATEGY_TITLES = {"split": "split: the head on the edge device, features sent, the tail in the cloud",
                   "edge-only": "edge-only: the whole model on the edge device, nothing sent, no server",
                   "cloud-only": "cloud-only: the image sent, the whole model in the cloud"}


def build_summary(report) -> Table:
    manifest, checks = report.manifest, report.manifest["checks"]
    strategy = strategy_of(manifest)
    table = Table(title=f"bundle {manifest['bundle_id']} → {report.bundle}", show_header=False)
    model = manifest["source_model"]
    table.add_row("model", f"{model['name']}, weights: {model.get('weights') or 'its own'}")
    table.add_row("strategy", STRATEGY_TITLES[strategy])
    for role in STRATEGIES[strategy]:
        table.add_row(f"{role} half", half_row(manifest["artefacts"][role], manifest["deployment"][role]))
    for role in STRATEGIES[strategy]:
        table.add_row(f"{role} checked with", manifest["artefacts"][role]["verification"]["arithmetic"])
    if strategy == "split":
        table.add_row(*split_row(manifest["split"]))
        table.add_row(*codec_row(manifest["codec"], manifest["wire"]))
    elif strategy == "cloud-only":
        table.add_row("edge device", f"{manifest['deployment']['edge']['name']}: runs no model, sends the image, "
                                     f"{TITLES[manifest['wire'].get('picture') or 'raw']}")
    table.add_row("held-out images", f"{checks['holdout_frames']}: {checks['holdout_origin']}")
    if "float_accuracy" in checks:
        metric = checks.get("accuracy_metric", "accuracy")
        table.add_row(f"float {metric}", f"{checks['float_accuracy']:.2%} on the held-out images" + (
            f" ({checks['labeled_output']}, mean IoU {checks['float_miou']:.3f})" if "float_miou" in checks else ""))
        table.add_row(f"bundle {metric}", f"{checks['bundle_accuracy']:.2%} "
                      f"({100 * (checks['bundle_accuracy'] - checks['float_accuracy']):+.2f} pt"
                      + (f", mean IoU {checks['bundle_miou']:.3f})" if "bundle_miou" in checks else ")"))
    elif "float_target_error" in checks:
        table.add_row("error to the targets", f"{checks['labeled_output']}: float model {checks['float_target_error']:.3g}"
                                              f", bundle {checks['bundle_target_error']:.3g} (relative, on the "
                                              "held-out images' labels)")
    elif checks.get("labels_unused"):
        table.add_row("accuracy", "not measured: the model has no class output (one score per class), so the "
                                  "images' labels are not used (--max-loss not checked; closeness to the float "
                                  "model is)")
    else:
        table.add_row("accuracy", "not measured: the held-out images have no labels (--max-loss not checked; "
                                  "agreement with the float model is)")
    for name, result in checks["outputs"].items():
        measured = f"top-1 agreement {result['top1_agreement']:.2%}" if "top1_agreement" in result else \
            f"pixel agreement {result['pixel_agreement']:.2%}" if "pixel_agreement" in result else \
            f"relative error {result['relative_error']:.2g}"
        table.add_row(f"output {name}", f"{result['kind']}: {measured} with the float model")
    if strategy == "split":
        for row in wire_rows(manifest["split"], checks):
            table.add_row(*row)
    else:
        table.add_row("bytes per frame", "nothing sent" if strategy == "edge-only" else
                      f"{checks['mean_payload_bytes']:,.1f} payload (the image raw: {checks['image_bytes']['raw']:,.0f})")
    if "exit" in checks:
        for row in exit_rows(manifest["exit"], checks):
            table.add_row(*row)
    if "wire_clipped_share" in checks:
        low, high = checks["wire_range"]
        table.add_row("wire range", f"{low:.3g} to {high:.3g} (the calibration images' min/max): "
                                    f"{checks['wire_clipped_share']:.2%} of held-out feature values beyond it, clipped")
    if "codec_range" in checks and "wire_range" not in checks:  # on the Pi the artefact's own range is the wire's
        table.add_row("codec range", range_row(checks["codec_range"]))
    for role in STRATEGIES[strategy]:
        if f"{role}_calibration" in checks:
            table.add_row(f"{role} int8 ranges", int8_ranges_row(checks[f"{role}_calibration"]))
        if f"{role}_higher_precision" in checks:
            kept = checks[f"{role}_higher_precision"]
            table.add_row(f"{role} kept in {kept['precision']}", higher_precision_row(kept))
    differences = [difference_words(checks, role, strategy) for role in STRATEGIES[strategy]
                   if f"{role}_max_abs_error" in checks]  # an integer-only artefact has its own checks
    if differences:
        table.add_row("halves vs PyTorch", ", ".join(differences))
    table.add_row("build time", f"{report.seconds:.1f} s" + (" (a bundle built before from the same model, images "
                                                             "and code, reused: EDGESPLIT_CACHE)" if report.reused
                                                             else ""))
    return table


def difference_words(checks: dict, role: str, strategy: str) -> str:
    """A split's edge writes codes, whose steps count; the rest write the model's outputs (logits, boxes)."""
    largest = checks[f"{role}_max_abs_error"]
    if role == "edge" and strategy == "split":
        return f"edge codes differ by up to {largest:.3g} steps ({checks[f'{role}_mismatched_fraction']:.2%} differ)"
    return f"{role} outputs max |Δ| {largest:.3g}"


def answer_words(score: dict) -> str:
    agreement = "" if score["agreement"] is None else f"{score['agreement']:.2%} agreement, "
    return f"{agreement}error {score['relative_error']:.2g}"


def range_row(chosen: dict, reference: str = "the float model's") -> str:
    scored = "; ".join(f"{method}: {answer_words(score)}" for method, score in chosen["candidates"].items())
    return f"{chosen['method']}, whose answers on {chosen['frames']} calibration images kept {reference} best " \
           f"({scored})"


def int8_ranges_row(chosen: dict) -> str:
    clipped = f"{chosen['clipped_tensors']} of {chosen['tensors']} activations clip outliers"
    placed = dict(chosen, method=f"{chosen['method']} at {chosen['placement']}")
    return range_row(placed, reference="the float half's") + f"; {clipped}"


def higher_precision_row(kept: dict) -> str:
    """Which layers an INT8 half keeps in higher precision, and what that costs: their share of its
    multiply-accumulates, in the backend's words."""
    return (f"{len(kept['layers'])} of {kept['of']} int8 layers, the most sensitive, to meet the bounds "
            f"(--strict-int8 refuses instead): {', '.join(kept['layers'])}; {kept['macs_share']:.1%} of the half's "
            f"multiply-accumulates, {kept['cost']}; found in {kept['search_seconds']:.0f} s{screened(kept)}")


def screened(kept: dict) -> str:
    if kept["measured"] == kept["of"]:
        return ", each layer measured alone"
    return f", the {kept['measured']} worst of one run's screen measured alone"


def split_row(split: dict) -> tuple[str, str]:
    return "split", (f"{split['module'] or split['node']} (node {split['node']}), "
                     f"tensor {' + '.join('x'.join(map(str, shape)) for shape in split['shapes'])}")


def codec_row(codec: dict, wire: dict) -> tuple[str, str]:
    origin = f" (shipped with the model: {codec['shipped']})" if "shipped" in codec else ""
    return "codec", (codec["name"] + "".join(f" {k}={v}" for k, v in codec["params"].items())
                     + f", lossless {wire['lossless']}{origin}")


def wire_rows(split: dict, checks: dict) -> list[tuple[str, str]]:
    """Bytes per frame, against sending the image instead."""
    payload, images = checks["mean_payload_bytes"], checks["image_bytes"]
    verdict = "" if payload < min(images.values()) else " (sending the image is smaller: split later, or use a " \
        "learned codec)"
    return [("bytes per frame", f"{payload:,.1f} of payload on the wire, before the frame's header (the split "
                                f"tensor as fp32: {split['fp32_bytes']:,})"),
            ("instead of the image", "; ".join(f"{TITLES[name]} {size:,.0f} B: {size / payload:,.1f}x the wire"
                                               for name, size in images.items()) + verdict)]


def exit_rows(entry: dict, checks: dict) -> list[tuple[str, str]]:
    measured, calibration = checks["exit"], entry["calibration"]
    how = "given" if calibration.get("given") else (
        f"calibrated on {calibration['frames']} calibration images: exits change {calibration['changed_answers']:.1%} "
        f"of the cloud's answers there, limit {calibration['max_loss_points']:g}%")
    accuracy = "" if "accuracy" not in measured else \
        f", accuracy {measured['accuracy']:.2%} ({100 * (measured['accuracy'] - checks['float_accuracy']):+.2f} pt)"
    return [("early exit", f"threshold {measured['threshold']:.3f} nats ({how})"),
            ("with early exit", f"{measured['offload_rate']:.1%} of held-out frames sent{accuracy}, agreement "
                                f"{measured['top1_agreement']:.2%}; {measured['mean_payload_bytes_all_frames']:,.1f} B "
                                "per frame over all frames")]


def device_rows() -> list[dict]:
    return [{"device": d.name, "halves": ", ".join(d.roles), "backend": EXPORTERS[d.backend].title,
             "precision": d.precision, "refuses": ", ".join(d.refused_precisions) or "-", "opset": d.onnx_opset,
             "default cloud": d.default_cloud or "-", "description": d.description} for d in DEVICES.values()]


def markdown_table(rows: list[dict], columns: list[str] | None = None) -> str:
    """The rows' `columns` (default: every key of the first row) as a Markdown table; None is an empty cell."""
    columns = columns or list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return "\n".join(lines + ["| " + " | ".join("" if row[c] is None else str(row[c]) for c in columns) + " |"
                              for row in rows])


def rich_table(title: str, rows: list[dict]) -> Table:
    table = Table(title=title)
    for column in rows[0]:
        table.add_column(column)
    for row in rows:
        table.add_row(*(str(value) for value in row.values()))
    return table
