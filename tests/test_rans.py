"""The edge's entropy coder: bit-exact round trips on any prior, near the entropy, and a decoder that refuses
truncated, padded or corrupt streams with WireError and bounded work."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime import rans
from runtime.errors import WireError


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
