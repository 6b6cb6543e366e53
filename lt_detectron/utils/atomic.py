"""Atomic file writes: a temporary file in the same folder, flushed, fsync'ed and renamed over the
target, so a reader sees the old content or the new one, never a partial file."""

import os
import tempfile
from typing import Any, Callable

__all__ = ["atomic_write"]


def _fsync_dir(folder: str):
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str, write: Callable[[Any], None], mode: str = "wb"):
    """Write ``path`` through ``write(file)`` into a temporary file of the same folder, flush,
    fsync and rename it over ``path``. On any error the temporary file is removed and ``path``
    keeps its previous content."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)  # as open() would create it (mkstemp makes 0600)
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    _fsync_dir(folder)
