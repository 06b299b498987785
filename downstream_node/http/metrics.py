"""Prometheus metrics of one app, in its own registry (two apps in a process never mix).

``/metrics`` serves the text format: requests by route and status, request latency, answers
by verdict, events appended by this process, the ledger position, the projection lag, and the
files below their redundancy or with no replica online now (from the projections).
Routes are labelled by their template (``/api/downstream/chunk/{token}``), never by the
raw path, so tokens stay out of the labels and the label set stays small.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from ..service import Node

log = structlog.get_logger("downstream.http")

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class _AppendedCollector(Collector):
    """Events this process appended, read from the group committer at scrape time."""

    def __init__(self, node: Node) -> None:
        self.node = node

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "downstream_events_appended", "Events appended to the ledger by this process."
        )
        family.add_metric([], float(self.node.committer.appended))
        yield family


class Metrics:
    def __init__(self, node: Node) -> None:
        self.node = node
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "downstream_http_requests",
            "HTTP requests answered, by route template, method and status code.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "downstream_http_request_duration_seconds",
            "Time to answer an HTTP request, by route template.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.answers = Counter(
            "downstream_answers",
            "Verified answers to challenges, by verdict (pass or fail).",
            ["verdict"],
            registry=self.registry,
        )
        # Made once: a labelled child's lookup costs more than counting, on every answer.
        self._verdicts = {v: self.answers.labels(verdict=v) for v in ("pass", "fail")}
        self.position = Gauge(
            "downstream_ledger_position",
            "Position of the ledger's head (events ever appended).",
            registry=self.registry,
        )
        self.lag = Gauge(
            "downstream_projection_lag",
            "Events appended but not yet folded into the live read model.",
            registry=self.registry,
        )
        self.database_up = Gauge(
            "downstream_database_up",
            "1 when the last scrape reached the database, else 0.",
            registry=self.registry,
        )
        self.below_target = Gauge(
            "downstream_files_below_target",
            "Monitored files with fewer replicas online now than their redundancy.",
            registry=self.registry,
        )
        self.unavailable = Gauge(
            "downstream_files_unavailable",
            "Monitored files with no replica online now.",
            registry=self.registry,
        )
        self.registry.register(_AppendedCollector(node))
        self._chain = node.on_answer
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        node.on_answer = self.on_answer

    def on_answer(self, verdict: str) -> None:
        self._verdicts[verdict].inc()
        if self._chain is not None:
            self._chain(verdict)

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, status)
        children = self._children.get(key)
        if children is None:
            # Looking a labelled child up costs more than counting; the label sets are few
            # (routes x methods x statuses; unmatched paths all share the route "unmatched").
            children = (
                self.requests.labels(route=route, method=method, status=str(status)),
                self.latency.labels(route=route),
            )
            self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    async def refresh(self) -> None:
        """Read the ledger's gauges from the database (a failure only zeroes ``up``)."""
        try:
            health = await self.node.health()
        except Exception as exc:  # the database is down: metrics must still answer
            log.warning("metrics_health_failed", error=repr(exc))
            self.database_up.set(0)
            return
        self.database_up.set(1)
        self.position.set(health["position"])
        self.lag.set(health["projection_lag"])
        try:
            below, unavailable = await self.node.files_below_target()
        except Exception as exc:  # as above: the rest of the metrics still answer
            log.warning("metrics_redundancy_failed", error=repr(exc))
            return
        self.below_target.set(below)
        self.unavailable.set(unavailable)

    def render(self) -> bytes:
        return generate_latest(self.registry)


METRICS = web.AppKey("metrics", Metrics)


async def metrics_handler(request: web.Request) -> web.Response:
    metrics = request.app[METRICS]
    await metrics.refresh()
    response = web.Response(body=metrics.render())
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response
