"""Channel pruning of the head: smaller, still splits and exports, boundary untouched."""

import numpy as np
import onnx
import pytest
import torch

from toolchain.errors import EdgesplitError
from toolchain.export import export_onnx
from toolchain.pruning import count, fine_tune, head_modules, prune, save_pruned, sparsity_train
from toolchain.load import InputOptions, load_model
from toolchain.split import split_model

from conftest import INPUT_SHAPE


SPLIT = "features.8"


@pytest.fixture()
def calibration(images):
    return images[:32].numpy()


@pytest.mark.parametrize("criterion", ["bn-scale", "feature-bias"])
def test_pruned_head_is_smaller_and_the_boundary_is_unchanged(plain_cnn, calibration, criterion, tmp_path):
    with torch.no_grad():  # distinct scale factors, as after training (fresh BN gammas all tie at 1)
        plain_cnn.features[2].weight.copy_(torch.linspace(0.1, 1.0, 8))
    before = split_model(plain_cnn, SPLIT, INPUT_SHAPE)
    pruned, report = prune(plain_cnn, SPLIT, INPUT_SHAPE, criterion, 0.5, calibration)
    after = split_model(pruned, SPLIT, INPUT_SHAPE)
    assert after.point.shape == before.point.shape == (16, 8, 8)
    assert pruned.features[1].out_channels == 4 and pruned.features[5].in_channels == 4
    assert pruned.features[5].out_channels == 16  # the boundary layer is protected
    if criterion == "bn-scale":  # network slimming keeps the largest scale factors
        torch.testing.assert_close(pruned.features[2].weight.detach(), torch.linspace(0.1, 1.0, 8)[4:])
    assert report.head_params_after < report.head_params_before and report.head_macs_after < report.head_macs_before
    assert count(plain_cnn, INPUT_SHAPE)[1] == report.params_before  # the original is untouched
    x = torch.from_numpy(calibration)
    torch.testing.assert_close(after.tail(after.head(x)), pruned(x))
    path = tmp_path / "head.onnx"
    export_onnx(after.head, (x,), path, 17, ("image",), ("features",), metadata={})
    assert [d.dim_value for d in onnx.load(str(path)).graph.output[0].type.tensor_type.shape.dim][1:] == [16, 8, 8]


def test_residual_groups_stay_consistent_on_the_default_model(default_model, images):
    pruned, report = prune(default_model.module, "layer2", INPUT_SHAPE, "bn-scale", 0.5, images[:32].numpy())
    assert split_model(pruned, "layer2", INPUT_SHAPE).point.shape == (64, 16, 16)
    assert report.head_macs_after < 0.6 * report.head_macs_before
    assert pruned(images[:4]).shape == (4, 10)


def test_sparsity_training_shrinks_bn_scales_and_fine_tuning_recovers(plain_cnn, images, holdout, tmp_path):
    inputs, labels = images.numpy(), holdout.labels[:64]
    head = head_modules(plain_cnn, SPLIT, INPUT_SHAPE)
    gammas = plain_cnn.features[2].weight.detach().abs().sum().item()
    teacher = load_model("conftest:PlainCNNSmall", inputs=InputOptions(INPUT_SHAPE, "pad")).module
    teacher.load_state_dict(plain_cnn.state_dict())
    sparsity_train(plain_cnn, head, inputs, labels, epochs=3, l1=1e-1, batch_size=16)
    assert plain_cnn.features[2].weight.detach().abs().sum().item() < gammas
    pruned, _ = prune(plain_cnn, SPLIT, INPUT_SHAPE, "bn-scale", 0.5, inputs)
    fine_tune(pruned, teacher.eval(), inputs, labels, epochs=1, batch_size=16)
    path = tmp_path / "pruned.pt2"
    save_pruned(pruned, INPUT_SHAPE, path)
    reloaded = load_model(str(path), inputs=InputOptions(INPUT_SHAPE, "pad")).module
    np.testing.assert_allclose(reloaded(images[:8]).detach().numpy(), pruned(images[:8]).detach().numpy(), atol=1e-5)


@pytest.mark.parametrize("ratio", [0.0, 1.0, -0.2, 1.5])
def test_a_bad_ratio_is_refused(plain_cnn, calibration, ratio):
    with pytest.raises(EdgesplitError, match=f"pruning ratio must be between 0 and 1 \\(exclusive\\), got {ratio}"):
        prune(plain_cnn, SPLIT, INPUT_SHAPE, "bn-scale", ratio, calibration)


def test_an_unknown_criterion_is_named(plain_cnn, calibration):
    with pytest.raises(EdgesplitError, match="unknown pruning criterion 'l2'; criteria: bn-scale, feature-bias"):
        prune(plain_cnn, SPLIT, INPUT_SHAPE, "l2", 0.5, calibration)


def test_prune_command_writes_a_model_that_builds_and_refuses_a_bad_ratio(tmp_path):
    from click.testing import CliRunner

    from calibration_data import DEFAULT_CALIBRATION
    from toolchain.cli import main

    output = tmp_path / "pruned.pt2"
    arguments = ["prune", "--model", "conftest:PlainCNNSmall", "--input-shape", "1,32,32", "--resize", "pad",
                 "--split", SPLIT, "--data", str(DEFAULT_CALIBRATION), "--frames", "64", "--criterion", "feature-bias",
                 "--sparsity-epochs", "0", "--finetune-epochs", "1", "--output", str(output)]
    result = CliRunner().invoke(main, arguments)
    assert result.exit_code == 0, result.output
    assert "head: 1,272 → 652 params" in result.output
    pruned = load_model(str(output), inputs=InputOptions(INPUT_SHAPE, "pad"))
    assert split_model(pruned.module, SPLIT, INPUT_SHAPE).point.shape == (16, 8, 8)
    refused = CliRunner().invoke(main, arguments[:-2] + ["--ratio", "1", "--output", str(output)])
    assert refused.exit_code == 1 and "pruning ratio must be between 0 and 1 (exclusive), got 1.0" in refused.output
