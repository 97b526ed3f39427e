"""Cost models: fit a per-layer linear latency model from a profile, get, list.

The body is JSON, `{"name": ..., "profile": {...}}`, the profile being the file that
`spartan profile` writes (DESIGN.md). Fitting (scikit-learn) runs in a small process pool
(service/fitting.py), so a large profile never holds the API's CPU or event loop.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Response, status
from fastapi.concurrency import run_in_threadpool

from service import serialize
from service.deps import CurrentTenant, ResourcesDep, StoreDep
from service.errors import MAX_OFFSET, check_text, not_found, responses
from service.fitting import FitRefused
from service.schemas import CostModelCreate, CostModelDetail, CostModelPublic, CostModelsPublic

router = APIRouter(prefix="/v1/cost-models", tags=["cost models"], responses=responses(401))


def _profile_error(exc: ValueError) -> HTTPException:
    loc: list[Any] = ["body", "profile"]
    layer, field = getattr(exc, "layer", None), getattr(exc, "field", None)
    if layer is not None:
        loc += ["layers", layer]
    if field is not None:
        loc.append(field)
    return HTTPException(
        status_code=status.HTTP_422_UNPROCESSABLE_CONTENT,
        detail=[{"loc": loc, "msg": str(exc), "type": "profile_error"}],
    )


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=CostModelDetail,
    responses=responses(400, 413, 422),
    summary="Fit a cost model from a profile",
    description="Per layer, latency = intercept + slope x nonzero blocks, fitted with "
    "scikit-learn; r2 and mape report the fit. A bad profile is answered 422 with `loc` "
    "naming the layer and field.",
)
async def create_cost_model(
    body: CostModelCreate, resources: ResourcesDep, store: StoreDep, tenant: CurrentTenant
) -> Response:
    check_text(body.name, ["body", "name"])
    try:
        # Validated and fitted in a pool process (service/fitting.py), never on the API's
        # event loop or its threads; stored as validated: latencies in ms, like the fit.
        profile, fitted = await resources.fit_pool.fit(body.profile)
    except FitRefused as exc:
        raise _profile_error(exc) from None
    row = await run_in_threadpool(store.create_cost_model, tenant, fitted, profile, body.name)
    return serialize.one(CostModelDetail, row, status.HTTP_201_CREATED)


@router.get("", response_model=CostModelsPublic, responses=responses(422),
            summary="List cost models")
def list_cost_models(
    store: StoreDep,
    tenant: CurrentTenant,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> Response:
    rows, count = store.list_cost_models(tenant, limit, offset)
    return serialize.page(CostModelPublic, rows, count)


@router.get("/{model_id}", response_model=CostModelDetail, responses=responses(404),
            summary="Get a cost model and the profile it was fitted from")
def get_cost_model(model_id: str, store: StoreDep, tenant: CurrentTenant) -> Response:
    row = store.get_cost_model(model_id, tenant)
    if row is None:
        raise not_found("cost model")
    return serialize.one(CostModelDetail, row)
