"""The report's `speedup` section: the exported sparse model against the dense-with-zeros one,
timed on the worker's device after training, beside the cost model's prediction.

A mask full of zeros in a dense tensor runs at dense speed; only the sparse kernels that
`spartan.to_sparse` picks make a model faster, and the section says plainly when they do not.

Timed as the profiler times a cost model's samples (costmodels.timing: the allocator kept
steady, the quietest of a few round-robin rounds), so that the measured latency and the
cost model's prediction are comparable (the job process ends with the job: keeping freed
memory for the rest of it costs nothing later).
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn

from spartan_service.costmodels.timing import ROUNDS, keep_freed_memory, time_quietest

log = logging.getLogger(__name__)

FASTER = 1.05  # below this ratio the sparse model is "not faster" (timing noise)
STATISTIC = "median of {repeats} round-robin repeats, the quietest of {rounds} rounds"


def sentence(rows: list[dict[str, Any]], device: str, kernels: dict[str, str]) -> str:
    """One plain sentence on the measured speedup."""
    main = rows[-1]
    others = ", ".join(f"{r['speedup']:.2f}x at batch {r['batch']}" for r in rows[:-1])
    tail = f" ({others})" if others else ""
    if main["speedup"] >= FASTER:
        return (f"The sparse model runs {main['speedup']:.2f}x as fast as the dense one at batch "
                f"{main['batch']} on {device}{tail}.")
    why = ("no sparse kernel beat the dense one at this density and shape, so every layer "
           "kept the dense kernel" if all(k == "dense" for k in kernels.values()) else
           "the sparse kernels save too little at this density and shape")
    return (f"The sparse model is not faster than the dense one on {device}: "
            f"{main['speedup']:.2f}x at batch {main['batch']}{tail}; {why}.")


def _inputs(x: Tensor, mask: Tensor | None, b: int) -> Any:
    """The first `b` examples as the model takes them: token ids with their attention mask
    (by name), or one tensor."""
    return x[:b] if mask is None else {"input_ids": x[:b], "attention_mask": mask[:b]}


def _run(model: nn.Module, inputs: Any) -> Any:
    return model(**inputs) if isinstance(inputs, dict) else model(inputs)


def speedup_report(model: nn.Module, x: Tensor, batch_size: int, device: torch.device,
                   cost: dict[str, Any] | None = None, spec: dict[str, Any] | None = None,
                   repeats: int = 15, mask: Tensor | None = None) -> tuple[Any, dict[str, Any]]:
    """(SparseModel, report section) for a finalized model and an input batch `x` (token ids
    with their attention `mask` for text: padding is then skipped as in training).

    The kernels are chosen by timing at the training batch size; dense and sparse latency are
    the median of `repeats` runs at batch 1 and at `batch_size` (the quietest round, module
    doc).
    """
    from spartan import to_sparse

    keep_freed_memory()
    model = model.eval()
    xb = x[:batch_size].to(device)
    mb = None if mask is None else mask[:batch_size].to(device)
    sparse = to_sparse(model, "auto", device=device, example=_inputs(xb, mb, len(xb)),
                       spec=spec)
    rows = []
    for b in sorted({1, int(xb.shape[0])}):
        xi = _inputs(xb, mb, b)
        with torch.no_grad():  # dense and sparse timed round-robin: drift hits both alike
            (dense_ms, _), (sparse_ms, _) = time_quietest(
                [partial(_run, model, xi), partial(_run, sparse, xi)], repeats, 1, device)
        rows.append({"batch": b, "dense_ms": dense_ms, "sparse_ms": sparse_ms,
                     "speedup": dense_ms / sparse_ms})
    section: dict[str, Any] = {
        "device": device.type, "batch_size": batch_size, "unit": "ms",
        "statistic": STATISTIC.format(repeats=repeats, rounds=ROUNDS), "kernels": sparse.kernels,
        "batches": rows, "faster": rows[-1]["speedup"] >= FASTER,
        "predicted": _predicted(cost),
    }
    section["summary"] = sentence(rows, device.type, sparse.kernels)
    return sparse, section


def _predicted(cost: dict[str, Any] | None) -> dict[str, Any] | None:
    """The cost model's figures for the same model: dense and sparse cost and their ratio."""
    if not cost or not cost.get("predicted"):
        return None
    dense, sparse = cost.get("dense"), cost["predicted"]
    return {"kind": cost.get("kind"), "unit": cost.get("unit"), "dense": dense,
            "sparse": sparse, "speedup": dense / sparse if dense else None}


def shrunk_report(model: nn.Module, small: nn.Module, x: Tensor, batch_size: int,
                  device: torch.device, cost: dict[str, Any] | None = None, repeats: int = 15
                  ) -> dict[str, Any]:
    """Report section for a physically smaller model (spartan.shrink) against the finalized
    one (dense shapes, zeros): both timed round-robin at batch 1 and `batch_size`."""
    keep_freed_memory()
    model, small = model.eval(), small.eval()
    xb = x[:batch_size].to(device)
    rows = []
    with torch.inference_mode():
        for b in sorted({1, int(xb.shape[0])}):
            xi = xb[:b]
            (dense_ms, _), (small_ms, _) = time_quietest(
                [partial(model, xi), partial(small, xi)], repeats=repeats, warmup=1,
                device=device)
            rows.append({"batch": b, "dense_ms": dense_ms, "sparse_ms": small_ms,
                         "speedup": dense_ms / small_ms})
    n_dense = sum(p.numel() for p in model.parameters())
    n_small = sum(p.numel() for p in small.parameters())
    main = rows[-1]
    others = ", ".join(f"{r['speedup']:.2f}x at batch {r['batch']}" for r in rows[:-1])
    tail = f" ({others})" if others else ""
    kept = f"{n_small:,} of {n_dense:,} parameters"
    summary = (f"The shrunk model ({kept}) runs {main['speedup']:.2f}x as fast as the dense one "
               f"at batch {main['batch']} on {device.type}{tail}." if main["speedup"] >= FASTER
               else f"The shrunk model ({kept}) is not faster than the dense one on "
               f"{device.type}: {main['speedup']:.2f}x at batch {main['batch']}{tail}; the "
               "channels removed carry too little of the time at this size.")
    return {"device": device.type, "batch_size": batch_size, "unit": "ms",
            "statistic": STATISTIC.format(repeats=repeats, rounds=ROUNDS), "kernels": {},
            "batches": rows, "faster": main["speedup"] >= FASTER, "predicted": _predicted(cost),
            "summary": summary}
