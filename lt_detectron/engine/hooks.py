"""Training hooks that write the methods' explanatory plots and the result plots (``LT_HOOKS.PLOT_PERIOD``).

:class:`LTPlotHook` writes, on the main process only, into ``<output_dir>/plots/``:

* every ``period`` iterations and once after training (``<when>``: ``iter0005000``, the 1-based
  iteration count, or ``final``):

  - ``weight_norms_<head>_<when>.png`` for every Fast R-CNN box predictor (one per cascade
    stage; BAGS' grouped classifier is read through its layout);
  - ``<name>_<head>_<when>.png`` for every loss that keeps per-class statistics and says what to
    draw with ``plot_data()`` (the loss protocol): ``eqlv2_ratios_*`` (the ROI ``EQLv2Loss`` of each
    stage, the dense ``EQLv2FocalLoss``; written over training they give EQL v2 Fig. 2) and
    ``efl_ratios_*`` (EFL);

* ``bofl_schedule.png`` once, before training, when BOFL is on (ROI or dense);
* after each evaluation (``TEST.EVAL_PERIOD`` and the final one), for every per-category csv the
  evaluator wrote (``<output_dir>/inference/<dataset>/<protocol>_per_category_<task>.csv``):
  ``ap_vs_instances_<protocol>_<task>_<dataset>_<when>.png`` and
  ``ap_per_category_<protocol>_<task>_<dataset>_<when>.png``
  (:mod:`~lt_detectron.visualization.result_plots`).

Each PNG is also put into the trainer's event storage (``EventStorage.put_image``), so detectron2's
``TensorboardXWriter`` shows it in TensorBoard (``tensorboard --logdir OUTPUT_DIR``, tab IMAGES,
tag ``lt_plots/<name without _<when>>``, one step per write). :func:`insert_before_writers` puts the
hook before detectron2's ``PeriodicWriter`` so that the images of the last step and of the final
evaluation are written too (``LTTrainer.build_hooks``). The same method plots for a saved
checkpoint: ``tools/plot_methods.py``. A plotting error is logged, never raised: plots must not stop
a training run.
"""

import glob
import logging
import os
import re
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
from detectron2.engine import HookBase
from detectron2.engine.hooks import PeriodicWriter
from detectron2.modeling.roi_heads.fast_rcnn import FastRCNNOutputLayers
from detectron2.utils import comm

from ..class_stats import DEFAULT_GROUP_EDGES
from ..visualization import plots

__all__ = [
    "LTPlotHook",
    "build_lt_hooks",
    "insert_before_writers",
    "plot_sources",
    "png_to_chw",
    "write_model_plots",
    "write_bofl_schedule",
    "bofl_settings",
]

logger = logging.getLogger(__name__)


def _unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel (or similar) wrapper."""
    return (
        model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model
    )


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
    "statistics": [(tag, loss)]}``: every Fast R-CNN box predictor, and every module with a
    ``plot_data()`` method (the losses that keep per-class statistics: EQL v2, EFL; the loss says
    what it is and what to draw). DDP wrappers are unwrapped; cascade stages each count."""
    model = _unwrap(model)
    out = {"weight_norms": [], "statistics": []}
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
        elif callable(getattr(m, "plot_data", None)):
            owner = max(
                (p for p in predictor_names if name.startswith(p + ".")), key=len, default=None
            )
            out["statistics"].append((_head_tag(owner if owner is not None else name), m))
    return out


def write_model_plots(
    model: nn.Module,
    out_dir: str,
    instance_counts,
    class_names: Optional[Sequence[str]] = None,
    suffix: str = "",
    title_suffix: str = "",
) -> List[str]:
    """Write every applicable plot of ``model`` into ``out_dir``; returns the paths written."""
    src = plot_sources(model)
    paths = []
    sfx = ("_" + suffix) if suffix else ""
    for tag, weight, rows in src["weight_norms"]:
        paths.append(
            plots.plot_weight_norms(
                weight,
                instance_counts,
                class_names,
                os.path.join(out_dir, "weight_norms_%s%s.png" % (tag, sfx)),
                class_rows=rows,
                title="Classifier weight norm per class, %s%s" % (tag, title_suffix),
            )
        )
    for tag, m in src["statistics"]:
        data = m.plot_data()
        paths.append(
            plots.plot_class_statistics(
                data,
                instance_counts,
                os.path.join(out_dir, "%s_%s%s.png" % (data["name"], tag, sfx)),
                class_names=class_names,
                title="%s, %s%s" % (data["title"], tag, title_suffix),
            )
        )
    return paths


