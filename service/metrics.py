"""Prometheus metrics: one registry per app (so several apps can live in one test process), exposed
at GET /metrics.

Token figures are in tokens (floats), as operators read budgets. With several worker processes, set
PROMETHEUS_MULTIPROC_DIR to a shared empty directory: prometheus-client then writes every value to files
there and /metrics on any worker answers the sum over all of them.
"""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

import ledger
from service.providers import Completion

# Buckets for Redis scripts (sub-millisecond to tens of ms) and for HTTP and upstream calls (up to a
# long model answer).
_REDIS_BUCKETS_S = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5)
_HTTP_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

_CLAMPED_HELP = "Tokens an exchange's reported cost exceeded its hold by: recorded, never charged."
_UPSTREAM_FAULTS_HELP = (
    "Model replies that broke the exchange's terms, by kind: usage that cannot be true (charged by the "
    "estimate instead), or a reply past max_tokens (cut at the budget)."
)

_MODEL_CALLS_HELP = (
    "Messages refused with 429 `model_calls_exceeded`: their config had its share of a worker's model "
    "calls running."
)
_SHED_HELP = (
    "Requests refused with 503 `overloaded` at the worker's in-flight cap, by route (not in the 5xx of "
    "chatledger_http_requests_total, so an alert on those sees only the service's faults)."
)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "chatledger_http_requests",
            "HTTP requests by route and status.",
            ["method", "route", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "chatledger_http_request_duration_seconds", "HTTP request latency.", ["method", "route"],
            buckets=_HTTP_BUCKETS_S, registry=r,
        )  # fmt: skip
        self.tokens_reserved = Counter(
            "chatledger_tokens_reserved", "Tokens held by reservations.", registry=r
        )
        self.tokens_charged = Counter("chatledger_tokens_charged", "Tokens charged by settles.", registry=r)
        self.tokens_refunded = Counter(
            "chatledger_tokens_refunded",
            "Held tokens given back (unused part of a hold, or a void).",
            registry=r,
        )
        self.tokens_clamped = Counter("chatledger_tokens_clamped", _CLAMPED_HELP, registry=r)
        self.upstream_faults = Counter(
            "chatledger_upstream_faults", _UPSTREAM_FAULTS_HELP, ["provider", "kind"], registry=r
        )
        self.reservations_expired = Counter(
            "chatledger_reservations_expired",
            "Holds of dead workers reclaimed after their deadline.",
            registry=r,
        )
        self.insufficient = Counter(
            "chatledger_insufficient_tokens", "Messages refused with 402 before any generation.", registry=r
        )
        self.tokens_held = Counter(
            "chatledger_tokens_held",
            "Messages refused with 429 tokens_held: the chat could pay, messages in flight held its tokens.",
            registry=r,
        )
        self.upstream_latency = Histogram(
            "chatledger_upstream_duration_seconds", "Model call latency.", ["provider"],
            buckets=_HTTP_BUCKETS_S, registry=r,
        )  # fmt: skip
        self.upstream_errors = Counter(
            "chatledger_upstream_errors", "Failed model calls by kind.", ["provider", "kind"], registry=r
        )
        # Apart from chatledger_http_requests_total: a refusal under overload is no fault of the service.
        self.requests_shed = Counter("chatledger_http_requests_shed", _SHED_HELP, ["route"], registry=r)
        self.model_calls_refused = Counter("chatledger_model_calls_refused", _MODEL_CALLS_HELP, registry=r)
        self.script_latency = Histogram(
            "chatledger_redis_script_duration_seconds", "Ledger script latency.", ["script"],
            buckets=_REDIS_BUCKETS_S, registry=r,
        )  # fmt: skip
        # The labelled children each request touches, found once: `labels()` takes a lock and
        # validates its values on every call. A child is the same object for the metric's
        # life, since nothing here removes labels; the keys are as bounded as the label values.
        self._request_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self._script_children: dict[str, Any] = {}
        self._upstream_children: dict[str, Any] = {}
        self._shed_children: dict[str, Any] = {}

    def request_done(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count an answered request and time it."""
        key = (method, route, status)
        children = self._request_children.get(key)
        if children is None:
            children = (self.requests.labels(method, route, str(status)), self.latency.labels(method, route))
            self._request_children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def shed(self, route: str) -> None:
        """Count a request refused at the in-flight cap."""
        _child(self._shed_children, self.requests_shed, route).inc()

    def observe_script(self, name: str, seconds: float) -> None:
        _child(self._script_children, self.script_latency, name).observe(seconds)

    def observe_upstream(self, provider: str, seconds: float) -> None:
        _child(self._upstream_children, self.upstream_latency, provider).observe(seconds)

    def reserved(self, reservation: ledger.Reservation) -> None:
        self.tokens_reserved.inc(ledger.from_milli(reservation.granted_milli))

    def settled(self, reservation: ledger.Reservation, settlement: ledger.Settlement) -> None:
        self.tokens_charged.inc(ledger.from_milli(settlement.charged_milli))
        refund = reservation.granted_milli - settlement.charged_milli
        if refund > 0:
            self.tokens_refunded.inc(ledger.from_milli(refund))
        if settlement.clamped_milli:
            self.tokens_clamped.inc(ledger.from_milli(settlement.clamped_milli))

    def completed(self, provider: str, completion: Completion) -> None:
        """Count what a settled reply's model did wrong, if anything (rare: labels looked up then)."""
        if completion.usage_rejected:
            self.upstream_faults.labels(provider, "usage_rejected").inc()
        if completion.over_budget:
            self.upstream_faults.labels(provider, "over_budget").inc()

    def voided(self, released_milli: int) -> None:
        self.tokens_refunded.inc(ledger.from_milli(released_milli))

    def exposition(self) -> bytes:
        """The text format for a scrape: this process's registry, or every worker's in multiprocess mode."""
        # prometheus-client's own convention, read by the library itself at import: not a chatledger setting.
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            merged = CollectorRegistry()
            MultiProcessCollector(merged)  # type: ignore[no-untyped-call]  # the library's signature is untyped
            return generate_latest(merged)
        return generate_latest(self.registry)


def _child(children: dict[str, Any], metric: Histogram | Counter, label: str) -> Any:
    """`metric.labels(label)`, looked up once per label value (see Metrics.__init__)."""
    child = children.get(label)
    if child is None:
        child = children[label] = metric.labels(label)
    return child
