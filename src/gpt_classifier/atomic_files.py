"""Atomic file writes: every output lands whole or not at all, so a crash never leaves half a file."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO


def temporary_path(path: Path) -> Path:
    """A hidden sibling of `path`: same folder, so the final rename never crosses filesystems."""
    return path.with_name(f".{path.name}.{os.getpid()}.part")


def _fsync_folder(folder: Path) -> None:
    """Make a rename durable where the OS allows it; without it a power cut may undo the rename."""
    with contextlib.suppress(OSError):  # not on Windows, nor on some network filesystems
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def replace_atomically(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> None:
    """Call `write(file)` on a temporary file beside `path`, then rename it onto `path`.

    Until the rename, `path` keeps its old content; on any error the temporary file is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise
    _fsync_folder(path.parent)


def write_text_atomic(text: str, path: str | os.PathLike) -> None:
    replace_atomically(path, lambda f: f.write(text.encode()))


def write_json_atomic(data: Any, path: str | os.PathLike) -> None:
    write_text_atomic(json.dumps(data, indent=2) + "\n", path)
