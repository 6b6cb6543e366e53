"""Epochs of an iteration-based run, and BOFL's settings (its schedule is in epochs).

Detectron2 trains by iterations. An epoch is ``images_per_epoch / SOLVER.IMS_PER_BATCH``
iterations, where ``images_per_epoch`` is the length of the training list the loader samples
from (after Detectron2's filtering), expanded by the repeat factors when
``RepeatFactorTrainingSampler`` is used (its expected length).

The epoch length is a config value, ``MODEL.LT.BOFL.ITERS_PER_EPOCH``: the trainer fills it
from the training dicts it parsed once (:func:`with_iters_per_epoch`, before the model is
built, so the run's ``config.yaml`` records it); 0 means "derive it from ``DATASETS.TRAIN``"
(the training dicts are loaded then). Nothing here keeps state: the same config gives the same
answer in every process, and the losses read the iteration from Detectron2's event storage.

:func:`bofl_settings` is the one translation of ``MODEL.LT.BOFL`` into the settings of BOFL's
weights (:class:`lt_detectron.losses.bofl.BOFLWeighting`), used by the losses and the plots.
"""

import logging
import math
from typing import Dict, List, Optional, Union

__all__ = [
    "images_per_epoch",
    "iters_per_epoch",
    "with_iters_per_epoch",
    "epochs_total",
    "bofl_settings",
]

logger = logging.getLogger(__name__)

DictsArg = Optional[Union[List[dict], Dict[str, List[dict]]]]


def images_per_epoch(cfg, dataset_dicts: DictsArg = None) -> float:
    """Length of the training list (RFS-expanded: the sum of repeat factors when RFS is on).

    ``dataset_dicts``: the training list the loader samples from
    (:func:`lt_detectron.data.loading.train_dataset_dicts`), or the per-name dicts of
    :func:`~lt_detectron.data.loading.load_train_dicts` (then filtered the same way). Without
    them the training datasets are loaded (one ``DatasetCatalog.get`` per name).
    """
    from .loading import load_train_dicts, train_dataset_dicts

    if dataset_dicts is None:
        if not cfg.DATASETS.TRAIN:
            raise ValueError(
                "the epoch length needs the training data: set DATASETS.TRAIN, or MODEL.LT.BOFL.ITERS_PER_EPOCH "
                "(iterations per epoch) > 0"
            )
        logger.info(
            "images_per_epoch: no dataset dicts given, loading %s", ", ".join(cfg.DATASETS.TRAIN)
        )
        dataset_dicts = load_train_dicts(cfg, check_images=False)  # counts only, no image read
    if isinstance(dataset_dicts, dict):
        dataset_dicts = train_dataset_dicts(cfg, dataset_dicts)
    if cfg.DATALOADER.SAMPLER_TRAIN == "RepeatFactorTrainingSampler":
        from detectron2.data.samplers import RepeatFactorTrainingSampler

        rf = RepeatFactorTrainingSampler.repeat_factors_from_category_frequency(
            dataset_dicts, cfg.DATALOADER.REPEAT_THRESHOLD
        )
        return float(rf.sum())
    return float(len(dataset_dicts))


def iters_per_epoch(cfg, dataset_dicts: DictsArg = None) -> float:
    """Iterations per epoch: computed from ``dataset_dicts`` when given; else
    ``MODEL.LT.BOFL.ITERS_PER_EPOCH`` when > 0; else derived from ``DATASETS.TRAIN`` (loaded)."""
    if dataset_dicts is None and cfg.MODEL.LT.BOFL.ITERS_PER_EPOCH > 0:
        return float(cfg.MODEL.LT.BOFL.ITERS_PER_EPOCH)
    return images_per_epoch(cfg, dataset_dicts) / cfg.SOLVER.IMS_PER_BATCH


