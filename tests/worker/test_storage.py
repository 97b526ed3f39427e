"""Storage datasets streamed in batches: shapes, fixed and resumable order, sharding across ranks,
streamed statistics, DataLoader workers, and bad files failing with the file and the problem."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from spartan_service.worker import loaders
from spartan_service.worker.arrays import feature_stats
from spartan_service.worker.loaders import NpyArray
from spartan_service.worker.storage import open_storage
from tests import workloads

CPU = torch.device("cpu")


def test_npy_batches_are_standardised_resumable_and_sharded(tmp_path: Path) -> None:
    x_path, y_path = workloads.npy_pair(tmp_path, n=103, dim=5, classes=3)
    data = open_storage("npy", {"x": str(x_path), "y": str(y_path)}, "classification", 0.2, 0,
                        [tmp_path])
    assert data.input_shape == (5,) and data.outputs == 3 and len(data.val_index) == 21
    batches = data.batches(16, seed=3, device=CPU)
    epoch = list(batches.epoch(1))
    assert batches.steps_per_epoch == len(epoch) == 6
    assert sum(len(y) for _, y in epoch) == 82
    resumed = list(batches.epoch(1, start=4))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(epoch[4:], resumed, strict=True))
    assert not torch.equal(epoch[0][1], next(iter(batches.epoch(2)))[1])
    x = torch.cat([b[0] for b in epoch])
    assert abs(float(x.mean())) < 0.1 and abs(float(x.std()) - 1) < 0.1
    # Two ranks: each takes its half of every global batch, the same number of batches;
    # together they see the whole split, each example once.
    ranks = [data.batches(16, 3, CPU, rank=r, world_size=2) for r in (0, 1)]
    seen = [torch.cat([b[0] for b in r.epoch(1)]) for r in ranks]
    assert ranks[0].steps_per_epoch == ranks[1].steps_per_epoch == 6
    assert len(seen[0]) + len(seen[1]) == 82 and abs(len(seen[0]) - len(seen[1])) <= 1
    halves = [list(r.epoch(1)) for r in ranks]
    def rows(x: torch.Tensor) -> set[tuple[float, ...]]:
        return {tuple(r) for r in x.tolist()}

    for (x0, _), (x1, _), (x, _) in zip(*halves, epoch, strict=True):
        assert rows(torch.cat([x0, x1])) == rows(x)  # the single-process batch, cut in two
    assert ranks[1].last_global == 82 - 5 * 16  # the last, partial global batch
    with pytest.raises(ValueError, match="rank 2"):
        data.batches(8, 3, CPU, rank=2, world_size=2)


def test_streamed_statistics_match_numpy(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((500, 3, 4)) * [[[1.0], [10.0], [0.1]]] + 5).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    index = np.sort(rng.choice(500, 400, replace=False))
    array = NpyArray(tmp_path / "x.npy")
    array.row_bytes = 4096 * 8  # force one row per chunk: the pairwise update is exercised
    mean, std = feature_stats(array, index)
    np.testing.assert_allclose(mean, x[index].mean(0), rtol=1e-5)
    np.testing.assert_allclose(std, x[index].std(0), rtol=1e-4)


def test_loader_workers_give_the_same_batches(tmp_path: Path) -> None:
    workloads.image_folder(tmp_path / "imgs", per_class=10)
    data = open_storage("imagefolder", {"root": str(tmp_path / "imgs"), "size": 8},
                        "classification", 0.25, 0, [tmp_path])
    assert data.input_shape == (3, 8, 8) and data.outputs == 2
    inline = list(data.batches(4, 1, CPU).epoch(0))
    parallel = list(data.batches(4, 1, CPU, workers=2).epoch(0))
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
               for a, b in zip(inline, parallel, strict=True))
    # Augmented training batches differ from the plain validation view of the same images.
    val = next(iter(data.batches(4, 1, CPU).validation()))[0]
    assert val.shape[1:] == (3, 8, 8)


def test_bad_images_name_the_file(tmp_path: Path) -> None:
    root = workloads.image_folder(tmp_path / "imgs", per_class=4)
    kwargs = {"root": str(root), "size": 8, "crop_padding": 0}
    good = (root / "left" / "1.png").read_bytes()
    (root / "left" / "1.png").write_bytes(good[: len(good) // 2])  # truncated
    # The statistics sample reads it at once: the job fails before training.
    with pytest.raises(ValueError, match=r"left/1.png: cannot read the image \(image file is "
                                         r"truncated"):
        open_storage("imagefolder", kwargs, "classification", 0.25, 0, [tmp_path])
    (root / "left" / "1.png").write_bytes(good)
    data = open_storage("imagefolder", kwargs, "classification", 0.25, 0, [tmp_path])
    (root / "left" / "1.png").write_text("not an image")  # damaged after the job started
    for workers in (0, 1):
        with pytest.raises(ValueError, match=r"left/1.png: cannot read the image"):
            for _ in data.batches(8, 0, CPU, workers=workers).epoch(0):
                pass


def test_npy_label_and_value_errors_name_the_row(tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", np.ones((6, 2), np.float32))
    np.save(tmp_path / "y.npy", np.array([0, 1, 1, 5, 0, 1]))
    kwargs = {"x": str(tmp_path / "x.npy"), "y": str(tmp_path / "y.npy"), "num_classes": 2,
              "standardize": False}
    with pytest.raises(ValueError, match="y.npy holds label 5, out of range for "
                                         "num_classes 2"):
        open_storage("npy", kwargs, "classification", 0.2, 0, [tmp_path])
    data = open_storage("npy", {**kwargs, "num_classes": 6}, "classification", 0.2, 0,
                        [tmp_path])
    np.save(tmp_path / "y.npy", np.array([0, 1, 1, 7, 0, 1]))  # changed under the job
    with pytest.raises(ValueError, match="y.npy: row 3 has label 7"):
        for _ in data.batches(6, 0, CPU).epoch(0):
            list(data.batches(6, 0, CPU).validation())
    x = np.ones((6, 2), np.float32)
    x[4, 1] = np.nan
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", np.zeros(6, np.int64))
    data = open_storage("npy", {"x": str(tmp_path / "x.npy"), "y": str(tmp_path / "y.npy"),
                                "standardize": False}, "classification", 0.2, 0, [tmp_path])
    with pytest.raises(ValueError, match="x.npy: row 4 holds NaN"):
        list(data.batches(6, 0, CPU).epoch(0))
    with pytest.raises(ValueError, match="outside the data roots"):
        open_storage("npy", {"x": str(tmp_path / "x.npy")}, "classification", 0.2, 0,
                     [tmp_path / "sub"])


def test_npy_regression_and_named_validation_split(tmp_path: Path) -> None:
    x_path, y_path = workloads.npy_pair(tmp_path / "train", n=64, regression=True)
    vx, vy = workloads.npy_pair(tmp_path / "val", n=16, regression=True, seed=1)
    data = open_storage("npy", {"x": str(x_path), "y": str(y_path), "val_x": str(vx),
                                "val_y": str(vy)}, "regression", 0.2, 0, [tmp_path])
    assert data.outputs == 1 and len(data.train_index) == 64 and len(data.val_index) == 16
    _, y = next(iter(data.batches(64, 0, CPU).epoch(0)))
    assert y.dtype == torch.float32 and abs(float(y.mean())) < 1e-5


def test_files_beyond_the_map_budget_are_read_without_mapping(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Files are mapped while they fit the process's MAP_BUDGET together; the rows of one that
    does not are read with pread: the same values, nothing of the file resident, and scattered
    reads leave the worker's memory flat. The budget comes back when an array is dropped."""
    rows, dim = 4096, 2048  # 32 MB of float32
    x = np.lib.format.open_memmap(tmp_path / "x.npy", "w+", np.float32, (rows, dim))
    x[:] = np.arange(rows, dtype=np.float32)[:, None]
    del x
    np.save(tmp_path / "small.npy", np.arange(12, dtype=np.int16).reshape(6, 2))
    monkeypatch.setattr(loaders, "MAP_BUDGET", 16 << 20)
    big, small = NpyArray(tmp_path / "x.npy"), NpyArray(tmp_path / "small.npy")
    assert big.mapped is None
    small.take(np.array([0]))
    assert small.mapped is True
    before = loaders.worker_rss_mb()
    rng = np.random.default_rng(0)
    for _ in range(32):  # 256 scattered rows a batch, 64 MB in all
        index = np.sort(rng.choice(rows, 256, replace=False))
        batch = big.take(index)
        assert batch.shape == (256, dim) and np.array_equal(batch[:, 0], index)
    assert big.mapped is False
    assert loaders.worker_rss_mb() - before < 8  # the batches themselves, 2 MB each
    # Runs of consecutive rows, repeats, negative indices, an empty index: as numpy's.
    index = np.array([0, 1, 2, 7, 7, 8, rows - 1, -2])
    assert np.array_equal(big.take(index)[:, 0], np.arange(rows)[index])
    assert big.take(np.array([], np.int64)).shape == (0, dim)
    with pytest.raises(IndexError, match="x.npy"):
        big.take(np.array([rows]))
    assert np.array_equal(small.take(np.array([5, 1])), [[10, 11], [2, 3]])
    held = loaders._mapped[0]
    del small
    assert loaders._mapped[0] == held - (tmp_path / "small.npy").stat().st_size


