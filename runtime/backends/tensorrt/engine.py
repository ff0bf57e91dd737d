"""TensorRT engines from a bundle's ONNX, built where TensorRT and the GPU are (Python 3.6+).

An engine only runs on the TensorRT version and GPU it was built with, so bundles ship ONNX
plus a build recipe; the engine is built on the device (by `build-engines` when the build host
has a GPU, by `edgesplit build-engines --bundle PATH`, or by the runtime at first start),
cached outside the bundle and stamped with the TensorRT version, GPU and compute capability.
Creating TensorRT objects without a CUDA device can segfault, so a subprocess probes first.
TensorRT-RTX (RTX GPUs) serves where TensorRT is not installed; it and TensorRT 11 build strongly
typed networks only: precision comes from the ONNX (Q/DQ for int8), not from builder flags.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

from runtime.bundle import file_sha256
from runtime.errors import BundleError

ENGINE_CACHE = Path(os.environ.get("EDGESPLIT_ENGINE_CACHE", "~/.cache/edgesplit/engines")).expanduser()

PROBE = r"""
import json, sys
found = {}
try:
    import tensorrt
    found["tensorrt"] = tensorrt.__version__
except ImportError:
    try:
        import tensorrt_rtx
        found["tensorrt"] = "RTX " + tensorrt_rtx.__version__
    except ImportError:
        print(json.dumps({"reason": "TensorRT is not installed (JetPack ships it; on a server: pip install tensorrt)"}))
        sys.exit()
try:
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        from cuda import cudart
except ImportError:
    cudart = None
if cudart is not None:
    error, count = cudart.cudaGetDeviceCount()
    if int(error) != 0 or count == 0:
        print(json.dumps({"reason": "no CUDA device ({})".format(error)}))
        sys.exit()
    error, properties = cudart.cudaGetDeviceProperties(0)
    name = properties.name
    found["gpu"] = (name.decode(errors="replace") if isinstance(name, bytes) else str(name)).rstrip("\x00")
    found["compute_capability"] = "{}.{}".format(properties.major, properties.minor)
else:
    try:
        import pycuda.driver as cuda
    except ImportError:
        print(json.dumps({"reason": "{} is installed, but neither cuda-python nor pycuda, through which edgesplit "
                                    "finds the GPU (pip install cuda-python; JetPack: pycuda)".format(
                                        "TensorRT " + found["tensorrt"])}))
        sys.exit()
    try:
        cuda.init()
        device = cuda.Device(0)
        found["gpu"] = device.name()
        found["compute_capability"] = "{}.{}".format(*device.compute_capability())
    except Exception as error:
        print(json.dumps({"reason": "no CUDA device reachable through cuda-python or pycuda ({})".format(error)}))
        sys.exit()
print(json.dumps(found))
"""


def probe_device(timeout: float = 120.0) -> dict:
    """{'tensorrt', 'gpu', 'compute_capability'} of this machine, or {'reason'} why engines cannot be built."""
    try:
        result = subprocess.run([sys.executable, "-c", PROBE], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                timeout=timeout, universal_newlines=True)
    except subprocess.TimeoutExpired:
        return {"reason": "the CUDA/TensorRT probe did not answer within {} s".format(timeout)}
    if result.returncode != 0:
        return {"reason": "the CUDA/TensorRT probe crashed (exit {}): {}".format(
            result.returncode, result.stderr.strip().splitlines()[-1:] or "no message")}
    try:
        return json.loads(result.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"reason": "the CUDA/TensorRT probe printed nothing usable: {!r}".format(result.stdout[-200:])}


def stamp_mismatch(stamp: dict, device: dict) -> str:
    """'' when an engine stamped `stamp` runs on `device`, else what differs."""
    differences = ["{} {} (engine) vs {} (here)".format(key, stamp.get(key), device.get(key))
                   for key in ("tensorrt", "gpu", "compute_capability") if stamp.get(key) != device.get(key)]
    return "; ".join(differences)


def import_tensorrt():
    """TensorRT, else TensorRT-RTX: one Python API (the probe has found one of them)."""
    try:
        import tensorrt
    except ImportError:
        import tensorrt_rtx as tensorrt
    return tensorrt


def _network(trt, builder, typed: bool, precision: str, version: str):
    """An empty network: explicit batch on TensorRT 8, strongly typed where precision flags are gone."""
    flags = trt.NetworkDefinitionCreationFlag
    if not typed:
        explicit_batch = getattr(flags, "EXPLICIT_BATCH", None)
        return builder.create_network(0 if explicit_batch is None else 1 << int(explicit_batch))
    if precision == "fp16":
        raise BundleError("TensorRT {} builds strongly typed networks only, and this artefact is float32 ONNX: "
                          "an fp16 engine needs TensorRT 8.2-10.x here, or build the bundle in int8 or fp32 "
                          "(--precision for the edge half, --cloud-precision for the cloud's)".format(version))
    return builder.create_network(1 << int(flags.STRONGLY_TYPED))


def _set_precision(trt, builder, config, precision: str, device: dict) -> None:
    """Weakly typed TensorRT: enable the recipe's precision (int8 scales come from the Q/DQ nodes)."""
    if precision == "fp32":
        return
    if not builder.platform_has_fast_fp16:
        raise BundleError("{} has no fast FP16; build this bundle with --precision fp32".format(device["gpu"]))
    config.set_flag(trt.BuilderFlag.FP16)  # for int8: layers without Q/DQ may fall back to fp16
    if precision == "int8":
        if not builder.platform_has_fast_int8:
            raise BundleError("{} (sm {}) has no INT8 kernels: the Q/DQ network cannot be built here".format(
                device["gpu"], device["compute_capability"]))
        config.set_flag(trt.BuilderFlag.INT8)  # explicit Q/DQ scales; no calibrator


