import pytest
import torch
from click.testing import CliRunner
from torch import nn

from toolchain.cli import main
from toolchain.errors import ModelLoadError, SplitError
from toolchain.load import load_model
from toolchain.split import candidate_points, split_model, trace

from conftest import INPUT_SHAPE


@pytest.mark.parametrize("split", ["layer1", "layer2", "layer3.0", "layer4", "add_4"])
def test_default_model_splits_exactly(default_model, images, split):
    halves = split_model(default_model.module, split, INPUT_SHAPE)
    with torch.no_grad():
        assert torch.equal(halves.tail(halves.head(images)), default_model.module(images))


def test_layer2_of_default_model_crosses_one_64x16x16_tensor(default_model):
    point = split_model(default_model.module, "layer2", INPUT_SHAPE).point
    assert (point.node, point.shape) == ("layer2_1_relu2", (64, 16, 16))
    assert (point.fp32_bytes, point.int8_bytes) == (65536, 16384)


def test_model_without_residuals_splits_exactly_at_every_candidate(plain_cnn, images):
    points = candidate_points(trace(plain_cnn, INPUT_SHAPE))
    assert len(points) >= 10
    with torch.no_grad():
        reference = plain_cnn(images)
        for point in points:
            halves = split_model(plain_cnn, point.node, INPUT_SHAPE)
            assert torch.equal(halves.tail(halves.head(images)), reference), point.node


def test_torch_export_archive_splits_exactly(plain_cnn, images, tmp_path):
    path = tmp_path / "plain.pt2"
    torch.export.save(torch.export.export(plain_cnn, (images[:2],), dynamic_shapes=({0: torch.export.Dim("batch")},)),
                      path)
    loaded = load_model(str(path))
    assert loaded.input_shape == INPUT_SHAPE
    halves = split_model(loaded.module, "features.5", INPUT_SHAPE)
    with torch.no_grad():
        assert torch.equal(halves.tail(halves.head(images[:3])), plain_cnn(images[:3]))


def test_an_archive_exported_for_one_batch_size_is_refused_with_how_to_export_it(plain_cnn, images, tmp_path):
    path = tmp_path / "fixed.pt2"
    torch.export.save(torch.export.export(plain_cnn, (images[:1],)), path)
    with pytest.raises(ModelLoadError, match=r"fixed.pt2 was exported for batches of exactly 1 image\(s\); .*"
                                             r"dynamic_shapes=\(\{0: torch.export.Dim\('batch'\)\},\)"):
        load_model(str(path))


def test_cut_inside_residual_block_is_refused_with_nearest_points(default_model):
    with pytest.raises(SplitError) as error:
        split_model(default_model.module, "layer2.0.conv1", INPUT_SHAPE)
    message = str(error.value)
    assert "crossed by 2 tensors (layer1_1_relu2, layer2_0_conv1)" in message
    assert "nearest valid points: layer1 (before), add_2 (after)" in message


def test_unknown_split_name_suggests_close_names(default_model):
    with pytest.raises(SplitError, match=r"no node or module named 'layr2'.*did you mean layer2"):
        split_model(default_model.module, "layr2", INPUT_SHAPE)


def test_split_at_input_is_refused(plain_cnn):
    with pytest.raises(SplitError, match="one half would be empty"):
        split_model(plain_cnn, "x", INPUT_SHAPE)


class DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)

    def forward(self, x):
        if x.sum() > 0:  # control flow on values: torch.fx cannot trace it
            return self.conv(x)
        return self.conv(-x)


def test_untraceable_model_gets_a_clear_error():
    with pytest.raises(SplitError, match="DataDependent cannot be traced by torch.fx.*torch.export"):
        trace(DataDependent(), INPUT_SHAPE)


def test_wrong_input_shape_is_named(plain_cnn):
    with pytest.raises(SplitError, match="does not run on an input of shape 1x3x32x32"):
        trace(plain_cnn, (3, 32, 32))


def test_list_splits_marks_the_default():
    result = CliRunner().invoke(main, ["list-splits"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    row = next(line for line in result.output.splitlines() if "layer3 (default)" in line)
    assert "128x8x8" in row and "32,768" in row and "8,192" in row
    lines = result.output.splitlines()
    several = next(i for i, line in enumerate(lines) if "layer2.0.conv1" in line)
    assert several > next(i for i, line in enumerate(lines) if "(default)" in line)  # after the single ones
    assert "32x32x32 + 64x16x16" in lines[several] and "49,152" in lines[several]  # both tensors, int8 bytes


def test_cli_error_is_one_line_without_traceback():
    result = CliRunner().invoke(main, ["build-engines", "--split", "fc"])
    assert result.exit_code == 1
    assert result.stderr.startswith("error: cannot split at 'fc'")
    assert result.stderr.count("\n") == 1
    assert "Traceback" not in result.output
