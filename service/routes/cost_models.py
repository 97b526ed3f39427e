"""Cost models: register (fit a profile, or store a fitted model as it is), list (by hardware
or name), get (with its error on deployed models), refit (a new version with those
measurements folded in).

Every cost model is the next version of its name (per tenant) and carries the hardware it was
measured on (costmodels.hardware). Fitting (scikit-learn) runs in a small process pool
(service/fitting.py), so a large profile never holds the API's CPU or event loop.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Response, status
from fastapi.concurrency import run_in_threadpool

from spartan_service.jobs.models import CostModel
from spartan_service.jobs.store import JobStore
from spartan_service.service import serialize
from spartan_service.service.deps import CurrentTenant, ResourcesDep, StoreDep
from spartan_service.service.errors import MAX_OFFSET, check_text, field_error, not_found, responses
from spartan_service.service.fitting import FitRefused
from spartan_service.service.schemas import (
    CostModelCreate,
    CostModelDetail,
    CostModelPublic,
    CostModelsPublic,
)

router = APIRouter(prefix="/v1/cost-models", tags=["cost models"], responses=responses(401))


def _profile_error(exc: ValueError, where: str = "profile") -> HTTPException:
    loc: list[Any] = ["body", where]
    layer, field = getattr(exc, "layer", None), getattr(exc, "field", None)
    if layer is not None:
        loc += ["layers", layer]
    if field is not None:
        loc.append(field)
    return HTTPException(
        status_code=status.HTTP_422_UNPROCESSABLE_CONTENT,
        detail=[{"loc": loc, "msg": str(exc), "type": "profile_error"}],
    )


def _hardware_fields(source: dict[str, Any]) -> dict[str, Any]:
    from spartan_service.costmodels import hardware

    hw = hardware.from_machine(source)
    if hw is None:
        return {"hardware": None, "fingerprint": None, "hardware_label": None}
    return {"hardware": hw, "fingerprint": hardware.fingerprint(hw),
            "hardware_label": hardware.label(hw)}


def _batch(data: dict[str, Any]) -> int | None:
    batch = data.get("batch", (data.get("machine") or {}).get("batch"))
    return batch if isinstance(batch, int) and not isinstance(batch, bool) else None


def lineage(store: JobStore, row: CostModel, tenant: str) -> list[CostModel]:
    """The model and the versions it was refitted from (newest first, at most 100)."""
    out = [row]
    while out[-1].parent_id and len(out) < 100:
        parent = store.get_cost_model(out[-1].parent_id, tenant)
        if parent is None:
            break
        out.append(parent)
    return out


def points_of(store: JobStore, rows: list[CostModel]) -> list[dict[str, Any]]:
    return [{"job_id": p.job_id, "batch": p.batch, "measured": p.measured,
             "predicted": p.predicted, "layers": p.layers, "cost_model_id": p.cost_model_id}
            for p in store.deployment_points([r.id for r in rows])]


def detail(store: JobStore, row: CostModel, tenant: str) -> CostModelDetail:
    from spartan_service.costmodels.deployment import evaluate

    rows = lineage(store, row, tenant)
    points = points_of(store, rows)
    summary = evaluate(row.data, points)
    summary["own_points"] = sum(1 for p in points if p["cost_model_id"] == row.id)
    if summary["needs_refit"]:
        summary["refit_url"] = f"/v1/cost-models/{row.id}/refit"
    out = CostModelDetail.model_validate(row)
    out.deployment = summary
    return out


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=CostModelDetail,
    responses=responses(400, 413, 422),
    summary="Register a cost model: fit a profile, or store a fitted one",
    description="Body `{name, profile}`: per layer, latency = intercept + slope x nonzero "
    "blocks, fitted with scikit-learn; r2 and mape report the fit. Or `{name, cost_model}`: "
    "the file `spartan fit` writes, stored as it is. Each is the next version of `name`. A bad "
    "profile or model is answered 422 with `loc` naming the layer and field.",
)
async def create_cost_model(
    body: CostModelCreate, resources: ResourcesDep, store: StoreDep, tenant: CurrentTenant
) -> Response:
    check_text(body.name, ["body", "name"])
    if (body.profile is None) == (body.cost_model is None):
        raise field_error(["body", "profile"], "give exactly one of 'profile' (a profile to "
                          "fit) and 'cost_model' (a fitted model, as `spartan fit` writes it)")
    profile: dict[str, Any] | None = None
    if body.profile is not None:
        try:
            # Validated and fitted in a pool process (service/fitting.py), never on the API's
            # event loop or its threads; stored as validated: latencies in ms, like the fit.
            profile, fitted = await resources.fit_pool.fit(body.profile)
        except FitRefused as exc:
            raise _profile_error(exc) from None
        source = profile
    else:
        try:
            fitted = await run_in_threadpool(_validated_model, body.cost_model)
        except ValueError as exc:
            raise _profile_error(exc, "cost_model") from None
        source = fitted

    def store_it() -> CostModelDetail:
        row = store.create_cost_model(tenant, fitted, profile, body.name, batch=_batch(source),
                                      source="upload", **_hardware_fields(source))
        return detail(store, row, tenant)

    out = await run_in_threadpool(store_it)
    return serialize.one(CostModelDetail, out, status.HTTP_201_CREATED,
                         build=lambda d: d)


def _validated_model(data: Any) -> dict[str, Any]:
    from spartan_service.costmodels.schema import validate_cost_model

    return validate_cost_model(data).model_dump(mode="json", exclude_none=True)


@router.get("", response_model=CostModelsPublic, responses=responses(422),
            summary="List cost models",
            description="Newest first. `hardware`: a fingerprint, or text in the hardware "
            "label (any case), e.g. `EPYC` or `H200`; `name`: every version of that name.")
def list_cost_models(
    store: StoreDep,
    tenant: CurrentTenant,
    hardware: Annotated[str | None, Query(max_length=200)] = None,
    name: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> Response:
    check_text(hardware, ["query", "hardware"])
    check_text(name, ["query", "name"])
    rows, count = store.list_cost_models(tenant, limit, offset, hardware=hardware, name=name)
    return serialize.page(CostModelPublic, rows, count)


@router.get("/{model_id}", response_model=CostModelDetail, responses=responses(404),
            summary="Get a cost model, its profile and its error on deployed models")
def get_cost_model(model_id: str, store: StoreDep, tenant: CurrentTenant) -> Response:
    row = store.get_cost_model(model_id, tenant)
    if row is None:
        raise not_found("cost model")
    return serialize.one(CostModelDetail, row, build=lambda r: detail(store, r, tenant))


@router.post(
    "/{model_id}/refit",
    status_code=status.HTTP_201_CREATED,
    response_model=CostModelDetail,
    responses=responses(404, 409),
    summary="Refit with the deployment measurements folded in (a new version)",
    description="Each layer's cost curve is scaled by the median ratio of its time measured "
    "in the deployed models to its prediction (weight sparsity: where the export ran the dense "
    "kernel, that time becomes the layer's dense cap instead; structured layers: every term at "
    "their kept widths); the overhead becomes the median of what the whole-model measurements "
    "leave after the layers. The deployed samples are appended to the stored profile. The "
    "result is the next version of the same name, with `refit` giving the error on those "
    "points before and after. 409 when no deployed model was measured against it yet.",
)
def refit_cost_model(model_id: str, store: StoreDep, tenant: CurrentTenant) -> CostModelDetail:
    from spartan_service.costmodels.deployment import refit

    row = store.get_cost_model(model_id, tenant)
    if row is None:
        raise not_found("cost model")
    points = points_of(store, lineage(store, row, tenant))
    try:
        data, profile, summary = refit(row.data, row.profile, points)
    except ValueError as exc:
        raise HTTPException(status_code=status.HTTP_409_CONFLICT, detail=str(exc)) from None
    summary["from"] = row.id
    summary["from_version"] = row.version
    new = store.create_cost_model(
        tenant, data, profile, row.name, hardware=row.hardware, fingerprint=row.fingerprint,
        hardware_label=row.hardware_label, batch=row.batch, source="refit", parent_id=row.id,
        profile_job_id=row.profile_job_id, refit=summary)
    return detail(store, new, tenant)