def insert_before_writers(hooks: Sequence, extra: Sequence) -> list:
    """``hooks`` with ``extra`` placed before detectron2's ``PeriodicWriter`` (appended when there is
    none), so that what they put into the event storage after a step, after the last evaluation or
    after training (the plot images) is written by it, to TensorBoard too."""
    hooks = list(hooks)
    idx = next((i for i, h in enumerate(hooks) if isinstance(h, PeriodicWriter)), len(hooks))
    return hooks[:idx] + list(extra) + hooks[idx:]


def png_to_chw(path: str) -> torch.Tensor:
    """A PNG as the (3, H, W) float tensor in [0, 1] that ``EventStorage.put_image`` takes."""
    from PIL import Image

    with Image.open(path) as im:
        a = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(a.transpose(2, 0, 1).copy())


def bofl_settings(cfg) -> Optional[Dict]:
    """BOFL's settings (:func:`lt_detectron.losses.bofl.bofl_settings`: ``total_epochs``,
    ``deferred_epochs``, ``kappa``, ``per_iteration``, ...) when the config's ROI or dense loss follows
    BOFL's schedule, else None. The epoch length is filled from the training data when the config
    leaves it at 0 (:func:`lt_detectron.data.epochs.with_iters_per_epoch`)."""
    from ..data.epochs import with_iters_per_epoch
    from ..losses.bofl import bofl_settings as settings
    from ..losses.bofl import config_uses_bofl

    return settings(with_iters_per_epoch(cfg, None)) if config_uses_bofl(cfg) else None


def write_bofl_schedule(out_dir: str, instance_counts, bofl: Dict, class_names=None) -> str:
    return plots.plot_bofl_schedule(
        instance_counts,
        bofl["total_epochs"],
        bofl["deferred_epochs"],
        bofl["kappa"],
        os.path.join(out_dir, "bofl_schedule.png"),
        class_names=class_names,
        per_iteration=bofl.get("per_iteration", False),
    )


