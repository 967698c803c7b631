"""Prometheus metrics, one registry per app (so several apps in one process do not collide)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "domain_lm_requests", "Requests by endpoint, task and HTTP status.", ["endpoint", "task", "status"], registry=r
        )
        self.latency = Histogram(
            "domain_lm_request_latency_seconds", "End-to-end request latency.", ["endpoint", "task"], buckets=_LATENCY_BUCKETS, registry=r
        )
        self.tokens = Counter("domain_lm_tokens", "Tokens processed.", ["task", "kind"], registry=r)
        self.queue_depth = Gauge("domain_lm_queue_depth", "Requests admitted and not finished (queued or generating).", registry=r)
        self.queue_limit = Gauge("domain_lm_queue_limit", "Admission limit; beyond it requests get 429.", registry=r)
        self.rejected = Counter("domain_lm_rejected", "Requests refused before generation.", ["reason"], registry=r)
        self.contract_failures = Counter("domain_lm_contract_failures", "Answers that broke their task contract.", ["task"], registry=r)
        self.engine_ready = Gauge("domain_lm_engine_ready", "1 when the engine is loaded.", registry=r)
