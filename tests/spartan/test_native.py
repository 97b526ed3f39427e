"""The native library's loader: a private cache, refused foreign or open files, the C/Python
handshake, the OpenMP runtime it shares with torch. (tests/spartan/test_fast.py checks its
results against the torch path.)"""

from __future__ import annotations

import logging
import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from spartan import _native

pytestmark = pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None,
                                reason="no C compiler on this machine: the fused path is off")


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    folder = tmp_path / "cache"
    monkeypatch.setenv("SPARTAN_CACHE_DIR", str(folder))
    monkeypatch.delenv("SPARTAN_NATIVE", raising=False)
    _native.reset()
    yield folder
    _native.reset()


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_built_into_a_private_cache(cache: Path) -> None:
    lib = _native.library()
    assert lib is not None and Path(lib._name).parent == cache
    assert mode(cache) == 0o700 and mode(Path(lib._name)) & 0o077 == 0
    assert lib.sp_abi() == _native.ABI


def test_an_open_library_file_is_refused(cache: Path, caplog: pytest.LogCaptureFixture) -> None:
    tuned = _native._builds(_native.SOURCE.read_bytes())[0][0]
    cache.mkdir(mode=0o700)
    planted = cache / tuned
    planted.write_bytes(b"not a library")
    planted.chmod(0o666)  # anyone could have put code here
    with caplog.at_level(logging.WARNING, logger="spartan._native"):
        lib = _native.library()
    assert f"{planted} refused: writable by other users" in caplog.text
    assert lib is not None and Path(lib._name).name != tuned  # the portable build instead


def test_a_symlinked_cache_is_not_used(tmp_path: Path, cache: Path,
                                       caplog: pytest.LogCaptureFixture) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    cache.symlink_to(elsewhere)
    with caplog.at_level(logging.WARNING, logger="spartan._native"):
        lib = _native.library()
    assert "refused: not a directory" in caplog.text
    assert lib is not None  # built in a fresh private folder, removed once loaded
    assert not Path(lib._name).exists() and not list(elsewhere.iterdir())


def test_a_library_of_another_abi_is_refused(cache: Path, monkeypatch: pytest.MonkeyPatch,
                                             caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(_native, "ABI", _native.ABI + 1)
    with caplog.at_level(logging.WARNING, logger="spartan._native"):
        assert _native.library() is None
    assert "refused: ABI/struct sizes" in caplog.text


def test_no_openmp_runtime_of_its_own(cache: Path) -> None:
    """The library asks for libgomp by soname, so it gets the runtime torch loaded (and torch's
    threads), not a second one (other packages may bring theirs: scikit-learn does)."""
    torch.randn(256, 256) @ torch.randn(256, 256)  # torch's runtime is in
    before = _native.openmp_runtimes()
    assert _native.library() is not None
    if os.path.exists("/proc/self/maps"):
        assert any("torch" in path for path in before)
        assert _native.openmp_runtimes() == before


def test_a_prebuilt_portable_library_loads_without_a_compiler(
        cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    built = _native.prebuild()  # what the image does at build time
    monkeypatch.setenv("CC", str(cache / "no-such-compiler"))
    monkeypatch.setenv("PATH", "/nonexistent")  # no cc or gcc either
    _native.reset()
    lib = _native.library()
    assert lib is not None and Path(lib._name) == built
