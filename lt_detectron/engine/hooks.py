"""Training hooks that write the methods' explanatory plots (``LT_HOOKS.PLOT_PERIOD``).

:class:`LTPlotHook` writes, every ``period`` iterations and once after training, into
``<output_dir>/plots/`` on the main process only:

* ``weight_norms_<head>_<when>.png`` for every Fast R-CNN box predictor (one per cascade
  stage; BAGS' grouped classifier is read through its layout);
* ``eqlv2_ratios_<head>_<when>.png`` for every module holding EQL v2 statistics
  (``pos_grad``/``neg_grad`` buffers: the ROI ``EQLv2Loss`` of each stage and the dense
  ``EQLv2FocalLoss``); written over training they give EQL v2 Fig. 2;
* ``bofl_schedule.png`` once, before training, when BOFL is on (ROI or dense).

``<when>`` is ``iter0005000`` (1-based iteration count) or ``final``. The same plots for a
saved checkpoint: ``tools/plot_methods.py``. A plotting error is logged, never raised: plots
must not stop a training run.
"""
import logging
import os
import re
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn as nn
from detectron2.engine import HookBase
from detectron2.modeling.roi_heads.fast_rcnn import FastRCNNOutputLayers
from detectron2.utils import comm

from . import plots

__all__ = ["LTPlotHook", "build_lt_hooks", "plot_sources", "write_model_plots", "write_bofl_schedule", "bofl_settings"]

logger = logging.getLogger(__name__)


