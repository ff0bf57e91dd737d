"""The frame format on its own: round trips, limits, checksums, and a fuzzed decoder."""

import re
import struct
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime import protocol
from runtime.errors import ProtocolError
from runtime.link import EmulatedLink, parse_duration, parse_rate

BUNDLE = bytes(range(16))
SERVER = {protocol.FEATURES: 4096, protocol.CLOSING: 0}  # what a server of a 4096-byte wire format reads
EDGE = protocol.edge_limits(10)


def stream(frame, limits=SERVER):
    return protocol.decode(protocol.Stream.encode(frame), protocol.Stream, limits)


@pytest.mark.parametrize("payload_bytes, overhead", [(0, 8), (16, 8), (64, 8), (127, 8), (128, 9), (16383, 9),
                                                     (16384, 10), ((1 << 21) - 1, 10), (1 << 21, 11)])
def test_a_stream_frame_costs_8_bytes_under_128_of_payload_and_one_more_per_7_bits(payload_bytes, overhead):
    frame = protocol.features_frame(70000, bytes(payload_bytes))  # ids travel as their low 16 bits
    data = protocol.Stream.encode(frame)
    assert len(data) == protocol.frame_bytes(payload_bytes) == payload_bytes + overhead
    assert protocol.decode(data, protocol.Stream, {protocol.FEATURES: 1 << 22}) == frame._replace(
        request_id=70000 - 65536)


def test_stream_frame_bytes_are_type_and_flags_id_length_crc_payload():
    data = protocol.Stream.encode(protocol.features_frame(0x1234, b"\x01\x02\x03"))
    assert data[:4] == bytes([protocol.FEATURES << 4, 0x12, 0x34, 3]) and data[-3:] == b"\x01\x02\x03"
    assert int.from_bytes(data[4:8], "big") == zlib.crc32(data[:4] + data[8:])
    assert protocol.length_field(300) == bytes([0x80 | 300 & 0x7F, 300 >> 7])  # LEB128, low 7 bits first


def test_replies_name_the_edges_full_request_id_by_its_low_16_bits():
    assert protocol.wire_request_id(70000, 70000 & 0xFFFF) == 70000
    assert protocol.wire_request_id(70000, (69990) & 0xFFFF) == 69990  # earlier frames still in flight
    assert protocol.wire_request_id(65540, 65535) == 65535  # across the wrap
    assert protocol.wire_request_id(5, 0xFFFF) == -1  # never sent: matches no frame


def test_result_values_round_trip_as_float32():
    logits = np.random.default_rng(0).normal(size=10).astype(np.float32)
    frame = stream(protocol.result_frame(9, logits), EDGE)
    np.testing.assert_array_equal(protocol.result_values(frame, 10), logits)
    with pytest.raises(ProtocolError, match="RESULT frame 9 carries 20 bytes, not the bundle's 10 values"):
        protocol.result_values(stream(protocol.result_frame(9, logits[:5]), EDGE), 10)
    with pytest.raises(ProtocolError, match="RESULT payload of 44 bytes is over the limit of 40"):
        stream(protocol.result_frame(9, np.zeros(11, np.float32)), EDGE)


@pytest.mark.parametrize("framing, frame", [
    (protocol.Stream, protocol.features_frame(7, b"\x01\x02\x03")),
    (protocol.Handshake, protocol.Frame(protocol.HELLO, bundle_id=BUNDLE, payload=bytes(range(32))))])
def test_every_flipped_byte_is_caught(framing, frame):
    data = bytearray(framing.encode(frame))
    limits = SERVER if framing is protocol.Stream else protocol.HANDSHAKE_LIMITS
    for position in range(len(data)):
        corrupted = bytearray(data)
        corrupted[position] ^= 0x10
        with pytest.raises(ProtocolError):
            protocol.decode(bytes(corrupted), framing, limits)


@pytest.mark.parametrize("field, value, message", [
    (0, b"HTTP", "not an edgesplit frame"),
    (1, 1, "protocol version 1 is not supported (this side speaks 2): run the same edgesplit release"),
    (2, 99, "unknown frame type 99"),
    (2, protocol.FEATURES, "unexpected FEATURES frame"),
    (3, 0x8000, "unknown flags"),
    (5, 1 << 30, "HELLO payload of 1073741824 bytes is over the limit of 1024"),
])
def test_handshake_header_fields_out_of_range_are_refused_before_the_payload(field, value, message):
    frame = protocol.Frame(protocol.HELLO, bundle_id=BUNDLE, payload=bytes(32))
    fields = list(protocol.Handshake.HEADER.unpack(protocol.Handshake.encode(frame)[:protocol.Handshake.minimum]))
    fields[field] = value
    with pytest.raises(ProtocolError, match=re.escape(message)) as raised:
        protocol.Handshake.parse(protocol.Handshake.HEADER.pack(*fields), protocol.HANDSHAKE_LIMITS)
    assert raised.value.code == (protocol.UNSUPPORTED_VERSION if field == 1 else protocol.BAD_FRAME)


