"""Compatibility with third-party code: Detectron2's private helpers, and lvis-api on NumPy 2.

**Detectron2 private names.** lt_detectron imports Detectron2's private (``_``-prefixed) helpers
here and nowhere else, so a Detectron2 upgrade that moves one breaks in one place. Each is the
helper Detectron2's own class uses, reused so that our subclass behaves exactly as the parent:

=============================  =======================================  ==============================
name                           from                                     why
=============================  =======================================  ==============================
``log_classification_stats``   ``modeling.roi_heads.fast_rcnn``         ``fast_rcnn/cls_accuracy`` etc.
                               ``._log_classification_stats``           logged as FastRCNNOutputLayers
``dense_box_regression_loss``  ``modeling.box_regression``              RetinaNet's box loss, unchanged
                               ``._dense_box_regression_loss``          (LongTailRetinaNet.losses)
``find_free_port``             ``engine.launch._find_free_port``        the gloo CPU launcher's port
=============================  =======================================  ==============================

**lvis-api.** ``lvis==0.5.3`` (the only release of lvis-api) calls ``np.float`` in
``LVISEval.accumulate``; the alias was removed in NumPy 1.24. Instead of patching
site-packages or setting ``np.float`` globally (which would hide the same bug in
other code), :func:`ensure_lvis_numpy_compat` gives the ``lvis.eval`` module its
own numpy proxy: every attribute is numpy's, plus the removed aliases.
"""

from __future__ import annotations

import types

import numpy as np
from detectron2.engine.launch import _find_free_port as find_free_port
from detectron2.modeling.box_regression import (
    _dense_box_regression_loss as dense_box_regression_loss,
)
from detectron2.modeling.roi_heads.fast_rcnn import (
    _log_classification_stats as log_classification_stats,
)

__all__ = [
    "ensure_lvis_numpy_compat",
    "NumpyCompatProxy",
    "log_classification_stats",
    "dense_box_regression_loss",
    "find_free_port",
]

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
