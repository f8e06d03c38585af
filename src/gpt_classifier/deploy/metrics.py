"""The server's Prometheus metrics (`GET /metrics`), in a registry of their own per app."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    """Requests by route and status, latency, batch sizes, queue depth, texts, model info, readiness."""

    def __init__(self, queue_depth: Callable[[], float], ready: Callable[[], bool]) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "gpt_classifier_requests",
            "HTTP requests answered, by route, method and status",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "gpt_classifier_request_duration_seconds",
            "Time from a request's arrival to its answer, by route",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "gpt_classifier_batch_size",
            "Texts per forward pass",
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.texts = Counter("gpt_classifier_texts", "Texts classified", registry=self.registry)
        self.disconnects = Counter(
            "gpt_classifier_client_disconnects", "Clients gone before their answer", registry=self.registry
        )
        Gauge("gpt_classifier_queue_depth", "Texts waiting for a batch", registry=self.registry).set_function(
            queue_depth
        )
        Gauge("gpt_classifier_ready", "1 when /ready says ready", registry=self.registry).set_function(
            lambda: float(ready())
        )
        self.model = Info("gpt_classifier_model", "The model served", registry=self.registry)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
