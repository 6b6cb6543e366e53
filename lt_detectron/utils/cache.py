"""The lt_detectron cache folder: ``$LT_DETECTRON_CACHE``, default ``~/.cache/lt_detectron``.

The embedded dataset (``lt_shapes_*``) and the class-statistics cache live under it.
"""

import os
from pathlib import Path

__all__ = ["CacheDirError", "cache_base", "cache_dir_error", "ensure_cache_dir"]


class CacheDirError(PermissionError):
    """The cache folder cannot be written (the message names ``LT_DETECTRON_CACHE`` and the fix)."""


def cache_base() -> str:
    """``$LT_DETECTRON_CACHE``, default ``~/.cache/lt_detectron`` (not created here)."""
    return os.environ.get("LT_DETECTRON_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "lt_detectron"
    )


def cache_dir_error(path, e: OSError) -> CacheDirError:
    """A :class:`CacheDirError` for the failure ``e`` to write ``path``, naming the variable and the fix."""
    env = os.environ.get("LT_DETECTRON_CACHE")
    return CacheDirError(
        "cannot write the lt_detectron cache folder %s (%s: %s). The cache is $LT_DETECTRON_CACHE (%s); "
        "point it to a writable folder, e.g. `export LT_DETECTRON_CACHE=/tmp/lt_detectron_cache`, or fix "
        "the folder's permissions."
        % (
            os.path.abspath(str(path)),
            type(e).__name__,
            e.strerror or e,
            "set to %r" % env if env else "unset, so ~/.cache/lt_detectron",
        )
    )


def ensure_cache_dir(path) -> Path:
    """``mkdir -p path`` and check it is writable; :class:`CacheDirError` otherwise."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise cache_dir_error(path, e) from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise cache_dir_error(path, PermissionError(13, "not writable"))
    return path
