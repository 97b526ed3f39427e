"""The job store's cost models (with the deployment points measured against them) and uploads:
what a tenant keeps besides its jobs. `JobStore` inherits these; they use only its `session()`.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from spartan_service.jobs.db import new_id, owned, page
from spartan_service.jobs.models import CostModel, DeploymentPoint, Upload, utcnow


class CostModelsAndUploads:
    def session(self) -> AbstractContextManager[Session]:
        raise NotImplementedError

    # cost models
    def create_cost_model(
        self, tenant: str, data: dict[str, Any], profile: dict[str, Any] | None,
        name: str | None, *, hardware: dict[str, Any] | None = None,
        fingerprint: str | None = None, hardware_label: str | None = None,
        batch: int | None = None, source: str = "upload", parent_id: str | None = None,
        profile_job_id: str | None = None, refit: dict[str, Any] | None = None,
    ) -> CostModel:
        """Store a cost model as the next version of `name` (version 1 when unnamed). Two
        writers racing for one version: the unique (tenant, name, version) lets one win and
        the other takes the next number."""
        for _ in range(20):
            row = CostModel(
                id=new_id(), tenant=tenant, name=name, data=data, profile=profile,
                created_at=utcnow(), version=1, hardware=hardware, fingerprint=fingerprint,
                hardware_label=hardware_label, batch=batch, source=source, parent_id=parent_id,
                profile_job_id=profile_job_id, refit=refit)
            try:
                with self.session() as s:
                    if name is not None:
                        top = s.scalar(select(func.max(CostModel.version)).where(
                            CostModel.tenant == tenant, CostModel.name == name))
                        row.version = int(top or 0) + 1
                    s.add(row)
                return row
            except IntegrityError:
                continue
        raise RuntimeError(f"could not allocate a version of cost model {name!r}")

    def get_cost_model(self, model_id: str, tenant: str | None = None) -> CostModel | None:
        with self.session() as s:
            return owned(s, CostModel, model_id, tenant)

    def list_cost_models(
        self, tenant: str | None = None, limit: int = 50, offset: int = 0,
        hardware: str | None = None, name: str | None = None,
    ) -> tuple[list[CostModel], int]:
        """Newest first. `hardware`: a fingerprint, or text found (any case) in the hardware
        label, e.g. 'EPYC' or 'H200'."""
        query = select(CostModel)
        if tenant is not None:
            query = query.where(CostModel.tenant == tenant)
        if name is not None:
            query = query.where(CostModel.name == name)
        if hardware:
            query = query.where(or_(
                CostModel.fingerprint == hardware.lower(),
                func.lower(CostModel.hardware_label).contains(hardware.lower(),
                                                              autoescape=True)))
        with self.session() as s:
            return page(s, query, CostModel.created_at.desc(), CostModel.version.desc(),
                        limit=limit, offset=offset)

    def cost_model_versions(self, tenant: str, name: str) -> list[CostModel]:
        """Every version of a named cost model, newest first."""
        with self.session() as s:
            return list(s.scalars(
                select(CostModel).where(CostModel.tenant == tenant, CostModel.name == name)
                .order_by(CostModel.version.desc())).all())

    def profile_job_cost_models(self, job_id: str) -> list[CostModel]:
        with self.session() as s:
            return list(s.scalars(
                select(CostModel).where(CostModel.profile_job_id == job_id)
                .order_by(CostModel.version)).all())

    # deployment points (measured latency of trained models beside the prediction)
    def add_deployment_point(
        self, cost_model_id: str, tenant: str, job_id: str, batch: int, predicted: float,
        measured: float, layers: list[dict[str, Any]], fingerprint: str | None,
    ) -> DeploymentPoint:
        """One per (cost model, job, batch): a retried job replaces its earlier point."""
        row = DeploymentPoint(
            id=new_id(), cost_model_id=cost_model_id, tenant=tenant, job_id=job_id,
            batch=batch, predicted=predicted, measured=measured, layers=layers,
            fingerprint=fingerprint, created_at=utcnow())
        with self.session() as s:
            for old in s.scalars(select(DeploymentPoint).where(
                    DeploymentPoint.cost_model_id == cost_model_id,
                    DeploymentPoint.job_id == job_id, DeploymentPoint.batch == batch)):
                s.delete(old)
            s.add(row)
        return row

    def deployment_points(self, cost_model_ids: list[str]) -> list[DeploymentPoint]:
        if not cost_model_ids:
            return []
        with self.session() as s:
            return list(s.scalars(
                select(DeploymentPoint)
                .where(DeploymentPoint.cost_model_id.in_(cost_model_ids))
                .order_by(DeploymentPoint.created_at)).all())

    # uploads
    def create_upload(
        self, tenant: str, filename: str, kind: str, size: int, sha256: str,
        tensors: dict[str, Any], upload_id: str | None = None,
    ) -> Upload:
        row = Upload(id=upload_id or new_id(), tenant=tenant, filename=filename, kind=kind,
                     size=size, sha256=sha256, tensors=tensors, created_at=utcnow())
        with self.session() as s:
            s.add(row)
        return row

    def get_upload(self, upload_id: str, tenant: str | None = None) -> Upload | None:
        with self.session() as s:
            return owned(s, Upload, upload_id, tenant)

    def list_uploads(
        self, tenant: str | None = None, limit: int = 50, offset: int = 0
    ) -> tuple[list[Upload], int]:
        query = select(Upload)
        if tenant is not None:
            query = query.where(Upload.tenant == tenant)
        with self.session() as s:
            return page(s, query, Upload.created_at.desc(), Upload.id, limit=limit,
                        offset=offset)

    def upload_bytes(self, tenant: str) -> int:
        """What a tenant's uploads hold, for its quota."""
        with self.session() as s:
            return int(s.scalar(select(func.coalesce(func.sum(Upload.size), 0))
                                .where(Upload.tenant == tenant)) or 0)

    def upload_ids(self) -> set[str]:
        with self.session() as s:
            return set(s.scalars(select(Upload.id)).all())

    def delete_upload(self, upload_id: str, tenant: str | None = None) -> Upload | None:
        """Remove the record (the caller removes the file); None when there is none."""
        with self.session() as s:
            row = owned(s, Upload, upload_id, tenant)
            if row is not None:
                s.delete(row)
            return row
