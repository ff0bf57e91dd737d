import numpy as np
import pytest
import torch

from runtime.errors import WireError
from runtime.wire import WireFormat, decode_frame, encode_frame
from toolchain.codecs import AffineInt8Codec, parse_codec_spec
from toolchain.errors import EdgesplitError


@pytest.mark.parametrize("per", ["tensor", "channel"])
def test_compress_decompress_round_trip_is_exact_on_codes(features, per):
    codec = AffineInt8Codec(per)
    codec.calibrate(features)
    payloads = codec.compress(features)
    assert len(payloads) == len(features)
    assert all(len(p) == 4 * 6 * 6 for p in payloads)  # one byte per element, nothing else
    codes = codec.encoder()(features)
    decoded = np.stack([decode_frame(p, codec.wire_format()) for p in payloads])
    assert np.array_equal(decoded, codes.numpy())
    assert torch.equal(codec.decompress(payloads), codec.decoder()(codes))


@pytest.mark.parametrize("per", ["tensor", "channel"])
def test_dequantization_error_is_at_most_half_a_step(features, per):
    codec = AffineInt8Codec(per)
    codec.calibrate(features)
    error = (codec.decompress(codec.compress(features)) - features).abs()
    assert torch.all(error <= codec.scale / 2 + 1e-6)


def test_per_channel_uses_the_range_of_each_channel(features):
    per_tensor, per_channel = AffineInt8Codec("tensor"), AffineInt8Codec("channel")
    per_tensor.calibrate(features)
    per_channel.calibrate(features)
    assert per_channel.scale.shape == (1, 4, 1, 1)
    small_channel = features[:, 0]
    error_tensor = (per_tensor(features)[:, 0] - small_channel).abs().max()
    error_channel = (per_channel(features)[:, 0] - small_channel).abs().max()
    assert error_channel < error_tensor / 10


def test_post_relu_features_use_all_256_codes(features):
    codec = AffineInt8Codec("tensor")
    codec.calibrate(features)
    codes = codec.encoder()(features)
    assert codec.zero_point.item() == 0
    assert codes.min().item() == 0 and codes.max().item() == 255


def test_training_mode_passes_gradients_straight_through(features):
    codec = AffineInt8Codec("tensor")
    codec.calibrate(features)
    x = features.clone().requires_grad_(True)
    codec(x).sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))
    assert torch.allclose(codec(features), codec.decompress(codec.compress(features)))


def test_payload_of_wrong_length_is_rejected_with_sizes():
    wire = WireFormat((4, 6, 6))
    with pytest.raises(WireError, match="payload has 143 bytes, the bundle's wire format needs 144"):
        decode_frame(bytes(143), wire)
    with pytest.raises(WireError, match="codes must be uint8 of shape"):
        encode_frame(np.zeros((4, 6, 6), dtype=np.float32), wire)


def test_uncalibrated_codec_has_no_wire_format():
    with pytest.raises(EdgesplitError, match="must be calibrated"):
        AffineInt8Codec().wire_format()


@pytest.mark.parametrize("spec, message", [
    ("int9", "unknown codec 'int9'; codecs: int8"),
    ("int8:per=pixel", "per must be 'tensor' or 'channel'"),
    ("int8:per", "codec option 'per' is not key=value"),
    ("int8:bits=4", "bad options for codec 'int8'"),
])
def test_bad_codec_specs_are_named(spec, message):
    with pytest.raises(EdgesplitError, match=message):
        parse_codec_spec(spec)
