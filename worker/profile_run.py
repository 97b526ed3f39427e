"""One attempt at a profile job: time the model's layers on this worker's device, fit a cost
model per batch size, store profile and cost model.

The caller (worker.runner.run_job) claims the job and holds its lease; the device is held
exclusively (worker.device_lock) by run_job for the whole attempt. A retried attempt skips the
batch sizes whose cost model an earlier attempt already stored, so a lost worker costs at most
one batch size's profile.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import torch

from spartan_service.jobs.artifacts import ArtifactStore
from spartan_service.jobs.models import CostModel, Job
from spartan_service.jobs.profile_spec import ProfileSpec
from spartan_service.jobs.settings import Settings
from spartan_service.jobs.store import JobStore
from spartan_service.worker.lease import Lease, finite

log = logging.getLogger(__name__)


def profile_artifact(batch: int) -> str:
    return f"profile-b{batch}.json"


class ProfileRun:
    def __init__(self, job: Job, store: JobStore, artifacts: ArtifactStore, settings: Settings,
                 lease: Lease) -> None:
        self.job, self.store, self.artifacts, self.settings = job, store, artifacts, settings
        self.lease = lease

    def run(self) -> tuple[dict[str, Any], dict[str, Any]]:
        from spartan_service.worker.plan import load_model_and_example, pick_device

        spec = ProfileSpec.model_validate(self.job.spec)
        device = pick_device(spec.device)
        torch.manual_seed(0)
        # the model and an example batch exactly as a job on this model and data gets them
        model, x, *_ = load_model_and_example(spec.job_view(), self.job, self.store,
                                              self.settings, device)
        model.eval()
        done = {row.batch: row for row in self.store.profile_job_cost_models(self.job.id)}
        results: list[dict[str, Any]] = []
        for index, batch in enumerate(spec.batch_sizes):
            row = done.get(batch)
            if row is None:
                row = self.profile_batch(spec, model, x, batch, device, index)
            else:
                log.info("profile %s: batch %d done by an earlier attempt", self.job.id, batch)
            results.append({"batch": batch, "cost_model_id": row.id, "version": row.version,
                            "layers": len(row.data["layers"]), "fingerprint": row.fingerprint})
        first = self.store.get_cost_model(str(results[0]["cost_model_id"]))
        assert first is not None
        metrics = {"cost_model_id": first.id, "cost_models": results,
                   "hardware": first.hardware, "fingerprint": first.fingerprint,
                   "device": device.type}
        total = len(spec.batch_sizes)
        progress = {"step": total, "total_steps": total, "phase": "done", "device": device.type}
        return metrics, progress

    def profile_batch(self, spec: ProfileSpec, model: torch.nn.Module, x: torch.Tensor,
                      batch: int, device: torch.device, index: int) -> CostModel:
        from spartan_service.costmodels import hardware
        from spartan_service.costmodels.fit import fit_profile
        from spartan_service.costmodels.profiler import profile_model
        from spartan_service.costmodels.schema import validate_profile

        total = len(spec.batch_sizes)

        def on_layer(done: int, layers: int, name: str) -> None:
            self.lease.update({"step": index, "total_steps": total, "phase": "profiling",
                               "batch": batch, "layer": name, "layers_done": done,
                               "layers": layers, "device": device.type})
            self.lease.check()  # a cancel stops between layers

        on_layer(0, 0, "")
        if spec.structure == "channels":
            from spartan_service.costmodels.structured import profile_channels

            # Widths in and out of each layer, timed on the dense kernel of the shrunk layer.
            profile = profile_channels(model, x[:batch], device=device, batch=batch,
                                       fractions=spec.widths, quick=spec.quick, progress=False)
            profile["hardware"] = hardware.collect(device, ["dense"])
        else:
            kernel, choices = spec.kernel_choice()
            profile = profile_model(
                model, x[:batch], block=(spec.block[0], spec.block[1]), device=device,
                kernel=kernel, densities=spec.densities, batch=batch, quick=spec.quick,
                progress=False, choices=choices, on_layer=on_layer)
        self.lease.check()
        hw = profile["hardware"]
        self.lease.update({"step": index, "total_steps": total, "phase": "fitting",
                           "batch": batch, "device": device.type})
        fitted = fit_profile(profile)
        fitted["batch"] = batch
        self.artifacts.write_bytes(self.job.id, profile_artifact(batch),
                                   json.dumps(finite(profile), indent=1).encode())
        stored = validate_profile(profile).model_dump(mode="json", exclude_none=True)
        row = self.store.create_cost_model(
            self.job.tenant, finite(fitted), finite(stored), spec.name, hardware=hw,
            fingerprint=hardware.fingerprint(hw), hardware_label=hardware.label(hw),
            batch=batch, source="profile", profile_job_id=self.job.id)
        log.info("profile %s: batch %d -> cost model %s (v%d, %s)", self.job.id, batch, row.id,
                 row.version, row.hardware_label)
        return row
