"""`edgesplit export-triton`: a Triton Inference Server model repository for a bundle's cloud side.

    REPO/
      NAME/                  ensemble: PAYLOAD (uint8 [fixed]) + BUNDLE_ID (uint8 [16]) → the model's outputs
        config.pbtxt, 1/
      NAME_decode/           Python backend: payload → the tail's inputs (runtime/wire.py, its limits)
        config.pbtxt
        1/model.py           imports runtime.transports.triton.models from the copy beside it
        1/runtime/           edgesplit's runtime package (numpy; zstandard/lz4 for those stages)
        1/bundle/            the bundle, verified when the model loads
      NAME_tail/             the cloud half, dynamically batched over N instances:
        config.pbtxt         a TensorRT plan or ONNX (Triton's own backends: --tail native), or
        1/model.onnx|plan    ONNX Runtime inside a Python model (--tail python, for builds without
        1/model.py           an onnxruntime backend)

Every model's config carries the bundle id; an edge checks it before sending (runtime/transports/triton/edge.py).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import NamedTuple

from runtime.bundle import Bundle, open_bundle
from runtime.transports.triton import (BUNDLE_FOLDER, BUNDLE_ID, BUNDLE_ID_PARAMETER, PAYLOAD, SERVER_ENVIRONMENT, SERVER_OPTIONS,
                            VERSION, model_names, payload_size)
from targets import get_device
from toolchain.backends import exporter
from toolchain.errors import EdgesplitError

RUNTIME = Path(__file__).resolve().parents[1] / "runtime"
TAILS = ("native", "python")  # Triton's own backend for the artefact, or ONNX Runtime in a Python model
TRITON_TYPES = {"uint8": "TYPE_UINT8", "int8": "TYPE_INT8", "float32": "TYPE_FP32", "float16": "TYPE_FP16",
                "int32": "TYPE_INT32", "int64": "TYPE_INT64", "bool": "TYPE_BOOL"}
SHIM = """import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), {relative!r}))  # edgesplit's runtime
from runtime.transports.triton.models import {model} as TritonPythonModel  # noqa: E402
"""


class RepositoryOptions(NamedTuple):
    bundle: Path
    output: Path
    name: str = "edgesplit"
    instances: int = 1
    max_batch: int = 32
    max_queue_delay_us: int = 2000
    tail: str = "native"
    threads: int | None = None  # ONNX Runtime threads per instance of a Python tail
    trust: Path | None = None  # the models verify the bundle's signature with this key when they load


def _tensor(tensor: dict) -> str:
    dtype = tensor["dtype"]
    if dtype not in TRITON_TYPES:
        raise EdgesplitError(f"tensor {tensor['name']} is {dtype}, which this exporter cannot describe to Triton")
    dims = ", ".join(str(size) for size in tensor["shape"][1:])
    return f'{{ name: "{tensor["name"]}" data_type: {TRITON_TYPES[dtype]} dims: [ {dims} ] }}'


def _tensors(tensors: list) -> str:
    return "[\n  " + ",\n  ".join(_tensor(tensor) for tensor in tensors) + "\n]"


def _parameters(values: dict) -> str:
    return "".join(f'parameters {{ key: "{key}" value: {{ string_value: "{value}" }} }}\n'
                   for key, value in values.items() if value)


def _batched(options: RepositoryOptions, kind: str, count: int) -> str:
    return (f"max_batch_size: {options.max_batch}\n"
            f"dynamic_batching {{ max_queue_delay_microseconds: {options.max_queue_delay_us} }}\n"
            f"instance_group [ {{ kind: {kind} count: {count} }} ]\n")


def _edge_inputs(bundle: Bundle) -> list:
    from runtime.protocol import BUNDLE_ID_BYTES

    return [{"name": PAYLOAD, "dtype": "uint8", "shape": ["batch", payload_size(bundle.wire)]},
            {"name": BUNDLE_ID, "dtype": "uint8", "shape": ["batch", BUNDLE_ID_BYTES]}]


def _maps(kind: str, tensors: list) -> str:
    """An ensemble step's input_map / output_map entries, each tensor under its own name."""
    return "".join(f' {kind}_map {{ key: "{t["name"]}" value: "{t["name"]}" }}' for t in tensors)


def _ensemble(options: RepositoryOptions, bundle: Bundle, names: dict) -> str:
    cloud = bundle.artefact("cloud")
    decode = _maps("input", _edge_inputs(bundle)) + _maps("output", cloud["inputs"])
    tail = _maps("input", cloud["inputs"]) + _maps("output", cloud["outputs"])
    return (f'name: "{names["ensemble"]}"\nplatform: "ensemble"\nmax_batch_size: {options.max_batch}\n'
            f"input {_tensors(_edge_inputs(bundle))}\noutput {_tensors(cloud['outputs'])}\n"
            f"ensemble_scheduling {{ step [\n"
            f'  {{ model_name: "{names["decode"]}" model_version: -1{decode} }},\n'
            f'  {{ model_name: "{names["tail"]}" model_version: -1{tail} }}\n'
            f"] }}\n" + _parameters({BUNDLE_ID_PARAMETER: bundle.bundle_id}))


