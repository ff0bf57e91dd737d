"""edgesplit's own protocol over TCP (or TLS) to `edgesplit serve`: the handshake proves both sides hold
the shared key, a receiver thread per connection reads replies. Python 3.6 syntax."""

import fcntl
import socket
import ssl
import struct
import termios
import threading
import time
from typing import Callable, Optional

from runtime import protocol
from runtime.errors import ProtocolError
from runtime.local import reply_values
from runtime.transports import Channel, Replies, Transport

HTTP2_SETTINGS = 0x4  # the frame type an HTTP/2 server opens with
COALESCE_BYTES = 16384  # the most one coalesced write carries
POLL_S = 0.002  # how often frames held back look at what the kernel has not had acknowledged
INTERVAL_WEIGHT = 0.125  # of the newest gap between frames in their mean interval


def client_context(tls) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=tls.ca)
    if tls.cert:
        context.load_cert_chain(tls.cert, tls.key)
    return context


def send_deadline(sock, seconds: float) -> None:
    """A send the kernel cannot take within `seconds` fails (OSError) instead of blocking the sender: the frame
    could not be answered in time anyway. SO_SNDTIMEO bounds sends only; reads stay blocking."""
    whole = int(seconds)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", whole, int((seconds - whole) * 1e6)))


def unacknowledged(sock) -> int:
    """Bytes the kernel holds for this socket that the server has not acknowledged (Linux's SIOCOUTQ); 0 where
    the system does not say, so every frame goes out at once."""
    try:
        return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0"))[0]
    except (OSError, AttributeError):
        return 0


class Coalescer:
    """Frames that are ready while earlier bytes are unacknowledged go out together in one write: once those are
    acknowledged, after one mean frame interval, or at COALESCE_BYTES, whichever comes first. A lone frame goes
    at once. On a thin link this saves a TCP/IP header per frame, and an ACK for each segment of replies (they
    ride on the next write); on a fast one the kernel acknowledges within a round trip and nothing waits."""

    def __init__(self, sock, lost: Callable[[str], None]):
        self.sock, self.lost = sock, lost
        self.pending, self.pending_bytes, self.first_at = [], 0, 0.0  # frames held back, since when
        self.interval, self.last_at = 0.0, None  # the mean interval between frames, the last frame's arrival
        self.ready = threading.Condition()
        self.open = True
        threading.Thread(target=self.flush_loop, name="edgesplit-coalescer", daemon=True).start()

    def send(self, data: bytes) -> None:
        """Write `data` now, or hold it for the next coalesced write; OSError when the connection is gone."""
        with self.ready:
            now = time.monotonic()
            if self.last_at is not None:  # the first gap sets the mean, later ones move it
                gap = now - self.last_at
                self.interval += INTERVAL_WEIGHT * (gap - self.interval) if self.interval else gap
            self.last_at = now
            if not self.open:
                raise ConnectionError("the connection is closed")
            if not self.pending and not unacknowledged(self.sock):
                self.sock.sendall(data)
                return
            self.first_at = self.first_at if self.pending else now
            self.pending.append(data)
            self.pending_bytes += len(data)
            self.ready.notify()

    def flush_loop(self) -> None:
        with self.ready:
            while self.open:
                waited = time.monotonic() - self.first_at
                if not self.pending:
                    self.ready.wait()
                elif self.pending_bytes < COALESCE_BYTES and waited < self.interval and unacknowledged(self.sock):
                    self.ready.wait(min(POLL_S, self.interval - waited))
                else:
                    try:
                        self.write_pending()
                    except OSError as error:
                        self.open = False
                        self.lost("send failed: {}".format(error))

    def write_pending(self, last: bytes = b"") -> None:
        """The caller holds `ready`."""
        data = b"".join(self.pending) + last
        self.pending, self.pending_bytes = [], 0
        self.sock.sendall(data)

    def stop(self) -> None:
        with self.ready:
            self.open = False
            self.ready.notify()

    def close(self, last: bytes = b"") -> None:
        """Stop; what is held back, then `last`, goes out first (OSError if it cannot)."""
        with self.ready:
            self.stop()
            self.write_pending(last)


