"""Streaming batches: a source fetches one batch of examples by index, torch DataLoaders run
the fetches (in worker processes when asked, into pinned memory on a GPU), and the order of an
epoch is a function of (seed, epoch) only, so that a resumed attempt picks up mid-epoch with
the same batches and the same augmentations.

Sharding: with `world_size` ranks, each global batch of `batch_size` examples (in the order
one process would take them) is cut into `world_size` contiguous parts and rank r takes part r
(as worker.batches.ShardedBatches does for data held in memory): the ranks see disjoint
examples, the same number of batches, and together the same update as one process.
`last_global` is the size of the global batch the last yielded part came from. Validation is
not sharded: rank 0 evaluates for all.
"""

from __future__ import annotations

import math
import mmap
import os
import threading
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

from spartan_service.jobs import data_arrays

Inputs = Tensor | dict[str, Tensor]
Batch = tuple[Any, Tensor]  # (inputs: a tensor or a dict of tensors, targets)
EVAL_BATCH = 256
# Bytes of .npy files this process keeps memory-mapped, all arrays together. A mapped file's
# pages count in the worker's resident memory once read, and a scattered read maps far more
# than its row: Linux 6.x maps a file's whole large folio per fault (0.7-1.6 MB a fault on
# 6.18, against 64 KiB of fault-around before), so that one batch of 256 random rows maps most
# of a 300 MB file, and releasing the pages (MADV_DONTNEED) every so often neither bounds that
# nor comes cheap (every batch after a release faults again).
# So a file is mapped, and stays mapped, while the files mapped so far fit MAP_BUDGET; the rows
# of one that does not fit are read with pread (they pass through the page cache, which is not
# the worker's memory). 384 MB leaves the rest of the 500 MB a streaming worker may grow by
# to the statistics pass and the batches (worker.arrays.CHUNK_BYTES).
MAP_BUDGET = 384 << 20
_mapped = [0]  # bytes of the files mapped by this process's live NpyArrays
_mapped_lock = threading.Lock()


def _reserve(nbytes: int) -> bool:
    with _mapped_lock:
        if _mapped[0] + nbytes > MAP_BUDGET:
            return False
        _mapped[0] += nbytes
        return True


def _unreserve(nbytes: int) -> None:
    with _mapped_lock:
        _mapped[0] -= nbytes


class Source(Protocol):
    """Examples addressed by index; `fetch` builds one batch on the CPU."""

    augments: bool  # whether training batches are augmented (fetch is given an rng)

    def __len__(self) -> int: ...

    def fetch(self, index: np.ndarray, rng: np.random.Generator | None) -> Batch:
        """The examples at `index` (sorted ascending); `rng` set when training a source that
        augments."""
        ...


