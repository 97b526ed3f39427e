"""Prometheus metrics of the API (prometheus-client): request latency and counts, and, read
from the job store and the broker at each scrape, jobs by kind, state and queue (a profile is a
job of kind "profile"), queue depth and the workers' latest heartbeats (of training and profile
jobs alike: both hold a worker).

Each app has its own registry (tests build many apps in one process). With several API
processes behind a proxy, each is scraped on its own: the store and broker figures are the
same from any of them, the request figures are per process.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from spartan_service.jobs.queue import QUEUES, queue_depths
from spartan_service.jobs.status import JobStatus
from spartan_service.service.state import Resources

log = logging.getLogger(__name__)

KINDS = ("train", "profile")  # the job store's kinds: each one's series, zero or not
# Request latency buckets (s): the API answers in milliseconds; uploads and sweeps take longer.
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class StoreCollector(Collector):
    """Figures read at scrape time; a part that is down is left out (and logged), so that the
    request metrics still come through."""

    def __init__(self, resources: Resources) -> None:
        self.resources = resources

    def collect(self) -> Iterator[Metric]:
        yield from self._jobs()
        yield from self._queues()

    def _jobs(self) -> Iterator[Metric]:
        try:
            store = self.resources.store
            counts = store.job_counts()
            beats = store.worker_heartbeats()
        except Exception as exc:  # noqa: BLE001 - the store down is a reason to scrape
            log.warning("metrics: job store unavailable: %s", exc)
            return
        jobs = GaugeMetricFamily(
            "spartan_jobs", "Jobs by kind (train: POST /v1/jobs; profile: POST /v1/profiles), "
            "state and queue.", labels=["kind", "status", "queue"])
        seen = {(k, s, q): n for k, s, q, n in counts}
        for kind in sorted({*KINDS, *(k for k, _, _ in seen)}):
            for status in JobStatus:
                for queue in sorted({*QUEUES, *(q for _, _, q in seen)}):
                    jobs.add_metric([kind, status.value, queue],
                                    seen.get((kind, status, queue), 0))
        yield jobs
        last = GaugeMetricFamily(
            "spartan_worker_last_heartbeat_timestamp_seconds",
            "Unix time of the latest heartbeat of each worker running a job.", labels=["worker"])
        age = GaugeMetricFamily(
            "spartan_worker_heartbeat_age_seconds",
            "Seconds since each worker running a job last reported.", labels=["worker"])
        now = time.time()
        for worker, at in sorted(beats.items()):
            last.add_metric([worker], at.timestamp())
            age.add_metric([worker], max(0.0, now - at.timestamp()))
        yield last
        yield age

    def _queues(self) -> Iterator[Metric]:
        try:
            depths = queue_depths(self.resources.celery)
        except Exception as exc:  # noqa: BLE001 - the broker down, or one we cannot read
            log.warning("metrics: broker queue depth unavailable: %s", exc)
            return
        depth = GaugeMetricFamily("spartan_queue_depth",
                                  "Messages waiting in each broker queue.", labels=["queue"])
        for queue, n in sorted(depths.items()):
            depth.add_metric([queue], n)
        yield depth


class Telemetry:
    def __init__(self, resources: Resources) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("spartan_http_requests", "HTTP requests answered.",
                                ["method", "route", "status"], registry=self.registry)
        self.latency = Histogram("spartan_http_request_duration_seconds",
                                 "Time to answer an HTTP request.", ["method", "route"],
                                 buckets=BUCKETS, registry=self.registry)
        self.registry.register(StoreCollector(resources))


class MetricsMiddleware:
    """Times each request to its last byte, labelled by route template (`/v1/jobs/{job_id}`,
    not the id: one series per route, however many jobs)."""

    def __init__(self, app: ASGIApp, telemetry: Telemetry) -> None:
        self.app = app
        self.telemetry = telemetry

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope.get("method", "")
            self.telemetry.requests.labels(method, template, str(status)).inc()
            self.telemetry.latency.labels(method, template).observe(
                time.perf_counter() - start)
