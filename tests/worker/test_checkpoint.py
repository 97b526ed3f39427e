"""Checkpoints: nested state round-trips through one safetensors file, no pickle involved."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from spartan_service.jobs.artifacts import ArtifactStore
from spartan_service.worker.checkpoint import NAME, load_checkpoint, save_checkpoint
from tests.files import private_file


def test_nested_state_round_trips(tmp_path: Path) -> None:
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    state = {"model": model.state_dict(), "optimizer": opt.state_dict(),
             "misc": {"tuple": (1, 2.5, None), "flag": True, "nan": float("nan"),
                      "mask": torch.ones(3, dtype=torch.bool), 7: "int key",
                      "__tensor__": "looks like a tag"}}
    store = ArtifactStore(tmp_path)
    assert load_checkpoint(store, "job") is None
    save_checkpoint(store, "job", state)
    save_checkpoint(store, "job", state)  # idempotent: overwritten in place
    back = load_checkpoint(store, "job")
    assert back is not None
    assert back["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.999)
    assert list(back["optimizer"]["state"]) == [0, 1]  # int keys stay ints
    assert torch.equal(back["optimizer"]["state"][0]["exp_avg"],
                       opt.state_dict()["state"][0]["exp_avg"])
    misc = back["misc"]
    assert misc["tuple"] == (1, 2.5, None) and misc["flag"] is True and misc[7] == "int key"
    assert misc["__tensor__"] == "looks like a tag" and misc["mask"].dtype == torch.bool
    fresh = torch.optim.AdamW(model.parameters(), lr=0.1)
    fresh.load_state_dict(back["optimizer"])
    assert store.list("job") == []  # private: not an artifact
    with safe_open(str(private_file(store, "job", NAME)), framework="pt") as f:
        tree = json.loads(f.metadata()["state"])  # plain JSON beside plain tensors
        assert tree["model"]["weight"] == {"__tensor__": "/model/weight"}
        assert torch.equal(f.get_tensor("/model/weight"), model.weight)


def test_foreign_files_and_objects_are_refused(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    from safetensors.torch import save

    store.write_private("job", NAME, save({"x": torch.zeros(1)}, metadata={"format": "other"}))
    with pytest.raises(ValueError, match="not a checkpoint of this version"):
        load_checkpoint(store, "job")
    with pytest.raises(ValueError, match="cannot checkpoint a object"):
        save_checkpoint(store, "job", {"x": object()})
