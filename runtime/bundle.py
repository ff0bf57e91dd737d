"""Bundles: a directory (or .tar of one) with the two artefacts and manifest.json.

The manifest is the only contract between toolchain and runtime. Every file is hashed in it
and checked here before anything is loaded; nothing in a bundle is ever unpickled. A bundle is
a file from outside: a .tar is checked member by member (plain files, bounded count and size)
before a byte is extracted, extracted by streaming, and its temporary directory removed when
the bundle is no longer used; every malformed manifest is a BundleError. Given a trusted key,
the manifest's Ed25519 signature is checked before anything else is read (runtime/signing.py).
"""

import hashlib
import json
import shutil
import tarfile
import tempfile
import weakref
from pathlib import Path

from runtime.errors import BundleError, WireError
from runtime.signing import SIGNATURE_NAME, check_signature, verify_signature
from runtime.wire import WireFormat

MANIFEST_NAME = "manifest.json"
# 2: a deployment of two devices (edge, cloud) replaced the single target; halves say how they are verified
SCHEMA_VERSION = 2
REQUIRED_KEYS = ("schema_version", "bundle_id", "source_model", "deployment", "artefacts", "files", "tools")
CROSSING_KEYS = ("split", "codec", "wire")  # what a bundle that sends frames says of them
ROLES = ("edge", "cloud")
# where the model runs, and the halves each strategy ships: a split, the whole model on the edge device (no
# server), or the whole model on the cloud device with the image sent (the edge runs no model)
STRATEGIES = {"split": ROLES, "edge-only": ("edge",), "cloud-only": ("cloud",)}
ABSENT_HALF = {
    "cloud": "it is edge-only: the whole model runs on the edge device; run it with `edgesplit edge`, no server needed",
    "edge": "it is cloud-only: the edge sends the image and runs no model"}
# several of those in one bundle, each an operating point, and which one to run at which uplink rate (issue 34)
ADAPTIVE = "adaptive"
MAX_POINTS = 16  # a FEATURES payload names its point in one byte; a bundle holds at most MAX_FILES files anyway
MAX_TABLE_ROWS = 64
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
MAX_MANIFEST_DEPTH = 32  # an edgesplit manifest nests 6 deep
MAX_FILES = 64  # a bundle holds two artefacts, their sidecars and the manifest
MAX_BUNDLE_BYTES = 2 * 1024 ** 3  # all files together; a ResNet-50 cloud half is ~100 MB
MAX_HEADER_BYTES = 64 * 1024  # a member's long-name or pax header: a bundle's file names are short
# an archive unpacks to at most this many times its own size (weights compress 1-3x; zeros 1000x and more), or
# EXPANSION_FLOOR, whichever is more: a 1 MB .tar.gz or .tar.bz2 of zeros is refused at its headers
MAX_EXPANSION = 100
EXPANSION_FLOOR = 64 * 1024 ** 2
HEADER_TYPES = (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE, tarfile.XGLTYPE,
                tarfile.SOLARIS_XHDTYPE)


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
        self.strategy = strategy_of(manifest)
        self.wire = None  # an edge-only bundle sends nothing, an adaptive one what its point does
        self._points = []  # an adaptive bundle's operating points, each a bundle of its own in the same folder
        if self.strategy == ADAPTIVE:
            self._points = [Bundle(directory, entry["manifest"]) for entry in manifest["points"]]
        elif self.strategy != "edge-only":
            try:
                self.wire = WireFormat.from_manifest(manifest["wire"])
            except (KeyError, TypeError, ValueError, WireError) as error:
                raise BundleError("the manifest's wire entry is malformed: {}".format(error)) from error

    @property
    def bundle_id(self) -> str:
        return self.manifest["bundle_id"]

    @property
    def points(self) -> list:
        """The operating points: an adaptive bundle's, else this one (not stored: a bundle that held itself would
        outlive its last user, and its unpacked .tar with it)."""
        return self._points or [self]

    @property
    def roles(self):
        return STRATEGIES.get(self.strategy, ())

    @property
    def answers(self) -> list:
        """The outputs a frame's answer holds (the answering half's; an adaptive bundle's points all share them)."""
        return self.points[0].artefact(self.points[0].answering_role)["outputs"]

    @property
    def table(self) -> list:
        """An adaptive bundle's plan: (lowest uplink rate in bits/s, point index) rows, rising."""
        return [(row["rate_bps"], row["point"]) for row in self.manifest["table"]]

    def point_name(self, index: int) -> str:
        """An adaptive bundle's point in words."""
        return self.manifest["points"][index]["name"]

    @property
    def answering_role(self) -> str:
        return answering_role(self.strategy)

    def artefact(self, role: str) -> dict:
        if self.strategy == ADAPTIVE:
            raise BundleError("bundle {} holds {} operating points, each with its own halves: `edgesplit serve` "
                              "serves it and `edgesplit edge` runs it over TCP; Triton and the other commands take "
                              "one point's bundle".format(self.bundle_id, len(self.points)))
        if role not in self.roles:
            raise BundleError("bundle {} has no {} half ({})".format(self.bundle_id, role, ABSENT_HALF[role]))
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