@pytest.mark.parametrize("head, message", [
    (bytes([protocol.FEATURES << 4 | 2, 0, 1, 3]), "unknown flags 0x2 in a FEATURES frame"),
    (bytes([9 << 4, 0, 1, 3]), "unknown frame type 9"),
    (bytes([protocol.HELLO << 4, 0, 1, 3]), "unexpected HELLO frame"),
    (bytes([protocol.FEATURES << 4, 0, 1]) + protocol.length_field(4097), "FEATURES payload of 4097 bytes is over"),
    (bytes([protocol.FEATURES << 4, 0, 1, 0x83, 0x00]), "payload length is not in its shortest form"),
    (bytes([protocol.FEATURES << 4, 0, 1, 0x80, 0x80, 0x80, 0x80, 0x01]), "payload length takes over 4 bytes"),
])
def test_stream_headers_out_of_range_are_refused_before_the_payload(head, message):
    data = head + bytes(4) + bytes(8)
    with pytest.raises(ProtocolError, match=message) as raised:
        protocol.decode(data, protocol.Stream, SERVER)
    assert raised.value.code == protocol.BAD_FRAME


def test_error_frames_carry_code_and_message():
    frame = stream(protocol.error_frame(protocol.AUTH_FAILED, "wrong key", 5, final=True), EDGE)
    assert frame.flags & protocol.FLAG_FINAL and frame.request_id == 5
    assert protocol.error_details(frame) == (protocol.AUTH_FAILED, "wrong key")


def test_proofs_bind_key_nonces_and_bundle():
    a, b = protocol.new_nonce(), protocol.new_nonce()
    proof = protocol.client_proof(b"key", a, b, BUNDLE)
    assert protocol.proofs_match(proof, protocol.client_proof(b"key", a, b, BUNDLE))
    for other in (protocol.client_proof(b"kex", a, b, BUNDLE), protocol.client_proof(b"key", b, a, BUNDLE),
                  protocol.client_proof(b"key", a, b, bytes(16)), protocol.server_proof(b"key", a, b, BUNDLE)):
        assert not protocol.proofs_match(proof, other)


def test_key_comes_from_file_or_environment(tmp_path):
    key_file = tmp_path / "key"
    key_file.write_bytes(b"  secret\n")
    assert protocol.read_key(key_file) == b"secret"
    assert protocol.read_key(None, {"EDGESPLIT_KEY": "abc"}) == b"abc"
    assert protocol.read_key(None, {}) == b""
    (tmp_path / "empty").write_bytes(b"\n")
    with pytest.raises(ProtocolError, match="must hold 1..4096 bytes"):
        protocol.read_key(tmp_path / "empty")


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=200), st.sampled_from([protocol.Stream, protocol.Handshake]))
def test_fuzz_random_bytes_raise_only_protocol_errors(data, framing):
    try:
        protocol.decode(data, framing, {**SERVER, **EDGE, **protocol.HANDSHAKE_LIMITS})
    except ProtocolError:
        pass


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_fuzz_mutated_frames_raise_only_protocol_errors_and_survivors_reencode_to_their_bytes(data):
    """Valid frames of either framing with bytes rewritten, cut or appended."""
    framing = data.draw(st.sampled_from([protocol.Stream, protocol.Handshake]))
    kind = data.draw(st.sampled_from(sorted(protocol.FRAME_TYPES)))
    original = framing.encode(protocol.Frame(kind, data.draw(st.integers(0, 0xFFFF)), BUNDLE,
                                             data.draw(st.sampled_from([0, protocol.FLAG_FINAL])),
                                             data.draw(st.binary(max_size=300))))
    start = data.draw(st.integers(0, len(original)))
    patch = data.draw(st.binary(max_size=8))
    mutated = original[:start] + patch + original[start + len(patch):]
    mutated = mutated[:data.draw(st.integers(0, len(mutated)))] + data.draw(st.binary(max_size=8))
    limits = dict.fromkeys(protocol.FRAME_TYPES, 1024)
    try:
        frame = protocol.decode(mutated, framing, limits)
    except ProtocolError:
        return
    if framing is protocol.Stream:
        frame = frame._replace(bundle_id=bytes(16))
    assert framing.encode(frame) == mutated


def test_rates_and_durations_use_tc_units():
    assert parse_rate("1mbit") == 1e6 and parse_rate("100kbps") == 800e3
    assert parse_duration("20ms") == pytest.approx(0.02)
    with pytest.raises(ValueError, match="like 1mbit"):
        parse_rate("fast")


def test_token_bucket_releases_bytes_at_the_rate_after_the_burst():
    link = EmulatedLink(rate_bits_per_s=1e6, rtt_s=0.02, burst_bytes=4096)
    arrivals = [link.uplink_arrival(16384, 0.0) for _ in range(16)]
    # 16 frames of 16 KiB offered at once: all but the burst cross at 1 Mbit/s, plus 10 ms one way
    assert arrivals[-1] == pytest.approx((16 * 16384 - 4096) * 8 / 1e6 + 0.01)
    assert arrivals == sorted(arrivals)
    # an idle link refills the bucket: a small frame later goes straight through
    assert link.uplink_arrival(1000, 100.0) == pytest.approx(100.01)
    assert struct.calcsize(">4sBBH16sII") == protocol.Handshake.minimum == 32
