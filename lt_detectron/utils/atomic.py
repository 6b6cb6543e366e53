"""Atomic file writes: a temporary file in the same folder, flushed, fsync'ed and renamed over the
target, so a reader sees the old content or the new one, never a partial file.

Temporary files and folders carry their writer in their name (``.{target}.tmp-{pid}@{host}-{random}``),
so the leftovers of a writer that was killed (SIGKILL, power loss: no ``except`` runs) can be told
from the temporaries of a live writer: :func:`remove_stale_temps` removes those whose process is gone
(on this host), and any left untouched for ``max_age_s`` (another host's, or an unrecorded owner's).
"""

import os
import re
import shutil
import socket
import tempfile
import time
from typing import Any, Callable, List

__all__ = [
    "STALE_TEMP_AGE_S",
    "atomic_write",
    "pid_alive",
    "remove_stale_temps",
    "temp_prefix",
]

STALE_TEMP_AGE_S = 3600.0  # a temporary untouched this long is stale even if its writer seems alive

# ".tmp-{pid}@{host}-{random}" (host optional: lt_shapes generations before the host was recorded)
_OWNED = re.compile(r"\.tmp-(?P<pid>\d+)(?:@(?P<host>.+))?-[A-Za-z0-9_]+$")
_UNOWNED = re.compile(r"\.[a-z0-9_]{8}\.tmp$")  # tempfile.mkstemp's names of earlier atomic_write


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # exists (another user's), or not a pid we can judge
    return True


def temp_prefix(name: str) -> str:
    """The name prefix of this process's temporaries for ``name``: ``.{name}.tmp-{pid}@{host}-``."""
    return ".%s.tmp-%d@%s-" % (name, os.getpid(), socket.gethostname())


def _is_stale(name: str, age: float, max_age_s: float, min_age_s: float) -> bool:
    if age > max_age_s:
        return True
    m = _OWNED.search(name)
    if m is None:  # no writer recorded: by age only
        return False
    pid = int(m.group("pid"))
    if m.group("host") is None:  # pid without host: another machine's writer cannot be excluded
        return age > min_age_s and not pid_alive(pid)
    return m.group("host") == socket.gethostname() and not pid_alive(pid)


def remove_stale_temps(
    folder, prefix: str = ".", max_age_s: float = STALE_TEMP_AGE_S, min_age_s: float = 60.0
) -> List[str]:
    """Remove the temporary files / folders of ``folder`` (names starting with ``prefix``) whose writer
    is dead: its pid is gone on this host, or nothing touched it for ``max_age_s``. A temporary of a
    live writer, or of another host's writer younger than ``max_age_s``, is kept; a name with a pid
    but no host (older lt_shapes generations) needs ``min_age_s`` too. Returns the removed paths."""
    folder = os.fspath(folder)
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    now = time.time()
    for name in names:
        if not name.startswith(prefix) or not (_OWNED.search(name) or _UNOWNED.search(name)):
            continue
        path = os.path.join(folder, name)
        try:
            age = now - os.stat(path).st_mtime
        except OSError:
            continue
        if not _is_stale(name, age, max_age_s, min_age_s):
            continue
        if os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            try:
                os.remove(path)
            except OSError:
                pass
        if not os.path.lexists(path):
            removed.append(path)
    return removed


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
    """Write ``path`` through ``write(file)`` into a temporary file of the same folder
    (:func:`temp_prefix`), flush, fsync and rename it over ``path``. On any error the temporary file
    is removed and ``path`` keeps its previous content."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(os.path.basename(path)), suffix="", dir=folder)
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
