"""The edge's entropy coder: bit-exact round trips on any prior, near the entropy, and a decoder that refuses
truncated, padded or corrupt streams with WireError and bounded work."""

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.coding import rans
from runtime.errors import WireError
from runtime.coding.rans import PACKED_MARK
from runtime.wire import WireFormat, decode_frame, encode_frame


@st.composite
def coded(draw):
    """A random prior (peaked or flat, some symbols near zero), symbols drawn from anything in range, and
    their stream."""
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    tables, size = draw(st.integers(1, 8)), draw(st.integers(1, 256))
    pmf = rng.dirichlet(np.full(size, draw(st.sampled_from([0.05, 0.5, 5.0]))), size=tables)
    coder = rans.model(rans.quantize(pmf))
    count = draw(st.integers(0, 300))
    table_of = rng.integers(0, tables, count).tolist()
    symbols = rng.integers(0, size, count).tolist()
    return coder, table_of, symbols, rans.encode(symbols, table_of, coder)


@settings(max_examples=300, deadline=None)
@given(coded())
def test_any_symbols_round_trip_bit_exact(case):
    coder, table_of, symbols, stream = case
    assert rans.decode(stream, table_of, coder).tolist() == symbols


@settings(max_examples=300, deadline=None)
@given(coded(), st.data())
def test_a_damaged_stream_is_refused_or_decodes_to_in_range_symbols(case, data):
    coder, table_of, symbols, stream = case
    damage = data.draw(st.sampled_from(["truncate", "extend", "flip"]))
    if damage == "truncate":
        broken = stream[:data.draw(st.integers(0, len(stream) - 1))]
    elif damage == "extend":
        broken = stream + data.draw(st.binary(min_size=1, max_size=8))
    else:
        position = data.draw(st.integers(0, len(stream) - 1))
        broken = stream[:position] + bytes([stream[position] ^ data.draw(st.integers(1, 255))]) + stream[
            position + 1:]
    if damage != "flip":  # bytes missing or left over never decode
        with pytest.raises(WireError):
            rans.decode(broken, table_of, coder)
        return
    try:
        decoded = rans.decode(broken, table_of, coder)
    except WireError:
        return
    # a flip the final state check misses still yields one symbol per position, each within its table
    assert len(decoded) == len(symbols)
    assert all(s < len(coder.frequencies[t]) for s, t in zip(decoded.tolist(), table_of))


def test_a_stream_with_bytes_after_its_last_symbol_says_so():
    coder = rans.model(rans.quantize(PEAKED))
    stream = rans.encode([0] * 16, [0] * 16, coder)
    with pytest.raises(WireError, match="^entropy-coded stream has 2 bytes left over after its last symbol$"):
        rans.decode(stream + b"\x07\x07", [0] * 16, coder)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64), st.integers(0, 200))
def test_random_bytes_never_raise_anything_but_wire_error(stream, count):
    coder = rans.model(rans.quantize(np.random.default_rng(count).dirichlet(np.ones(16), size=3)))
    try:
        rans.decode(stream, [i % 3 for i in range(count)], coder)
    except WireError:
        pass


def test_a_peaked_prior_codes_near_its_entropy():
    rng = np.random.default_rng(0)
    pmf = rng.dirichlet(np.full(16, 0.3), size=32)
    coder = rans.model(rans.quantize(pmf))
    table_of = [i % 32 for i in range(4096)]
    symbols = [int(rng.choice(16, p=pmf[t])) for t in table_of]
    entropy = -sum(np.log2(pmf[t][s]) for t, s in zip(table_of, symbols)) / 8
    stream = rans.encode(symbols, table_of, coder)
    assert entropy < len(stream) <= 1.01 * entropy + rans.STATE_BYTES
    assert len(stream) < 4096 * 4 / 8 * 0.75  # a quarter under bit-packing at 4 bits


