"""`GET /metrics`: Prometheus text format, from a registry that belongs to one app.

prometheus_client rather than a hand-written exposition: histograms, label escaping and content
negotiation (text 0.0.4 / OpenMetrics) are easy to get subtly wrong. No global registry is used,
so two apps in one process (the tests) never share a figure. The engine's `stats()` is read at
scrape time and every numeric entry becomes a gauge, so new engine figures (cache bytes, hit
rate, ...) appear without touching this file.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator
from typing import Any

from fastapi import APIRouter, Request
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from starlette.responses import Response

from mlx_server import __version__

from .requestlog import CLIENT_GONE, RequestRecord

log = logging.getLogger("mlx_server.api")
router = APIRouter()

PREFIX = "mlx_server"
# Engine stats with a dedicated, documented name; every other number is mlx_server_engine_<key>.
NAMED_STATS = {
    "queued": ("queue_depth", "Requests waiting for the engine"),
    "active": ("active_sequences", "Sequences the engine is generating now"),
}
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
DECODE_BUCKETS = (1, 2, 5, 10, 20, 30, 50, 75, 100, 150, 200, 300, 500, 1000)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


def _metric_name(key: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", key).strip("_").lower()


def _flatten(stats: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in stats.items():
        name = prefix + _metric_name(str(key))
        if isinstance(value, dict):
            yield from _flatten(value, name + "_")
        else:
            yield name, value


class EngineCollector:
    """The engine's `stats()` at scrape time: numbers as gauges, strings as info labels."""

    def __init__(self, stats: Callable[[], dict[str, Any] | None]):
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        try:
            stats = self._stats()
        except Exception:  # a scrape must never take the server down
            log.exception("engine stats failed during a /metrics scrape")
            return
        if stats is None:  # still loading
            return
        labels: dict[str, str] = {}
        for key, value in _flatten(stats):
            if isinstance(value, int | float):  # bools too: they are ints
                name, doc = NAMED_STATS.get(key, (f"engine_{key}", f"Engine statistic {key!r}"))
                yield GaugeMetricFamily(f"{PREFIX}_{name}", doc, value=float(value))
            elif isinstance(value, str) and key:
                labels[key] = value
        info = GaugeMetricFamily(
            f"{PREFIX}_engine_info", "Engine facts (always 1)", labels=sorted(labels)
        )
        info.add_metric([labels[k] for k in sorted(labels)], 1.0)
        yield info


class Metrics:
    """The app's registry and instruments; `observe` takes one finished RequestRecord."""

    def __init__(self, engine_stats: Callable[[], dict[str, Any] | None], model_id: str):
        r = self.registry = CollectorRegistry()
        self.requests = Counter(
            f"{PREFIX}_requests",
            f"HTTP requests by route template, method and status ({CLIENT_GONE}: client left "
            "before a status was sent)",
            ["route", "method", "status"],
            registry=r,
        )
        self.latency = Histogram(
            f"{PREFIX}_request_duration_seconds",
            "Time from request arrival to the end of the response",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(f"{PREFIX}_requests_in_flight", "Requests being served", registry=r)
        self.prompt_tokens = Counter(
            f"{PREFIX}_prompt_tokens", "Prompt tokens of finished completions", registry=r
        )
        self.cached_tokens = Counter(
            f"{PREFIX}_cached_prompt_tokens",
            "Prompt tokens served from the prefix cache",
            registry=r,
        )
        self.completion_tokens = Counter(
            f"{PREFIX}_completion_tokens", "Generated tokens of finished completions", registry=r
        )
        self.completions = Counter(
            f"{PREFIX}_completions",
            "Chat completions by finish reason (stop, length, tool_calls, error, disconnected)",
            ["finish_reason"],
            registry=r,
        )
        self.ttft = Histogram(
            f"{PREFIX}_time_to_first_token_seconds",
            "From request arrival to the first output token (queueing and prefill included)",
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.decode_rate = Histogram(
            f"{PREFIX}_decode_tokens_per_second",
            "Per-request decode speed after the first token",
            buckets=DECODE_BUCKETS,
            registry=r,
        )
        info = Gauge(f"{PREFIX}_info", "Server facts (always 1)", ["version", "model"], registry=r)
        info.labels(__version__, model_id).set(1)
        r.register(EngineCollector(engine_stats))
        ProcessCollector(registry=r)  # process_resident_memory_bytes etc. (Linux only)

    def observe(self, record: RequestRecord, route: str) -> None:
        """Count one finished request."""
        status = str(record.status if record.status is not None else CLIENT_GONE)
        self.requests.labels(route, record.method, status).inc()
        self.latency.labels(route).observe(record.duration)
        if record.finish_reason is not None:
            self.completions.labels(record.finish_reason).inc()
        if record.usage is not None:
            self.prompt_tokens.inc(record.usage.prompt_tokens)
            self.cached_tokens.inc(record.usage.cached_tokens)
            self.completion_tokens.inc(record.usage.completion_tokens)
        if record.ttft is not None:
            self.ttft.observe(record.ttft)
        if record.decode_rate is not None:
            self.decode_rate.observe(record.decode_rate)

    def render(self, accept: str = "") -> tuple[bytes, str]:
        """The exposition in the format `accept` asks for (text 0.0.4 by default)."""
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type


@router.get("/metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    """Prometheus metrics (behind the API key when one is set)."""
    body, content_type = request.app.state.metrics.render(request.headers.get("accept", ""))
    return Response(body, media_type=content_type)
