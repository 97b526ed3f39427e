"""One helper for processes that must not outlive their parent (Linux PR_SET_PDEATHSIG)."""

from __future__ import annotations

import ctypes
import logging
import sys
from collections.abc import Callable

log = logging.getLogger(__name__)
_PR_SET_PDEATHSIG = 1


def parent_death_signal(sig: int) -> Callable[[], None]:
    """A function that asks Linux to send `sig` to the calling process when its parent dies (a
    no-op elsewhere). The C function is looked up now, so the returned function is safe to run
    as a preexec_fn between fork and exec."""
    prctl = None
    if sys.platform.startswith("linux"):
        try:
            prctl = ctypes.CDLL(None, use_errno=True).prctl
        except (OSError, AttributeError):
            log.debug("prctl not available; children may outlive their parent")

    def ask() -> None:
        if prctl is not None:
            prctl(_PR_SET_PDEATHSIG, sig)

    return ask