def _python_model(directory: Path, model: str, runtime_folder: str) -> None:
    """A version folder whose model.py is the runtime's `model` class, found in `runtime_folder` (relative)."""
    (directory / "model.py").write_text(SHIM.format(relative=runtime_folder, model=model))


def _decode(options: RepositoryOptions, bundle: Bundle, names: dict, native: dict, folder: Path) -> str:
    version = folder / VERSION
    shutil.copytree(bundle.directory, version / BUNDLE_FOLDER)
    shutil.copytree(RUNTIME, version / "runtime", ignore=shutil.ignore_patterns("__pycache__", "*.md"))
    _python_model(version, "Decode", ".")
    cloud = bundle.artefact("cloud")
    settings = {BUNDLE_ID_PARAMETER: bundle.bundle_id, "decode_model": names["decode"], **native,
                "trust": options.trust and str(options.trust.resolve())}
    return (f'name: "{names["decode"]}"\nbackend: "python"\n' + _batched(options, "KIND_CPU", 1)
            + f"input {_tensors(_edge_inputs(bundle))}\noutput {_tensors(cloud['inputs'])}\n" + _parameters(settings))


def _tail(options: RepositoryOptions, bundle: Bundle, names: dict, folder: Path) -> tuple[str, dict]:
    """The tail's config and what the decode model checks of a native tail's file."""
    cloud = bundle.artefact("cloud")
    version = folder / VERSION
    version.mkdir(parents=True)
    io = f"input {_tensors(cloud['inputs'])}\noutput {_tensors(cloud['outputs'])}\n"
    if options.tail == "python":
        _python_model(version, "Tail", f"../../{names['decode']}/{VERSION}")
        settings = {BUNDLE_ID_PARAMETER: bundle.bundle_id, "decode_model": names["decode"],
                    "threads": options.threads, "trust": options.trust and str(options.trust.resolve())}
        return (f'name: "{names["tail"]}"\nbackend: "python"\n' + _batched(options, "KIND_CPU", options.instances)
                + io + _parameters(settings)), {}
    backend = exporter(get_device(bundle.manifest["deployment"]["cloud"]["name"], "cloud"))
    if backend.triton_tail is None:
        raise EdgesplitError(f"Triton has no backend for {backend.title} artefacts: export with --tail python")
    served = backend.triton_tail(cloud)
    if served.source not in bundle.manifest["files"]:
        raise EdgesplitError(f"the bundle lists no file {served.source} for its cloud half")
    shutil.copy2(bundle.directory / served.source, version / served.file)
    config = (f'name: "{names["tail"]}"\nplatform: "{served.platform}"\ndefault_model_filename: "{served.file}"\n'
              + _batched(options, served.kind, options.instances) + io + served.config
              + _parameters({BUNDLE_ID_PARAMETER: bundle.bundle_id}))
    return config, {"tail_artefact": f"{names['tail']}/{VERSION}/{served.file}", "tail_source": served.source}


def check_options(options: RepositoryOptions) -> None:
    if options.tail not in TAILS:
        raise EdgesplitError(f"--tail must be one of {', '.join(TAILS)}, got {options.tail!r}")
    for flag, value, least in (("--instances", options.instances, 1), ("--max-batch", options.max_batch, 1),
                               ("--max-queue-delay-us", options.max_queue_delay_us, 0)):
        if value < least:
            raise EdgesplitError(f"{flag} must be at least {least}, got {value}")
    if not options.name.replace("_", "").replace("-", "").isalnum():
        raise EdgesplitError(f"--name must be letters, digits, '-' and '_', got {options.name!r}")


def export_repository(options: RepositoryOptions) -> dict:
    """Write the repository (replacing one edgesplit wrote before); the names of its models."""
    check_options(options)
    bundle = open_bundle(options.bundle, options.trust)
    output, names = Path(options.output), model_names(options.name)
    if output.exists():
        if any(output.iterdir()) and not (output / names["ensemble"] / "config.pbtxt").exists():
            raise EdgesplitError(f"{output} exists and is not a repository this command wrote: refusing to replace it")
        shutil.rmtree(output)
    try:
        _write(options, bundle, names, output)
    except OSError as error:
        raise EdgesplitError(f"cannot write the repository {output}: {error.strerror or error}") from error
    return dict(names, bundle_id=bundle.bundle_id)


def _write(options: RepositoryOptions, bundle: Bundle, names: dict, output: Path) -> None:
    folders = {role: output / name for role, name in names.items()}
    tail_config, native = _tail(options, bundle, names, folders["tail"])
    (folders["tail"] / "config.pbtxt").write_text(tail_config)
    folders["decode"].mkdir(parents=True)
    (folders["decode"] / "config.pbtxt").write_text(_decode(options, bundle, names, native, folders["decode"]))
    (folders["ensemble"] / VERSION).mkdir(parents=True)
    (folders["ensemble"] / "config.pbtxt").write_text(_ensemble(options, bundle, names))


def server_command(repository: Path) -> str:
    """How to start tritonserver on the repository so that an oversized request costs only while it lasts."""
    environment = " ".join(f"{key}={value}" for key, value in SERVER_ENVIRONMENT.items())
    return f"{environment} tritonserver --model-repository={repository} {' '.join(SERVER_OPTIONS)}"
