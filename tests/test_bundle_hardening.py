"""Bundles are files from outside: archive bombs, malformed manifests, absurd shapes and tampered models
are refused in one line; signed bundles pin the builder (Ed25519). The bombs that take seconds to make (a
512 MB long name, 200,000 members, an unsigned 1 GiB member) go through verify-bundle in its own process in the
reliability suite's test (tests/test_benchmarks.py), which holds them to the same lines, memory and time."""

import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from benchmarks.reliability import (Zeros, rewrite_manifest, signing_keys as make_keys, swap_two_classes,
                                   verify_process, with_big_member)
from runtime.bundle import MAX_BUNDLE_BYTES, _checked, expansion_budget, load_bundle, open_bundle
from runtime.errors import BundleError
from toolchain.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def bundle_copy(int8_built, tmp_path):
    return shutil.copytree(int8_built.bundle, tmp_path / "copy")


def verify(*arguments) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["verify-bundle", *map(str, arguments)])
    return result.exit_code, result.output


def bundle_temporaries() -> set:
    return set(Path(tempfile.gettempdir()).glob("edgesplit-bundle-*"))


def test_a_sparse_member_is_refused_before_extraction(tmp_path):
    """GNU tar's sparse members: a 3 GiB file in a few KB of archive."""
    with open(tmp_path / "cloud.onnx", "wb") as sparse:
        sparse.truncate(3 * 1024 ** 3)
    archive = tmp_path / "bomb.tar"
    subprocess.run(["tar", "-S", "-cf", str(archive), "-C", str(tmp_path), "cloud.onnx"], check=True)
    assert archive.stat().st_size < 1e6
    before = bundle_temporaries()
    with pytest.raises(BundleError, match="member 'cloud.onnx' is not a plain top-level file"):
        open_bundle(archive)
    assert bundle_temporaries() == before


def test_members_adding_up_to_more_than_a_bundle_are_refused_from_their_headers():
    members = [tarfile.TarInfo(name) for name in ("edge.onnx", "cloud.onnx", "never.read")]
    members[0].size, members[1].size = MAX_BUNDLE_BYTES, 1
    checked = _checked(iter(members), Path("big.tar"))
    assert next(checked)[1] == "edge.onnx"
    with pytest.raises(BundleError, match=r"^big.tar would unpack to over 2,147,483,648 bytes, a bundle's most$"):
        next(checked)
    with pytest.raises(BundleError, match="has over 66 members"):
        list(_checked((tarfile.TarInfo(f"f{i}") for i in range(67)), Path("many.tar")))


@pytest.mark.parametrize("name", [".", "", ".hidden", "a/b"])
def test_members_that_are_not_plain_file_names_are_refused(tmp_path, name):
    archive = tmp_path / "odd.tar"
    with tarfile.open(archive, "w") as tar:
        member = tarfile.TarInfo(name)
        member.size = 1
        tar.addfile(member, io.BytesIO(b"x"))
    code, output = verify(archive)
    assert code == 1 and "is not a plain top-level file" in output and "Traceback" not in output


