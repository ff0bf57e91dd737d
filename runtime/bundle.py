"""Bundles: a directory (or .tar of one) with the two artefacts and manifest.json.

The manifest is the only contract between toolchain and runtime. Every file is hashed in it
and checked here before anything is loaded; nothing in a bundle is ever unpickled.
"""

import hashlib
import json
import tarfile
import tempfile
from pathlib import Path

from runtime.errors import BundleError
from runtime.wire import WireFormat

MANIFEST_NAME = "manifest.json"
# 2: a deployment of two devices (edge, cloud) replaced the single target; halves say how they are verified
SCHEMA_VERSION = 2
REQUIRED_KEYS = ("schema_version", "bundle_id", "source_model", "split", "codec", "wire",
                 "deployment", "artefacts", "files", "tools")
ROLES = ("edge", "cloud")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(str(path), "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def canonical_json(value) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def compute_bundle_id(manifest: dict) -> str:
    """Hash of everything the manifest says except the id itself; it covers every file's sha256."""
    body = {key: value for key, value in manifest.items() if key != "bundle_id"}
    return hashlib.sha256(canonical_json(body)).hexdigest()[:32]


class Bundle:
    def __init__(self, directory: Path, manifest: dict):
        self.directory = Path(directory)
        self.manifest = manifest
        self.wire = WireFormat.from_manifest(manifest["wire"])

    @property
    def bundle_id(self) -> str:
        return self.manifest["bundle_id"]

    def artefact(self, role: str) -> dict:
        return self.manifest["artefacts"][role]

    def input_spec(self):
        """What one image must be for this bundle's edge half (runtime/inputs.py)."""
        from runtime.inputs import InputSpec

        return InputSpec.from_manifest(self.manifest["source_model"]["input"])

    def open_runner(self, role: str, verified: bool = False, **options):
        """The role's artefact on its device's backend; `verified=True`: on the backend and settings the
        toolchain verified it with (its `verification` entry), which run on any CPU."""
        from runtime.backends import open_runner

        entry = self.artefact(role)
        if verified and "verification" in entry:
            check = entry["verification"]
            return open_runner(check["backend"], self.directory / entry["file"],
                               **dict(check.get("options", {}), **options))
        if "engine" in entry:  # built and cached per device
            options = dict(options, artefact=entry, cache_key="{}-{}".format(self.bundle_id, role))
        return open_runner(entry["backend"], self.directory / entry["file"], **options)


def _read_manifest(directory: Path) -> dict:
    path = directory / MANIFEST_NAME
    if not path.is_file():
        raise BundleError("{} is not a bundle: it has no {}".format(directory, MANIFEST_NAME))
    try:
        manifest = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as error:
        raise BundleError("{} is not valid JSON: {}".format(path, error)) from error
    if not isinstance(manifest, dict):
        raise BundleError("{} must hold a JSON object".format(path))
    return manifest


# schema 1's targets were fixed pairs; as (edge, cloud) devices they are these
SCHEMA_1_TARGETS = {"cpu": ("cpu", "cpu"), "raspberry-pi": ("raspberry-pi", "cpu"),
                    "jetson-nano": ("jetson-nano", "cpu"), "jetson-orin": ("jetson-orin", "cpu"),
                    "cloud-gpu": ("cpu", "cloud-gpu")}


def rebuild_command(manifest: dict) -> str:
    """The build-engines line that makes an older bundle again, from what its manifest says."""
    words = ["build-engines"]
    try:
        model = manifest["source_model"]
        words += ["--model", model["name"]]
        if "input" in model:
            words += ["--input-shape", ",".join(str(size) for size in model["input"]["shape"][1:])]
        edge, cloud = SCHEMA_1_TARGETS.get(manifest.get("target", {}).get("name"), ("cpu", "cpu"))
        words += ["--target", edge, "--cloud", cloud, "--split", manifest["split"]["requested"]]
        codec = manifest["codec"]
        words += ["--codec", codec["name"] + (":" + ",".join("{}={}".format(k, v) for k, v in codec["params"].items())
                                              if codec.get("params") else "")]
        words += ["--lossless", manifest["wire"]["lossless"]]  # the stage --lossless auto chose, if it did
        for option, role in (("--precision", "edge"), ("--cloud-precision", "cloud")):
            if "engine" in manifest["artefacts"][role]:
                words += [option, manifest["artefacts"][role]["precision"]]
    except (KeyError, TypeError, AttributeError):
        pass
    return " ".join(words) + " (with the same --weights, --calib and codec or exit checkpoints, if any)"


def verify_manifest(directory: Path, manifest: dict) -> None:
    version = manifest.get("schema_version")
    if isinstance(version, int) and version < SCHEMA_VERSION:
        raise BundleError("this bundle was written by an older edgesplit (manifest schema {}, this runtime reads {}); "
                          "rebuild it: {}".format(version, SCHEMA_VERSION, rebuild_command(manifest)))
    if version != SCHEMA_VERSION:
        raise BundleError("bundle schema version {!r} is not supported (this runtime reads {})".format(
            version, SCHEMA_VERSION))
    missing = [key for key in REQUIRED_KEYS if key not in manifest]
    if missing:
        raise BundleError("manifest lacks {}".format(", ".join(missing)))
    files = manifest["files"]
    for name, entry in sorted(files.items()):
        path = directory / name
        if "/" in name or "\\" in name or name.startswith(".") or name == MANIFEST_NAME:
            raise BundleError("manifest lists an invalid file name {!r}".format(name))
        if not path.is_file():
            raise BundleError("{} is listed in the manifest but missing".format(name))
        if path.stat().st_size != entry.get("bytes"):
            raise BundleError("{} has {} bytes, the manifest says {}: file modified or truncated".format(
                name, path.stat().st_size, entry.get("bytes")))
        if file_sha256(path) != entry.get("sha256"):
            raise BundleError("{} does not match its sha256 in the manifest: file modified or corrupt".format(name))
    unlisted = sorted(p.name for p in directory.iterdir() if p.name != MANIFEST_NAME and p.name not in files)
    if unlisted:
        raise BundleError("files not in the manifest: {}".format(", ".join(unlisted)))
    for role in ROLES:
        entry = manifest["artefacts"].get(role)
        if entry is None or entry.get("file") not in files:
            raise BundleError("manifest has no hashed {} artefact".format(role))
    if compute_bundle_id(manifest) != manifest["bundle_id"]:
        raise BundleError("bundle id {} does not match the manifest's contents: manifest edited".format(
            manifest["bundle_id"]))


def extract_tar(archive: Path, destination: Path) -> Path:
    """Unpack a bundle .tar holding plain files at top level (no links, no paths)."""
    try:
        with tarfile.open(str(archive)) as tar:
            members = tar.getmembers()
            for member in members:
                name = member.name[2:] if member.name.startswith("./") else member.name
                if not member.isfile() or "/" in name or name.startswith(".."):
                    raise BundleError("{}: member {!r} is not a plain top-level file".format(archive, member.name))
            destination.mkdir(parents=True, exist_ok=True)
            for member in members:
                (destination / Path(member.name).name).write_bytes(tar.extractfile(member).read())
    except tarfile.TarError as error:
        reason = str(error).splitlines()[0].rstrip(":") if str(error) else type(error).__name__
        raise BundleError("{} is not a bundle directory or a readable .tar of one ({})".format(archive, reason)) \
            from error
    return destination


def load_bundle(directory) -> Bundle:
    """Read and verify a bundle directory; raise BundleError naming the first problem."""
    directory = Path(directory)
    if not directory.is_dir():
        raise BundleError("bundle directory {} does not exist".format(directory))
    manifest = _read_manifest(directory)
    verify_manifest(directory, manifest)
    return Bundle(directory, manifest)


def open_bundle(path) -> Bundle:
    """A bundle directory, or a .tar of one unpacked into a private temporary directory, verified."""
    path = Path(path)
    if path.is_file():
        path = extract_tar(path, Path(tempfile.mkdtemp(prefix="edgesplit-bundle-")))
    return load_bundle(path)


def check_artefact_io(bundle: Bundle) -> None:
    """Open each artefact with its backend and compare its inputs/outputs with the manifest."""
    for role in ROLES:
        entry = bundle.artefact(role)
        # a TensorRT artefact ships ONNX, which ONNX Runtime checks on any machine
        runner = bundle.open_runner(role, verified=True)
        for kind, declared, actual in (("input", entry["inputs"], runner.inputs),
                                       ("output", entry["outputs"], runner.outputs)):
            found = [(name, dtype) for name, dtype, _ in actual]
            wanted = [(tensor["name"], tensor["dtype"]) for tensor in declared]
            if found != wanted:
                raise BundleError("{} artefact {}s are {}, the manifest says {}".format(role, kind, found, wanted))
            for tensor in declared:
                if "quantization" in tensor:
                    expected = (tensor["quantization"]["scale"], tensor["quantization"]["zero_point"])
                    if runner.quantization(tensor["name"]) != tuple(expected):
                        raise BundleError("{} artefact's {} is quantized with (scale, zero point) {}, the manifest "
                                          "says {}".format(role, tensor["name"], runner.quantization(tensor["name"]),
                                                           tuple(expected)))