def _manifest_bytes(directory: Path) -> bytes:
    path = directory / MANIFEST_NAME
    if not path.is_file():
        raise BundleError("{} is not a bundle: it has no {}".format(directory, MANIFEST_NAME))
    if path.stat().st_size > MAX_MANIFEST_BYTES:
        raise BundleError("{} is over {} bytes: not a manifest".format(path, MAX_MANIFEST_BYTES))
    return path.read_bytes()


def _parse_manifest(path: Path, data: bytes) -> dict:
    try:
        manifest = json.loads(data.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        reason = "an integer of over 4,300 digits" if "int_max_str_digits" in str(error) else str(error)
        raise BundleError("{} is not valid JSON: {}".format(path, reason)) from error
    except RecursionError:
        raise BundleError("{} nests too deeply to be a manifest".format(path)) from None
    if not isinstance(manifest, dict):
        raise BundleError("{} must hold a JSON object".format(path))
    if nesting(manifest) > MAX_MANIFEST_DEPTH:  # code that walks it recursively would hit Python's limit
        raise BundleError("{} nests more than {} levels deep: not a manifest".format(path, MAX_MANIFEST_DEPTH))
    return manifest


def nesting(value) -> int:
    """How deep lists and objects nest in parsed JSON, counted without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        value, depth = stack.pop()
        children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return deepest


def answering_role(strategy: str) -> str:
    """The half whose outputs are the model's answers: the cloud's, but for edge-only."""
    return "edge" if strategy == "edge-only" else "cloud"


def answer_shape(tensor: dict) -> tuple:
    """A manifest output's shape as the model returns it, without the batch axis (an integer-only artefact may
    hold it in another layout: its `answer_shape` says so)."""
    return tuple(tensor.get("answer_shape", tensor["shape"][1:]))


def strategy_of(manifest: dict) -> str:
    """Where the bundle's model runs (STRATEGIES); a manifest that does not say is a split."""
    strategy = manifest.get("strategy", "split")
    if strategy not in STRATEGIES and strategy != ADAPTIVE:
        raise BundleError("the manifest's strategy must be one of {}, got {!r}".format(
            ", ".join(list(STRATEGIES) + [ADAPTIVE]), strategy))
    return strategy


def _check_structure(manifest: dict) -> None:
    """The types verify_manifest relies on, so that a malformed manifest is named, not a traceback."""
    files, artefacts, roles = manifest["files"], manifest["artefacts"], STRATEGIES.get(strategy_of(manifest), ())
    if not isinstance(files, dict) or not all(
            isinstance(entry, dict) and isinstance(entry.get("sha256"), str) and type(entry.get("bytes")) is int
            for entry in files.values()):
        raise BundleError("the manifest's files must map each file name to its sha256 and bytes")
    if len(files) > MAX_FILES:
        raise BundleError("the manifest lists {} files; a bundle has at most {}".format(len(files), MAX_FILES))
    if not isinstance(artefacts, dict) or sorted(artefacts) != sorted(roles) or \
            not all(isinstance(artefacts[role], dict) for role in roles):
        raise BundleError("the manifest's artefacts must describe the {} half, as its strategy ships".format(
            " and the ".join(roles)))
    for role in roles:
        for kind in ("inputs", "outputs"):
            tensors = artefacts[role].get(kind)
            if not isinstance(tensors, list) or not tensors or not all(_is_tensor(t) for t in tensors):
                raise BundleError("the manifest's {} {} must be a list of tensors with a name, a dtype and a "
                                  "shape".format(role, kind))
    if "edge" in roles:
        _check_exit(manifest.get("exit"), [t["name"] for t in artefacts["edge"]["outputs"]])
    elif "exit" in manifest:
        raise BundleError("the manifest has an exit branch but no edge half to run it")


