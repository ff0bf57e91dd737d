"""The default model built for `cpu`, checked as deployed: real ONNX files in ONNX Runtime."""

import json
import shutil
import tarfile

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

from runtime.bundle import check_artefact_io, extract_tar, load_bundle
from runtime.errors import BundleError
from runtime.local import SplitInference
from toolchain.build import BuildOptions, build_engines
from toolchain.cli import main
from toolchain.data import to_model_input
from toolchain.errors import EdgesplitError
from toolchain.evaluate import reference_outputs
from toolchain.cache import CACHE_ENV
from toolchain.load import InputOptions, LoadedModel, state_dict_sha256
from toolchain.models import PlainCNN
from toolchain.train import predict

from conftest import INPUT_SHAPE, TINY_WEIGHTS, top1


@pytest.fixture()
def bundle_copy(int8_built, tmp_path):
    return shutil.copytree(int8_built.bundle, tmp_path / "copy")


def test_int8_bundle_agrees_with_float_model_on_held_out_images(int8_built, default_model, holdout):
    inputs = to_model_input(holdout.images, INPUT_SHAPE)
    reference = top1(reference_outputs(default_model, inputs)[0])
    deployed = top1(SplitInference(load_bundle(int8_built.bundle))(inputs))
    agreement = (deployed == reference).mean()
    loss_points = 100 * ((reference == holdout.labels).mean() - (deployed == holdout.labels).mean())
    assert agreement >= 0.99
    assert loss_points <= 0.3
    assert (reference == holdout.labels).mean() >= 0.90  # the bundled weights are a trained model
    assert int8_built.manifest["checks"]["top1_agreement"] == pytest.approx(agreement)


def test_wire_carries_one_byte_per_split_element(int8_built, holdout):
    run = SplitInference(load_bundle(int8_built.bundle))
    payloads = run.edge(to_model_input(holdout.images[:3], INPUT_SHAPE))
    assert [len(p) for p in payloads] == [64 * 16 * 16] * 3
    assert int8_built.manifest["wire"]["packed_bytes_per_frame"] == 16384
    assert int8_built.manifest["checks"]["mean_payload_bytes"] == 16384
    assert int8_built.manifest["split"]["fp32_bytes"] == 4 * 16384


def test_artefacts_are_valid_onnx_with_metadata(int8_built):
    for role in ("edge", "cloud"):
        model = onnx.load(int8_built.bundle / f"{role}.onnx")
        onnx.checker.check_model(model, full_check=True)
        assert model.opset_import[0].version == 17
        props = {p.key: p.value for p in model.metadata_props}
        assert props["edgesplit_role"] == role
        assert props["edgesplit_model_sha256"] == int8_built.manifest["source_model"]["sha256"]
    edge_output = onnx.load(int8_built.bundle / "edge.onnx").graph.output[0]
    assert edge_output.type.tensor_type.elem_type == onnx.TensorProto.UINT8


def test_bundle_verifies_and_matches_its_artefacts(int8_built):
    bundle = load_bundle(int8_built.bundle)
    check_artefact_io(bundle)
    assert bundle.bundle_id == int8_built.manifest["bundle_id"]
    assert set(int8_built.manifest["files"]) == {"edge.onnx", "cloud.onnx"}
    result = CliRunner().invoke(main, ["verify-bundle", str(int8_built.bundle)])
    assert result.exit_code == 0 and result.output.startswith(f"ok: bundle {bundle.bundle_id}")


def test_tar_bundle_verifies(int8_built):
    tar = int8_built.bundle.with_suffix(".tar")
    result = CliRunner().invoke(main, ["verify-bundle", str(tar)])
    assert result.exit_code == 0, result.output


def test_modified_artefact_is_caught(bundle_copy):
    path = bundle_copy / "cloud.onnx"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="cloud.onnx does not match its sha256"):
        load_bundle(bundle_copy)
    result = CliRunner().invoke(main, ["verify-bundle", str(bundle_copy)])
    assert result.exit_code == 1 and "cloud.onnx does not match its sha256" in result.output


def test_truncated_missing_and_extra_files_are_caught(bundle_copy):
    (bundle_copy / "notes.txt").write_text("not part of the bundle")
    with pytest.raises(BundleError, match="files not in the manifest: notes.txt"):
        load_bundle(bundle_copy)
    (bundle_copy / "notes.txt").unlink()
    edge = bundle_copy / "edge.onnx"
    edge.write_bytes(edge.read_bytes()[:-10])
    with pytest.raises(BundleError, match="edge.onnx has .* bytes, the manifest says"):
        load_bundle(bundle_copy)
    edge.unlink()
    with pytest.raises(BundleError, match="edge.onnx is listed in the manifest but missing"):
        load_bundle(bundle_copy)


def test_edited_manifest_is_caught(bundle_copy):
    path = bundle_copy / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["codec"]["scale"][0] *= 2
    path.write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="does not match the manifest's contents"):
        load_bundle(bundle_copy)
    path.write_text("{not json")
    with pytest.raises(BundleError, match="manifest.json is not valid JSON"):
        load_bundle(bundle_copy)


def test_tar_with_a_path_member_is_refused(tmp_path):
    archive = tmp_path / "evil.tar"
    (tmp_path / "payload").write_text("x")
    with tarfile.open(archive, "w") as tar:
        tar.add(tmp_path / "payload", arcname="../escape")
    with pytest.raises(BundleError, match="'../escape' is not a plain top-level file"):
        extract_tar(archive, tmp_path / "out")
    assert not (tmp_path / "escape").exists()


