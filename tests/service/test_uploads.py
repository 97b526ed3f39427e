"""Uploads: accepted kinds, content checks (never unpickled), size limits, use from a job."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from spartan_service.jobs.upload_store import UploadStore
from tests.memory_storage import MemoryStorage
from tests.service.conftest import MakeClient
from tests.service.factories import (
    dataset_npz,
    locs,
    npz_bytes,
    pickled_npz,
    safetensors_bytes,
    spec,
)

WEIGHTS = safetensors_bytes({"layers.0.weight": np.ones((4, 3), np.float32),
                             "head.bias": np.zeros(2, np.float32)})


def uploads_of(client: TestClient) -> UploadStore:
    store = client.app.state.resources.uploads  # type: ignore[attr-defined]
    assert isinstance(store, UploadStore)
    return store


def on_memory(client: TestClient) -> MemoryStorage:
    """Uploads of this client go to a storage backend without paths."""
    memory = MemoryStorage()
    client.app.state.resources.uploads = UploadStore(memory)  # type: ignore[attr-defined]
    return memory


def upload(client: TestClient, name: str, data: bytes) -> httpx.Response:
    return client.post("/v1/uploads", files={"file": (name, data, "application/octet-stream")})


def test_safetensors_upload_is_checked_and_stored(client: TestClient, tmp_path: Path) -> None:
    response = upload(client, "init.safetensors", WEIGHTS)
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["kind"] == "safetensors" and body["filename"] == "init.safetensors"
    assert body["size"] == len(WEIGHTS)
    assert body["sha256"] == hashlib.sha256(WEIGHTS).hexdigest()
    assert body["tensors"] == {"layers.0.weight": {"dtype": "F32", "shape": [4, 3]},
                               "head.bias": {"dtype": "F32", "shape": [2]}}
    with uploads_of(client).open(body["id"]) as f:
        assert f.read() == WEIGHTS
    assert not list(tmp_path.rglob(".part-*"))  # nothing left of the streamed write
    assert client.get(f"/v1/uploads/{body['id']}").json() == body
    listed = {k: v for k, v in body.items() if k != "tensors"}
    assert body["tensor_count"] == 2
    assert client.get("/v1/uploads").json() == {"data": [listed], "count": 1}


def test_npz_upload_lists_its_arrays(client: TestClient) -> None:
    response = upload(client, "../../train.NPZ", dataset_npz(n=10, dim=4))
    assert response.status_code == 201
    body = response.json()
    assert body["kind"] == "npz" and body["filename"] == "train.NPZ"  # path parts dropped
    assert body["tensors"]["x"] == {"dtype": "float32", "shape": [10, 4]}
    assert body["tensors"]["y"]["shape"] == [10]


@pytest.mark.parametrize(
    ("name", "data", "words"),
    [
        ("model.pt", WEIGHTS, ".safetensors and .npz"),
        ("weights.safetensors", WEIGHTS[:-5], "data_offsets do not match"),
        ("weights.safetensors", b"\x05\x00", "truncated"),
        ("weights.safetensors", b"\x04\x00\x00\x00\x00\x00\x00\x00nope", "not valid JSON"),
        ("data.npz", b"PK\x03\x04 not really a zip", "not a readable .npz"),
        ("data.npz", npz_bytes(), "no tensors"),
        ("data.npz", npz_bytes(s=np.array(["a", "b"])), "not numeric"),
    ],
)
def test_bad_files_are_422_naming_the_file_field(
    client: TestClient, name: str, data: bytes, words: str
) -> None:
    response = upload(client, name, data)
    assert response.status_code == 422
    assert locs(response) == [["body", "file"]]
    assert words in response.json()["detail"][0]["msg"]
    assert client.get("/v1/uploads").json()["count"] == 0


def test_pickled_npz_is_refused_without_being_unpickled(
    client: TestClient, tmp_path: Path
) -> None:
    sentinel = tmp_path / "pickle-ran"
    response = upload(client, "evil.npz", pickled_npz(sentinel))
    assert response.status_code == 422
    assert "pickle" in response.json()["detail"][0]["msg"]
    assert not sentinel.exists()


def test_missing_file_field_is_422(client: TestClient) -> None:
    response = client.post("/v1/uploads", files={"other": ("a.npz", b"x")})
    assert response.status_code == 422
    assert locs(response) == [["body", "file"]]


def test_upload_over_the_limit_is_413(make_client: MakeClient) -> None:
    client = make_client(max_upload_bytes=1000)
    memory = on_memory(client)
    big = safetensors_bytes({"w": np.zeros(500, np.float32)})  # 2 kB: checked while reading
    response = upload(client, "w.safetensors", big)
    assert response.status_code == 413
    assert "limit of 1000 bytes" in response.json()["detail"]
    huge = b"\0" * 200_000  # beyond the multipart slack: refused from Content-Length
    response = upload(client, "w.safetensors", huge)
    assert response.status_code == 413
    assert client.get("/v1/uploads").json()["count"] == 0
    assert not memory.blobs and not memory.writing


def test_unknown_upload_is_404(client: TestClient) -> None:
    response = client.get(f"/v1/uploads/{'a' * 32}")
    assert response.status_code == 404
    assert response.json() == {"detail": "upload not found"}


def test_jobs_use_uploads_of_the_right_kind(client: TestClient) -> None:
    data_id = upload(client, "d.npz", dataset_npz()).json()["id"]
    weights_id = upload(client, "w.safetensors", WEIGHTS).json()["id"]
    no_y = upload(client, "x.npz", npz_bytes(x=np.ones((3, 2)))).json()["id"]

    ok = client.post("/v1/jobs", json=spec(data={"dataset": "upload", "upload": data_id},
                                           model={"arch": "mlp", "weights": weights_id}))
    assert ok.status_code == 202, ok.text

    bad = client.post("/v1/jobs", json=spec(data={"dataset": "upload", "upload": no_y}))
    assert bad.status_code == 422
    assert locs(bad) == [["body", "data", "upload"]]
    assert "missing: y" in bad.json()["detail"][0]["msg"]

    bad = client.post("/v1/jobs", json=spec(model={"arch": "mlp", "weights": data_id}))
    assert bad.status_code == 422
    assert locs(bad) == [["body", "model", "weights"]]
    assert ".safetensors" in bad.json()["detail"][0]["msg"]


def test_streamed_upload_over_the_limit_is_413(make_client: MakeClient) -> None:
    client = make_client(max_upload_bytes=1000)
    boundary = "b0undary"

    def body() -> Any:  # chunked: no Content-Length to refuse up front
        yield (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
               f"filename=\"w.npz\"\r\n\r\n").encode()
        for _ in range(100):
            yield b"\0" * 4096
        yield f"\r\n--{boundary}--\r\n".encode()

    response = client.post("/v1/uploads", content=body(),
                           headers={"content-type": f"multipart/form-data; boundary={boundary}"})
    assert response.status_code == 413
    assert "limit" in response.json()["detail"]


def test_uploads_are_paginated_summarised_and_deletable(make_client: MakeClient) -> None:
    client = make_client()
    many = safetensors_bytes({f"t{i}": np.zeros(1, np.float32) for i in range(50)})
    ids = [upload(client, f"w{i}.safetensors", many).json()["id"] for i in range(3)]
    page = client.get("/v1/uploads", params={"limit": 2, "offset": 0}).json()
    assert page["count"] == 3 and len(page["data"]) == 2
    assert all("tensors" not in item and item["tensor_count"] == 50 for item in page["data"])
    rest = client.get("/v1/uploads", params={"limit": 2, "offset": 2}).json()
    assert {i["id"] for i in page["data"] + rest["data"]} == set(ids)
    assert len(client.get(f"/v1/uploads/{ids[0]}").json()["tensors"]) == 50

    assert client.delete(f"/v1/uploads/{ids[0]}").status_code == 204
    assert not uploads_of(client).exists(ids[0]) and uploads_of(client).exists(ids[1])
    assert client.get(f"/v1/uploads/{ids[0]}").status_code == 404
    assert client.delete(f"/v1/uploads/{ids[0]}").status_code == 404
    assert client.get("/v1/uploads").json()["count"] == 2


def test_uploads_are_deleted_only_by_their_tenant(make_client: MakeClient) -> None:
    client = make_client(api_tokens="a:token-of-tenant-a,b:token-of-tenant-b")
    as_a = {"Authorization": "Bearer token-of-tenant-a"}
    as_b = {"Authorization": "Bearer token-of-tenant-b"}
    up = client.post("/v1/uploads", headers=as_a,
                     files={"file": ("w.safetensors", WEIGHTS, "application/octet-stream")})
    upload_id = up.json()["id"]
    assert client.delete(f"/v1/uploads/{upload_id}", headers=as_b).status_code == 404
    assert client.get(f"/v1/uploads/{upload_id}", headers=as_a).status_code == 200
    assert client.delete(f"/v1/uploads/{upload_id}", headers=as_a).status_code == 204


def test_tenant_quota_counts_uploads_and_deleting_frees_it(make_client: MakeClient) -> None:
    client = make_client(tenant_quota_bytes=2 * len(WEIGHTS) + 10)
    memory = on_memory(client)
    first = upload(client, "a.safetensors", WEIGHTS).json()["id"]
    assert upload(client, "b.safetensors", WEIGHTS).status_code == 201
    over = upload(client, "c.safetensors", WEIGHTS)
    assert over.status_code == 413
    assert "quota" in over.json()["detail"] and "delete uploads" in over.json()["detail"]
    assert len(memory.blobs) == 2 and not memory.writing  # the refused one is gone
    assert client.delete(f"/v1/uploads/{first}").status_code == 204
    assert upload(client, "c.safetensors", WEIGHTS).status_code == 201


def test_malformed_multipart_and_odd_ids_are_4xx(client: TestClient) -> None:
    response = client.post("/v1/uploads", content=b"--x\r\nnonsense",
                           headers={"content-type": "multipart/form-data; boundary=x"})
    assert response.status_code in (400, 422)
    response = client.post("/v1/uploads", content=b"{}",
                           headers={"content-type": "application/json"})
    assert response.status_code == 422 and locs(response) == [["body", "file"]]
    assert client.get("/v1/uploads/a%00b").status_code == 404
    assert client.delete("/v1/uploads/..%2F..").status_code == 404


def test_the_api_never_sees_a_path(client: TestClient, tmp_path: Path) -> None:
    """Uploads go through the storage interface only: on a backend without paths, upload,
    check, list, use in a job and delete all work, and no file of the upload is on disk."""
    memory = on_memory(client)
    data = dataset_npz(n=10, dim=4)
    created = upload(client, "d.npz", data)
    assert created.status_code == 201, created.text
    upload_id = created.json()["id"]
    assert memory.blobs == {("uploads", upload_id, "file"): data}
    job = client.post("/v1/jobs", json=spec(data={"dataset": "upload", "upload": upload_id}))
    assert job.status_code == 202, job.text
    for response in (created, job, client.get(f"/v1/uploads/{upload_id}"),
                     client.get("/v1/uploads")):
        assert str(tmp_path) not in response.text and "/uploads/" not in response.text
    assert not [p for p in tmp_path.rglob("*") if upload_id in p.name]
    assert not list(tmp_path.rglob("*.npz"))
    assert client.delete(f"/v1/uploads/{upload_id}").status_code == 204
    assert not memory.blobs and not memory.writing
