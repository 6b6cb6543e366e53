"""Training progress in epochs, identical on every process (BOFL's schedule needs it).

Detectron2 trains by iterations. An epoch is ``images_per_epoch / global_batch`` iterations,
where ``images_per_epoch`` is the training-set length, expanded by the repeat factors when
``RepeatFactorTrainingSampler`` is used (its expected length). The trainer calls
:func:`set_epoch_length` once; losses call :func:`training_progress`, which reads the current
iteration from Detectron2's event storage (so a resumed run continues exactly).
"""
import math
from dataclasses import dataclass

__all__ = ["set_epoch_length", "training_progress", "images_per_epoch", "epochs_total", "bofl_settings_from_cfg", "Progress"]

_STATE = {"iters_per_epoch": None}


@dataclass(frozen=True)
class Progress:
    iteration: int
    epoch: float  # fractional epochs done; floor() is the 0-based epoch index


def set_epoch_length(iters_per_epoch: float):
    if not iters_per_epoch > 0:
        raise ValueError("iterations per epoch must be > 0, got %r" % (iters_per_epoch,))
    _STATE["iters_per_epoch"] = float(iters_per_epoch)


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


def images_per_epoch(cfg) -> float:
    """Training-set length (RFS-expanded: the sum of repeat factors when RFS is on)."""
    from ..class_stats import get_class_stats

    if cfg.DATALOADER.SAMPLER_TRAIN == "RepeatFactorTrainingSampler":
        from detectron2.data import DatasetCatalog
        from detectron2.data.samplers import RepeatFactorTrainingSampler

        dicts = [d for n in cfg.DATASETS.TRAIN for d in DatasetCatalog.get(n)]
        rf = RepeatFactorTrainingSampler.repeat_factors_from_category_frequency(dicts, cfg.DATALOADER.REPEAT_THRESHOLD)
        return float(rf.sum())
    return float(get_class_stats(cfg.DATASETS.TRAIN).num_images)


def iters_per_epoch(cfg) -> float:
    return images_per_epoch(cfg) / cfg.SOLVER.IMS_PER_BATCH


def epochs_total(cfg) -> int:
    """``MODEL.LT.BOFL.TOTAL_EPOCHS`` or, when 0, ``ceil(MAX_ITER / iterations per epoch)``."""
    if cfg.MODEL.LT.BOFL.TOTAL_EPOCHS > 0:
        return int(cfg.MODEL.LT.BOFL.TOTAL_EPOCHS)
    return max(1, int(math.ceil(cfg.SOLVER.MAX_ITER / iters_per_epoch(cfg))))


def bofl_settings_from_cfg(cfg) -> dict:
    """``MODEL.LT.BOFL`` as the keyword dict the BOFL losses take (ROI and dense heads alike).

    ``LINEAR_SCHEDULE False`` (the paper's "WF without LS" ablation) gives lambda = 1 from the
    first iteration: a schedule with total = deferred = 0 epochs.
    """
    b = cfg.MODEL.LT.BOFL
    linear = b.LINEAR_SCHEDULE
    return dict(
        kappa=b.KAPPA,
        eta=b.ETA,
        batch_counts=b.BATCH_COUNTS,
        total_epochs=epochs_total(cfg) if linear else 0,
        deferred_epochs=b.DEFERRED_EPOCHS if linear else 0,
        per_iteration=b.PER_ITERATION,
    )
