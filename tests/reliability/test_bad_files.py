"""Bad files at POST /v1/uploads, beyond tests/service/test_uploads.py: raw pickles under
tensor-file names, and data files whose x and y cannot be a dataset. Each is a 422 naming the
problem, nothing executes, and nothing is stored (neither a record nor a file).
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from spartan_service.service.main import create_app
from tests.service.conftest import make_settings
from tests.service.factories import MakesDir, locs, npz_bytes, safetensors_bytes

TOKENS = {"Authorization": "Bearer tok-a"}


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    app = create_app(make_settings(tmp_path, api_tokens="a:tok-a"))
    with TestClient(app) as test_client:
        yield test_client


def refused(client: TestClient, tmp_path: Path, name: str, data: bytes) -> str:
    """Post the file; assert a 422 on the file field with nothing stored; return the message."""
    before = client.get("/v1/uploads", headers=TOKENS).json()
    response = client.post("/v1/uploads", headers=TOKENS,
                           files={"file": (name, data, "application/octet-stream")})
    assert response.status_code == 422, response.text
    assert locs(response) == [["body", "file"]]
    assert client.get("/v1/uploads", headers=TOKENS).json() == before
    # uploads live in the storage space ".uploads" (jobs.storage); nothing may be left there
    assert not [p for p in tmp_path.rglob("*") if p.is_file() and ".uploads" in p.parts]
    return str(response.json()["detail"][0]["msg"])


@pytest.mark.parametrize("name", ["data.npz", "weights.safetensors", "DATA.NPZ"])
def test_raw_pickle_under_a_tensor_file_name_is_refused_unexecuted(
    client: TestClient, tmp_path: Path, name: str
) -> None:
    sentinel = tmp_path / "pickle-ran"
    payload = pickle.dumps({"x": MakesDir(sentinel)}, protocol=4)
    message = refused(client, tmp_path, name, payload)
    assert ("pickle" in message) or ("header length" in message), message
    assert not sentinel.exists()


RNG = np.random.default_rng(0)
X = RNG.normal(size=(10, 4)).astype(np.float32)
Y = RNG.integers(0, 3, size=10)


@pytest.mark.parametrize(
    ("arrays", "words"),
    [
        ({"x": X, "y": Y[:7]}, "10 examples in x but 7 labels in y"),
        ({"x": X, "y": Y.reshape(5, 2)}, "y must be 1-D"),
        ({"x": X[:, 0], "y": Y}, "x must have shape (N, ...)"),
        ({"x": X[:1], "y": Y[:1]}, "at least 2 examples"),
        ({"x": X, "y": Y + 0.5}, "integer class labels, not fractions"),
        ({"x": X, "y": Y - 5}, ">= 0"),
        ({"x": np.full_like(X, np.nan), "y": Y}, "NaN"),
    ],
    ids=["length-mismatch", "y-2d", "x-1d", "one-example", "y-fractional", "y-negative",
         "x-nan"],
)
def test_data_whose_x_and_y_cannot_train_is_refused(
    client: TestClient, tmp_path: Path, arrays: dict[str, np.ndarray], words: str
) -> None:
    message = refused(client, tmp_path, "train.npz", npz_bytes(**arrays))
    assert words in message, message


def test_safetensors_data_with_mismatched_lengths_is_refused(
    client: TestClient, tmp_path: Path
) -> None:
    data = safetensors_bytes({"x": X.astype(np.float32), "y": Y[:4].astype(np.int64)})
    assert "10 examples in x but 4 labels in y" in refused(client, tmp_path, "d.safetensors",
                                                           data)


def test_float_labels_that_are_whole_numbers_are_accepted(client: TestClient) -> None:
    """What a job can train on is not refused: the worker casts whole-number labels."""
    response = client.post("/v1/uploads", headers=TOKENS, files={
        "file": ("d.npz", npz_bytes(x=X, y=Y.astype(np.float64)), "application/octet-stream")})
    assert response.status_code == 201, response.text
    assert client.get("/v1/uploads", headers=TOKENS).json()["count"] == 1