def build_plan(onnx_path: Path, recipe: dict, device: dict, timing: bytes = b"") -> tuple:
    """Parse, configure per `recipe` and build: (the serialized plan, the timing cache after it). TensorRT-RTX
    does this without a GPU, so the tests build every produced ONNX here."""
    trt = import_tensorrt()
    precision = recipe["precision"]
    typed = not hasattr(trt.BuilderFlag, "FP16")  # TensorRT 11 and TensorRT-RTX have no precision flags
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = _network(trt, builder, typed, precision, device["tensorrt"])
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise BundleError("TensorRT {} cannot parse {}: {}".format(device["tensorrt"], onnx_path, "; ".join(errors)))
    config = builder.create_builder_config()
    workspace = int(recipe["workspace_mib"]) << 20
    if hasattr(config, "set_memory_pool_limit"):  # TensorRT >= 8.4
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace)
    else:
        config.max_workspace_size = workspace
    if not typed:  # a strongly typed network runs in its own types
        _set_precision(trt, builder, config, precision, device)
    profile = builder.create_optimization_profile()
    for name, shapes in recipe["profiles"].items():
        profile.set_shape(name, *[tuple(shape) for shape in shapes])
    config.add_optimization_profile(profile)
    config.set_timing_cache(config.create_timing_cache(timing), False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BundleError("TensorRT {} failed to build an engine from {} (see its log above)".format(
            device["tensorrt"], onnx_path))
    return bytes(serialized), bytes(config.get_timing_cache().serialize())


def _check_it_loads(plan: bytes, onnx_path: Path, device: dict) -> None:
    """A plan built here that cannot load here is refused at build time (TensorRT-RTX builds portable plans,
    then refuses GPUs outside its list, an H200's sm 9.0 among them)."""
    trt = import_tensorrt()
    if trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(plan) is None:
        hint = " (TensorRT-RTX is for RTX GPUs; elsewhere install TensorRT: pip install tensorrt)" \
            if device["tensorrt"].startswith("RTX") else ""
        raise BundleError("TensorRT {} built an engine from {} that it cannot load on this {} (sm {}): see its log "
                          "above{}".format(device["tensorrt"], Path(onnx_path).name, device["gpu"],
                                           device["compute_capability"], hint))


def build_engine(onnx_path: Path, plan_path: Path, recipe: dict, device: dict) -> dict:
    """Build, check the plan loads here, write it and its stamp (and the timing cache the next build starts
    from); returns the stamp."""
    cache_path = Path(str(plan_path) + ".timing")
    plan, timing = build_plan(onnx_path, recipe, device, cache_path.read_bytes() if cache_path.exists() else b"")
    _check_it_loads(plan, onnx_path, device)
    plan_path.parent.mkdir(parents=True, exist_ok=True)
    plan_path.write_bytes(plan)
    cache_path.write_bytes(timing)
    stamp = {"tensorrt": device["tensorrt"], "gpu": device["gpu"], "compute_capability": device["compute_capability"],
             "precision": recipe["precision"], "onnx_sha256": file_sha256(onnx_path)}
    Path(str(plan_path) + ".json").write_text(json.dumps(stamp, indent=2))
    return stamp


def _device_or_error(onnx_path: Path) -> dict:
    device = probe_device()
    if "reason" in device:
        raise BundleError("cannot build or run the TensorRT artefact {}: {}".format(Path(onnx_path).name,
                                                                                device["reason"]))
    return device


def engine_for(onnx_path: Path, entry: dict, cache_key: str) -> Path:
    """A plan for this artefact on this device: the cached one, else the bundle's, else a new build
    into the cache. A plan stamped for another TensorRT or GPU is refused, never loaded.
    """
    device = _device_or_error(onnx_path)
    plan_path = ENGINE_CACHE / (cache_key + ".plan")
    stamp_path = Path(str(plan_path) + ".json")
    if plan_path.exists() and stamp_path.exists():
        stamp = json.loads(stamp_path.read_text())
        mismatch = stamp_mismatch(stamp, device)
        if mismatch:
            raise BundleError("the cached engine {} was built elsewhere: {}. Rebuild it here with "
                              "`edgesplit build-engines --bundle PATH`".format(plan_path, mismatch))
        if stamp.get("onnx_sha256") == file_sha256(onnx_path):
            return plan_path
    engine = entry["engine"]
    if engine.get("plan"):
        mismatch = stamp_mismatch(engine["stamp"], device)
        if mismatch:
            raise BundleError("the bundle's {} was built for another device: {}. Build one here with "
                              "`edgesplit build-engines --bundle PATH`".format(engine["plan"], mismatch))
        return Path(onnx_path).parent / engine["plan"]
    build_engine(onnx_path, plan_path, engine["recipe"], device)
    return plan_path


def rebuild_engines(bundle) -> list:
    """Build every TensorRT engine of a bundle (of each of an adaptive bundle's points) here, into the cache:
    [(plan path, stamp)]."""
    built = []
    for point, role in [(point, role) for point in bundle.points for role in point.roles]:
        entry = point.artefact(role)
        if "engine" not in entry:
            continue
        onnx_path = point.directory / entry["file"]
        plan_path = ENGINE_CACHE / "{}-{}.plan".format(point.bundle_id, role)
        built.append((plan_path, build_engine(onnx_path, plan_path, entry["engine"]["recipe"],
                                              _device_or_error(onnx_path))))
    if not built:
        raise BundleError("bundle {} has no TensorRT artefact".format(bundle.bundle_id))
    return built
