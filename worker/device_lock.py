"""Who may use a device of this machine: training jobs share it, a profile job has it alone.

A profile times kernels; a training job on the same device at the same time would slow them
down and the cost model would be wrong. Every job therefore holds a lock on its device for its
whole run: training jobs a shared one (several train side by side, as before), profile jobs an
exclusive one. The locks are `flock`s on files named after the host and the device type, in
`settings.lock_dir` (default: `locks/` under the data dir), so they cover every worker process
of one installation on this machine, whatever its concurrency, and workers of other machines
that share the data dir never wait for each other.

A waiting profile must not starve: training jobs keep arriving and a shared lock is always
free for one more. So everyone passes a turnstile (a second file, held exclusively only while
taking the device lock): a profile waiting for the device holds the turnstile, and new training
jobs queue behind it instead of slipping in.

Waits poll (non-blocking flock every `poll_s`), so that a cancel or a lost lease is noticed
while waiting: `check()` raises to stop, `on_wait()` reports progress once.
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)


def _take(f: IO[bytes], mode: int, check: Callable[[], None], on_wait: Callable[[], None],
          poll_s: float) -> None:
    waited = False
    while True:
        try:
            fcntl.flock(f.fileno(), mode | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if not waited:
                on_wait()
                waited = True
            check()
            time.sleep(poll_s)


def _open(path: Path) -> IO[bytes]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    return os.fdopen(fd, "r+b")


@contextmanager
def hold_device(folder: Path, device: str, exclusive: bool,
                check: Callable[[], None] = lambda: None,
                on_wait: Callable[[], None] = lambda: None, poll_s: float = 0.1
                ) -> Iterator[None]:
    """Hold this machine's `device` ("cpu", "cuda") shared or exclusively until the block ends.
    Raises whatever `check` raises while waiting."""
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"{socket.gethostname()}-{device}"
    gate, lock = _open(folder / f"{stem}.gate"), _open(folder / f"{stem}.lock")
    try:
        _take(gate, fcntl.LOCK_EX, check, on_wait, poll_s)
        try:
            _take(lock, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH, check, on_wait, poll_s)
        finally:
            fcntl.flock(gate.fileno(), fcntl.LOCK_UN)
        log.debug("holding %s %s", device, "exclusively" if exclusive else "shared")
        yield
    finally:
        gate.close()
        lock.close()  # closing the file releases its flock
