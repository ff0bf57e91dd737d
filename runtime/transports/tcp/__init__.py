"""edgesplit's own protocol (runtime/PROTOCOL.md) over TCP, optionally inside TLS: `edge.py` is the edge's client
(handshake, coalesced writes, a receiver thread), `server.py` what `edgesplit serve` listens with (handshake and
authentication, per-peer admission, framing, backpressure). Python 3.6 syntax on the edge's side."""