def _unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel (or similar) wrapper."""
    return model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model


def _head_tag(name: str) -> str:
    """Module name -> short file tag: ``roi_heads.box_predictor`` -> ``box_predictor``,
    ``roi_heads.box_predictor.2`` -> ``box_predictor_stage2``, others: dots -> underscores."""
    m = re.fullmatch(r"(?:.*\.)?box_predictors?\.(\d+)", name)
    if m:
        return "box_predictor_stage%s" % m.group(1)
    if re.fullmatch(r"(?:.*\.)?box_predictors?", name):
        return "box_predictor"
    return re.sub(r"[^A-Za-z0-9_]+", "_", name).strip("_") or "model"


def plot_sources(model: nn.Module) -> Dict[str, List]:
    """What can be plotted in ``model``: ``{"weight_norms": [(tag, weight, class_rows)],
    "eqlv2": [(tag, stats_module)]}`` (DDP wrappers are unwrapped; cascade stages each count)."""
    model = _unwrap(model)
    out = {"weight_norms": [], "eqlv2": []}
    predictor_names = []
    for name, m in model.named_modules():
        if isinstance(m, FastRCNNOutputLayers):
            predictor_names.append(name)
            weight = getattr(m.cls_score, "weight", None)
            if weight is None:
                continue
            rows = None
            layout = getattr(getattr(m, "cls_loss", None), "layout", None)  # BAGS: grouped logits
            if layout is not None and hasattr(layout, "column_of_label"):
                rows = layout.column_of_label[: m.num_classes]
            out["weight_norms"].append((_head_tag(name), weight, rows))
        elif all(isinstance(getattr(m, b, None), torch.Tensor) for b in ("pos_grad", "neg_grad")):
            owner = max((p for p in predictor_names if name.startswith(p + ".")), key=len, default=None)
            out["eqlv2"].append((_head_tag(owner if owner is not None else name), m))
    return out


def write_model_plots(model: nn.Module, out_dir: str, instance_counts, class_names: Optional[Sequence[str]] = None,
                      suffix: str = "", title_suffix: str = "") -> List[str]:
    """Write every applicable plot of ``model`` into ``out_dir``; returns the paths written."""
    src = plot_sources(model)
    paths = []
    sfx = ("_" + suffix) if suffix else ""
    for tag, weight, rows in src["weight_norms"]:
        paths.append(plots.plot_weight_norms(
            weight, instance_counts, class_names, os.path.join(out_dir, "weight_norms_%s%s.png" % (tag, sfx)),
            class_rows=rows, title="Classifier weight norm per class, %s%s" % (tag, title_suffix)))
    for tag, m in src["eqlv2"]:
        paths.append(plots.plot_eqlv2_ratios(
            m.pos_grad, m.neg_grad, instance_counts, os.path.join(out_dir, "eqlv2_ratios_%s%s.png" % (tag, sfx)),
            class_names=class_names, gamma=getattr(m, "gamma", 12.0), mu=getattr(m, "mu", 0.8),
            alpha=getattr(m, "alpha", 4.0), title="EQL v2 gradient ratio per class, %s%s" % (tag, title_suffix)))
    return paths


def bofl_settings(cfg) -> Optional[Dict]:
    """``dict(total_epochs, deferred_epochs, kappa, per_iteration)`` when the config uses BOFL, else None."""
    lt = cfg.MODEL.LT
    if not (lt.BOFL.ENABLED or str(lt.get("DENSE_LOSS", "")).lower() == "bofl"):
        return None
    from .progress import epochs_total

    return dict(total_epochs=epochs_total(cfg), deferred_epochs=lt.BOFL.DEFERRED_EPOCHS, kappa=lt.BOFL.KAPPA,
                per_iteration=lt.BOFL.PER_ITERATION)


def write_bofl_schedule(out_dir: str, instance_counts, bofl: Dict, class_names=None) -> str:
    return plots.plot_bofl_schedule(
        instance_counts, bofl["total_epochs"], bofl["deferred_epochs"], bofl["kappa"],
        os.path.join(out_dir, "bofl_schedule.png"), class_names=class_names,
        per_iteration=bofl.get("per_iteration", False))


class LTPlotHook(HookBase):
    """Write the method plots every ``period`` iterations and after training (main process only).

    Args:
        period: iterations between writes (> 0).
        output_dir: the run's output folder; plots go to ``output_dir/plots``.
        class_stats: a :class:`~lt_detectron.class_stats.ClassStats`; default: the trainer's
            ``class_stats`` or ``get_class_stats(trainer.cfg.DATASETS.TRAIN)``.
        bofl: :func:`bofl_settings` of the config, to write the BOFL schedule once.
    """

    def __init__(self, period: int, output_dir: str, class_stats=None, bofl: Optional[Dict] = None):
        if int(period) <= 0:
            raise ValueError("LTPlotHook period must be > 0, got %r" % (period,))
        self._period = int(period)
        self.plot_dir = os.path.join(output_dir, "plots")
        self._stats = class_stats
        self._bofl = bofl

    def _class_stats(self):
        if self._stats is None:
            self._stats = getattr(self.trainer, "class_stats", None)
        if self._stats is None:
            from ..class_stats import get_class_stats

            self._stats = get_class_stats(self.trainer.cfg.DATASETS.TRAIN)
        return self._stats

    def _write(self, when: str):
        if not comm.is_main_process():
            return []
        try:
            stats = self._class_stats()
            title = " (after training)" if when == "final" else " (iteration %d)" % int(when[4:])
            return write_model_plots(self.trainer.model, self.plot_dir, stats.instance_counts, stats.class_names,
                                     suffix=when, title_suffix=title)
        except Exception:  # plots never stop a training run
            logger.warning("LTPlotHook: writing the %s plots failed", when, exc_info=True)
            return []

    def before_train(self):
        if self._bofl is None or not comm.is_main_process():
            return
        try:
            stats = self._class_stats()
            write_bofl_schedule(self.plot_dir, stats.instance_counts, self._bofl, stats.class_names)
        except Exception:
            logger.warning("LTPlotHook: writing the BOFL schedule failed", exc_info=True)

    def after_step(self):
        done = self.trainer.iter + 1
        if done % self._period == 0 and done < self.trainer.max_iter:  # the last one is after_train's
            self._write("iter%07d" % done)

    def after_train(self):
        self._write("final")


def build_lt_hooks(cfg, trainer=None) -> list:
    """lt_detectron's optional training hooks for ``cfg`` (to append in ``build_hooks``)."""
    hooks = []
    if cfg.LT_HOOKS.PLOT_PERIOD > 0:
        stats = getattr(trainer, "class_stats", None) if trainer is not None else None
        bofl = bofl_settings(cfg) if cfg.DATASETS.TRAIN else None
        hooks.append(LTPlotHook(cfg.LT_HOOKS.PLOT_PERIOD, cfg.OUTPUT_DIR, class_stats=stats, bofl=bofl))
    return hooks
