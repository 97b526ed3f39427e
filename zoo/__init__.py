"""The model zoo: torch models built from the names a job spec gives (`model.arch`).

Worker and tooling build models here; the API never imports it (it checks names and shapes
with jobs/catalog.py, which this package reads its layer widths from).
"""

from spartan_service.zoo.build import build_model, load_weights

__all__ = ["build_model", "load_weights"]