def test_a_gzip_bomb_is_unpacked_with_bounded_memory_and_nothing_left_behind(tmp_path):
    """A .tar.gz of 1 MB holding 600 MB of zeros and no manifest: streamed out (peak RSS well under 200 MB,
    where reading the member whole took 600), refused, and its temporary directory removed."""
    archive = tmp_path / "bomb.tar.gz"
    with tarfile.open(archive, "w:gz", compresslevel=1) as tar:
        member = tarfile.TarInfo("cloud.onnx")
        member.size = 600 * 1024 * 1024
        tar.addfile(member, io.BufferedReader(Zeros(member.size), 1 << 20))
    assert archive.stat().st_size < 5e6
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the forking (pytest, torch-sized) process
    probe = ("import sys\nfrom runtime.bundle import open_bundle\nfrom runtime.errors import BundleError\n"
             "try:\n    open_bundle(sys.argv[1])\nexcept BundleError as error:\n    print(error)\n"
             "print(next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM:')))")
    before = bundle_temporaries()
    done = subprocess.run([sys.executable, "-c", probe, str(archive)], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    message, peak_kb = done.stdout.strip().splitlines()
    budget = expansion_budget(archive)  # refused at the header: 600 MB from under 5 MB is a bomb
    assert message == f"{archive} would unpack to over {budget:,} bytes, 100 times its size: a compression bomb, " \
                      "not a bundle"  # the archive the user gave
    assert int(peak_kb) < 200 * 1024
    assert bundle_temporaries() == before


def test_an_opened_tar_bundle_leaves_nothing_in_tmp(int8_built):
    before = bundle_temporaries()
    probe = "import sys\nfrom runtime.bundle import open_bundle\nprint(open_bundle(sys.argv[1]).directory)"
    done = subprocess.run([sys.executable, "-c", probe, str(int8_built.bundle.with_suffix(".tar"))], cwd=ROOT,
                          capture_output=True, text=True, check=True)
    assert "edgesplit-bundle-" in done.stdout  # it was unpacked there, and removed at exit
    assert bundle_temporaries() == before


@pytest.mark.parametrize("change, message", [
    (lambda m: m.__setitem__("files", list(m["files"])), "the manifest's files must map each file name"),
    (lambda m: m["wire"].__setitem__("shape", [1000000, 1000000]), "over the 16,777,216 a frame may carry"),
    (lambda m: m["wire"].__setitem__("shape", [-64, 16, 16]), "must be 1..6 positive integer sizes"),
    (lambda m: m["wire"].__setitem__("shape", [1e6, 1e6]), "must be 1..6 positive integer sizes"),
    (lambda m: m["wire"].__setitem__("shape", [32, 8, 8]), "the wire carries codes shaped [[32, 8, 8]], the cloud"),
    (lambda m: m["artefacts"]["cloud"].__setitem__("outputs", "logits"),
     "the manifest's cloud outputs must be a list of tensors with a name, a dtype and a shape"),
    (lambda m: m.__setitem__("exit", {"output": "nope", "classes": 10, "threshold": 1.0}),
     "the manifest's exit entry must name one of the edge's extra outputs"),
    (lambda m: m.__setitem__("exit", [1]), "the manifest's exit entry must name one of the edge's extra outputs"),
])
def test_malformed_manifests_and_absurd_shapes_are_refused_by_verify_bundle(bundle_copy, change, message):
    rewrite_manifest(bundle_copy, change)
    code, output = verify(bundle_copy)
    assert code == 1 and message in output and "Traceback" not in output


def test_an_edge_killed_with_sigterm_removes_its_unpacked_bundle(int8_built):
    before = bundle_temporaries()
    with socket.socket() as probe:  # nothing listens there: the edge keeps going on its own
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    edge = subprocess.Popen([sys.executable, "-m", "edgesplit", "edge", "--bundle", str(int8_built.bundle.with_suffix(
        ".tar")), "--server", f"127.0.0.1:{port}", "--source", str(ROOT / "calibration_data" / "fashion_mnist.npz"),
        "--fps", "10", "--limit", "500"], cwd=ROOT, env=dict(os.environ, EDGESPLIT_KEY="a key for this test, long"),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert "retrying" in edge.stderr.readline()  # running: the bundle unpacked, its halves loaded
    assert bundle_temporaries() != before
    edge.send_signal(signal.SIGTERM)
    assert edge.wait(30) == 128 + signal.SIGTERM
    assert bundle_temporaries() == before


def test_a_manifest_nested_deeply_is_one_line(bundle_copy):
    (bundle_copy / "manifest.json").write_text("[" * 100000 + "]" * 100000)
    code, output = verify(bundle_copy)
    assert code == 1 and "nests too deeply to be a manifest" in output


@pytest.fixture(scope="module")
def signing_keys(tmp_path_factory):
    return {name: make_keys(tmp_path_factory.mktemp(name)) for name in ("builder", "stranger")}


def test_a_signed_bundle_verifies_and_a_rehashed_tampered_model_does_not(bundle_copy, signing_keys):
    private, public = signing_keys["builder"]
    code, output = verify(bundle_copy, "--trust", public)
    assert code == 1 and "is not signed (no manifest.json.sig)" in output
    result = CliRunner().invoke(main, ["sign-bundle", str(bundle_copy), "--key", str(private)])
    assert result.exit_code == 0, result.output
    code, output = verify(bundle_copy, "--trust", public)
    assert code == 0 and output.strip().endswith(f"signed by {public}")
    code, output = verify(bundle_copy, "--trust", signing_keys["stranger"][1])
    assert code == 1 and "signature does not verify" in output
    # two classes swapped in the cloud half, every hash and the id recomputed: verifies without a key, not with one
    swap_two_classes(bundle_copy / "cloud.onnx")
    rewrite_manifest(bundle_copy, lambda manifest: None)
    assert verify(bundle_copy)[0] == 0
    code, output = verify(bundle_copy, "--trust", public)
    assert code == 1 and "the manifest was changed after signing" in output


def test_serve_and_edge_with_a_trust_key_refuse_an_unsigned_bundle_before_loading(int8_built, signing_keys):
    environment = dict(os.environ, EDGESPLIT_KEY="a shared key for this test, long enough")
    public = signing_keys["builder"][1]
    for command in (["serve", "--port", "0"], ["edge", "--server", "127.0.0.1:9", "--source", "x"]):
        done = subprocess.run([sys.executable, "-m", "edgesplit", command[0], "--bundle", str(int8_built.bundle),
                               "--trust", str(public), *command[1:]], cwd=ROOT, env=environment,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 1
        assert done.stderr.strip().splitlines() == [
            f"error: {int8_built.bundle} is not signed (no manifest.json.sig): a trusted key was given, so it is "
            "refused"]


def test_a_signed_tar_is_accepted_by_the_runtime(int8_built, signing_keys, tmp_path):
    private, public = signing_keys["builder"]
    archive = shutil.copy(int8_built.bundle.with_suffix(".tar"), tmp_path / "signed.tar")
    CliRunner().invoke(main, ["sign-bundle", str(archive), "--key", str(private)], catch_exceptions=False)
    assert open_bundle(archive, public).bundle_id == load_bundle(int8_built.bundle).bundle_id
    with pytest.raises(BundleError, match="signature does not verify"):
        open_bundle(archive, signing_keys["stranger"][1])


def test_a_manifest_nested_past_its_depth_is_one_line_though_its_hashes_match(bundle_copy):
    """500 levels, rehashed as an attacker would: it parses, and code walking it recursively (json.dumps for the
    bundle id, in a deeper stack) comes near Python's limit."""
    def nest(manifest):
        deep = []
        for _ in range(500):
            deep = [deep]
        manifest["tools"]["deep"] = deep
    rewrite_manifest(bundle_copy, nest)
    code, output = verify(bundle_copy)
    assert code == 1 and output.strip() == f"error: {bundle_copy / 'manifest.json'} nests more than 32 levels deep: " \
                                           "not a manifest"


def test_with_a_trusted_key_only_the_files_the_signed_manifest_lists_are_unpacked(int8_built, signing_keys,
                                                                                  tmp_path):
    private, public = signing_keys["builder"]
    signed = shutil.copytree(int8_built.bundle, tmp_path / "signed")
    CliRunner().invoke(main, ["sign-bundle", str(signed), "--key", str(private)], catch_exceptions=False)
    archive = with_big_member(tmp_path / "extra.tar.gz", sorted(signed.iterdir()), 4096)
    before = bundle_temporaries()
    for trust in (public, None):  # without a key, the unsigned manifest's listing is held to as well
        with pytest.raises(BundleError, match=r"extra.tar.gz: padding.bin \(4,096 bytes\) is not a file the "
                                              "manifest lists at that size"):
            open_bundle(archive, trust)
    assert bundle_temporaries() == before


@pytest.mark.slow  # 40 MiB compressed twice, and verify-bundle in its own process
@pytest.mark.parametrize("compression", ["bz2", "gz"])
def test_a_member_larger_than_the_manifest_says_is_refused_at_its_header_without_a_key(int8_built, tmp_path,
                                                                                    compression):
    """A stranger's bomb: the bundle's real manifest first, then its cloud half swapped for 40 MiB of zeros (under
    the expansion budget), as a compressed stream named .tar. Refused at that member's header: nothing of it is
    written."""
    archive = tmp_path / "bomb.tar"
    with tarfile.open(archive, f"w:{compression}") as tar:
        tar.add(int8_built.bundle / "manifest.json", "manifest.json")
        member = tarfile.TarInfo("cloud.onnx")
        member.size = 40 * 1024 ** 2
        tar.addfile(member, io.BufferedReader(Zeros(member.size), 1 << 20))
    result = verify_process(archive)
    assert result["code"] == "1" and result["message"] == (
        f"error: {archive}: cloud.onnx (41,943,040 bytes) is not a file the manifest lists at that size"), result
    assert result["written_mb"] < 1 and result["seconds"] < 10 and result["left_in_tmp"] == 0, result
