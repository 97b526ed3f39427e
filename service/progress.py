"""A tqdm progress bar fed from a job's `progress` fields (for `submit --wait` and `demo`)."""

from __future__ import annotations

import sys
from typing import Any

from tqdm import tqdm

_SHOWN = ("epoch", "loss", "accuracy", "val_accuracy", "budget", "beta")


class JobBar:
    def __init__(self, job_id: str, disable: bool = False) -> None:
        self.bar = tqdm(total=None, desc=f"job {job_id[:8]}", unit="step", file=sys.stderr,
                        disable=disable, dynamic_ncols=True)

    def update(self, job: dict[str, Any]) -> None:
        progress = job.get("progress") or {}
        total = progress.get("total_steps")
        if total and self.bar.total != total:
            self.bar.total = total
        step = progress.get("step") or 0
        if step != self.bar.n:
            self.bar.n = step
        postfix: dict[str, Any] = {"status": job.get("status")}
        for key in _SHOWN:
            value = progress.get(key)
            if isinstance(value, float):
                postfix[key] = f"{value:.3g}"
            elif value is not None:
                postfix[key] = value
        self.bar.set_postfix(postfix, refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()
