import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TINY_MODEL
from runtime.bundle import load_bundle
from runtime.coding import LOSSLESS
from runtime.local import deployed
from runtime.errors import WireError
from runtime.wire import WireFormat, decode_frame, encode_frame
from toolchain.codecs import make_codec, parse_codec_spec
from toolchain.codecs.affine import AffineCodec, Int8Codec
from toolchain.errors import EdgesplitError

SHAPE = (4, 6, 6)
LEARNED_SHAPE = (16, 8, 8)


@pytest.mark.parametrize("per", ["tensor", "channel"])
def test_compress_decompress_round_trip_is_exact_on_codes(features, per):
    codec = Int8Codec(SHAPE, per)
    codec.calibrate(features)
    payloads = codec.compress(features)
    assert len(payloads) == len(features)
    assert all(len(p) == 4 * 6 * 6 for p in payloads)  # one byte per element, nothing else
    codes = codec.encoder()(features)
    decoded = np.stack([decode_frame(p, codec.wire_format()) for p in payloads])
    assert np.array_equal(decoded, codes.numpy())
    assert torch.equal(codec.decompress(payloads), codec.decoder()(codes))


@pytest.mark.parametrize("spec", ["bbnet:c=4,s=2,bits=3", "safbmp:c=2,s=4,bits=5", "affine:bits=6"])
@pytest.mark.parametrize("lossless", LOSSLESS)
def test_every_codec_round_trips_codes_through_every_lossless_stage(spec, lossless):
    torch.manual_seed(0)
    codec = make_codec(spec, LEARNED_SHAPE).eval()
    x = torch.relu(torch.randn(5, *LEARNED_SHAPE))
    codec.calibrate(x)
    codes = codec.encoder()(x)
    assert codes.dtype == torch.uint8 and codes.max() < 2 ** codec.bits
    payloads = codec.compress(x, lossless)
    assert torch.equal(codec.decompress(payloads, lossless), codec.decoder()(codes))
    assert torch.allclose(codec.decompress(payloads, lossless), codec(x), atol=1e-6)