def with_iters_per_epoch(cfg, dataset_dicts: DictsArg):
    """``cfg``, or a clone with ``MODEL.LT.BOFL.ITERS_PER_EPOCH`` computed from ``dataset_dicts`` when it
    is 0 and the config's loss follows BOFL's linear schedule in epochs (a frozen config gives a
    frozen clone); other runs (no BOFL, or ``LINEAR_SCHEDULE False``) do not read the key and keep
    it unset."""
    from ..losses.base import config_uses_epoch_schedule

    needed = config_uses_epoch_schedule(cfg) and cfg.MODEL.LT.BOFL.LINEAR_SCHEDULE
    if cfg.MODEL.LT.BOFL.ITERS_PER_EPOCH > 0 or not needed:
        return cfg
    value = iters_per_epoch(cfg, dataset_dicts)
    if not value > 0:
        raise ValueError(
            "the training data of %s gives %r iterations per epoch"
            % (", ".join(cfg.DATASETS.TRAIN), value)
        )
    frozen = cfg.is_frozen()
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.LT.BOFL.ITERS_PER_EPOCH = float(value)
    if frozen:
        cfg.freeze()
    logger.info("MODEL.LT.BOFL.ITERS_PER_EPOCH = %.6g (from the training data)", value)
    return cfg


def epochs_total(cfg, dataset_dicts: DictsArg = None) -> int:
    """``MODEL.LT.BOFL.TOTAL_EPOCHS`` or, when 0, ``ceil(SOLVER.MAX_ITER / iterations per epoch)``."""
    if cfg.MODEL.LT.BOFL.TOTAL_EPOCHS > 0:
        return int(cfg.MODEL.LT.BOFL.TOTAL_EPOCHS)
    return max(1, int(math.ceil(cfg.SOLVER.MAX_ITER / iters_per_epoch(cfg, dataset_dicts))))


def bofl_settings(cfg, dataset_dicts: DictsArg = None) -> dict:
    """``MODEL.LT.BOFL`` as the settings of BOFL's weights (ROI and dense heads, and the plots).

    Returns ``dict(kappa, eta, batch_counts, total_epochs, deferred_epochs, per_iteration,
    iters_per_epoch)``. ``LINEAR_SCHEDULE False`` (the paper's "WF without LS" ablation) gives
    lambda = 1 from the first iteration: a schedule with total = deferred = 0 epochs, which needs
    no epoch length (``iters_per_epoch`` None). A linear schedule needs more epochs than
    ``DEFERRED_EPOCHS``: a clear error names the keys otherwise.
    """
    b = cfg.MODEL.LT.BOFL
    mode = str(b.BATCH_COUNTS).lower()
    if mode not in ("image", "batch", "none"):
        raise ValueError(
            "MODEL.LT.BOFL.BATCH_COUNTS must be image, batch or none, got %r" % (b.BATCH_COUNTS,)
        )
    linear = bool(b.LINEAR_SCHEDULE)
    total = epochs_total(cfg, dataset_dicts) if linear else 0
    if linear and total < b.DEFERRED_EPOCHS:
        how = (
            "MODEL.LT.BOFL.TOTAL_EPOCHS = %d" % b.TOTAL_EPOCHS
            if b.TOTAL_EPOCHS > 0
            else "SOLVER.MAX_ITER = %d at SOLVER.IMS_PER_BATCH = %d on %s (%.1f iterations per epoch; "
            "MODEL.LT.BOFL.TOTAL_EPOCHS = 0 means derived from them)"
            % (
                cfg.SOLVER.MAX_ITER,
                cfg.SOLVER.IMS_PER_BATCH,
                ", ".join(cfg.DATASETS.TRAIN),
                iters_per_epoch(cfg, dataset_dicts),
            )
        )
        raise ValueError(
            "BOFL's linear schedule is %d epoch(s) long (%s), shorter than MODEL.LT.BOFL.DEFERRED_EPOCHS = %d. "
            "Lengthen the schedule (SOLVER.MAX_ITER or MODEL.LT.BOFL.TOTAL_EPOCHS), lower "
            "MODEL.LT.BOFL.DEFERRED_EPOCHS, or set MODEL.LT.BOFL.LINEAR_SCHEDULE False."
            % (total, how, b.DEFERRED_EPOCHS)
        )
    return dict(
        kappa=float(b.KAPPA),
        eta=None if mode == "none" else float(b.ETA),
        batch_counts=mode,
        total_epochs=total,
        deferred_epochs=b.DEFERRED_EPOCHS if linear else 0,
        per_iteration=bool(b.PER_ITERATION),
        iters_per_epoch=iters_per_epoch(cfg, dataset_dicts) if linear else None,
    )
