"""Prometheus metrics of one server: requests, items, batch sizes, queue depth, latencies (`GET /metrics`)."""

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 180.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class ServeMetrics:
    """The server's metrics in their own registry (several servers may live in one process, e.g. in tests)."""

    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "adajudge_requests", "HTTP requests by endpoint and status code", ["endpoint", "status"],
            registry=self.registry,
        )  # fmt: skip
        self.latency = Histogram(
            "adajudge_request_latency_seconds", "Request latency by endpoint", ["endpoint"],
            buckets=LATENCY_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.items = Counter("adajudge_items", "Items scored", registry=self.registry)
        self.truncated = Counter("adajudge_truncated_items", "Items cut to max_length", registry=self.registry)
        self.scored_as_is = Counter(
            "adajudge_scored_as_is", "Texts scored as sent: no chat-template parser recognised them",
            registry=self.registry,
        )  # fmt: skip
        self.queue_depth = Gauge("adajudge_queue_depth", "Items waiting to be scored", registry=self.registry)
        self.batch_items = Histogram(
            "adajudge_batch_items", "Items per forward pass", buckets=BATCH_BUCKETS, registry=self.registry
        )
        self.batch_rows = Histogram(
            "adajudge_batch_rows", "Rows (packed prompt groups or plain items) per forward pass",
            buckets=BATCH_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.forward_seconds = Histogram(
            "adajudge_forward_seconds", "Duration of a forward pass", buckets=LATENCY_BUCKETS, registry=self.registry
        )

    def observe_pass(self, num_items: int, num_rows: int, seconds: float) -> None:
        self.items.inc(num_items)
        self.batch_items.observe(num_items)
        self.batch_rows.observe(num_rows)
        self.forward_seconds.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
