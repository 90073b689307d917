"""Atomic file writes: a temporary file in the same folder, flushed and fsynced, then renamed over the
target, so a run that dies mid-write never leaves a half-written record, checkpoint or list.

The file gets the mode an ordinary ``open(path, "w")`` would give it (0o666 less the user's umask,
typically 0o644): ``tempfile.mkstemp`` creates 0o600 files, readable by their owner only.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable

_UMASK: int | None = None   # the process's umask, read once (reading it means setting it: process-global)


def _umask() -> int:
    global _UMASK
    if _UMASK is None:
        _UMASK = os.umask(0)
        os.umask(_UMASK)
    return _UMASK


def atomic_write(path, write: Callable[[BinaryIO], object]) -> None:
    """Call ``write(f)`` on a binary temporary file, then move it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = 0o666 & ~_umask()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


_umask()   # at import, before any thread could write
