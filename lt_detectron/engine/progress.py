"""Training progress in epochs, identical on every process (BOFL's schedule needs it).

Detectron2 trains by iterations. An epoch is ``images_per_epoch / global_batch`` iterations,
where ``images_per_epoch`` is the length of the training list the loader samples from (after
detectron2's filtering), expanded by the repeat factors when ``RepeatFactorTrainingSampler``
is used (its expected length). The trainer computes it from the dicts it loaded once::

    set_epoch_length(iters_per_epoch(cfg, train_dicts), cfg)

Losses call :func:`training_progress`, which reads the current iteration from Detectron2's
event storage (so a resumed run continues exactly) and the epoch length set last. Code that
has only the config (the heads' ``from_config`` via :func:`bofl_settings_from_cfg`, the plot
hook via :func:`epochs_total`) gets the epoch length recorded for that config's training
data; only when none was recorded are the training dicts loaded to compute it.
"""
import logging
import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Union

__all__ = [
    "set_epoch_length",
    "training_progress",
    "images_per_epoch",
    "iters_per_epoch",
    "epochs_total",
    "bofl_settings_from_cfg",
    "Progress",
]

logger = logging.getLogger(__name__)

# The epoch length the trainer set (read by ``training_progress()``, whose callers in the heads
# pass no config), and per training-data key (datasets, sampler, threshold, filtering, batch).
_STATE = {"iters_per_epoch": None, "by_key": {}}


@dataclass(frozen=True)
class Progress:
    iteration: int
    epoch: float  # fractional epochs done; floor() is the 0-based epoch index


def _epoch_key(cfg):
    d = cfg.DATALOADER
    return (
        tuple(cfg.DATASETS.TRAIN), d.SAMPLER_TRAIN, float(d.REPEAT_THRESHOLD), bool(d.FILTER_EMPTY_ANNOTATIONS),
        int(cfg.MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE) if cfg.MODEL.KEYPOINT_ON else 0,
        int(cfg.SOLVER.IMS_PER_BATCH),
    )


def set_epoch_length(iters_per_epoch: float, cfg=None):
    """Set the epoch length ``training_progress`` uses; with ``cfg``, also record it for that config."""
    if not iters_per_epoch > 0:
        raise ValueError("iterations per epoch must be > 0, got %r" % (iters_per_epoch,))
    _STATE["iters_per_epoch"] = float(iters_per_epoch)
    if cfg is not None:
        _STATE["by_key"][_epoch_key(cfg)] = float(iters_per_epoch)


def training_progress(iteration=None) -> Progress:
    """Progress at ``iteration`` (default: the event storage's current iteration, or 0)."""
    if iteration is None:
        try:
            from detectron2.utils.events import get_event_storage

            iteration = get_event_storage().iter
        except AssertionError:  # no storage: not inside a training loop
            iteration = 0
    ipe = _STATE["iters_per_epoch"]
    return Progress(int(iteration), 0.0 if ipe is None else iteration / ipe)


def images_per_epoch(cfg, dataset_dicts: Optional[Union[List[dict], Dict[str, List[dict]]]] = None) -> float:
    """Length of the training list (RFS-expanded: the sum of repeat factors when RFS is on).

    ``dataset_dicts``: the training list the loader samples from
    (:func:`lt_detectron.data.loading.train_dataset_dicts`), or the per-name dicts of
    :func:`~lt_detectron.data.loading.load_train_dicts` (then filtered the same way). Without
    them the training datasets are loaded (one ``DatasetCatalog.get`` per name).
    """
    from ..data.loading import load_train_dicts, train_dataset_dicts

    if dataset_dicts is None:
        logger.info("images_per_epoch: no dataset dicts given, loading %s", ", ".join(cfg.DATASETS.TRAIN))
        dataset_dicts = load_train_dicts(cfg)
    if isinstance(dataset_dicts, dict):
        dataset_dicts = train_dataset_dicts(cfg, dataset_dicts)
    if cfg.DATALOADER.SAMPLER_TRAIN == "RepeatFactorTrainingSampler":
        from detectron2.data.samplers import RepeatFactorTrainingSampler

        rf = RepeatFactorTrainingSampler.repeat_factors_from_category_frequency(dataset_dicts, cfg.DATALOADER.REPEAT_THRESHOLD)
        return float(rf.sum())
    return float(len(dataset_dicts))


def iters_per_epoch(cfg, dataset_dicts=None) -> float:
    """``images_per_epoch / SOLVER.IMS_PER_BATCH``; without dicts, the value recorded for this config
    by :func:`set_epoch_length` if any."""
    if dataset_dicts is None:
        known = _STATE["by_key"].get(_epoch_key(cfg))
        if known is not None:
            return known
    return images_per_epoch(cfg, dataset_dicts) / cfg.SOLVER.IMS_PER_BATCH


def epochs_total(cfg, dataset_dicts=None) -> int:
    """``MODEL.LT.BOFL.TOTAL_EPOCHS`` or, when 0, ``ceil(MAX_ITER / iterations per epoch)``."""
    if cfg.MODEL.LT.BOFL.TOTAL_EPOCHS > 0:
        return int(cfg.MODEL.LT.BOFL.TOTAL_EPOCHS)
    return max(1, int(math.ceil(cfg.SOLVER.MAX_ITER / iters_per_epoch(cfg, dataset_dicts))))


def bofl_settings_from_cfg(cfg, dataset_dicts=None) -> dict:
    """``MODEL.LT.BOFL`` as the keyword dict the BOFL losses take (ROI and dense heads alike).

    ``LINEAR_SCHEDULE False`` (the paper's "WF without LS" ablation) gives lambda = 1 from the
    first iteration: a schedule with total = deferred = 0 epochs. A linear schedule needs more
    epochs than ``DEFERRED_EPOCHS``: a clear error names the keys otherwise.
    """
    b = cfg.MODEL.LT.BOFL
    linear = b.LINEAR_SCHEDULE
    total = epochs_total(cfg, dataset_dicts) if linear else 0
    if linear and total < b.DEFERRED_EPOCHS:
        how = (
            "MODEL.LT.BOFL.TOTAL_EPOCHS = %d" % b.TOTAL_EPOCHS if b.TOTAL_EPOCHS > 0 else
            "SOLVER.MAX_ITER = %d at SOLVER.IMS_PER_BATCH = %d on %s (%.1f iterations per epoch; "
            "MODEL.LT.BOFL.TOTAL_EPOCHS = 0 means derived from them)"
            % (cfg.SOLVER.MAX_ITER, cfg.SOLVER.IMS_PER_BATCH, ", ".join(cfg.DATASETS.TRAIN), iters_per_epoch(cfg, dataset_dicts))
        )
        raise ValueError(
            "BOFL's linear schedule is %d epoch(s) long (%s), shorter than MODEL.LT.BOFL.DEFERRED_EPOCHS = %d. "
            "Lengthen the schedule (SOLVER.MAX_ITER or MODEL.LT.BOFL.TOTAL_EPOCHS), lower "
            "MODEL.LT.BOFL.DEFERRED_EPOCHS, or set MODEL.LT.BOFL.LINEAR_SCHEDULE False." % (total, how, b.DEFERRED_EPOCHS)
        )
    return dict(
        kappa=b.KAPPA,
        eta=b.ETA,
        batch_counts=b.BATCH_COUNTS,
        total_epochs=total,
        deferred_epochs=b.DEFERRED_EPOCHS if linear else 0,
        per_iteration=b.PER_ITERATION,
    )
