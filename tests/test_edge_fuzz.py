"""A fuzzed edge receive path: whatever a server (or a man in the middle of a link without TLS) sends,
the edge's receiver and handshake raise only protocol or connection errors, and a reply gives the frame
it names exactly one outcome, or loses the connection — never a crash of the thread that reads replies."""

import socket
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runtime import protocol
from runtime.bundle import load_bundle
from runtime.edge import CLOUD, ERROR, ClientConfig, EdgeClient, _InFlight
from runtime.errors import ProtocolError
from runtime.transports.tcp.edge import TcpChannel

KEY = b"a test key of 128 bits"
REQUEST_ID = 5


@pytest.fixture(scope="module")
def client(int8_built):
    return EdgeClient(load_bundle(int8_built.bundle), ClientConfig("127.0.0.1", 9, key=KEY))


@pytest.fixture(scope="module")
def channel(client):
    """A TCP channel past READY reporting to `client`, its socket never used: replies are handed to it directly."""
    edge, server = socket.socketpair()
    channel = TcpChannel(edge, client.transport, client)
    channel.streaming()
    channel.last_sent = REQUEST_ID
    yield channel
    edge.close()
    server.close()


def replies(client) -> list:
    """The frames a server sends after READY, valid: a RESULT, a per-frame ERROR, a FINAL ERROR, CLOSING."""
    values = np.linspace(-1, 1, client.reply_values, dtype=np.float32)
    return [protocol.result_frame(REQUEST_ID, values),
            protocol.error_frame(protocol.BAD_REQUEST, "refused", REQUEST_ID),
            protocol.error_frame(protocol.INTERNAL, "backend down", final=True),
            protocol.Frame(protocol.CLOSING)]


def mutate(data, original: bytes, header_bytes: int) -> bytes:
    """Flip, cut, append or rewrite: what corruption or a hostile peer makes of a frame."""
    choice = data.draw(st.sampled_from(["flip", "cut", "append", "header"]))
    if choice == "flip" and original:
        index = data.draw(st.integers(0, len(original) - 1))
        return original[:index] + bytes([original[index] ^ data.draw(st.integers(1, 255))]) + original[index + 1:]
    if choice == "cut":
        return original[:data.draw(st.integers(0, len(original)))]
    if choice == "append":
        return original + data.draw(st.binary(min_size=1, max_size=16))
    start = data.draw(st.integers(0, header_bytes - 1))
    patch = data.draw(st.binary(min_size=1, max_size=8))
    return original[:start] + patch + original[start + len(patch):]


def read_all(data: bytes, limits):
    buffer = bytearray(data)

    def read_exactly(size):
        if len(buffer) < size:
            raise ConnectionError("server closed the connection")
        chunk = bytes(buffer[:size])
        del buffer[:size]
        return chunk
    return protocol.read_frame(read_exactly, protocol.Stream, limits)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzz_mutated_replies_give_one_outcome_or_lose_the_connection(client, channel, data):
    original = protocol.Stream.encode(data.draw(st.sampled_from(replies(client))))
    with client._lock:
        client._pending[REQUEST_ID] = _InFlight(0, None, time.monotonic(), time.monotonic() + 60, channel, None)
        client._slots.acquire(blocking=False)
    try:
        frame = read_all(mutate(data, original, protocol.Stream.minimum), channel.limits)
        lost = channel.take_reply(frame)
    except (ProtocolError, ConnectionError) as error:  # the receive loop turns these into a lost connection
        lost = str(error)
    outcomes = []
    while not client._outcomes.empty():
        outcomes.append(client._outcomes.get())
    still_pending = client._pending.pop(REQUEST_ID, None) is not None
    if still_pending:
        client._slots.release()
    assert len(outcomes) + still_pending == 1  # the frame has one outcome, or waits for one (timeout, loss)
    if outcomes:
        assert outcomes[0].answered_by in (CLOUD, ERROR)
        if outcomes[0].answered_by == CLOUD:
            assert outcomes[0].logits.shape == (client.reply_values,)
    else:
        assert lost or frame.request_id != REQUEST_ID  # a reply for another frame changes nothing here


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzz_mutated_handshakes_raise_only_protocol_or_connection_errors(client, data):
    bundle_id = client.transport.bundle_id
    challenge = protocol.Handshake.encode(protocol.Frame(protocol.CHALLENGE, bundle_id=bundle_id,
                                                         payload=protocol.new_nonce()))
    ready = protocol.Handshake.encode(protocol.Frame(protocol.READY, bundle_id=bundle_id, payload=bytes(32)))
    size = protocol.Handshake.minimum
    first, second = ((mutate(data, challenge, size), ready) if data.draw(st.booleans())
                     else (challenge, mutate(data, ready, size)))
    edge, server = socket.socketpair()
    with edge, server:
        server.sendall(first + second)
        server.shutdown(socket.SHUT_WR)  # whatever the edge reads past these bytes is the end of the stream
        with pytest.raises((ProtocolError, ConnectionError)):  # a READY with a forged proof is refused too
            client.transport.handshake(TcpChannel(edge, client.transport, None))
