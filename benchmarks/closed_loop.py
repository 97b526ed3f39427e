"""The loop closed on this CPU: profile job -> cost model -> jobs at three latency budgets ->
the stored deployment measurements -> one refit -> the same jobs again, for weight sparsity
and for structured (channels) sparsity.

    python -m benchmarks.closed_loop [--quick] [--threads N] [--seeds N]
                                     [--structures weights,channels]

In one process, on a fresh SQLite store, with the worker's own code (worker.runner.run_job),
for each structure:
1. a profile job of the model (weights: kernel csr, since on this CPU "auto" keeps the dense
   kernel for most layers of a model this small, and a flat cost buys nothing; channels: the
   layers at kept widths) fits the cost model "bench-<structure>";
2. jobs at three latency budgets (in ms, 40 / 60 / 80% of the way from the fixed cost to the
   dense model's predicted latency), with `--seeds` training seeds each, name it; each ends
   measuring its exported model (sparse kernels, or the shrunk model) beside the prediction,
   stored with the cost model (report `deployment`);
3. one refit (POST /v1/cost-models/{id}/refit's code) folds those points in as the next
   version; the same jobs (budgets at the same fractions under the new version) run again
   and name the cost model, so the worker takes the refitted version (the newest measured on
   this hardware): their error is held out.

Reported per structure and over all jobs: MAPE of promised (the budget) vs measured latency
and of predicted vs measured, before and after the refit; the refit's in-sample error; and
the noise: the largest ratio between the measured latencies of jobs that differ only by
their training seed (same budget, same cost-model version). The measured latency is the
exported model's at the cost model's batch size (64). The load average (1 min) before and
after is in the JSON: the machine may be shared. Progress on stderr; one JSON object on the
last stdout line.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
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
STRUCTURES = ("weights", "channels")


def model_spec(quick: bool) -> dict[str, Any]:
    return {"arch": "mlp", "kwargs": {"hidden": [512, 512] if quick else [1024, 1024]}}


def profile(store: JobStore, artifacts: ArtifactStore, settings: Settings, quick: bool,
            structure: str) -> dict[str, Any]:
    kind = ({"kernels": ["csr"]} if structure == "weights" else
            {"kernels": ["auto"], "structure": "channels"})
    spec = ProfileSpec.model_validate({
        "name": f"bench-{structure}", "model": model_spec(quick), "data": {"dataset": "digits"},
        "batch_sizes": [64], "quick": quick, **kind})
    job = store.create_job("bench", spec.model_dump(mode="json"), "cpu", spec.name,
                           kind="profile")
    t0 = time.perf_counter()
    run_job(job.id, store, artifacts, settings)
    done = store.get_job(job.id)
    assert done is not None and done.status == "succeeded", done.error if done else None
    (row,) = store.profile_job_cost_models(job.id)
    log.info("%s profile job: %.1f s, cost model %s (%s)", structure,
             time.perf_counter() - t0, row.id, row.hardware_label)
    return {"id": row.id, "seconds": time.perf_counter() - t0, "data": row.data}


def budgets(cost_model: dict[str, Any], quick: bool, structure: str) -> list[float]:
    """Latency budgets (ms) at FRACTIONS of the way from the fixed cost (overhead and
    intercepts) to the dense model's predicted latency (weights: each layer at most its
    dense time)."""
    from spartan_service.costmodels.deployment import weights_latency_range
    from spartan_service.costmodels.schema import validate_cost_model

    cm = validate_cost_model(cost_model)
    if structure == "channels":
        from spartan_service.costmodels.channel_bridge import channel_cost_split
        from spartan_service.zoo.build import build_model

        spec = model_spec(quick)
        model = build_model(spec["arch"], spec["kwargs"], (64,), 10)
        fixed, variable = channel_cost_split(cm, model, torch.zeros(2, 64))
        return [fixed + f * variable for f in FRACTIONS]
    fixed, dense = weights_latency_range(cm)
    return [fixed + f * (dense - fixed) for f in FRACTIONS]


def train(store: JobStore, artifacts: ArtifactStore, settings: Settings, budget_ms: float,
          quick: bool, seed: int, structure: str) -> dict[str, Any]:
    sparsity: dict[str, Any] = {"method": "spartan"}
    if structure == "channels":
        sparsity |= {"structure": "channels", "min_keep": 0.05}
    spec = JobSpec.model_validate({
        "model": model_spec(quick), "data": {"dataset": "digits"}, "sparsity": sparsity,
        "training": {"epochs": 1 if quick else 3, "seed": seed},
        "cost_model": {"kind": "fitted", "name": f"bench-{structure}", "budget_ms": budget_ms,
                       "strict_hardware": True}})
    job = store.create_job("bench", spec.model_dump(mode="json"), "cpu", None)
    run_job(job.id, store, artifacts, settings)
    done = store.get_job(job.id)
    assert done is not None and done.status == "succeeded", done.error if done else None
    report = json.loads(artifacts.read_bytes(job.id, "report.json"))
    dep = report["deployment"]
    assert "error" in dep and "measured" in dep, dep  # not a DeploymentFailed
    row = {"job_id": job.id, "structure": structure, "seed": seed,
           "cost_model_version": report["cost"]["cost_model"]["version"],
           "promised_ms": budget_ms, "predicted_ms": dep["predicted"],
           "measured_ms": dep["measured"], "error": dep["error"],
           "accuracy": report["accuracy"]["sparse"], "density": report["sparsity"]["density"]}
    log.info("%s budget %.4f ms: predicted %.4f, measured %.4f (v%d)", structure, budget_ms,
             dep["predicted"], dep["measured"], row["cost_model_version"])
    return row


def mape(rows: list[dict[str, Any]], key: str) -> float | None:
    if not rows:
        return None
    return statistics.fmean(abs(r[key] - r["measured_ms"]) / r["measured_ms"] for r in rows)


def seed_spread(rows: list[dict[str, Any]]) -> float | None:
    """The largest max / min of the measured latency among jobs alike but for their seed."""
    groups: dict[tuple[Any, ...], list[float]] = {}
    for r in rows:
        key = (r["structure"], r["promised_ms"], r["cost_model_version"])
        groups.setdefault(key, []).append(r["measured_ms"])
    ratios = [max(v) / min(v) for v in groups.values() if len(v) > 1]
    return max(ratios) if ratios else None


def figures(before: list[dict[str, Any]], after: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "mape_promised_vs_measured": mape(before, "promised_ms"),
        "mape_predicted_vs_measured": mape(before, "predicted_ms"),
        "mape_promised_vs_measured_after_refit": mape(after, "promised_ms"),
        "mape_predicted_vs_measured_after_refit": mape(after, "predicted_ms"),
        "seed_spread": seed_spread(before + after),
    }


def loop(store: JobStore, artifacts: ArtifactStore, settings: Settings, quick: bool,
         seeds: int, structure: str) -> dict[str, Any]:
    prof = profile(store, artifacts, settings, quick, structure)
    targets = budgets(prof["data"], quick, structure)
    before = [train(store, artifacts, settings, b, quick, seed, structure)
              for seed in range(seeds) for b in targets]
    base = store.get_cost_model(prof["id"])
    assert base is not None
    points = [{"job_id": p.job_id, "batch": p.batch, "measured": p.measured,
               "layers": p.layers} for p in store.deployment_points([base.id])]
    data, new_profile, summary = refit(base.data, base.profile, points)
    new = store.create_cost_model(
        "bench", data, new_profile, base.name, hardware=base.hardware,
        fingerprint=base.fingerprint, hardware_label=base.hardware_label, batch=base.batch,
        source="refit", parent_id=base.id, refit=summary)
    log.info("%s refit: v%d, in-sample error %.1f%% -> %.1f%%", structure, new.version,
             100 * summary["mape_before"], 100 * summary["mape_after"])
    # The same fractions under the refitted version: its dense cost moved, and a budget
    # above it would be refused (nothing to prune).
    after = [train(store, artifacts, settings, b, quick, seed, structure)
             for seed in range(seeds) for b in budgets(new.data, quick, structure)]
    return {"hardware": base.hardware_label, "profile_s": prof["seconds"],
            "before_refit": before, "after_refit": after, **figures(before, after),
            "refit_in_sample": {"before": summary["mape_before"],
                                "after": summary["mape_after"]},
            "cost_model_error_on_points": evaluate(base.data, points)["mape"]}


def run(quick: bool, threads: int, seeds: int, structures: list[str]) -> dict[str, Any]:
    torch.set_num_threads(threads)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="closed-loop-") as tmp:
        settings = Settings(data_dir=Path(tmp), database_url=None, broker_url=None,
                            api_tokens=None)
        store = JobStore(settings.db_url)
        artifacts = ArtifactStore(settings.artifacts_dir)
        try:
            per = {s: loop(store, artifacts, settings, quick, seeds, s) for s in structures}
        finally:
            store.close()
    before = [r for v in per.values() for r in v["before_refit"]]
    after = [r for v in per.values() for r in v["after_refit"]]
    return {"benchmark": "closed_loop", "quick": quick, "threads": threads, "seeds": seeds,
            "hardware": next(iter(per.values()))["hardware"], **figures(before, after),
            "structures": per, "target_mape": TARGET_MAPE,
            "load_average_1min": {"before": load_before, "after": os.getloadavg()[0]}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.closed_loop",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smaller model, 1 epoch")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--seeds", type=int, default=None,
                        help="jobs per budget, before and after the refit (default 3, quick 1)")
    parser.add_argument("--structures", default=",".join(STRUCTURES),
                        help="comma-separated: weights, channels (default both)")
    args = parser.parse_args(argv)
    structures = [s for s in args.structures.split(",") if s]
    unknown = sorted(set(structures) - set(STRUCTURES))
    if unknown or not structures:
        parser.error(f"--structures: unknown {unknown}; use {', '.join(STRUCTURES)}")
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s: %(message)s")
    t0 = time.perf_counter()
    result = run(args.quick, args.threads, args.seeds or (1 if args.quick else 3), structures)
    result["seconds"] = time.perf_counter() - t0
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