def test_accuracy_gate_writes_nothing(tmp_path, plain_cnn):
    output = tmp_path / "gated"
    with pytest.raises(EdgesplitError, match=r"accuracy points on the 2000 held-out images \(one image is 0.05 pt"):
        build_engines(BuildOptions(model="toolchain.models:PlainCNN", inputs=InputOptions((1, 28, 28)), output=output,
                                   max_loss=-100.0))
    assert not output.exists()


def test_factory_model_with_weights_builds_per_channel(plain_cnn, tmp_path, holdout):
    import torch

    weights = tmp_path / "plain.pt"
    torch.save(plain_cnn.state_dict(), weights)
    result = CliRunner().invoke(main, [
        "build-engines", "--model", "conftest:PlainCNNSmall", "--weights", str(weights),
        "--input-shape", "1,32,32", "--resize", "pad", "--codec", "int8:per=channel",
        "--output", str(tmp_path / "b"),
    ])
    assert result.exit_code == 0, result.output
    bundle = load_bundle(tmp_path / "b")
    assert len(bundle.manifest["codec"]["scale"]) == bundle.manifest["split"]["shape"][0]
    inputs = to_model_input(holdout.images[:200], INPUT_SHAPE)
    agreement = (top1(SplitInference(bundle)(inputs)) == top1(predict(plain_cnn, inputs))).mean()
    assert agreement >= 0.98


def test_the_float_models_outputs_are_computed_once_per_model_and_inputs(plain_cnn, images):
    """Builds of one model compare against the same float outputs: the second lookup runs nothing, other
    inputs or a module changed since loading run the model again, and nobody can change the shared arrays."""
    loaded = LoadedModel(plain_cnn, "plain", None, None, state_dict_sha256(plain_cnn))
    runs = []
    plain_cnn.register_forward_hook(lambda *_: runs.append(1))
    inputs = images.numpy()[:8]
    first = reference_outputs(loaded, inputs)
    assert reference_outputs(loaded, inputs.copy()) is first and len(runs) == 1
    reference_outputs(loaded, inputs[:4])
    assert len(runs) == 2
    with pytest.raises(ValueError):
        first[0][0, 0] = 0.0
    with torch.no_grad():
        next(plain_cnn.parameters()).add_(1.0)
    changed = reference_outputs(loaded, inputs)
    assert len(runs) == 3 and not np.allclose(changed[0], first[0])


def test_a_bundle_built_before_from_the_same_content_is_reused_and_any_change_builds_anew(tmp_path, monkeypatch):
    """EDGESPLIT_CACHE: the same model, images, options and code give the stored bundle back (byte for byte,
    in a fraction of the build); other images, another option or other weights build anew."""
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    tiny = dict(model="conftest:TinyNet", weights=TINY_WEIGHTS, inputs=InputOptions((1, 32, 32), "pad"),
                holdout_frames=300, max_loss=3.0, min_agreement=0.9)  # a 5k-parameter model, perturbed below
    first = build_engines(BuildOptions(**tiny, output=tmp_path / "first"), show_progress=False)
    again = build_engines(BuildOptions(**tiny, output=tmp_path / "again", tar=True), show_progress=False)
    assert (first.reused, again.reused) == (False, True)
    assert again.manifest == first.manifest and (tmp_path / "again.tar").exists()
    assert all((tmp_path / "again" / name).read_bytes() == (tmp_path / "first" / name).read_bytes()
               for name in first.manifest["files"])
    load_bundle(tmp_path / "again")
    other_weights = tmp_path / "other.pt"
    state = torch.load(TINY_WEIGHTS, weights_only=True)
    torch.save({name: value + 0.01 if value.is_floating_point() else value for name, value in state.items()},
               other_weights)
    for change in (dict(holdout_frames=299), dict(lossless="zlib"), dict(weights=other_weights)):
        rebuilt = build_engines(BuildOptions(**dict(tiny, **change), output=tmp_path / "other"), show_progress=False)
        assert not rebuilt.reused, change


def test_the_float_models_outputs_are_read_back_by_the_next_process(plain_cnn, images, tmp_path, monkeypatch):
    """With EDGESPLIT_CACHE a second process (here: the in-process memory emptied) reads the outputs back; a
    model with the same name and weights whose code differs is a miss."""
    from toolchain import evaluate

    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    monkeypatch.setattr(evaluate, "_REFERENCES", type(evaluate._REFERENCES)())
    loaded = LoadedModel(plain_cnn, "plain", None, None, state_dict_sha256(plain_cnn))
    runs = []
    plain_cnn.register_forward_hook(lambda *_: runs.append(1))
    inputs = images.numpy()[:8]
    first = [output.copy() for output in reference_outputs(loaded, inputs)]
    evaluate._REFERENCES.clear()
    np.testing.assert_array_equal(reference_outputs(loaded, inputs)[0], first[0])
    assert len(runs) == 1 and len(list((tmp_path / "reference-outputs").glob("*.npz"))) == 1
    evaluate._REFERENCES.clear()
    doubled = Doubled(widths=(8, 16)).eval()
    doubled.load_state_dict(plain_cnn.state_dict())
    changed = reference_outputs(LoadedModel(doubled, "plain", None, None, loaded.sha256), inputs)
    np.testing.assert_allclose(changed[0], 2 * first[0], rtol=1e-6)


class Doubled(PlainCNN):
    def forward(self, x):
        return 2 * super().forward(x)