def _is_tensor(tensor) -> bool:
    return isinstance(tensor, dict) and isinstance(tensor.get("name"), str) and isinstance(tensor.get("dtype"), str) \
        and isinstance(tensor.get("shape"), list) and 1 <= len(tensor["shape"]) <= 8


def _check_exit(entry, edge_outputs: list) -> None:
    """An exit branch, if any: one of the edge's outputs, a positive class count, a finite threshold or none."""
    if entry is None:
        return
    threshold = entry.get("threshold") if isinstance(entry, dict) else None
    if not isinstance(entry, dict) or entry.get("output") not in edge_outputs[1:] \
            or type(entry.get("classes")) is not int or entry["classes"] < 1 \
            or not (threshold is None or (type(threshold) in (int, float) and 0 <= threshold < float("inf"))):
        raise BundleError("the manifest's exit entry must name one of the edge's extra outputs, a positive class "
                          "count and a finite threshold >= 0 (or none)")


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


def verify_manifest(directory: Path, manifest: dict, files_checked: bool = False) -> None:
    """Everything the runtime relies on in a manifest, each file's size and sha256 included (`files_checked`: an
    adaptive bundle's point, whose files its bundle checked)."""
    version = manifest.get("schema_version")
    if isinstance(version, int) and version < SCHEMA_VERSION:
        raise BundleError("this bundle was written by an older edgesplit (manifest schema {}, this runtime reads {}); "
                          "rebuild it: {}".format(version, SCHEMA_VERSION, rebuild_command(manifest)))
    if version != SCHEMA_VERSION:
        raise BundleError("bundle schema version {!r} is not supported (this runtime reads {})".format(
            version, SCHEMA_VERSION))
    strategy = strategy_of(manifest)
    crossing = {"edge-only": (), ADAPTIVE: ("points", "table")}.get(strategy, CROSSING_KEYS)
    missing = [key for key in REQUIRED_KEYS + crossing if key not in manifest]
    if missing:
        raise BundleError("manifest lacks {}".format(", ".join(missing)))
    _check_structure(manifest)
    if not files_checked:
        _check_files(directory, manifest["files"])
    for role in STRATEGIES.get(strategy, ()):
        entry = manifest["artefacts"].get(role)
        if entry is None or entry.get("file") not in manifest["files"]:
            raise BundleError("manifest has no hashed {} artefact".format(role))
    if compute_bundle_id(manifest) != manifest["bundle_id"]:
        raise BundleError("bundle id {} does not match the manifest's contents: manifest edited".format(
            manifest["bundle_id"]))
    if strategy == ADAPTIVE:
        _check_points(directory, manifest)


def _check_files(directory: Path, files: dict) -> None:
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
    unlisted = sorted(p.name for p in directory.iterdir() if p.name not in (MANIFEST_NAME, SIGNATURE_NAME)
                      and p.name not in files)
    if unlisted:
        raise BundleError("files not in the manifest: {}".format(", ".join(unlisted)))


def camera(manifest: dict) -> tuple:
    """What the edge makes of a camera's image for a bundle: its shape and how other sizes are fitted (a model's
    normalization is inside its edge half)."""
    model = manifest.get("source_model")
    spec = model.get("input") if isinstance(model, dict) else None
    return (spec.get("shape"), spec.get("resize")) if isinstance(spec, dict) else (None, None)


