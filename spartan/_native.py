"""The fused CPU passes of spartan/_native.c: compiled at first use, called through ctypes.

Built with the system compiler (`$CC`, else cc/gcc) into a private cache and loaded once per
process. Without a compiler, or with SPARTAN_NATIVE=0, `library()` is None and the Sparsifier
uses its torch path: same results (tests/spartan/test_fast.py compares the two), slower on CPU.

Safety, since loading a library runs its code:
- the cache is `$SPARTAN_CACHE_DIR`, else `$XDG_CACHE_HOME/spartan`, else ~/.cache/spartan,
  created 0700; a cache folder or library file not owned by this user (or root), or writable
  by anyone else, is refused (a folder of this user's is closed to 0700 first). Without a usable
  cache the library is built in a fresh private temporary folder (mkdtemp: unpredictable
  name, 0700) that is removed once it is loaded: there is no shared fallback path;
- C and Python shake hands: the library exports its ABI version and the sizes of the structs
  Python mirrors by hand (`sp_abi`, `sp_sizeof`); a library that disagrees is not used;
- the library links libgomp by soname, so it shares the OpenMP runtime torch loaded (and thus
  its threads); `openmp_runtimes()` lists the runtimes mapped, which tests check is one.
Two builds are tried: tuned for this CPU (-march=native, cached per CPU) and portable (cached
per source and flags only, so an image can ship it prebuilt and run without a compiler).
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import torch
from torch import Tensor

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("_native.c")
ABI = 1  # SP_ABI in _native.c
_FLAGS = ["-O3", "-fno-math-errno", "-fno-trapping-math", "-fopenmp", "-fPIC", "-shared"]
_state: dict[str, ctypes.CDLL | None] = {}

_i64, _f32, _f64, _ptr = ctypes.c_int64, ctypes.c_float, ctypes.c_double, ctypes.c_void_p


class GroupView(ctypes.Structure):
    """Mirror of the C group_t: pointers into one budget group's tensors."""

    _fields_ = [("n", _i64), ("nl", _i64), ("nt", _i64), ("off", _ptr), ("geom", _ptr),
                ("w", _ptr), ("weff", _ptr), ("c", _ptr), ("v", _ptr), ("m", _ptr)]


CAND_BYTES = 16  # sizeof(cand_t): float x, float c, int64 index
GEOM_BYTES = 32  # sizeof(geom_t): four int64

_SIGNATURES = {
    "sp_abi": (_i64, []),
    "sp_sizeof": (_i64, [_i64]),
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


def _private(path: Path, folder: bool) -> str | None:
    """Why `path` cannot be trusted with code (None when it can): a real directory or file (no
    symlink), owned by this user or root, writable by no one else. A folder of this user's is
    closed to group and others on the way (0700), as older versions created it 0755."""
    try:
        st = os.lstat(path)
    except OSError as exc:
        return str(exc)
    kind_ok = stat.S_ISDIR(st.st_mode) if folder else stat.S_ISREG(st.st_mode)
    if not kind_ok:
        return "not a directory" if folder else "not a regular file"
    if st.st_uid not in (os.getuid(), 0):
        return f"owned by uid {st.st_uid}, not by this user ({os.getuid()}) or root"
    mode = stat.S_IMODE(st.st_mode)
    if folder and st.st_uid == os.getuid() and mode & 0o077:
        try:
            os.chmod(path, 0o700)
            mode = 0o700
        except OSError:
            pass
    if mode & 0o022:
        return f"writable by other users (mode {mode:o})"
    return None


def cache_dir() -> Path | None:
    """The private cache folder (created 0700), or None when it is not private."""
    env = os.environ.get("SPARTAN_CACHE_DIR")
    xdg = os.environ.get("XDG_CACHE_HOME")
    folder = Path(env) if env else (Path(xdg) if xdg else Path.home() / ".cache") / "spartan"
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        log.info("native cache %s unusable (%s)", folder, exc)
        return None
    why = _private(folder, folder=True)
    if why is not None:
        log.warning("native cache %s refused: %s", folder, why)
        return None
    return folder


def _compile(target: Path, cc: str, flags: list[str]) -> bool:
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    cmd = [cc, *flags, str(SOURCE), "-o", tmp, "-lm"]
    try:
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.SubprocessError) as exc:
            log.debug("native build could not run (%s): %s", " ".join(cmd), exc)
            return False
        if done.returncode != 0:
            log.debug("native build failed (%s): %s", " ".join(cmd), done.stderr[-2000:])
            return False
        os.chmod(tmp, 0o700)
        os.replace(tmp, target)  # atomic: processes building at once each install a whole file
        return True
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _handshake(lib: ctypes.CDLL) -> str | None:
    """Why the library does not match this Python side (None when it does)."""
    try:
        for name, (restype, argtypes) in _SIGNATURES.items():
            fn = getattr(lib, name)
            fn.restype, fn.argtypes = restype, argtypes
    except AttributeError as exc:
        return f"missing function ({exc})"
    got = (lib.sp_abi(), lib.sp_sizeof(0), lib.sp_sizeof(1), lib.sp_sizeof(2))
    want = (ABI, ctypes.sizeof(GroupView), CAND_BYTES, GEOM_BYTES)
    if got != want:
        return f"ABI/struct sizes {got}, this module expects {want}"
    return None


