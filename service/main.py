"""The FastAPI app: settings, middleware, error handlers and routers, assembled; nothing else.

Run with `spartan serve`, or `uvicorn --factory spartan_service.service.main:create_app`.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from starlette.types import Scope

from spartan_service.jobs.settings import Settings, get_settings
from spartan_service.service import errors, openapi
from spartan_service.service.limits import MULTIPART_SLACK, BodyLimitMiddleware
from spartan_service.service.query import refuse_unknown_query
from spartan_service.service.routes import (
    cost_models,
    dashboard,
    docs,
    health,
    jobs,
    logs,
    metrics,
    profiles,
    prometheus,
    sweeps,
    uploads,
)
from spartan_service.service.security import SecurityHeadersMiddleware
from spartan_service.service.state import Resources
from spartan_service.service.telemetry import MetricsMiddleware, Telemetry

log = logging.getLogger(__name__)

DESCRIPTION = """\
Sparse training under hardware budgets with Spartan (Tai, Tian & Lim, NeurIPS 2022).

Submit a job (`POST /v1/jobs`), poll it (`GET /v1/jobs/{id}`), download its sparse model
(`GET /v1/jobs/{id}/artifacts/{name}`). Fit latency cost models from hardware profiles
(`POST /v1/cost-models`) and upload weights or data (`POST /v1/uploads`).
With `SPARTAN_API_TOKENS` set, every `/v1` route needs `Authorization: Bearer TOKEN`.
"""

TAGS = [
    {"name": "jobs", "description": "Sparse-training jobs, their progress and artifacts."},
    {"name": "sweeps", "description": "One spec at several budgets: the accuracy-latency "
     "frontier."},
    {"name": "uploads", "description": "Initial weights and datasets (.safetensors, .npz)."},
    {"name": "profiles", "description": "Profile jobs: a model timed on a worker's own "
     "hardware, and the cost model fitted from it."},
    {"name": "cost models", "description": "Linear latency models fitted from profiles, "
     "versioned and keyed by hardware."},
    {"name": "health", "description": "Probes for orchestrators."},
]


def _body_limit(settings: Settings) -> Callable[[Scope], int]:
    upload_limit = settings.max_upload_bytes + MULTIPART_SLACK

    def limit_for(scope: Scope) -> int:
        if scope.get("method") == "POST" and scope.get("path", "").rstrip("/") == "/v1/uploads":
            return upload_limit
        return settings.max_body_bytes

    return limit_for


def create_app(settings: Settings | None = None) -> FastAPI:
    """The app for these settings (from the environment when None)."""
    resources = Resources(settings or get_settings())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Built before serving: the async dependencies that hand them out must not block.
        try:
            resources.store  # noqa: B018 - creates or migrates the schema
        except Exception:
            log.exception("job store unavailable at startup; /readyz reports it")
        else:
            known = resources.store.upload_ids()
            resources.uploads.adopt(resources.settings.uploads_dir, known)
            removed = resources.uploads.sweep(known)
            if removed:
                log.warning("removed %d partial or orphaned uploads", len(removed))
        resources.celery  # noqa: B018
        yield
        resources.close()

    app = FastAPI(
        title="Spartan Service",
        version="0.1.0",
        description=DESCRIPTION,
        openapi_tags=TAGS,
        lifespan=lifespan,
        # /docs is served from an installed package (service/routes/docs.py), not a CDN.
        docs_url=None,
        redoc_url=None,
        dependencies=[Depends(refuse_unknown_query)],
    )
    app.state.resources = resources
    app.add_middleware(BodyLimitMiddleware, limit_for=_body_limit(resources.settings))
    app.add_middleware(SecurityHeadersMiddleware)
    app.state.telemetry = Telemetry(resources)
    app.add_middleware(MetricsMiddleware, telemetry=app.state.telemetry)  # outermost: times all
    errors.install(app)
    openapi.install(app, secured=bool(resources.settings.tokens()))
    for module in (jobs, metrics, logs, sweeps, uploads, profiles, cost_models, health,
                   prometheus, dashboard, docs):
        app.include_router(module.router)
    return app