def _check_points(directory: Path, manifest: dict) -> None:
    """An adaptive bundle's points: each a verified manifest of a single strategy whose files are the bundle's own,
    all taking the same images and answering alike; its table rising rates naming every point."""
    points, table = manifest["points"], manifest["table"]
    if not isinstance(points, list) or not 2 <= len(points) <= MAX_POINTS or not all(
            isinstance(entry, dict) and isinstance(entry.get("name"), str) and isinstance(entry.get("manifest"), dict)
            and strategy_of(entry["manifest"]) != ADAPTIVE for entry in points):
        raise BundleError("the manifest's points must be 2 to {} operating points, each a name and the manifest of a "
                          "split, edge-only or cloud-only bundle".format(MAX_POINTS))
    answers = None
    for entry in points:
        point = entry["manifest"]
        try:
            verify_manifest(directory, point, files_checked=True)
        except BundleError as error:
            raise BundleError("point {!r}: {}".format(entry["name"], error)) from None
        if not isinstance(point["files"], dict) or any(manifest["files"].get(name) != listed
                                                       for name, listed in point["files"].items()):
            raise BundleError("point {!r} lists files the bundle does not hold as listed".format(entry["name"]))
        answering = point["artefacts"][answering_role(strategy_of(point))]
        outputs = [(t["name"], list(answer_shape(t))) for t in answering["outputs"]]
        if camera(point) != camera(manifest) or answers not in (None, outputs):
            raise BundleError("point {!r} takes other images or answers with other outputs than the first "
                              "point".format(entry["name"]))
        answers = outputs
    rates = [row.get("rate_bps") if isinstance(row, dict) else None for row in table] if isinstance(table, list) else []
    named = {row["point"] for row in table if type(row.get("point")) is int} if rates and None not in rates else set()
    if not 1 <= len(rates) <= MAX_TABLE_ROWS or not all(type(rate) in (int, float) and 0 <= rate < float("inf")
                                                        for rate in rates) \
            or any(b <= a for a, b in zip(rates, rates[1:])) or named != set(range(len(points))):
        raise BundleError("the manifest's table must be 1 to {} rows of a rising rate_bps >= 0 and a point, naming "
                          "every point".format(MAX_TABLE_ROWS))


class _BoundedTarInfo(tarfile.TarInfo):
    """A member header that refuses a GNU long name or a pax header over MAX_HEADER_BYTES before tarfile reads
    it into memory (a 509 KB .tar.gz can declare a 512 MB name)."""

    def _proc_member(self, tar):
        if self.type in HEADER_TYPES and self.size > MAX_HEADER_BYTES:
            raise BundleError("{}: a {:,}-byte member header (a long name or pax record), over {:,}: not a "
                              "bundle".format(tar.name, self.size, MAX_HEADER_BYTES))
        return super()._proc_member(tar)


def _headers(tar: tarfile.TarFile):
    """The archive's members one header at a time, none kept: 200,000 headers cost their count, not memory."""
    for member in tar:
        tar.members = []
        yield member


def expansion_budget(archive: Path) -> int:
    """The most bytes `archive` may unpack to: MAX_EXPANSION times its size, at least EXPANSION_FLOOR."""
    return min(MAX_BUNDLE_BYTES, max(EXPANSION_FLOOR, MAX_EXPANSION * archive.stat().st_size))


def _checked(members, archive: Path, budget: int = MAX_BUNDLE_BYTES):
    """(member, file name) under running limits on their count and summed size, each a plain top-level file: a
    bomb is refused at the first member past a limit, before the next header is read."""
    names, total = set(), 0
    for member in members:
        name = member.name[2:] if member.name.startswith("./") else member.name
        if not member.isfile() or member.issparse() or not name or "/" in name or "\\" in name \
                or name.startswith("."):
            raise BundleError("{}: member {!r} is not a plain top-level file".format(archive, member.name))
        if name in names:
            raise BundleError("{} holds a file name twice".format(archive))
        names.add(name)
        total += member.size
        if len(names) > MAX_FILES + 2:  # the files, the manifest and its signature
            raise BundleError("{} has over {} members: not a bundle".format(archive, MAX_FILES + 2))
        if total > MAX_BUNDLE_BYTES:
            raise BundleError("{} would unpack to over {:,} bytes, a bundle's most".format(archive, MAX_BUNDLE_BYTES))
        if total > budget:
            raise BundleError("{} would unpack to over {:,} bytes, {} times its size: a compression bomb, not a "
                              "bundle".format(archive, budget, MAX_EXPANSION))
        yield member, name


