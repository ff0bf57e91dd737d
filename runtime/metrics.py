"""The cloud server's counters and histograms, exposed in Prometheus' text format.

Each server owns its registry, so several servers (tests, benchmarks) can share a process.
"""

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
LATENCY_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)


class ServerMetrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        registry = self.registry
        self.frames = Counter("edgesplit_frames", "Feature frames by outcome (answered, rejected, bad_frame).",
                              ["outcome"], registry=registry)
        self.bytes_received = Counter("edgesplit_received_bytes", "Feature-frame bytes read, headers included.",
                                      registry=registry)
        self.bytes_sent = Counter("edgesplit_sent_bytes", "Reply bytes written, headers included.",
                                  registry=registry)
        self.connections = Gauge("edgesplit_connections", "Open edge connections.", registry=registry)
        self.paused = Gauge("edgesplit_paused_connections", "Connections not read until a reply goes out: their "
                            "frames in flight are at the cap (a slow backend, or an edge not reading).",
                            registry=registry)
        self.refused = Counter("edgesplit_refused_connections", "Handshakes refused, by reason.", ["reason"],
                               registry=registry)
        self.batch_size = Histogram("edgesplit_batch_size", "Frames per backend call.", buckets=BATCH_BUCKETS,
                                    registry=registry)
        self.latency = Histogram("edgesplit_latency_seconds", "Frame received → reply written.",
                                 buckets=LATENCY_BUCKETS, registry=registry)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    def value(self, name: str, **labels) -> float:
        """One sample's current value (for summaries and tests); 0 when never set."""
        found = self.registry.get_sample_value(name, labels or None)
        return 0.0 if found is None else found
