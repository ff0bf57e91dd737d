"""Triton's gRPC (the KServe v2 predict protocol) to the ensemble `edgesplit export-triton` writes, through
tritonclient (`pip install "tritonclient[grpc]"`). Python 3.6 syntax.

Opening checks what the server serves: the model exists and is ready, its config names this edge's
bundle id and outputs. Each frame is one asynchronous request carrying the payload exactly as the
TCP transport sends it, and the bundle id. Authentication is TLS (mutual TLS at the load balancer or
Triton's own gRPC SSL options): Triton has no shared-key handshake.

A gRPC status becomes what the edge client does with the frame: INVALID_ARGUMENT (the decode model
refused it) is the frame's fault, INTERNAL and DEADLINE_EXCEEDED are the cloud's (the edge falls back
to its exit branch), anything else — UNAVAILABLE above all, a server or replica gone — loses the
channel: its frames in flight fall back and the client reconnects with backoff, through the load
balancer to a replica that is up.
"""

import functools
import os
import threading

import numpy as np

from runtime import protocol
from runtime.errors import ProtocolError
from runtime.transports import Channel, Transport
from runtime.transports.triton import BUNDLE_ID, BUNDLE_ID_PARAMETER, COMPRESSION, DEFAULT_MODEL, PAYLOAD, padded, payload_size

# what a request and a reply cost on the wire besides the payload and the output values: HTTP/2 frames,
# HPACK'd headers, gRPC's length prefix, protobuf fields (model, tensor names, types, shapes), the 16-byte
# bundle id; measured by `python -m benchmarks triton` (results/triton/overhead.csv: 143 B up, 150 B down)
REQUEST_OVERHEAD_BYTES = 143
REPLY_OVERHEAD_BYTES = 150
PER_FRAME = {"StatusCode.INVALID_ARGUMENT": protocol.BAD_REQUEST, "StatusCode.INTERNAL": protocol.INTERNAL,
             "StatusCode.DEADLINE_EXCEEDED": protocol.TIMEOUT}
TRANSIENT = ("StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED")  # opening: retry with backoff


def _client_module():
    # gRPC's core logs a failed TLS handshake itself, at INFO, beside the one line the edge prints about it
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    try:
        import tritonclient.grpc as client_module
    except ImportError as error:
        raise ProtocolError("grpc:// servers need tritonclient on the edge: pip install 'tritonclient[grpc]' "
                            "({})".format(error)) from error
    return client_module


class TritonChannel(Channel):
    def __init__(self, client, transport: "TritonTransport", replies):
        self.client = client
        self.transport = transport
        self.replies = replies
        self.alive = True

    def wire_bytes(self, payload_bytes: int) -> int:
        return payload_bytes + REQUEST_OVERHEAD_BYTES

    def send(self, request_id: int, payload: bytes) -> int:
        client_module = self.transport.client_module
        size = self.transport.payload_size
        tensors = [client_module.InferInput(PAYLOAD, [1, size], "UINT8"),
                   client_module.InferInput(BUNDLE_ID, [1, protocol.BUNDLE_ID_BYTES], "UINT8")]
        tensors[0].set_data_from_numpy(padded(payload, size))
        tensors[1].set_data_from_numpy(self.transport.bundle_id)
        try:
            self.client.async_infer(self.transport.model, tensors, functools.partial(self._done, request_id),
                                    request_id=str(request_id), client_timeout=self.transport.reply_timeout_s,
                                    compression_algorithm=COMPRESSION)
        except client_module.InferenceServerException as error:
            raise ConnectionError("Triton refused the request: {}".format(error.message())) from error
        return self.wire_bytes(len(payload))

    def _done(self, request_id: int, result, error) -> None:
        """tritonclient's callback, on one of gRPC's threads."""
        if not self.alive:
            return
        if error is None:
            try:
                values = np.concatenate([np.asarray(result.as_numpy(name)).reshape(-1)
                                         for name in self.transport.outputs])
            except Exception as fault:  # a reply without the bundle's outputs
                self._lose("malformed reply from Triton: {}".format(fault))
                return
            self.replies.result(self, request_id, values, values.nbytes + REPLY_OVERHEAD_BYTES)
        elif error.status() in PER_FRAME:
            self.replies.refused(self, request_id, PER_FRAME[error.status()], error.message(), REPLY_OVERHEAD_BYTES)
        else:
            self._lose("Triton {}: {}".format(error.status(), error.message()))

    def _lose(self, problem: str) -> None:
        """Report the loss from a thread of its own: closing a gRPC channel on its own callback thread can hang."""
        threading.Thread(target=self.replies.lost, args=(self, problem), name="edgesplit-lost", daemon=True).start()

    def close(self) -> None:
        self.alive = False
        self.client.close()


