"""The loop closed on this CPU: profile job -> cost model -> jobs at three latency budgets ->
the stored deployment measurements -> one refit -> the same jobs again.

    python -m benchmarks.closed_loop [--quick] [--threads N]

In one process, on a fresh SQLite store, with the worker's own code (worker.runner.run_job):
1. a profile job of the model (structure weights, kernel csr: on this CPU "auto" keeps the
   dense kernel for most layers of a model this small, and a flat cost buys nothing) fits the
   cost model "bench";
2. jobs at three latency budgets (in ms, 40 / 60 / 80% of the way from the fixed cost to the
   dense model's predicted latency), with `--seeds` training seeds each, name it; each ends
   measuring its exported model beside the prediction,
   stored with the cost model (report `deployment`);
3. one refit (POST /v1/cost-models/{id}/refit's code) folds those points in as the next
   version; the same three jobs run again and name the cost model, so the worker takes the
   refitted version (the newest measured on this hardware): their error is held out.
Structured (channels) jobs are not in it: their deployment points are not stored yet.

Reported: MAPE of promised (the budget) vs measured latency and of predicted vs measured, over
the jobs, before and after the refit, and the refit's in-sample error on the points it folded.
The measured latency is the exported model's at the cost model's batch size (64).
Progress on stderr; one JSON object on the last stdout line. Timing-sensitive: on a shared,
loaded machine the figures move by several points between runs.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from spartan_service.costmodels.deployment import evaluate, refit
from spartan_service.jobs.artifacts import ArtifactStore
from spartan_service.jobs.profile_spec import ProfileSpec
from spartan_service.jobs.settings import Settings
from spartan_service.jobs.spec import JobSpec
from spartan_service.jobs.store import JobStore
from spartan_service.worker.runner import run_job

log = logging.getLogger("benchmarks.closed_loop")
TARGET_MAPE = 0.10
FRACTIONS = (0.4, 0.6, 0.8)


def model_spec(quick: bool) -> dict[str, Any]:
    return {"arch": "mlp", "kwargs": {"hidden": [512, 512] if quick else [1024, 1024]}}


def profile(store: JobStore, artifacts: ArtifactStore, settings: Settings, quick: bool
            ) -> dict[str, Any]:
    spec = ProfileSpec.model_validate({
        "name": "bench", "model": model_spec(quick), "data": {"dataset": "digits"},
        "kernels": ["csr"], "batch_sizes": [64], "quick": quick})
    job = store.create_job("bench", spec.model_dump(mode="json"), "cpu", "bench",
                           kind="profile")
    t0 = time.perf_counter()
    run_job(job.id, store, artifacts, settings)
    done = store.get_job(job.id)
    assert done is not None and done.status == "succeeded", done.error if done else None
    (row,) = store.profile_job_cost_models(job.id)
    log.info("profile job: %.1f s, cost model %s (%s)", time.perf_counter() - t0, row.id,
             row.hardware_label)
    return {"id": row.id, "seconds": time.perf_counter() - t0, "data": row.data}


def budgets(cost_model: dict[str, Any]) -> list[float]:
    """Latency budgets (ms) at FRACTIONS of the way from the fixed cost (overhead and
    intercepts) to the dense model's predicted latency (each layer at most its dense time)."""
    from spartan_service.costmodels.deployment import predict_point
    from spartan_service.costmodels.schema import validate_cost_model

    cm = validate_cost_model(cost_model)
    full = [{"name": n, "nnz_blocks": (lay.shape or [0, 0])[0] * (lay.shape or [0, 0])[1]}
            for n, lay in cm.layers.items()]
    dense, _ = predict_point(cm, full)
    fixed = (cm.overhead or 0.0) + sum(lay.intercept for lay in cm.layers.values())
    return [fixed + f * (dense - fixed) for f in FRACTIONS]