class LTPlotHook(HookBase):
    """Write the method plots every ``period`` iterations and after training, and the result plots
    after each evaluation (main process only); each PNG also goes into the event storage
    (``put_image``: TensorBoard, tag ``lt_plots/<name>``, the step of the write).

    Args:
        period: iterations between writes of the method plots (> 0).
        output_dir: the run's output folder; plots go to ``output_dir/plots``; the evaluators'
            per-category csvs are looked for in ``output_dir/inference/*/``.
        class_stats: a :class:`~lt_detectron.class_stats.ClassStats`; default: the trainer's
            ``class_stats`` or ``get_train_class_stats(trainer.cfg)``.
        bofl: :func:`bofl_settings` of the config, to write the BOFL schedule once.
        label: the run's name in the result plots (default: the output folder's name).
        group_edges: the instance-count groups shaded in the AP-vs-instances plot.
    """

    def __init__(
        self,
        period: int,
        output_dir: str,
        class_stats=None,
        bofl: Optional[Dict] = None,
        label: Optional[str] = None,
        group_edges: Sequence[float] = DEFAULT_GROUP_EDGES,
    ):
        if int(period) <= 0:
            raise ValueError("LTPlotHook period must be > 0, got %r" % (period,))
        self._period = int(period)
        self.plot_dir = os.path.join(output_dir, "plots")
        self._csv_glob = os.path.join(output_dir, "inference", "*", "*_per_category_*.csv")
        self._stats = class_stats
        self._bofl = bofl
        self._label = label if label is not None else os.path.basename(os.path.normpath(output_dir))
        self._group_edges = tuple(group_edges)
        self._csv_seen = {}  # csv path -> mtime already plotted (or there before training)

    def _class_stats(self):
        if self._stats is None:
            self._stats = getattr(self.trainer, "class_stats", None)
        if self._stats is None:
            from ..class_stats import get_train_class_stats

            self._stats = get_train_class_stats(self.trainer.cfg)
        return self._stats

    def _put_images(self, paths: Sequence[str], suffix: str = ""):
        """Each PNG into the trainer's event storage, tagged by its name without ``_<suffix>``."""
        storage = getattr(self.trainer, "storage", None)
        if storage is None:
            return
        for p in paths:
            name = os.path.splitext(os.path.basename(p))[0]
            if suffix and name.endswith("_" + suffix):
                name = name[: -len(suffix) - 1]
            storage.put_image("lt_plots/" + name, png_to_chw(p))

    def _new_csvs(self) -> List[str]:
        out = []
        for p in sorted(glob.glob(self._csv_glob)):
            mtime = os.path.getmtime(p)
            if self._csv_seen.get(p) != mtime:
                self._csv_seen[p] = mtime
                out.append(p)
        return out

    def _write(self, when: str) -> List[str]:
        if not comm.is_main_process():
            return []
        paths = []
        try:
            stats = self._class_stats()
            title = " (after training)" if when == "final" else " (iteration %d)" % int(when[4:])
            paths = write_model_plots(
                self.trainer.model,
                self.plot_dir,
                stats.instance_counts,
                stats.class_names,
                suffix=when,
                title_suffix=title,
            )
            self._put_images(paths, when)
        except Exception:  # plots never stop a training run
            logger.warning("LTPlotHook: writing the %s plots failed", when, exc_info=True)
        return paths

    def _write_results(self, when: str) -> List[str]:
        """The result plots of every per-category csv written since the last look (an evaluation)."""
        if not comm.is_main_process():
            return []
        from ..visualization.result_plots import write_result_plots

        paths = []
        for csv_path in self._new_csvs():
            sfx = "%s_%s" % (os.path.basename(os.path.dirname(csv_path)), when)
            try:
                new = write_result_plots(
                    csv_path, self.plot_dir, self._label, sfx, self._group_edges
                )
                self._put_images(new, when)
                paths += new
            except Exception:
                logger.warning("LTPlotHook: plotting %s failed", csv_path, exc_info=True)
        if paths:
            logger.info("LTPlotHook: result plots written: %s", ", ".join(paths))
        return paths

    def before_train(self):
        if not comm.is_main_process():
            return
        self._new_csvs()  # csvs of earlier runs in this folder are not this run's results
        if self._bofl is None:
            return
        try:
            stats = self._class_stats()
            self._put_images(
                [
                    write_bofl_schedule(
                        self.plot_dir, stats.instance_counts, self._bofl, stats.class_names
                    )
                ]
            )
        except Exception:
            logger.warning("LTPlotHook: writing the BOFL schedule failed", exc_info=True)

    def after_step(self):
        done = self.trainer.iter + 1
        if (
            done % self._period == 0 and done < self.trainer.max_iter
        ):  # the last one is after_train's
            self._write("iter%07d" % done)
        self._write_results(
            "iter%07d" % done
        )  # after an evaluation of TEST.EVAL_PERIOD (EvalHook runs first)

    def after_train(self):
        paths = self._write("final") + self._write_results("final")
        if paths:
            logger.info("LTPlotHook: plots written to %s", self.plot_dir)


def build_lt_hooks(cfg, trainer=None) -> list:
    """lt_detectron's optional training hooks for ``cfg`` (to append in ``build_hooks``)."""
    hooks = []
    if cfg.LT_HOOKS.PLOT_PERIOD > 0:
        stats = getattr(trainer, "class_stats", None) if trainer is not None else None
        bofl = bofl_settings(cfg) if cfg.DATASETS.TRAIN else None
        hooks.append(
            LTPlotHook(
                cfg.LT_HOOKS.PLOT_PERIOD,
                cfg.OUTPUT_DIR,
                class_stats=stats,
                bofl=bofl,
                group_edges=cfg.MODEL.LT.GROUP_EDGES,
            )
        )
    return hooks
