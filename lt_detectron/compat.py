"""Runtime compatibility fixes for third-party code that predates NumPy 2.

``lvis==0.5.3`` (the only release of lvis-api) calls ``np.float`` in
``LVISEval.accumulate``; the alias was removed in NumPy 1.24. Instead of patching
site-packages or setting ``np.float`` globally (which would hide the same bug in
other code), :func:`ensure_lvis_numpy_compat` gives the ``lvis.eval`` module its
own numpy proxy: every attribute is numpy's, plus the removed aliases.
"""
from __future__ import annotations

import types

import numpy as np

__all__ = ["ensure_lvis_numpy_compat", "NumpyCompatProxy"]

# Aliases removed from NumPy (1.20 deprecation, 1.24 removal) and what they meant.
_REMOVED_ALIASES = {
    "float": float,
    "int": int,
    "bool": bool,
    "object": object,
    "str": str,
    "long": int,
    "unicode": str,
    "complex": complex,
}


class NumpyCompatProxy(types.ModuleType):
    """A module object that forwards to numpy and adds the removed builtin aliases."""

    def __init__(self) -> None:
        super().__init__("numpy")
        self.__dict__["_np"] = np

    def __getattr__(self, name: str):
        try:
            return getattr(np, name)
        except AttributeError:
            if name in _REMOVED_ALIASES:
                return _REMOVED_ALIASES[name]
            raise

    def __dir__(self):
        return sorted(set(dir(np)) | set(_REMOVED_ALIASES))


def ensure_lvis_numpy_compat() -> None:
    """Make ``lvis.eval`` (lvis-api 0.5.3) run on NumPy >= 1.24. Idempotent.

    Only the ``np`` global of ``lvis.eval`` is replaced; the numpy module itself and
    every other module are left alone.
    """
    import lvis.eval as lvis_eval  # noqa: WPS433 (import here: lvis is optional for most users)

    current = getattr(lvis_eval, "np", None)
    if isinstance(current, NumpyCompatProxy):
        return
    if current is not None and all(hasattr(current, k) for k in ("float", "int", "bool")):
        return  # old NumPy: nothing to do
    lvis_eval.np = NumpyCompatProxy()