def train(store: JobStore, artifacts: ArtifactStore, settings: Settings, budget_ms: float,
          quick: bool, seed: int) -> dict[str, Any]:
    spec = JobSpec.model_validate({
        "model": model_spec(quick), "data": {"dataset": "digits"},
        "sparsity": {"method": "spartan"},
        "training": {"epochs": 1 if quick else 3, "seed": seed},
        "cost_model": {"kind": "fitted", "name": "bench", "budget_ms": budget_ms,
                       "strict_hardware": True}})
    job = store.create_job("bench", spec.model_dump(mode="json"), "cpu", None)
    run_job(job.id, store, artifacts, settings)
    done = store.get_job(job.id)
    assert done is not None and done.status == "succeeded", done.error if done else None
    report = json.loads(artifacts.read_bytes(job.id, "report.json"))
    dep = report["deployment"]
    row = {"job_id": job.id, "seed": seed,
           "cost_model_version": report["cost"]["cost_model"]["version"],
           "promised_ms": budget_ms, "predicted_ms": dep["predicted"],
           "measured_ms": dep["measured"], "error": dep["error"],
           "accuracy": report["accuracy"]["sparse"], "density": report["sparsity"]["density"]}
    log.info("budget %.4f ms: predicted %.4f, measured %.4f (v%d)", budget_ms,
             dep["predicted"], dep["measured"], row["cost_model_version"])
    return row


def mape(rows: list[dict[str, Any]], key: str) -> float:
    return statistics.fmean(abs(r[key] - r["measured_ms"]) / r["measured_ms"] for r in rows)


def run(quick: bool, threads: int, seeds: int) -> dict[str, Any]:
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory(prefix="closed-loop-") as tmp:
        settings = Settings(data_dir=Path(tmp), database_url=None, broker_url=None,
                            api_tokens=None)
        store = JobStore(settings.db_url)
        artifacts = ArtifactStore(settings.artifacts_dir)
        try:
            prof = profile(store, artifacts, settings, quick)
            targets = budgets(prof["data"])
            before = [train(store, artifacts, settings, b, quick, seed)
                      for seed in range(seeds) for b in targets]
            base = store.get_cost_model(prof["id"])
            assert base is not None
            points = [{"job_id": p.job_id, "batch": p.batch, "measured": p.measured,
                       "layers": p.layers} for p in store.deployment_points([base.id])]
            data, new_profile, summary = refit(base.data, base.profile, points)
            new = store.create_cost_model(
                "bench", data, new_profile, "bench", hardware=base.hardware,
                fingerprint=base.fingerprint, hardware_label=base.hardware_label,
                batch=base.batch, source="refit", parent_id=base.id, refit=summary)
            log.info("refit: v%d, in-sample error %.1f%% -> %.1f%%", new.version,
                     100 * summary["mape_before"], 100 * summary["mape_after"])
            after = [train(store, artifacts, settings, b, quick, seed)
                     for seed in range(seeds) for b in targets]
            return {
                "benchmark": "closed_loop", "quick": quick, "threads": threads, "seeds": seeds,
                "hardware": base.hardware_label, "profile_s": prof["seconds"],
                "jobs": {"before_refit": before, "after_refit": after},
                "mape_promised_vs_measured": mape(before, "promised_ms"),
                "mape_predicted_vs_measured": mape(before, "predicted_ms"),
                "mape_promised_vs_measured_after_refit": mape(after, "promised_ms"),
                "mape_predicted_vs_measured_after_refit": mape(after, "predicted_ms"),
                "refit_in_sample": {"before": summary["mape_before"],
                                    "after": summary["mape_after"]},
                "cost_model_error_on_points": evaluate(base.data, points)["mape"],
                "target_mape": TARGET_MAPE,
            }
        finally:
            store.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.closed_loop",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smaller model, 1 epoch")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--seeds", type=int, default=None,
                        help="jobs per budget, before and after the refit (default 3, quick 1)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("worker", "costmodels", "spartan", "jobs"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    t0 = time.perf_counter()
    result = run(args.quick, args.threads, args.seeds or (1 if args.quick else 3))
    result["seconds"] = time.perf_counter() - t0
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