class TritonTransport(Transport):
    def __init__(self, *args):
        super().__init__(*args)
        if self.key:  # an edge given a key means to authenticate; this path cannot, so it says so
            raise ProtocolError("this edge holds a shared key (--key-file or EDGESPLIT_KEY), but Triton's gRPC has no "
                                "shared-key authentication: use TLS (--tls-ca, --tls-cert/--tls-key for mutual TLS) "
                                "and drop the key", protocol.AUTH_FAILED)
        self.client_module = _client_module()
        self.model = self.server.path or DEFAULT_MODEL
        self.bundle_id = np.frombuffer(protocol.bundle_id_bytes(self.bundle.bundle_id), dtype=np.uint8).reshape(1, -1)
        self.outputs = [tensor["name"] for tensor in self.bundle.artefact("cloud")["outputs"]]
        self.payload_size = payload_size(self.bundle.wire)

    def open(self, replies) -> TritonChannel:
        client = self._client()
        try:
            self._check_served(client)
        except BaseException:
            client.close()
            raise
        return TritonChannel(client, self, replies)

    def _client(self):
        tls, address = self.tls, "{}:{}".format(self.server.host, self.server.port)
        if tls is None:
            return self.client_module.InferenceServerClient(address)
        options = [("grpc.ssl_target_name_override", tls.server_name)] if tls.server_name else None
        return self.client_module.InferenceServerClient(
            address, ssl=True, root_certificates=tls.ca, private_key=tls.key, certificate_chain=tls.cert,
            channel_args=options)

    def _check_served(self, client) -> None:
        """The server holds this edge's bundle under `model`, ready; else why not (OSError: try again later)."""
        where = "Triton at {}".format(self.server)
        try:
            config = client.get_model_config(self.model, as_json=True, client_timeout=self.connect_timeout_s)["config"]
            ready = client.is_model_ready(self.model, client_timeout=self.connect_timeout_s)
        except self.client_module.InferenceServerException as error:
            message = error.message() or str(error)
            if "ssl" in message.lower() or "certificate" in message.lower():
                raise ProtocolError("TLS with {} failed: {}".format(self.server, message)) from error
            if error.status() in TRANSIENT or error.status() is None:
                raise ConnectionError("{} unreachable: {}".format(where, message)) from error
            raise ProtocolError("{} cannot serve model {}: {}".format(where, self.model, message),
                                protocol.BUNDLE_MISMATCH) from error
        served = config.get("parameters", {}).get(BUNDLE_ID_PARAMETER, {}).get("string_value")
        if served != self.bundle.bundle_id:
            raise ProtocolError("{} serves bundle {} as model {}, this edge runs bundle {}: export the repository "
                                "from this bundle".format(where, served, self.model, self.bundle.bundle_id),
                                protocol.BUNDLE_MISMATCH)
        inputs = sorted(tensor["name"] for tensor in config.get("input", []))
        if inputs != sorted((PAYLOAD, BUNDLE_ID)):
            raise ProtocolError("{} model {} takes {}, not an edge's {} and {}: point the edge at the ensemble "
                                "(grpc://HOST:PORT/NAME, not NAME_decode or NAME_tail)".format(
                                    where, self.model, inputs, PAYLOAD, BUNDLE_ID), protocol.BUNDLE_MISMATCH)
        outputs = [tensor["name"] for tensor in config.get("output", [])]
        if outputs != self.outputs:
            raise ProtocolError("{} model {} answers {}, the bundle's cloud half {}".format(
                where, self.model, outputs, self.outputs), protocol.BUNDLE_MISMATCH)
        if not ready:
            raise ProtocolError("{} has model {} but it is not ready yet".format(where, self.model), protocol.BUSY)


TRANSPORT = TritonTransport