class NpyArray:
    """Rows of an .npy file: read through a read-only memory map when the file fits this
    process's MAP_BUDGET, else with pread, one call per run of consecutive rows. Opened on
    first use, in each DataLoader worker anew (maps and descriptors do not pickle)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.shape, self.dtype, fortran, self.offset = data_arrays.npy_header(path)
        if fortran and len(self.shape) > 1:
            raise ValueError(f"{path.name} is stored in Fortran order; save it C-contiguous "
                             "(np.ascontiguousarray) so that rows can be read one by one")
        self.row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize
        self.nbytes = self.offset + self.row_bytes * self.shape[0]
        self._array: np.ndarray | None = None  # the mapped rows, when mapped
        self._fd: int | None = None  # the open file, when read with pread

    def __len__(self) -> int:
        return self.shape[0]

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_array": None, "_fd": None}

    @property
    def mapped(self) -> bool | None:
        """True: read through the map; False: with pread; None: not opened yet."""
        return None if self._array is None and self._fd is None else self._array is not None

    def _open(self) -> None:
        done: Any
        if _reserve(self.nbytes):
            with self.path.open("rb") as f:
                buffer = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            self._array = np.ndarray(self.shape, self.dtype, buffer=buffer, offset=self.offset)
            done = weakref.finalize(self, _unreserve, self.nbytes)
        else:
            self._fd = os.open(self.path, os.O_RDONLY)
            done = weakref.finalize(self, os.close, self._fd)
        done.atexit = False  # a forked DataLoader worker's copy must not act for the parent

    def take(self, index: np.ndarray) -> np.ndarray:
        """A copy of the rows at `index`."""
        if self._array is None and self._fd is None:
            self._open()
        if self._array is not None:
            return self._array[index]
        return self._pread(np.asarray(index, np.int64))

    def _pread(self, index: np.ndarray) -> np.ndarray:
        n, size = len(self), self.row_bytes
        if len(index) and (index.min() < -n or index.max() >= n):
            raise IndexError(f"{self.path.name}: a row index is out of range for {n} rows")
        index = np.where(index < 0, index + n, index)
        out = np.empty((len(index), *self.shape[1:]), self.dtype)
        buffer = out.reshape(-1).view(np.uint8).data
        breaks = (np.flatnonzero(np.diff(index) != 1) + 1).tolist()
        rows, fd = index.tolist(), self._fd
        assert fd is not None
        for start, end in zip([0, *breaks], [*breaks, len(rows)], strict=True):
            if start == end:
                continue
            got = os.preadv(fd, [buffer[start * size:end * size]],
                            self.offset + rows[start] * size)
            if got != (end - start) * size:
                raise ValueError(f"{self.path.name} is shorter than its header says (changed "
                                 "while the job read it?)")
        return out

    def chunks(self, index: np.ndarray, rows: int) -> Iterator[np.ndarray]:
        for i in range(0, len(index), rows):
            yield self.take(index[i:i + rows])


class NpyShards:
    """Several .npy files read as one array, concatenated along the first axis."""

    def __init__(self, path: Path, files: list[Path]) -> None:
        self.path = path
        self.parts = [NpyArray(f) for f in files]
        first = self.parts[0]
        for part in self.parts[1:]:
            if part.shape[1:] != first.shape[1:] or part.dtype != first.dtype:
                raise ValueError(f"shard {part.path.name} is {part.dtype} {list(part.shape)}; "
                                 f"{first.path.name} is {first.dtype} {list(first.shape)}")
        self.shape = (sum(len(p) for p in self.parts), *first.shape[1:])
        self.dtype, self.row_bytes = first.dtype, first.row_bytes
        self.starts = np.cumsum([0] + [len(p) for p in self.parts])

    def __len__(self) -> int:
        return self.shape[0]

    def take(self, index: np.ndarray) -> np.ndarray:
        """Rows at `index` (sorted ascending), read shard by shard."""
        which = np.searchsorted(self.starts, index, side="right") - 1
        pieces = [self.parts[s].take(index[which == s] - self.starts[s])
                  for s in np.unique(which)]
        if not pieces:
            return np.empty((0, *self.shape[1:]), self.dtype)
        return np.concatenate(pieces)

    def chunks(self, index: np.ndarray, rows: int) -> Iterator[np.ndarray]:
        for i in range(0, len(index), rows):
            yield self.take(index[i:i + rows])


def open_array(path: Path) -> NpyArray | NpyShards:
    """An .npy file, or a folder of .npy shards."""
    files = data_arrays.npy_files(path)
    return NpyShards(path, files) if path.is_dir() else NpyArray(files[0])


class _EpochBatches(TorchDataset[Batch]):
    """Item i is batch i of one epoch (DataLoader with batch_size=None)."""

    def __init__(self, source: Source, batches: list[np.ndarray],
                 seeds: list[list[int]] | None) -> None:
        self.source, self.batches, self.seeds = source, batches, seeds

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> Batch:
        # A generator costs ~10-100 us: built only for a source that uses it.
        augment = self.seeds is not None and self.source.augments
        rng = np.random.default_rng(self.seeds[i]) if augment else None  # type: ignore[index]
        return self.source.fetch(np.sort(self.batches[i]), rng)


def allow_children() -> None:
    """Let a daemonic process (a Celery pool child running the job) start DataLoader workers.

    multiprocessing refuses children to daemons so that none outlive them; DataLoader workers
    watch their parent and exit when it dies, and the loader joins them when it is done."""
    import multiprocessing

    process = multiprocessing.current_process()
    if process.daemon:
        process._config["daemon"] = False  # type: ignore[attr-defined]


def to_device(batch: Batch, device: torch.device) -> Batch:
    inputs, target = batch
    nb = device.type == "cuda"
    if isinstance(inputs, dict):
        inputs = {k: v.to(device, non_blocking=nb) for k, v in inputs.items()}
    else:
        inputs = inputs.to(device, non_blocking=nb)
    return inputs, target.to(device, non_blocking=nb)


def _unwrap(exc: Exception) -> Exception:
    """A DataLoader worker's error carries its whole traceback in the message; keep the line
    that says what went wrong (it names the file)."""
    text = str(exc)
    if "Original Traceback" not in text:
        return exc
    last = [line for line in text.strip().splitlines() if line.strip()][-1]
    _, _, message = last.partition(": ")
    return ValueError(message or last)


class LoaderBatches:
    """The training loop's batches (worker.batches.Batches) from a streamed source."""

    def __init__(self, train: Source, train_index: np.ndarray, val: Source,
                 val_index: np.ndarray, batch_size: int, seed: int, device: torch.device,
                 workers: int = 0, rank: int = 0, world_size: int = 1,
                 eval_batch: int = EVAL_BATCH) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in a world of {world_size}")
        self.train, self.val = train, val
        self.train_index, self.val_index = train_index, val_index
        self.batch_size, self.seed, self.device = batch_size, seed, device
        self.workers, self.rank, self.world_size = workers, rank, world_size
        self.eval_batch = eval_batch
        self.steps_per_epoch = math.ceil(len(train_index) / batch_size)
        self.last_global = 0

    def order(self, epoch: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, epoch])
        return self.train_index[rng.permutation(len(self.train_index))]

    def _load(self, source: Source, batches: list[np.ndarray], seeds: list[list[int]] | None,
              sizes: list[int] | None = None) -> Iterator[Batch]:
        dataset = _EpochBatches(source, batches, seeds)
        if not self.workers and self.device.type == "cpu":
            # Nothing to run in other processes or to pin: the DataLoader would only add its
            # own per-batch work (a profiler range, converting the batch), ~1% of a small step.
            yield from self._direct(dataset, sizes)
            return
        if self.workers:
            allow_children()
        loader = DataLoader(dataset, batch_size=None,
                            shuffle=False, num_workers=self.workers,
                            pin_memory=self.device.type == "cuda",
                            prefetch_factor=2 if self.workers else None)
        try:
            for i, batch in enumerate(loader):
                if sizes is not None:
                    self.last_global = sizes[i]
                yield to_device(batch, self.device)
        except Exception as exc:
            raise _unwrap(exc) from None

    def _direct(self, dataset: _EpochBatches, sizes: list[int] | None) -> Iterator[Batch]:
        for i in range(len(dataset)):
            if sizes is not None:
                self.last_global = sizes[i]
            yield dataset[i]

    def epoch(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        order, b = self.order(epoch), self.batch_size
        whole = [order[i * b:(i + 1) * b] for i in range(start, self.steps_per_epoch)]
        mine = whole if self.world_size == 1 else \
            [np.array_split(g, self.world_size)[self.rank] for g in whole]
        # One seed per batch and rank: augmentations do not depend on which process fetched.
        seeds = [[self.seed, epoch, self.rank, i] for i in range(start, self.steps_per_epoch)]
        return self._load(self.train, mine, seeds, [len(g) for g in whole])

    def validation(self) -> Iterator[Batch]:
        index, b = self.val_index, self.eval_batch
        return self._load(self.val, [index[i:i + b] for i in range(0, len(index), b)], None)

    def example(self) -> Batch:
        """The first training batch of epoch 0, on the device (cost probes, timing)."""
        return next(iter(self.epoch(0)))


def worker_rss_mb() -> float:
    """This process's resident memory in MB (anonymous and file-backed), from /proc."""
    with open(f"/proc/{os.getpid()}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")
