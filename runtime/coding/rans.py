"""A static-model rANS entropy coder in the standard library and numpy: runs on a Python 3.6 edge with no
compiled extension and no torch, and the cloud decodes with the same code, bit-exact.

The model is a set of tables, one per code (or per code channel) of a learned prior: each gives every symbol a frequency out of
2^PRECISION (at least 1, so any symbol can be coded). `encode(symbols, table_of, model)` codes symbol i with
table `table_of[i]`. The coder is byte-wise rANS (Duda 2013; the layout of Giesen's ryg_rans) with a 24-bit
state in [2^16, 2^24): three bytes of state end a stream, and the decoder's final state must be the
encoder's first, which catches most corruption beside the frame's CRC. Decoding does a fixed amount of work
per symbol (at most two byte reads) and never reads past the payload: a truncated or corrupt stream is
refused with WireError after at most `count` steps.

`RansCoder` is the wire's `rans` stage: it codes each code of one tensor with its table of the bundle's prior
(one per code, one per code channel — the first axis of the code shape — or one for all). A stream never starts with a 0 byte
(its first byte is the top of a state >= 2^16), so a 0 byte marks the bit-packed codes instead, sent where the
stream would be no smaller: no frame exceeds its bit-packed size plus one byte.
"""

from typing import List, NamedTuple, Sequence

import numpy as np

from runtime.coding import Coder
from runtime.coding.packed import pack_bits, unpack_bits
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
    if position != size:
        raise WireError("entropy-coded stream has {} bytes left over after its last symbol".format(size - position))
    if state != LOWER:
        raise WireError("entropy-coded stream is corrupt: its final state is {:#x}, not {:#x}".format(state, LOWER))
    return np.frombuffer(bytes(symbols), np.uint8)


PACKED_MARK = b"\x00"
MAX_PRIOR_FREQUENCIES = 1 << 16  # tables x symbols a bundle's prior may hold: 256 tables of 8-bit codes


class RansCoder(Coder):
    def __init__(self, wire) -> None:
        super().__init__(wire)
        per_table = wire.elements // len(wire.prior)
        self.table_of = [index // per_table for index in range(wire.elements)]
        self.model = model(np.array(wire.prior))

    @classmethod
    def check(cls, wire) -> None:
        tables = len(wire.prior)
        if tables << wire.bits > MAX_PRIOR_FREQUENCIES:
            raise WireError("the {} stage's prior has {} tables of 2^{} frequencies, over the {:,} a bundle may "
                            "ship".format(wire.lossless, tables, wire.bits, MAX_PRIOR_FREQUENCIES))
        if wire.parts or wire.picture:
            raise WireError("the {} stage codes one tensor of codes{}".format(
                wire.lossless, ", not parts" if wire.parts else ""))
        if any(not isinstance(f, (int, np.integer)) or isinstance(f, bool) for table in wire.prior for f in table):
            raise WireError("the {} stage's prior must hold integer frequencies".format(wire.lossless))
        if tables not in (1, wire.shape[0], wire.elements) or any(len(table) != 1 << wire.bits for table in wire.prior):
            raise WireError("the {} stage needs one table, one per code channel ({}) or one per code ({}), each of "
                            "2^{} frequencies; the prior has {} tables of {} frequencies".format(
                                wire.lossless, wire.shape[0], wire.elements, wire.bits, tables,
                                "/".join(str(size) for size in sorted({len(table) for table in wire.prior}))))
        model(np.array(wire.prior))  # frequencies that sum right, each >= 1

    def encode(self, arrays: list) -> bytes:
        """Codes → the rANS stream, or the bit-packed codes behind a 0 byte where the stream is no smaller."""
        codes, wire = arrays[0], self.wire
        if codes.size and int(codes.max()) >= 1 << wire.bits:
            raise WireError("codes must be below 2^{} = {}, got {}".format(wire.bits, 1 << wire.bits,
                                                                           int(codes.max())))
        stream = encode(codes.reshape(-1).tolist(), self.table_of, self.model)
        return stream if len(stream) < wire.packed_bytes + 1 else PACKED_MARK + pack_bits(codes, wire.bits)

    def decode(self, payload: bytes) -> list:
        wire = self.wire
        if payload[:1] == PACKED_MARK:
            if len(payload) != wire.packed_bytes + 1:
                raise WireError("payload has {} bit-packed bytes, the bundle's wire format needs {}".format(
                    len(payload) - 1, wire.packed_bytes))
            return [unpack_bits(payload[1:], wire.bits, wire.elements).reshape(wire.shape)]
        if len(payload) > wire.packed_bytes:  # no stream the encoder sends is this long: refused before decoding
            raise WireError("entropy-coded payload of {} bytes is over the {} the bundle's codes take "
                            "bit-packed".format(len(payload), wire.packed_bytes))
        return [decode(payload, self.table_of, self.model).reshape(wire.shape)]


CODER = RansCoder