def _signed_sizes(tar: tarfile.TarFile, archive: Path, trust) -> dict:
    """A first pass that extracts nothing: the manifest and its signature, verified with the trusted key, and the
    sizes of the files the signed manifest lists (with those two): what the second pass may extract."""
    held, sizes = {}, None
    for member, name in _checked(_headers(tar), archive, expansion_budget(archive)):
        if sizes is not None:  # verified already: a member it does not list is refused at its header
            _check_listed(sizes, name, member, archive)
        if name in (MANIFEST_NAME, SIGNATURE_NAME) and member.size > MAX_MANIFEST_BYTES:
            raise BundleError("{}: {} is over {} bytes: not a manifest".format(archive, name, MAX_MANIFEST_BYTES))
        with tar.extractfile(member) as stream:
            if name in (MANIFEST_NAME, SIGNATURE_NAME):
                held[name] = stream.read()
            else:  # read past in 1 MB blocks: the next header's seek would decompress a .tar.gz 8 KB at a time
                while stream.read(1 << 20):
                    pass
        if sizes is None and len(held) == 2:
            check_signature(held[SIGNATURE_NAME], held[MANIFEST_NAME], trust, archive)
            sizes = _listed_sizes(archive, held)
    if MANIFEST_NAME not in held:
        raise BundleError("{} is not a bundle: it has no {}".format(archive, MANIFEST_NAME))
    if SIGNATURE_NAME not in held:
        raise BundleError("{} is not signed (no {}): a trusted key was given, so it is refused".format(
            archive, SIGNATURE_NAME))
    return sizes


def _listed_sizes(archive: Path, held: dict) -> dict:
    """The size of each file the manifest (`held[MANIFEST_NAME]`) lists, and of the manifest and signature held."""
    files = _parse_manifest(archive, held[MANIFEST_NAME]).get("files")
    if not isinstance(files, dict) or not all(isinstance(entry, dict) for entry in files.values()):
        raise BundleError("the manifest's files must map each file name to its sha256 and bytes")
    sizes = {name: entry.get("bytes") for name, entry in files.items()}
    sizes.update({name: len(data) for name, data in held.items()})
    sizes.setdefault(SIGNATURE_NAME, MAX_MANIFEST_BYTES)  # unsigned: a signature may follow, checked later
    return sizes


def _check_listed(sizes: dict, name: str, member, archive: Path) -> None:
    wanted = sizes.get(name)
    if wanted != member.size and not (name == SIGNATURE_NAME and member.size <= wanted):
        raise BundleError("{}: {} ({:,} bytes) is not a file the manifest lists at that size".format(
            archive, name, member.size))


def extract_tar(archive: Path, destination: Path, trust=None) -> Path:
    """Unpack a bundle .tar (or .tar.gz) of plain top-level files, streaming each, under running limits. With
    `trust`, the manifest's signature is verified first and only the files it lists, at their listed sizes, are
    extracted."""
    try:
        allowed = None
        if trust is not None:
            with tarfile.open(str(archive), tarinfo=_BoundedTarInfo) as tar:
                allowed = _signed_sizes(tar, archive, trust)
        with tarfile.open(str(archive), tarinfo=_BoundedTarInfo) as tar:
            destination.mkdir(parents=True, exist_ok=True)
            for member, name in _checked(_headers(tar), archive, expansion_budget(archive)):
                if allowed is not None:
                    _check_listed(allowed, name, member, archive)
                with tar.extractfile(member) as source, open(str(destination / name), "wb") as target:
                    shutil.copyfileobj(source, target, 1 << 20)
                if allowed is None and name == MANIFEST_NAME and member.size <= MAX_MANIFEST_BYTES:
                    # unsigned: the files after the manifest must be the ones it lists, at their sizes
                    allowed = _listed_sizes(archive, {MANIFEST_NAME: (destination / name).read_bytes()})
    except (tarfile.TarError, EOFError, OSError) as error:
        reason = str(error).splitlines()[0].rstrip(":") if str(error) else type(error).__name__
        raise BundleError("{} is not a bundle directory or a readable .tar of one ({})".format(archive, reason)) \
            from error
    return destination


