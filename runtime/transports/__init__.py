"""How an edge reaches the cloud half: one folder per transport holding both its ends.

`<name>/edge.py` has the edge's `TRANSPORT` class; `<name>/server.py`, where the transport has a server of
edgesplit's own, its `SERVER` class, which `edgesplit serve` runs beside the cloud core (runtime/cloud.py:
bundle, batcher, backend, metrics, shutdown; it knows no transport). The edge client (runtime/edge.py) owns
the policy: frames in flight, the exit branch, falling back to it, exactly one outcome per frame,
reconnecting with backoff. A transport owns the connection: opening it (handshake, authentication, checking
the server serves the edge's bundle), sending one frame's payload, and reporting what comes back through
`Replies`. Adding a transport is adding its folder and a row in TRANSPORTS. Python 3.6 syntax on the edge.

    tcp   edgesplit's own protocol to `edgesplit serve` (runtime/PROTOCOL.md)      HOST:PORT
    grpc  Triton's gRPC (KServe v2) to a repository from `edgesplit export-triton`  grpc://HOST:PORT[/MODEL]
          (its server is Triton: triton/models.py is what the repository runs)
"""

import importlib
from typing import NamedTuple, Optional

TRANSPORTS = {"tcp": "runtime.transports.tcp", "grpc": "runtime.transports.triton"}  # scheme → package
DEFAULT_TRANSPORT = "tcp"


class Server(NamedTuple):
    transport: str  # a TRANSPORTS key
    host: str
    port: int
    path: str = ""  # grpc: the Triton model to call ("" for the default)

    def __str__(self) -> str:
        where = "{}:{}".format(self.host, self.port)
        if self.transport == DEFAULT_TRANSPORT:
            return where
        return "{}://{}{}".format(self.transport, where, "/" + self.path if self.path else "")


class Tls(NamedTuple):
    """TLS settings, files by path: what both transports (and mTLS at a load balancer) need."""

    ca: Optional[str] = None  # CA that signed the server's certificate (None: the system's)
    cert: Optional[str] = None  # the edge's own certificate chain, for mutual TLS
    key: Optional[str] = None  # its private key
    server_name: Optional[str] = None  # the name the server's certificate must carry (default: the host)


def parse_server(text: str) -> Server:
    """HOST:PORT (edgesplit serve) or SCHEME://HOST:PORT[/PATH]; ValueError naming what was expected."""
    scheme, _, rest = text.rpartition("://")
    scheme = scheme or DEFAULT_TRANSPORT
    if scheme not in TRANSPORTS:
        raise ValueError("unknown transport {!r} in {!r}; transports: {}".format(
            scheme, text, ", ".join(sorted(TRANSPORTS))))
    address, _, path = rest.partition("/")
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("expected HOST:PORT or grpc://HOST:PORT[/MODEL], got {!r}".format(text))
    return Server(scheme, host.strip("[]"), int(port), path)


class Replies:
    """What a channel reports to the edge client, from the channel's own threads."""

    def result(self, channel, request_id: int, values, received_bytes: int) -> None:
        raise NotImplementedError

    def refused(self, channel, request_id: int, code: int, message: str, received_bytes: int) -> None:
        """The server answered this frame with an error (`code`: runtime.protocol's error codes)."""
        raise NotImplementedError

    def lost(self, channel, problem: str) -> None:
        """The channel is gone; its frames in flight get their outcomes from the client."""
        raise NotImplementedError


class Channel:
    """One open connection. `send` raises OSError when the connection is gone."""

    alive = True

    def wire_bytes(self, payload_bytes: int) -> int:
        """What one payload costs on the uplink, headers included (the emulated link delays by it)."""
        raise NotImplementedError

    def send(self, request_id: int, payload: bytes) -> int:
        """Send one frame; the bytes written."""
        raise NotImplementedError

    def close(self) -> None:
        """Say goodbye where the transport has a way to, and release the connection."""
        raise NotImplementedError


class Transport:
    """Opens channels to one server for one bundle. `open` raises ProtocolError when the server refuses
    (its code says whether that is for now, e.g. BUSY, or for good) and OSError when it cannot be reached."""

    def __init__(self, bundle, server: Server, key: bytes, tls: Optional[Tls], connect_timeout_s: float,
                 reply_timeout_s: float):
        self.bundle, self.server, self.key, self.tls = bundle, server, key, tls
        self.connect_timeout_s, self.reply_timeout_s = connect_timeout_s, reply_timeout_s

    def open(self, replies: Replies) -> Channel:
        raise NotImplementedError


def open_transport(bundle, server: Server, key: bytes, tls: Optional[Tls], connect_timeout_s: float,
                   reply_timeout_s: float) -> Transport:
    module = importlib.import_module(TRANSPORTS[server.transport] + ".edge")
    return module.TRANSPORT(bundle, server, key, tls, connect_timeout_s, reply_timeout_s)


def server_class(transport: str = DEFAULT_TRANSPORT):
    """The class `edgesplit serve` listens with for `transport` (a TRANSPORTS key with a server.py)."""
    return importlib.import_module(TRANSPORTS[transport] + ".server").SERVER