def test_quantize_keeps_every_symbol_codable_and_sums_to_the_total():
    pmf = np.array([[1.0, 0.0, 0.0, 1e-9], [0.25, 0.25, 0.25, 0.25], [0.0, 0.0, 0.0, 0.0]])
    frequencies = rans.quantize(pmf)
    assert (frequencies >= 1).all() and (frequencies.sum(axis=1) == rans.TOTAL).all()
    assert frequencies[1].tolist() == [rans.TOTAL // 4] * 4
    assert frequencies[0, 0] == rans.TOTAL - 3


@pytest.mark.parametrize("frequencies, problem", [
    (np.full((2, 4), rans.TOTAL // 4 + 1), "summing"), (np.array([[rans.TOTAL, 0]]), ">= 1"),
    (np.ones((1, 300), np.int64), "at most 256")])
def test_a_model_that_cannot_code_is_refused(frequencies, problem):
    with pytest.raises(WireError, match=problem):
        rans.model(frequencies)


PEAKED = np.array([[0.85] + [0.01] * 15, [0.01] * 15 + [0.85]])  # two code channels, each near one level


def peaked_wire() -> WireFormat:
    return WireFormat((2, 4, 4), bits=4).entropy_coded(rans.quantize(PEAKED))


def test_a_prior_with_a_table_per_code_codes_each_code_with_its_own():
    """32 codes, each with a table that expects its own index mod 16: every frame of exactly those codes costs a
    few bits a code; the same codes with one table for all cost 4 bits each, and go bit-packed."""
    expected = np.arange(32, dtype=np.uint8) % 16
    frequencies = rans.quantize(np.where(np.arange(16) == expected[:, None], 1.0, 0.001))
    wire = WireFormat.from_manifest(WireFormat((2, 4, 4), bits=4).entropy_coded(frequencies).to_manifest())
    codes = expected.reshape(2, 4, 4)
    payload = encode_frame(codes, wire)
    assert len(payload) < 8 and np.array_equal(decode_frame(payload, wire), codes)
    flat = WireFormat((2, 4, 4), bits=4).entropy_coded(rans.quantize(np.ones((1, 16))))
    assert len(encode_frame(codes, flat)) == flat.packed_bytes + 1


def test_the_rans_stage_sends_few_bytes_for_likely_codes_and_bit_packs_the_rest_behind_a_zero():
    wire = WireFormat.from_manifest(peaked_wire().to_manifest())  # the prior travels in the manifest
    likely = np.stack([np.zeros((4, 4), np.uint8), np.full((4, 4), 15, np.uint8)])
    payload = encode_frame(likely, wire)
    assert len(payload) < 8 < wire.packed_bytes and np.array_equal(decode_frame(payload, wire), likely)
    unlikely = np.random.default_rng(0).integers(1, 15, (2, 4, 4), dtype=np.uint8)  # rANS would need ~6 bits each
    payload = encode_frame(unlikely, wire)
    assert payload[:1] == PACKED_MARK and len(payload) == wire.packed_bytes + 1
    assert np.array_equal(decode_frame(payload, wire), unlikely)


@pytest.mark.parametrize("payload, problem", [
    (PACKED_MARK + bytes(15), "has 15 bit-packed bytes, the bundle's wire format needs 16"),
    (b"\x01" * 17, "over the 16 the bundle's codes take bit-packed"),
    (b"\x01", "shorter than its 3-byte state"),
    (b"\x01\x00\x00\x00\x00", "entropy-coded stream is")])
def test_a_rans_frame_that_does_not_fit_the_bundle_is_refused(payload, problem):
    with pytest.raises(WireError, match=problem):
        decode_frame(payload, peaked_wire())


def test_codes_beyond_the_bits_are_refused_before_coding():
    with pytest.raises(WireError, match="codes must be below 2\\^4 = 16, got 16"):
        encode_frame(np.full((2, 4, 4), 16, np.uint8), peaked_wire())


@pytest.mark.parametrize("frequencies, problem", [
    ([4096, 0], "a list of tables, each a list of integers"), ([["a"] * 16] * 2, "integer frequencies")])
def test_a_manifest_prior_that_is_not_tables_of_integers_is_refused_in_one_line(frequencies, problem):
    entry = dict(peaked_wire().to_manifest(), prior={"precision": rans.PRECISION, "frequencies": frequencies})
    with pytest.raises(WireError, match=problem):
        WireFormat.from_manifest(entry)


@pytest.mark.parametrize("prior, problem", [
    (None, "the wire's prior must be an object with precision and frequencies, got NoneType"),
    ([1], "must be an object with precision and frequencies, got list"),
    ({"precision": "12", "frequencies": []}, "the prior's precision is '12'; this runtime codes with frequencies out "
                                             "of 2\\^12")])
def test_a_manifest_prior_that_is_not_an_object_of_the_runtimes_precision_is_refused(prior, problem):
    with pytest.raises(WireError, match=problem):
        WireFormat.from_manifest(dict(peaked_wire().to_manifest(), prior=prior))


@pytest.mark.parametrize("change, problem", [
    (dict(lossless="zlib"), "a prior belongs to the rans stage"),
    (dict(prior=((1,) * 16,) * 2), "summing to 4096"),
    (dict(prior=(tuple(rans.quantize(PEAKED)[0]),) * 3), "one table, one per code channel \\(2\\) or one per code "
                                                           "\\(32\\)"),
    (dict(prior=()), "one table, one per code channel"),
    (dict(prior=(tuple(rans.quantize(PEAKED)[0]),) * 4097), "4097 tables of 2\\^4 frequencies, over the 65,536")])
def test_a_wire_whose_prior_cannot_code_its_codes_is_refused(change, problem):
    with pytest.raises(WireError, match=problem):
        peaked_wire()._replace(**change).validated()


def test_a_bundle_built_with_rans_is_served_and_streamed_by_the_commands_users_run(tmp_path, fashion_mnist):
    """build-engines --lossless rans fits the prior to the calibration codes; `edgesplit demo` serves the bundle
    and streams it: every frame answered, fewer bytes than the codes bit-packed (a ReLU cut's codes are mostly
    the zero point's)."""
    import json
    import re
    import subprocess
    import sys

    from click.testing import CliRunner

    from conftest import TINY_MODEL
    from toolchain.cli import main

    built = CliRunner().invoke(main, ["build-engines", *TINY_MODEL, "--split", "features.8", "--codec",
                                      "affine:bits=4", "--lossless", "rans", "--output", str(tmp_path / "bundle")])
    assert built.exit_code == 0, built.output
    manifest = json.loads((tmp_path / "bundle" / "manifest.json").read_text())
    wire = WireFormat.from_manifest(manifest["wire"])
    assert wire.lossless == "rans" and manifest["checks"]["mean_payload_bytes"] < 0.8 * wire.packed_bytes
    result = subprocess.run([sys.executable, "-m", "edgesplit", "demo", "--bundle", str(tmp_path / "bundle"),
                             "--frames", "50"], capture_output=True, text=True, cwd=Path(__file__).parents[1], timeout=300)
    assert result.returncode == 0, result.stderr
    assert re.search(r"50 frames in .*: 50 answered by the cloud, 0 on the edge, 0 errors", result.stdout), result.stdout
    payload = re.search(r"wire: ([\d.]+) payload bytes/frame", result.stdout)
    assert payload and float(payload[1]) < 0.8 * wire.packed_bytes, result.stdout
