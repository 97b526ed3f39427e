"""Dependency aliases of the handlers: settings, stores, the queue and the current tenant.

Handlers never build sessions or clients themselves; tests swap them through the app factory
(`create_app(settings)`) or `app.dependency_overrides`. These dependencies do no I/O (the store
is built at startup, or else in the threadpool), so they are `async def`: run inline on the
event loop, not each in a threadpool thread of its own.
"""

from __future__ import annotations

import hmac
import logging
from typing import Annotated

from celery import Celery
from fastapi import Depends, HTTPException, Request, status
from fastapi.concurrency import run_in_threadpool

from spartan_service.jobs.artifacts import ArtifactStore
from spartan_service.jobs.results import ResultsCache
from spartan_service.jobs.settings import Settings
from spartan_service.jobs.store import JobStore
from spartan_service.service.state import Resources

log = logging.getLogger(__name__)
DEFAULT_TENANT = "default"


async def get_app_resources(request: Request) -> Resources:
    """The app's resources, built or not (for the probes, which report what is missing)."""
    resources: Resources = request.app.state.resources
    return resources


AppResourcesDep = Annotated[Resources, Depends(get_app_resources)]


def _build(resources: Resources) -> Resources:
    resources.store  # noqa: B018
    resources.celery  # noqa: B018
    return resources


async def get_resources(resources: AppResourcesDep) -> Resources:
    if not resources.ready:
        # Not built at startup (no lifespan, or the store was down then): connecting and
        # migrating happen in the threadpool, never on the event loop.
        try:
            await run_in_threadpool(_build, resources)
        except Exception as exc:
            log.warning("job store or broker unavailable: %s", exc)
            raise HTTPException(status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
                                detail="the job store is unavailable") from None
    return resources


ResourcesDep = Annotated[Resources, Depends(get_resources)]


async def get_app_settings(resources: AppResourcesDep) -> Settings:
    return resources.settings


async def get_store(resources: ResourcesDep) -> JobStore:
    return resources.store


async def get_artifacts(resources: ResourcesDep) -> ArtifactStore:
    return resources.artifacts


async def get_results(resources: ResourcesDep) -> ResultsCache:
    return resources.results


async def get_celery_app(resources: ResourcesDep) -> Celery:
    return resources.celery


SettingsDep = Annotated[Settings, Depends(get_app_settings)]
StoreDep = Annotated[JobStore, Depends(get_store)]
ArtifactsDep = Annotated[ArtifactStore, Depends(get_artifacts)]
CeleryDep = Annotated[Celery, Depends(get_celery_app)]
ResultsDep = Annotated[ResultsCache, Depends(get_results)]


def tenant_for(tokens: dict[str, str], presented: str) -> str | None:
    """The tenant whose token matches; every token is compared, in constant time each, so the
    time taken does not tell which tokens share a prefix with the one presented."""
    found: str | None = None
    given = presented.encode()
    for token, tenant in tokens.items():
        if hmac.compare_digest(token.encode(), given):
            found = tenant
    return found


def bearer_token(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


async def get_current_tenant(request: Request, settings: SettingsDep) -> str:
    """The caller's tenant: "default" when the service runs without tokens, else the owner of
    the bearer token (401 without a valid one). The OpenAPI document declares the bearer
    scheme only when tokens are on (service/openapi.py), so it matches what is enforced."""
    tokens = settings.tokens()
    if not tokens:
        return DEFAULT_TENANT
    token = bearer_token(request)
    tenant = tenant_for(tokens, token) if token else None
    if tenant is None:
        raise HTTPException(
            status_code=status.HTTP_401_UNAUTHORIZED,
            detail="missing or invalid bearer token",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return tenant


CurrentTenant = Annotated[str, Depends(get_current_tenant)]
