"""Liveness and readiness probes (no token needed: they reveal nothing about tenants)."""

from __future__ import annotations

import logging

from fastapi import APIRouter, HTTPException, status

from spartan_service.jobs.queue import ping_broker
from spartan_service.service.deps import AppResourcesDep
from spartan_service.service.errors import responses
from spartan_service.service.schemas import Health

log = logging.getLogger(__name__)
router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="The API process is up")
async def healthz() -> Health:  # no I/O: answered on the event loop, no threadpool hop
    return Health(status="ok")


@router.get("/readyz", response_model=Health, responses=responses(503),
            summary="The job store and the broker are reachable")
def readyz(resources: AppResourcesDep) -> Health:
    problems: list[str] = []
    try:
        resources.store.ping()
    except Exception as exc:
        log.warning("job store unreachable: %s", exc)
        problems.append(f"job store unreachable: {exc.__class__.__name__}")
    try:
        ping_broker(resources.celery)
    except Exception as exc:
        log.warning("broker unreachable: %s", exc)
        problems.append(f"broker unreachable: {exc.__class__.__name__}")
    if problems:
        raise HTTPException(status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
                            detail="not ready: " + "; ".join(problems))
    return Health(status="ready", checks={"store": "ok", "broker": "ok"})
