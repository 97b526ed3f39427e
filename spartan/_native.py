"""The fused CPU passes of spartan/_native.c: compiled at first use, called through ctypes.

The C file is built with the system compiler (`$CC`, else cc/gcc) into a cache directory
(`$SPARTAN_CACHE_DIR`, else ~/.cache/spartan) keyed by the source, flags and CPU, and loaded
once per process. Without a compiler, or with SPARTAN_NATIVE=0, `library()` is None and the
Sparsifier uses its torch path: same results, slower on CPU.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch
from torch import Tensor

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("_native.c")
_FLAGS = ["-O3", "-fno-math-errno", "-fno-trapping-math", "-fopenmp", "-fPIC", "-shared"]
_state: dict[str, ctypes.CDLL | None] = {}

_i64, _f32, _f64, _ptr = ctypes.c_int64, ctypes.c_float, ctypes.c_double, ctypes.c_void_p


class GroupView(ctypes.Structure):
    """Mirror of the C group_t: pointers into one budget group's tensors."""

    _fields_ = [("n", _i64), ("nl", _i64), ("nt", _i64), ("off", _ptr), ("geom", _ptr),
                ("w", _ptr), ("weff", _ptr), ("c", _ptr), ("v", _ptr), ("m", _ptr)]


CAND_BYTES = 16  # sizeof(cand_t): float x, float c, int64 index

_SIGNATURES = {
    "sp_scan": (None, [_ptr, _f32, _f32, _ptr, _i64, _ptr, _ptr]),
    "sp_cut": (None, [_ptr, _i64, _ptr, _i64, _f64, _ptr]),
    "sp_soft": (None, [_ptr, _f32, _f32, _f32, _f32, _i64, _ptr]),
    "sp_hard": (None, [_ptr, _f32, _i64]),
    "sp_values": (None, [_ptr]),
    "sp_grad_dot": (_f64, [_ptr, _ptr]),
    "sp_grad": (None, [_ptr, _ptr, _ptr, _f32, _f32]),
}


def _cpu_key() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            lines = [ln for ln in f if ln.startswith(("model name", "flags"))][:2]
    except OSError:
        lines = []
    return platform.machine() + "".join(lines)


def _cache_dir() -> Path:
    env = os.environ.get("SPARTAN_CACHE_DIR")
    if env:
        return Path(env)
    home = Path.home() / ".cache" / "spartan"
    try:
        home.mkdir(parents=True, exist_ok=True)
        if os.access(home, os.W_OK):
            return home
    except OSError:
        pass
    return Path(tempfile.gettempdir()) / "spartan-cache"


def _compile(target: Path, cc: str, flags: list[str]) -> bool:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    cmd = [cc, *flags, str(SOURCE), "-o", tmp, "-lm"]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            log.debug("native build failed (%s): %s", " ".join(cmd), done.stderr[-2000:])
            return False
        os.replace(tmp, target)  # atomic: processes building at once each install a whole file
        return True
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _load() -> ctypes.CDLL | None:
    if os.environ.get("SPARTAN_NATIVE", "1") == "0":
        return None
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        log.warning("no C compiler: the Sparsifier's fused CPU passes are off (slower steps)")
        return None
    try:
        source = SOURCE.read_bytes()
    except OSError as exc:
        log.warning("%s: the Sparsifier's fused CPU passes are off", exc)
        return None
    for flags in (["-march=native", *_FLAGS], _FLAGS):
        digest = hashlib.sha256(source + " ".join([cc, *flags]).encode() + _cpu_key().encode())
        target = _cache_dir() / f"spartan_native_{digest.hexdigest()[:16]}.so"
        try:
            if not target.exists() and not _compile(target, cc, flags):
                continue
            lib = ctypes.CDLL(str(target))
        except (OSError, subprocess.SubprocessError) as exc:
            log.debug("native library %s: %s", target, exc)
            continue
        for name, (restype, argtypes) in _SIGNATURES.items():
            fn = getattr(lib, name)
            fn.restype, fn.argtypes = restype, argtypes
        return lib
    log.warning("could not build %s: the Sparsifier's fused CPU passes are off", SOURCE.name)
    return None


def library() -> ctypes.CDLL | None:
    """The loaded library, or None when it cannot be built or SPARTAN_NATIVE=0."""
    if "lib" not in _state:
        _state["lib"] = _load()
    return _state["lib"]


def reset() -> None:
    """Forget the loaded library, so the next `library()` looks at the environment again."""
    _state.clear()


def threads(weights: int) -> int:
    """Threads for a pass over this many weights: torch's, or one below ~64K, where waking the
    others costs more than the pass."""
    return 1 if weights < 1 << 16 else torch.get_num_threads()


def pointers(tensors: list[Tensor]) -> ctypes.Array[ctypes.c_void_p]:
    return (ctypes.c_void_p * len(tensors))(*[t.data_ptr() for t in tensors])


def view(offsets: Tensor, geom: Tensor, weights: list[Tensor], weffs: list[Tensor],
         c: Tensor | None, v: Tensor, m: Tensor, nt: int) -> tuple[GroupView, list[object]]:
    """A GroupView of the tensors (offsets: the layers' first items, then n; geom: each layer's
    item tiles, int64 (layers, 4); nt threads, as sized for sp_scan's candidate slots), and the
    ctypes arrays it points into (keep them alive)."""
    w, we = pointers(weights), pointers(weffs)
    g = GroupView(v.numel(), len(weights), nt, offsets.data_ptr(),
                  geom.data_ptr(), ctypes.addressof(w), ctypes.addressof(we),
                  0 if c is None else c.data_ptr(), v.data_ptr(), m.data_ptr())
    return g, [w, we]