@pytest.mark.parametrize("bits", range(1, 9))
def test_payload_size_follows_bits(bits):
    codec = make_codec(f"bbnet:c=4,s=2,bits={bits}", LEARNED_SHAPE).eval()
    assert codec.code_shape == (4, 4, 4)
    payloads = codec.compress(torch.relu(torch.randn(3, *LEARNED_SHAPE)))
    assert [len(p) for p in payloads] == [64 * bits // 8] * 3


def test_tanh_codes_follow_the_corrected_bbnet_formula():
    codec = make_codec("bbnet:c=4,s=2,bits=4", LEARNED_SHAPE)
    latent = torch.cat([torch.rand(1000, generator=torch.Generator().manual_seed(0)) * 2 - 1,
                        torch.tensor([-1.0, 1.0])])
    codes = codec.encoder()[1](latent)
    assert codes.tolist() == torch.round((latent + 1) / 2 * 15).to(torch.uint8).tolist()
    assert codes.min() == 0 and codes.max() == 15


@pytest.mark.parametrize("per", ["tensor", "channel"])
def test_dequantization_error_is_at_most_half_a_step(features, per):
    codec = AffineCodec(SHAPE, bits=8, per=per)
    codec.calibrate(features)
    error = (codec.decompress(codec.compress(features)) - features).abs()
    assert torch.all(error <= codec.scale / 2 + 1e-6)


def test_per_channel_uses_the_range_of_each_channel(features):
    per_tensor, per_channel = AffineCodec(SHAPE, per="tensor"), AffineCodec(SHAPE, per="channel")
    per_tensor.calibrate(features)
    per_channel.calibrate(features)
    assert per_channel.scale.shape == (1, 4, 1, 1)
    small_channel = features[:, 0]
    error_tensor = (per_tensor(features)[:, 0] - small_channel).abs().max()
    error_channel = (per_channel(features)[:, 0] - small_channel).abs().max()
    assert error_channel < error_tensor / 10


def test_per_channel_on_tokens_is_per_feature():
    """A transformer's cut crosses N x tokens x features: a scale per feature, shared by every token."""
    tokens = torch.randn(8, 5, 3) * torch.tensor([0.01, 1.0, 100.0])
    codec = AffineCodec((5, 3), per="channel")
    codec.calibrate(tokens)
    assert codec.scale.shape == (1, 1, 3)
    assert torch.all((codec(tokens) - tokens).abs() <= codec.scale / 2 + 1e-6)
    assert (codec(tokens)[..., 0] - tokens[..., 0]).abs().max() < 1e-4


def test_post_relu_features_use_all_codes(features):
    for bits in (8, 4):
        codec = AffineCodec(SHAPE, bits=bits)
        codec.calibrate(features)
        codes = codec.encoder()(features)
        assert codec.zero_point.item() == 0
        assert codes.min().item() == 0 and codes.max().item() == 2 ** bits - 1


@pytest.mark.parametrize("spec", ["int8", "bbnet:c=4,s=2,bits=2"])
def test_training_mode_passes_gradients_straight_through(features, spec):
    codec = make_codec(spec, SHAPE if spec == "int8" else LEARNED_SHAPE)
    x = (features if spec == "int8" else torch.relu(torch.randn(4, *LEARNED_SHAPE))).clone().requires_grad_(True)
    codec.calibrate(x.detach())
    codec(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    if spec == "int8":
        assert torch.equal(x.grad, torch.ones_like(x))


def test_payload_of_wrong_length_is_rejected_with_sizes():
    wire = WireFormat((4, 6, 6))
    with pytest.raises(WireError, match="payload has 143 bytes, the bundle's wire format needs 144"):
        decode_frame(bytes(143), wire)
    with pytest.raises(WireError, match="codes must be uint8 shaped"):
        encode_frame(np.zeros((4, 6, 6), dtype=np.float32), wire)


@pytest.mark.parametrize("lossless", ["zlib", "zstd", "lz4"])
def test_lossless_round_trips_random_and_real_payloads_and_rejects_corruption(lossless, holdout):
    rng = np.random.default_rng(0)
    real = holdout.images[:4, 0]  # real image bytes: structured, compressible
    for codes in (rng.integers(0, 256, size=real.shape, dtype=np.uint8), real):
        wire = WireFormat(real.shape[1:], 8, lossless)
        for frame in codes:
            assert np.array_equal(decode_frame(encode_frame(frame, wire), wire), frame)
    payload = encode_frame(real[0], wire)
    assert len(payload) < real[0].size
    corrupt = bytes([payload[0] ^ 0xFF]) + payload[1:]
    with pytest.raises(WireError, match=f"(not valid {lossless} data|after {lossless} decoding|{lossless} payload)"):
        decode_frame(corrupt, wire)
    with pytest.raises(WireError):
        decode_frame(payload[: len(payload) // 2], wire)


def test_decompression_bomb_is_bounded():
    import zlib

    from runtime.coding.packed import compress_bytes, decompress_bytes

    for lossless in ("zlib", "zstd", "lz4"):
        bomb = zlib.compress(bytes(10 ** 7)) if lossless == "zlib" else compress_bytes(bytes(10 ** 7), lossless)
        with pytest.raises(WireError):
            decompress_bytes(bomb, lossless, 100)


def test_uncalibrated_shapes_are_checked():
    with pytest.raises(EdgesplitError, match="stride 3 does not divide the split tensor's 8x8"):
        make_codec("bbnet:c=4,s=3", LEARNED_SHAPE)
    with pytest.raises(EdgesplitError, match="needs a C,H,W split tensor"):
        make_codec("safbmp", (64,))


@pytest.mark.parametrize("spec, message", [
    ("int9", "unknown codec 'int9'; codecs: affine, bbnet, int8, safbmp"),
    ("int8:per=pixel", "per must be 'tensor' or 'channel'"),
    ("int8:per", "codec option 'per' is not key=value"),
    ("int8:bits=4", "codec 'int8' takes no option bits; its options: per"),
    ("bbnet:c=4,foo=1", "codec 'bbnet' takes no option foo; its options: c, s, bits"),
    ("affine:bits=9", "bits must be 1..8"),
    ("bbnet:c=0", r"need c >= 1, s >= 1, bits 1..8"),
    ("bbnet:c=x,s=2,bits=4", "bbnet codec: c must be a whole number, got 'x'"),
    ("bbnet:s=2.5", "bbnet codec: s must be a whole number, got '2.5'"),
    ("affine:bits=four", "affine codec: bits must be a whole number, got 'four'"),
    ("bbnet:rate=0.1,rate=0.2", "codec option 'rate' is given twice"),
])
def test_bad_codec_specs_are_named(spec, message):
    with pytest.raises(EdgesplitError, match=message):
        make_codec(parse_codec_spec(spec), LEARNED_SHAPE)


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("elements", [1, 7, 1000])
def test_bit_packing_layout_is_most_significant_code_first(bits, elements):
    """The byte layout on the wire: codes' low `bits` bits concatenated MSB-first, zero-padded."""
    from runtime.coding.packed import pack_bits, unpack_bits

    codes = np.random.default_rng(bits).integers(0, 1 << bits, elements, dtype=np.uint8)
    stream = "".join(format(int(code), "0{}b".format(bits)) for code in codes)
    stream += "0" * (-len(stream) % 8)
    expected = bytes(int(stream[i:i + 8], 2) for i in range(0, len(stream), 8))
    assert pack_bits(codes, bits) == expected
    assert np.array_equal(unpack_bits(expected, bits, elements), codes)


NEWCOMERS_CODEC = '''"""A newcomer's codec: two bits per feature, per channel (affine at 2 bits, under a name of its own)."""
from toolchain.codecs.affine import AffineCodec


class TwoBitCodec(AffineCodec):
    name = "twobit"

    def __init__(self, feature_shape):
        super().__init__(feature_shape, bits=2, per="channel")

    def params(self):
        return {}


CODECS = {"twobit": TwoBitCodec}
'''


def test_adding_a_codec_is_adding_a_file(tmp_path, fashion_mnist):
    """The toolchain seen through links, with one more file in toolchain/codecs/: build-engines takes the new
    codec by name, and its bundle sends two bits per feature through the runtime's own coder."""
    root = Path(__file__).resolve().parents[1]
    (tmp_path / "toolchain").mkdir()
    for path in (root / "toolchain").iterdir():
        if path.name not in ("codecs", "__pycache__"):
            (tmp_path / "toolchain" / path.name).symlink_to(path)
    (tmp_path / "toolchain" / "codecs").mkdir()
    for path in (root / "toolchain" / "codecs").glob("*.py"):
        (tmp_path / "toolchain" / "codecs" / path.name).symlink_to(path)
    (tmp_path / "toolchain" / "codecs" / "twobit.py").write_text(NEWCOMERS_CODEC)
    environment = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root / "tests"), str(root)]))
    built = subprocess.run([sys.executable, "-m", "edgesplit", "build-engines", *TINY_MODEL, "--codec", "twobit",
                            "--lossless", "none", "--max-loss", "100", "--min-agreement", "0.5", "--output",
                            str(tmp_path / "bundle")],
                           cwd=tmp_path, env=environment, capture_output=True, text=True)
    assert built.returncode == 0, built.stderr[-2000:]
    manifest = json.loads((tmp_path / "bundle" / "manifest.json").read_text())
    assert manifest["codec"]["name"] == "twobit" and manifest["wire"]["bits"] == 2
    elements = int(np.prod(manifest["wire"]["shape"]))
    sent = deployed(load_bundle(tmp_path / "bundle"), np.random.default_rng(0).random((5, 1, 32, 32), np.float32))
    assert sent.payload_bytes.tolist() == [-(-elements // 4)] * 5
