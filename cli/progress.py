"""Progress of a job for `submit --wait` and `demo`: a tqdm bar on a terminal, else one plain
line per update (a log file or CI output gets readable lines, not carriage returns)."""

from __future__ import annotations

import sys
from typing import Any, TextIO

from tqdm import tqdm

_SHOWN = ("epoch", "loss", "accuracy", "val_accuracy", "budget", "beta")


def _postfix(job: dict[str, Any]) -> dict[str, Any]:
    progress = job.get("progress") or {}
    postfix: dict[str, Any] = {"status": job.get("status")}
    for key in _SHOWN:
        value = progress.get(key)
        if isinstance(value, float):
            postfix[key] = f"{value:.3g}"
        elif value is not None:
            postfix[key] = value
    return postfix


class JobBar:
    def __init__(self, job_id: str, disable: bool = False, file: TextIO | None = None) -> None:
        self.file = file or sys.stderr
        self.label = f"job {job_id[:8]}"
        self.plain = not self.file.isatty()
        self.last_line: str | None = None
        self.bar = None if self.plain else tqdm(
            total=None, desc=self.label, unit="step", file=self.file, disable=disable,
            dynamic_ncols=True)
        self.disabled = disable

    def update(self, job: dict[str, Any]) -> None:
        progress = job.get("progress") or {}
        total = progress.get("total_steps")
        step = progress.get("step") or 0
        postfix = _postfix(job)
        if self.bar is None:
            self._line(step, total, postfix)
            return
        if total and self.bar.total != total:
            self.bar.total = total
        if step != self.bar.n:
            self.bar.n = step
        self.bar.set_postfix(postfix, refresh=False)
        self.bar.refresh()

    def _line(self, step: int, total: int | None, postfix: dict[str, Any]) -> None:
        """One line when something changed since the last one."""
        if self.disabled:
            return
        where = f"step {step}/{total}" if total else f"step {step}"
        line = f"{self.label}: {where} " + " ".join(f"{k}={v}" for k, v in postfix.items())
        if line != self.last_line:
            print(line, file=self.file, flush=True)
            self.last_line = line

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