def test_a_dataset_read_with_pread_gives_the_mapped_batches(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Over the map budget, the statistics, training batches and validation of an .npy pair
    are the ones read through the map."""
    x_path, y_path = workloads.npy_pair(tmp_path, n=203, dim=6, classes=4)
    kwargs = {"x": str(x_path), "y": str(y_path)}

    def batches(mapped: bool) -> list[tuple[torch.Tensor, torch.Tensor]]:
        data = open_storage("npy", kwargs, "classification", 0.2, 0, [tmp_path])
        b = data.batches(16, seed=1, device=CPU)
        out = list(b.epoch(0)) + list(b.validation())
        assert data.train.x.mapped is mapped  # type: ignore[attr-defined]
        return out

    mapped = batches(True)
    monkeypatch.setattr(loaders, "MAP_BUDGET", 0)
    read = batches(False)
    assert len(read) == len(mapped) > 10
    for (xa, ya), (xb, yb) in zip(mapped, read, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_a_file_cut_short_while_read_fails_with_its_name(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    np.save(tmp_path / "x.npy", np.ones((100, 8), np.float32))
    monkeypatch.setattr(loaders, "MAP_BUDGET", 0)
    array = NpyArray(tmp_path / "x.npy")
    with open(tmp_path / "x.npy", "r+b") as f:
        f.truncate(f.seek(0, 2) - 64)
    assert array.take(np.array([0, 50])).shape == (2, 8)
    with pytest.raises(ValueError, match="x.npy is shorter than its header says"):
        array.take(np.array([99]))


def test_fashion_mnist_from_the_debian_package() -> None:
    workloads.need_fashion_mnist()
    data = open_storage("fashion-mnist", {"limit": 300, "val_limit": 100}, "classification",
                        0.2, 0, [])
    assert data.input_shape == (1, 28, 28) and data.outputs == 10
    assert len(data.train_index) == 300 and len(data.val_index) == 100
    x, y = next(iter(data.batches(300, 0, CPU).epoch(0)))
    assert x.shape == (300, 1, 28, 28) and int(y.max()) <= 9 and len(set(y.tolist())) == 10
    assert abs(float(x.mean())) < 0.1


def test_npy_shards_read_as_one_array(tmp_path: Path) -> None:
    x_dir, y_dir = workloads.npy_pair(tmp_path / "sharded", n=100, dim=4, shards=3)
    x_one, y_one = workloads.npy_pair(tmp_path / "whole", n=100, dim=4)
    kwargs = {"standardize": False}
    sharded = open_storage("npy", {"x": str(x_dir), "y": str(y_dir), **kwargs},
                           "classification", 0.2, 0, [tmp_path])
    whole = open_storage("npy", {"x": str(x_one), "y": str(y_one), **kwargs},
                         "classification", 0.2, 0, [tmp_path])
    assert sharded.input_shape == (4,) and len(sharded.train_index) == 80
    for a, b in zip(sharded.batches(32, 0, CPU).epoch(0), whole.batches(32, 0, CPU).epoch(0),
                    strict=True):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    np.save(x_dir / "part-003.npy", np.zeros((5, 3), np.float32))
    with pytest.raises(ValueError, match="shard part-003.npy is float32 \\[5, 3\\]"):
        open_storage("npy", {"x": str(x_dir), "y": str(y_dir)}, "classification", 0.2, 0,
                     [tmp_path])


def test_npy_token_ids_for_causal_lm(tmp_path: Path) -> None:
    ids = np.random.default_rng(0).integers(0, 50, (40, 9), dtype=np.int32)
    np.save(tmp_path / "ids.npy", ids)
    data = open_storage("npy", {"x": str(tmp_path / "ids.npy")}, "causal_lm", 0.25, 0,
                        [tmp_path])
    assert data.outputs == 0 and data.input_shape == (9,)
    x, target = next(iter(data.batches(8, 0, CPU).epoch(0)))
    assert x.dtype == torch.int64 and torch.equal(x, target)  # the loss shifts them
    assert {tuple(r) for r in x.tolist()} <= {tuple(r) for r in ids.tolist()}