def load_bundle(directory, trust=None) -> Bundle:
    """Read and verify a bundle directory; raise BundleError naming the first problem. With `trust` (an
    Ed25519 public key file) its manifest must carry a valid signature by that key, checked first."""
    directory = Path(directory)
    if not directory.is_dir():
        raise BundleError("bundle directory {} does not exist".format(directory))
    data = _manifest_bytes(directory)
    if trust is not None:
        verify_signature(directory, data, trust)
    manifest = _parse_manifest(directory / MANIFEST_NAME, data)
    verify_manifest(directory, manifest)
    return Bundle(directory, manifest)


def open_bundle(path, trust=None) -> Bundle:
    """A bundle directory, or a .tar of one unpacked into a private temporary directory (removed when the
    bundle is collected or the process exits, or at once if it does not verify), verified."""
    path = Path(path)
    if not path.is_file():
        return load_bundle(path, trust)
    scratch = Path(tempfile.mkdtemp(prefix="edgesplit-bundle-"))
    try:
        bundle = load_bundle(extract_tar(path, scratch, trust), trust)
    except BundleError as error:  # named after the archive the user gave, not the folder it was unpacked in
        shutil.rmtree(str(scratch), ignore_errors=True)
        raise BundleError(str(error).replace(str(scratch), str(path))) from None
    except BaseException:
        shutil.rmtree(str(scratch), ignore_errors=True)
        raise
    weakref.finalize(bundle, shutil.rmtree, str(scratch), True)
    return bundle


def check_artefact_io(bundle: Bundle) -> None:
    """Open each artefact with its backend and compare its inputs/outputs with the manifest, and the codes
    the cloud half takes with what the wire carries (every point's, for an adaptive bundle)."""
    if bundle.strategy == ADAPTIVE:
        for point in bundle.points:
            check_artefact_io(point)
        return
    if "cloud" in bundle.roles:
        taken = [tuple(t["shape"][1:]) for t in bundle.artefact("cloud")["inputs"]][:len(bundle.wire.shapes)]
        if taken != [tuple(shape) for shape in bundle.wire.shapes]:
            raise BundleError("the wire carries codes shaped {}, the cloud half takes {}".format(
                [list(shape) for shape in bundle.wire.shapes], [list(shape) for shape in taken]))
    for role in bundle.roles:
        entry = bundle.artefact(role)
        # a TensorRT artefact ships ONNX, which ONNX Runtime checks on any machine
        runner = bundle.open_runner(role, verified=True)
        for kind, declared, actual in (("input", entry["inputs"], runner.inputs),
                                       ("output", entry["outputs"], runner.outputs)):
            found = [(name, dtype) for name, dtype, _ in actual]
            wanted = [(tensor["name"], tensor["dtype"]) for tensor in declared]
            if found != wanted:
                raise BundleError("{} artefact {}s are {}, the manifest says {}".format(role, kind, found, wanted))
            for tensor, (name, _, shape) in zip(declared, actual):
                if not _same_sizes(tensor["shape"][1:], shape[1:]):
                    raise BundleError("{} artefact's {} is shaped {}, the manifest says {}".format(
                        role, name, list(shape), tensor["shape"]))
            for tensor in declared:
                if "quantization" in tensor:
                    expected = (tensor["quantization"]["scale"], tensor["quantization"]["zero_point"])
                    if runner.quantization(tensor["name"]) != tuple(expected):
                        raise BundleError("{} artefact's {} is quantized with (scale, zero point) {}, the manifest "
                                          "says {}".format(role, tensor["name"], runner.quantization(tensor["name"]),
                                                           tuple(expected)))


def _same_sizes(declared, actual) -> bool:
    """Shapes after the batch axis agree where the artefact fixes a size (a symbolic one matches anything)."""
    return len(declared) == len(actual) and all(
        not isinstance(size, int) or size <= 0 or size == wanted for wanted, size in zip(declared, actual))
