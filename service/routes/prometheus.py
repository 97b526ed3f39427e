"""`GET /metrics`: the Prometheus text format (no token, like the probes: counts only, no
tenant's data)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

router = APIRouter(tags=["health"])


@router.get("/metrics", response_class=Response, summary="Prometheus metrics",
            responses={200: {"content": {CONTENT_TYPE_LATEST: {}},
                             "description": "Prometheus text exposition format."}})
def metrics(request: Request) -> Response:
    """Request latency and counts by route, jobs by kind, state and queue, queue depth, and the
    latest heartbeat of each worker running a job."""
    # Plain def: the scrape reads the job store, in the threadpool.
    return Response(generate_latest(request.app.state.telemetry.registry),
                    media_type=CONTENT_TYPE_LATEST)
