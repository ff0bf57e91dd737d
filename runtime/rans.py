"""A static-model rANS entropy coder in the standard library and numpy: runs on a Python 3.6 edge with no
compiled extension and no torch, and the cloud decodes with the same code, bit-exact.

The model is a set of tables, one per channel of a learned prior: each gives every symbol a frequency out of
2^PRECISION (at least 1, so any symbol can be coded). `encode(symbols, table_of, model)` codes symbol i with
table `table_of[i]`. The coder is byte-wise rANS (Duda 2013; the layout of Giesen's ryg_rans) with a 24-bit
state in [2^16, 2^24): three bytes of state end a stream, and the decoder's final state must be the
encoder's first, which catches most corruption beside the frame's CRC. Decoding does a fixed amount of work
per symbol (at most two byte reads) and never reads past the payload: a truncated or corrupt stream is
refused with WireError after at most `count` steps.
"""

from typing import List, NamedTuple, Sequence

import numpy as np

from runtime.errors import WireError

PRECISION = 12  # frequencies out of 4096: the smallest probability a table can give is 1/4096
TOTAL = 1 << PRECISION
LOWER = 1 << 16  # the state's lower bound; a multiple of TOTAL, so coding loses little to rounding
STATE_BYTES = 3  # the state stays below LOWER << 8 = 2^24
MAX_SYMBOLS = 256


class Model(NamedTuple):
    """Per table: each symbol's cumulative start and frequency, and each of the TOTAL slots' symbol."""

    starts: List[List[int]]
    frequencies: List[List[int]]
    slots: List[bytes]


def quantize(pmf: np.ndarray) -> np.ndarray:
    """Probabilities [tables, symbols] → integer frequencies summing to TOTAL per table, every one >= 1:
    the largest remainders get the rounding, and what the floor of 1 adds is taken from the largest."""
    pmf = np.asarray(pmf, dtype=np.float64)
    if pmf.ndim != 2 or not 1 <= pmf.shape[1] <= MAX_SYMBOLS or not np.all(np.isfinite(pmf)) or np.any(pmf < 0):
        raise ValueError("a prior must be [tables, symbols] of finite probabilities, at most {} symbols".format(
            MAX_SYMBOLS))
    sums = pmf.sum(axis=1, keepdims=True)
    pmf = np.where(sums > 0, pmf / np.where(sums > 0, sums, 1), 1.0 / pmf.shape[1])
    spare = TOTAL - pmf.shape[1]
    if spare < 0:
        raise ValueError("{} symbols do not fit {} slots".format(pmf.shape[1], TOTAL))
    scaled = pmf * spare
    frequencies = np.floor(scaled).astype(np.int64)
    short = spare - frequencies.sum(axis=1)
    order = np.argsort(-(scaled - frequencies), axis=1, kind="stable")
    for table, missing in enumerate(short):
        frequencies[table, order[table, :missing]] += 1
    return frequencies + 1


def model(frequencies: np.ndarray) -> Model:
    """Tables a coder reads, from frequencies [tables, symbols] that sum to TOTAL per table, each >= 1 (what
    `quantize` gives; a bundle ships them as they are)."""
    frequencies = np.asarray(frequencies)
    if (frequencies.ndim != 2 or not 1 <= frequencies.shape[1] <= MAX_SYMBOLS or np.any(frequencies < 1)
            or np.any(frequencies.sum(axis=1) != TOTAL)):
        raise WireError("an entropy model's tables must be [tables, at most {} symbols] of frequencies >= 1 summing "
                        "to {}".format(MAX_SYMBOLS, TOTAL))
    starts = np.concatenate([np.zeros((len(frequencies), 1), np.int64), np.cumsum(frequencies, axis=1)[:, :-1]], 1)
    slots = [np.repeat(np.arange(len(row), dtype=np.uint8), row).tobytes() for row in frequencies]
    return Model(starts.tolist(), frequencies.tolist(), slots)


def encode(symbols: Sequence[int], table_of: Sequence[int], coder: Model) -> bytes:
    """Symbols (each < its table's size) → the stream. rANS codes last-in first-out, so the symbols go in
    reversed and the bytes come out reversed."""
    starts, frequencies = coder.starts, coder.frequencies
    state, out = LOWER, bytearray()
    bound = (LOWER >> PRECISION) << 8
    for index in range(len(symbols) - 1, -1, -1):
        table, symbol = table_of[index], symbols[index]
        frequency = frequencies[table][symbol]
        limit = bound * frequency
        while state >= limit:
            out.append(state & 0xFF)
            state >>= 8
        state = ((state // frequency) << PRECISION) + state % frequency + starts[table][symbol]
    for _ in range(STATE_BYTES):
        out.append(state & 0xFF)
        state >>= 8
    out.reverse()
    return bytes(out)


def decode(stream: bytes, table_of: Sequence[int], coder: Model) -> np.ndarray:
    """The stream → len(table_of) symbols (uint8), or WireError if it is truncated, has bytes left over or
    does not end in the encoder's first state."""
    if len(stream) < STATE_BYTES:
        raise WireError("entropy-coded stream of {} bytes is shorter than its {}-byte state".format(
            len(stream), STATE_BYTES))
    starts, frequencies, slots = coder.starts, coder.frequencies, coder.slots
    state = int.from_bytes(stream[:STATE_BYTES], "big")
    position, size, mask = STATE_BYTES, len(stream), TOTAL - 1
    symbols = bytearray(len(table_of))
    for index, table in enumerate(table_of):
        slot = state & mask
        symbol = slots[table][slot]
        symbols[index] = symbol
        state = frequencies[table][symbol] * (state >> PRECISION) + slot - starts[table][symbol]
        while state < LOWER:
            if position == size:
                raise WireError("entropy-coded stream is truncated: {} bytes end before symbol {} of {}".format(
                    size, index + 1, len(table_of)))
            state = (state << 8) | stream[position]
            position += 1
    if position != size or state != LOWER:
        raise WireError("entropy-coded stream is corrupt: {} of {} bytes read, final state {:#x}, expected "
                        "{:#x}".format(position, size, state, LOWER))
    return np.frombuffer(bytes(symbols), np.uint8)
