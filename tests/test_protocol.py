"""The frame format on its own: round trips, limits, checksums, and a fuzzed decoder."""

import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime import protocol
from runtime.errors import ProtocolError
from runtime.link import EmulatedLink, parse_duration, parse_rate
from runtime.wire import LOSSLESS, WireFormat

BUNDLE = bytes(range(16))
WIRE = WireFormat((4, 3, 2), bits=4, lossless="zlib")


def features(payload=b"\x01\x02\x03", request_id=7):
    return protocol.features_frame(request_id, BUNDLE, payload, WIRE, (0.5, 3.0))


def test_features_frame_round_trips_with_every_field():
    frame = features()
    data = protocol.encode(frame)
    assert len(data) == protocol.HEADER_BYTES + 3 * 4 + 3
    decoded = protocol.decode(data)
    assert decoded == frame
    assert (decoded.lossless, decoded.bits, decoded.shape) == (LOSSLESS["zlib"].wire_id, 4, (4, 3, 2))
    protocol.check_features(decoded, WIRE, (0.5, 3.0))


def test_result_values_round_trip_as_float32():
    logits = np.random.default_rng(0).normal(size=10).astype(np.float32)
    frame = protocol.decode(protocol.encode(protocol.result_frame(9, BUNDLE, logits)))
    np.testing.assert_array_equal(protocol.result_values(frame), logits)


def test_every_flipped_byte_is_caught():
    data = bytearray(protocol.encode(features()))
    for position in range(len(data)):
        corrupted = bytearray(data)
        corrupted[position] ^= 0x10
        with pytest.raises(ProtocolError):
            protocol.decode(bytes(corrupted))


@pytest.mark.parametrize("field, value, message", [
    (0, b"HTTP", "not an edgesplit frame"),
    (1, 2, "protocol version 2 is not supported"),
    (2, 99, "unknown frame type 99"),
    (3, 0x8000, "unknown flags"),
    (9, 7, "the limit is 6"),
    (12, 1 << 30, "over the limit"),
])
def test_header_fields_out_of_range_are_refused_before_the_body(field, value, message):
    fields = list(protocol.HEADER.unpack(protocol.encode(features())[:protocol.HEADER_BYTES]))
    fields[field] = value
    with pytest.raises(ProtocolError, match=message) as raised:
        protocol.parse_header(protocol.HEADER.pack(*fields))
    assert raised.value.code == (protocol.UNSUPPORTED_VERSION if field == 1 else protocol.BAD_FRAME)


def test_control_frames_have_a_small_payload_limit():
    data = protocol.encode(protocol.Frame(protocol.HELLO, payload=bytes(protocol.MAX_CONTROL_PAYLOAD + 1)))
    with pytest.raises(ProtocolError, match="HELLO payload of 1025 bytes is over the limit of 1024"):
        protocol.decode(data)


def test_tensor_size_limit_applies_to_the_shape():
    frame = features()._replace(shape=(1 << 12, 1 << 12))
    with pytest.raises(ProtocolError, match="over the limit of 1000 elements"):
        protocol.decode(protocol.encode(frame), protocol.Limits(max_elements=1000))


def test_features_that_differ_from_the_bundle_are_named():
    with pytest.raises(ProtocolError, match=r"8 bits.*the bundle sends.*4 bits") as raised:
        protocol.check_features(features()._replace(bits=8), WIRE, (0.5, 3.0))
    assert raised.value.code == protocol.BAD_REQUEST
    with pytest.raises(ProtocolError, match="scale 0.5, zero point 3.0; the bundle uses 0.25"):
        protocol.check_features(features(), WIRE, (0.25, 3.0))


def test_error_frames_carry_code_and_message():
    frame = protocol.decode(protocol.encode(protocol.error_frame(protocol.AUTH_FAILED, "wrong key", 5, final=True)))
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
@given(st.binary(max_size=200))
def test_fuzz_random_bytes_raise_only_protocol_errors(data):
    try:
        protocol.decode(data)
    except ProtocolError:
        pass


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_fuzz_mutated_frames_raise_only_protocol_errors(data):
    """Valid frames with header fields rewritten and bytes cut or appended."""
    original = protocol.encode(features(payload=data.draw(st.binary(max_size=64))))
    fields = list(protocol.HEADER.unpack(original[:protocol.HEADER_BYTES]))
    index = data.draw(st.integers(0, len(fields) - 1))
    if isinstance(fields[index], bytes):
        fields[index] = data.draw(st.binary(min_size=len(fields[index]), max_size=len(fields[index])))
    elif isinstance(fields[index], float):
        fields[index] = data.draw(st.floats(width=32))
    else:
        limit = {1: 255, 2: 255, 3: 65535, 6: 255, 7: 255, 8: 255, 9: 255}.get(index, (1 << 32) - 1)
        fields[index] = data.draw(st.integers(0, limit))
    header = protocol.HEADER.pack(*fields)
    body = original[protocol.HEADER_BYTES:]
    cut = data.draw(st.integers(0, len(body)))
    mutated = header + body[:cut] + data.draw(st.binary(max_size=8))
    try:
        frame = protocol.decode(mutated)
    except ProtocolError:
        return
    # whatever survives decoding is self-consistent: it re-encodes to the same bytes
    assert protocol.encode(frame) == mutated


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
    assert struct.calcsize(">4sBBHQ16sBBBBffII") == protocol.HEADER_BYTES == 52
