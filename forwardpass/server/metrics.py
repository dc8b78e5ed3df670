"""Prometheus metrics: latency histograms and token counters updated per request, engine gauges read at scrape.

The gauges (``forwardpass_requests_running``, ``forwardpass_requests_waiting``, ``forwardpass_kv_blocks_used``
and friends) come from the engine's last published ``EngineStats``, so a scrape never touches engine state.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector


class ServerView(Protocol):
    """What the gauges read of the server's state (`state.ServerState`)."""

    engine: Any  # the AsyncEngine once loaded, else None
    active_requests: int
    engine_steps: int

    @property
    def ready(self) -> bool: ...


CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_LATENCY_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    10.0,
    20.0,
    40.0,
    80.0,
)
_E2E_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 60.0, 120.0, 300.0, 600.0)


class EngineCollector(Collector):
    """Gauges read from the engine's latest stats (all zero until the model is loaded)."""

    def __init__(self, state: ServerView) -> None:
        self.state = state

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        engine = self.state.engine
        stats = engine.stats() if engine is not None else None

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            return GaugeMetricFamily(f"forwardpass_{name}", doc, value=value)

        yield gauge("requests_running", "Sequences in the running batch", stats.running if stats else 0)
        yield gauge("requests_waiting", "Sequences waiting to be scheduled", stats.waiting if stats else 0)
        yield gauge("kv_blocks_used", "KV cache blocks in use", stats.kv_blocks_used if stats else 0)
        yield gauge("kv_blocks_total", "KV cache blocks in the pool", stats.kv_blocks_total if stats else 0)
        yield gauge(
            "prefix_cache_hit_rate",
            "Share of prompt tokens found in the prefix cache",
            stats.prefix_cache_hit_rate if stats else 0.0,
        )
        age = time.monotonic() - engine.last_step_time if engine is not None else 0.0
        yield gauge("engine_last_step_age_seconds", "Seconds since the engine loop last finished a step", age)
        yield gauge(
            "server_requests_active", "HTTP generation requests admitted and not finished", self.state.active_requests
        )
        yield gauge("model_ready", "1 once the model is loaded", 1.0 if self.state.ready else 0.0)
        yield CounterMetricFamily(
            "forwardpass_preemptions",
            "Sequences preempted for lack of KV blocks",
            value=stats.preemptions if stats else 0,
        )
        spec = stats.spec if stats else None
        if spec is not None:  # speculative decoding is on
            yield CounterMetricFamily(
                "forwardpass_spec_verify_steps", "Sequence steps that verified proposed tokens", value=spec.steps
            )
            yield CounterMetricFamily(
                "forwardpass_spec_proposed_tokens", "Tokens proposed by speculative decoding", value=spec.proposed
            )
            yield CounterMetricFamily(
                "forwardpass_spec_accepted_tokens", "Proposed tokens the target model accepted", value=spec.accepted
            )
            yield gauge("spec_acceptance_rate", "Accepted / proposed tokens since start", spec.acceptance_rate)
            yield gauge(
                "spec_mean_accepted_length",
                "Tokens produced per verifying step (accepted proposals + the target's own), since start",
                spec.mean_accepted_length,
            )
        replicas = getattr(engine, "replicas", None)  # engine replicas behind this ingress (`ray/`)
        if replicas is not None:
            yield from _replica_metrics(replicas())
        yield CounterMetricFamily(
            "forwardpass_engine_steps",
            "Engine steps run (one prefill chunk or decode token per running sequence each)",
            value=self.state.engine_steps,
        )


def _replica_metrics(replicas: list[Any]) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
    """One sample per replica (label `replica`) of each gauge, from the replicas' last stats."""
    families = {
        "replica_healthy": ("1 while the replica answers", lambda r: 1.0 if r.healthy else 0.0),
        "replica_requests_in_flight": (
            "Requests the ingress has sent to the replica and not finished",
            lambda r: r.in_flight,
        ),
        "replica_requests_running": (
            "Sequences in the replica's running batch",
            lambda r: r.stats.running if r.stats else 0,
        ),
        "replica_kv_blocks_used": (
            "KV cache blocks in use in the replica",
            lambda r: r.stats.kv_blocks_used if r.stats else 0,
        ),
        "replica_prefix_cache_hit_rate": (
            "Share of the replica's prompt tokens found in its prefix cache",
            lambda r: r.stats.prefix_cache_hit_rate if r.stats else 0.0,
        ),
    }
    for name, (doc, value) in families.items():
        family = GaugeMetricFamily(f"forwardpass_{name}", doc, labels=["replica"])
        for r in replicas:
            family.add_metric([str(r.index)], value(r))
        yield family
    for name, doc, value in (
        ("replica_routed", "Requests routed to the replica", lambda r: r.routed),
        (
            "replica_prefix_routed",
            "Requests routed to the replica because it held their prefix",
            lambda r: r.prefix_routed,
        ),
    ):
        counter = CounterMetricFamily(f"forwardpass_{name}", doc, labels=["replica"])
        for r in replicas:
            counter.add_metric([str(r.index)], value(r))
        yield counter


class ServerMetrics:
    """One registry per app, so tests can build several apps in one process."""

    def __init__(self, state: ServerView) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.ttft = Histogram(
            "forwardpass_time_to_first_token_seconds", "Time to first token", buckets=_LATENCY_BUCKETS, registry=r
        )
        self.itl = Histogram(
            "forwardpass_inter_token_latency_seconds",
            "Time between output tokens",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.e2e = Histogram(
            "forwardpass_e2e_request_latency_seconds",
            "Request latency, arrival to last token",
            buckets=_E2E_BUCKETS,
            registry=r,
        )
        self.prompt_tokens = Counter("forwardpass_prompt_tokens", "Prompt tokens submitted", registry=r)
        self.generation_tokens = Counter("forwardpass_generation_tokens", "Tokens generated", registry=r)
        self.queue_timeouts = Counter(
            "forwardpass_queue_timeouts",
            "Requests refused (503) after waiting longer than --queue-timeout for a slot",
            registry=r,
        )
        r.register(EngineCollector(state))
        ProcessCollector(registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