class TcpChannel(Channel):
    """One authenticated connection; its receiver thread hands replies to `replies`."""

    def __init__(self, sock, transport: "TcpTransport", replies: Optional[Replies]):
        self.sock = sock
        self.stream = sock.makefile("rb")
        self.alive = True
        self.transport = transport
        self.replies = replies
        self.framing = protocol.Handshake  # until READY, then compact stream frames
        self.limits = protocol.HANDSHAKE_LIMITS
        self.last_sent = 0  # the latest request id sent: replies carry its low 16 bits
        self.coalescer = None  # once READY came

    def read_exactly(self, size: int) -> bytes:
        data = self.stream.read(size)
        if len(data) != size:
            raise ConnectionError("server closed the connection")
        return data

    def read_frame(self) -> protocol.Frame:
        return protocol.read_frame(self.read_exactly, self.framing, self.limits)

    def streaming(self) -> None:
        """READY came: from here on frames are compact and carry only what changes per frame."""
        self.framing, self.limits = protocol.Stream, protocol.edge_limits(self.transport.reply_values)
        self.coalescer = Coalescer(self.sock, self.coalescer_lost)

    def coalescer_lost(self, problem: str) -> None:
        if self.alive:
            self.replies.lost(self, problem)

    def wire_bytes(self, payload_bytes: int) -> int:
        return protocol.frame_bytes(payload_bytes)

    def send(self, request_id: int, payload: bytes) -> int:
        data = protocol.Stream.encode(protocol.features_frame(request_id, payload))
        self.last_sent = request_id  # before the frame leaves: its reply cannot come sooner
        self.coalescer.send(data)
        return len(data)

    def close(self) -> None:
        """Tell the server this edge is done (when the connection still works), then close."""
        if self.alive:
            self.alive = False
            try:
                self.coalescer.close(protocol.Stream.encode(protocol.Frame(protocol.CLOSING)))
            except OSError:
                pass
        self.release()

    def release(self) -> None:
        self.alive = False
        if self.coalescer is not None:
            self.coalescer.stop()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.stream.close()
        self.sock.close()

    def receive(self) -> None:
        """Replies until the connection ends. Any fault in a reply loses the connection (its frames get their
        outcomes, the edge reconnects); none ends this thread."""
        while self.alive:
            try:
                frame = self.read_frame()
                lost = self.take_reply(frame)
            except Exception as error:  # a malformed reply, a closed socket, or a fault here
                lost = str(error) or type(error).__name__
            if lost:
                if self.alive:
                    self.replies.lost(self, lost)
                return

    def take_reply(self, frame: protocol.Frame) -> Optional[str]:
        """Hand one reply to the client; the reason the connection is lost, if it is."""
        received = protocol.frame_bytes(len(frame.payload))
        request_id = protocol.wire_request_id(self.last_sent, frame.request_id)
        if frame.type == protocol.RESULT:
            self.replies.result(self, request_id, protocol.result_values(frame, self.transport.reply_values),
                                received)
            return None
        if frame.type == protocol.ERROR and not frame.flags & protocol.FLAG_FINAL:
            code, message = protocol.error_details(frame)
            self.replies.refused(self, request_id, code, message, received)
            return None
        if frame.type == protocol.ERROR:
            return "server error: {}".format(protocol.error_details(frame)[1])
        if frame.type != protocol.CLOSING:
            return "unexpected {} frame from the server".format(frame.type_name)
        return "server closed the connection"


class TcpTransport(Transport):
    def __init__(self, *args):
        super().__init__(*args)
        protocol.check_key(self.key)
        self.bundle_id = protocol.bundle_id_bytes(self.bundle.bundle_id)
        self.reply_values = reply_values(self.bundle)

    def open(self, replies: Replies) -> TcpChannel:
        server = self.server
        sock = socket.create_connection((server.host, server.port), timeout=self.connect_timeout_s)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.tls is not None:
                sock = client_context(self.tls).wrap_socket(sock, server_hostname=self.tls.server_name or server.host)
        except BaseException:
            sock.close()
            raise
        channel = TcpChannel(sock, self, replies)
        try:
            self.handshake(channel)
            sock.settimeout(None)  # the receiver waits for replies as long as frames are in flight
            send_deadline(sock, self.reply_timeout_s)
        except BaseException:
            channel.release()
            raise
        threading.Thread(target=channel.receive, name="edgesplit-receiver", daemon=True).start()
        return channel

    def check_peer(self, first: bytes) -> None:
        """Refuse a peer whose answer to HELLO does not start like an edgesplit frame (a gRPC port sends an
        HTTP/2 SETTINGS frame, then hangs up): say so, rather than 'server closed the connection'."""
        if first and not protocol.MAGIC.startswith(first):
            grpc = first[0] == 0 and len(first) == len(protocol.MAGIC) and first[3] == HTTP2_SETTINGS
            raise ProtocolError("{} is not an edgesplit server: it answered with bytes {}{}".format(
                self.server, " ".join("{:02x}".format(byte) for byte in first),
                " (HTTP/2: a gRPC server? Triton is reached with --server grpc://HOST:PORT)" if grpc else ""))

    def handshake(self, channel: TcpChannel) -> None:
        key, bundle_id = self.key, self.bundle_id
        client_nonce = protocol.new_nonce()
        channel.sock.sendall(protocol.Handshake.encode(protocol.Frame(protocol.HELLO, bundle_id=bundle_id,
                                                                      payload=client_nonce)))
        self.check_peer(channel.stream.peek(len(protocol.MAGIC))[:len(protocol.MAGIC)])
        reply = channel.read_frame()
        server_nonce = b""
        if reply.type == protocol.CHALLENGE:
            if not key:
                raise ProtocolError("the server requires a shared key: set EDGESPLIT_KEY or --key-file",
                                    protocol.AUTH_FAILED)
            server_nonce = reply.payload
            channel.sock.sendall(protocol.Handshake.encode(protocol.Frame(
                protocol.AUTH, bundle_id=bundle_id, payload=protocol.client_proof(key, server_nonce, client_nonce,
                                                                                  bundle_id))))
            reply = channel.read_frame()
        if reply.type == protocol.ERROR:
            protocol.raise_error_frame(reply, "handshake with {}".format(self.server))
        if reply.type != protocol.READY:
            raise ProtocolError("handshake: expected READY, the server sent {}".format(reply.type_name))
        if key and not server_nonce:
            raise ProtocolError("the server skipped authentication (started with --no-auth) but this edge "
                                "holds a key: refusing an unauthenticated server", protocol.AUTH_FAILED)
        if key and not protocol.proofs_match(
                protocol.server_proof(key, server_nonce, client_nonce, bundle_id), reply.payload):
            raise ProtocolError("the server's key proof is wrong: it does not hold this edge's key",
                                protocol.AUTH_FAILED)
        channel.streaming()


TRANSPORT = TcpTransport
