"""Small builders of request bodies and files for the service tests (no torch)."""

from __future__ import annotations

import io
import json
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np
from fastapi.testclient import TestClient

CONTRACT_SPEC: dict[str, Any] = {
    "model": {"arch": "mlp"},
    "data": {"dataset": "digits"},
    "sparsity": {"method": "spartan", "budget": 0.1},
    "training": {"epochs": 2},
}


def spec(**sections: Any) -> dict[str, Any]:
    """The contract spec with some sections replaced or added."""
    out = json.loads(json.dumps(CONTRACT_SPEC))
    out.update(sections)
    return out


def safetensors_bytes(tensors: dict[str, np.ndarray]) -> bytes:
    """A safetensors file written by hand from the format's spec (8-byte header length,
    JSON header, raw little-endian data)."""
    dtypes = {np.dtype("float32"): "F32", np.dtype("int64"): "I64", np.dtype("float64"): "F64"}
    header: dict[str, Any] = {}
    body = b""
    for name, array in tensors.items():
        data = np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<")).tobytes()
        header[name] = {"dtype": dtypes[array.dtype], "shape": list(array.shape),
                        "data_offsets": [len(body), len(body) + len(data)]}
        body += data
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + body


def npz_bytes(**arrays: Any) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def dataset_npz(n: int = 40, dim: int = 6, classes: int = 3) -> bytes:
    rng = np.random.default_rng(0)
    return npz_bytes(x=rng.normal(size=(n, dim)).astype(np.float32),
                     y=rng.integers(0, classes, size=n))


class MakesDir:
    """Unpickling this creates a directory: evidence that a pickle was executed."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (str(self.path),))


def pickled_npz(sentinel: Path) -> bytes:
    array = np.empty(1, dtype=object)
    array[0] = MakesDir(sentinel)
    buf = io.BytesIO()
    np.savez(buf, x=array)
    return buf.getvalue()


def profile(layers: int = 2, device: str = "cpu") -> dict[str, Any]:
    """A well-formed profile: latency linear in nonzero blocks plus a little noise."""
    rng = np.random.default_rng(1)
    out: dict[str, Any] = {"device": device, "unit": "ms", "layers": []}
    for i in range(layers):
        rows, cols = 64 * (i + 1), 32
        total = rows * cols
        samples = []
        for density in (0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0):
            nnz = int(total * density)
            latency = 0.01 + 2e-5 * nnz * (1 + 0.01 * rng.normal())
            samples.append({"nnz_blocks": nnz, "latency": float(latency)})
        out["layers"].append({"name": f"fc{i + 1}", "shape": [rows, cols], "block": [1, 1],
                              "samples": samples})
    return out


def model_profile(arch: str = "mlp", dataset: str = "digits", structure: str = "weights",
                  intercept: float = 0.01, overhead: float = 0.02) -> dict[str, Any]:
    """A well-formed profile of a built-in model's layers (shapes from jobs' catalog), linear
    in nonzero blocks, or with structure "channels" in kept widths (no torch)."""
    from spartan_service.costmodels.checks import channel_layer_shapes
    from spartan_service.jobs import catalog

    known = catalog.dataset_shape(dataset, {})
    assert known is not None
    shapes = catalog.weight_shapes(arch, {}, *known)
    out: dict[str, Any] = {"device": "cpu", "unit": "ms", "overhead": overhead, "layers": []}
    if structure == "weights":
        for pname, shape in shapes.items():
            total = shape[0] * shape[1]
            samples = [{"nnz_blocks": int(total * d), "latency": intercept + 2e-5 * total * d}
                       for d in (0.1, 0.3, 0.6, 1.0)]
            out["layers"].append({"name": pname.removesuffix(".weight"), "shape": list(shape),
                                  "block": [1, 1], "samples": samples})
        return out
    out["structure"] = "channels"
    for name, shape in channel_layer_shapes(arch, shapes).items():
        full_in, full_out = shape[1], shape[0]
        samples = []
        for fi in (0.25, 0.5, 1.0):
            for fo in (0.25, 0.5, 1.0):
                i, o = max(1, int(full_in * fi)), max(1, int(full_out * fo))
                samples.append({"kept_in": i, "kept_out": o, "nnz_blocks": i * o,
                                "latency": intercept + 1e-5 * i * o + 1e-4 * o})
        out["layers"].append({"name": name, "shape": list(shape), "block": [1, 1],
                              "structure": "channels", "kind": "linear",
                              "full": [full_in, full_out], "samples": samples})
    return out


def store_of(client: TestClient) -> Any:
    return client.app.state.resources.store  # type: ignore[attr-defined]


def artifacts_of(client: TestClient) -> Any:
    return client.app.state.resources.artifacts  # type: ignore[attr-defined]


def locs(response: Any) -> list[list[Any]]:
    return [item["loc"] for item in response.json()["detail"]]