def _builds(source: bytes) -> list[tuple[str, list[str]]]:
    """(file name, flags) of the tuned build, then the portable one."""
    out = []
    for flags, key in ((["-march=native", *_FLAGS], _cpu_key()), (_FLAGS, "")):
        digest = hashlib.sha256(source + " ".join(flags).encode() + key.encode())
        out.append((f"spartan_native_{digest.hexdigest()[:16]}.so", flags))
    return out


def _open(folder: Path, name: str, flags: list[str], cc: str | None) -> ctypes.CDLL | None:
    target = folder / name
    if not target.exists():
        if cc is None or not _compile(target, cc, flags):
            return None
    why = _private(target, folder=False)
    if why is not None:
        log.warning("native library %s refused: %s", target, why)
        return None
    try:
        lib = ctypes.CDLL(str(target))
    except OSError as exc:
        log.debug("native library %s: %s", target, exc)
        return None
    why = _handshake(lib)
    if why is not None:
        log.warning("native library %s refused: %s", target, why)
        return None
    return lib


def _load() -> ctypes.CDLL | None:
    if os.environ.get("SPARTAN_NATIVE", "1") == "0":
        return None
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    try:
        source = SOURCE.read_bytes()
    except OSError as exc:
        log.warning("%s: the Sparsifier's fused CPU passes are off", exc)
        return None
    folder = cache_dir()
    scratch = None
    if folder is None:
        folder = scratch = Path(tempfile.mkdtemp(prefix="spartan-native-"))
    try:
        for name, flags in _builds(source):
            lib = _open(folder, name, flags, cc)
            if lib is not None:
                return lib
    finally:
        if scratch is not None:  # a loaded library stays mapped after its file is gone
            shutil.rmtree(scratch, ignore_errors=True)
    if cc is None:
        log.warning("no C compiler and no prebuilt library: the Sparsifier's fused CPU passes "
                    "are off (slower steps)")
    else:
        log.warning("could not build %s: the Sparsifier's fused CPU passes are off",
                    SOURCE.name)
    return None


def prebuild() -> Path:
    """Build the portable library into the cache (what an image does once, so that its
    containers need no compiler); returns its path. Raises RuntimeError when it cannot."""
    folder = cache_dir()
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if folder is None or cc is None:
        raise RuntimeError("a private cache folder and a C compiler are needed")
    name, flags = _builds(SOURCE.read_bytes())[1]
    if _open(folder, name, flags, cc) is None:
        raise RuntimeError(f"could not build {SOURCE.name} into {folder}")
    return folder / name


def openmp_runtimes() -> set[str]:
    """Files of the OpenMP runtimes mapped into this process (Linux; empty elsewhere)."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return set()
    names = ("libgomp", "libiomp", "libomp")
    return {line.split()[-1] for line in maps.splitlines()
            if any(n in line.rsplit("/", 1)[-1] for n in names)}


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
