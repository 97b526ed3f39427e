"""What every check of a data path shares: the error that names the spec's field (the API's
422 `loc`), and the checks that a file or folder is there and readable."""

from __future__ import annotations

import os
from pathlib import Path

Loc = list[str | int]


class PathError(ValueError):
    """A problem with one field of the spec; `loc` names it as the API's 422 does."""

    def __init__(self, loc: Loc, msg: str) -> None:
        super().__init__(f"{'.'.join(map(str, loc))}: {msg}")
        self.loc, self.msg = loc, msg


def readable_dir(path: Path, loc: Loc) -> None:
    if not path.is_dir():
        raise PathError(loc, f"{path} is not a directory" if path.exists()
                        else f"{path} does not exist")
    if not os.access(path, os.R_OK | os.X_OK):
        raise PathError(loc, f"{path} is not readable")


def readable(path: Path, loc: Loc) -> None:
    """A readable file, or a readable folder (of shards)."""
    if path.is_dir():
        readable_dir(path, loc)
    else:
        readable_file(path, loc)


def readable_file(path: Path, loc: Loc) -> None:
    if not path.is_file():
        raise PathError(loc, f"{path} is not a file" if path.exists()
                        else f"{path} does not exist")
    if not os.access(path, os.R_OK):
        raise PathError(loc, f"{path} is not readable")
