"""Epochs of an iteration-based run.

Detectron2 trains by iterations. An epoch is ``images_per_epoch / SOLVER.IMS_PER_BATCH``
iterations, where ``images_per_epoch`` is the length of the training list the loader samples
from (after Detectron2's filtering), expanded by the repeat factors when
``RepeatFactorTrainingSampler`` is used (its expected length).

A loss whose schedule is in epochs declares the config key it reads the epoch length from
(``epoch_length_key(cfg)`` of the loss protocol, :mod:`lt_detectron.losses.base`); the loss only
reads that number. The trainer fills the key from the training dicts it parsed once
(:func:`with_iters_per_epoch`, before the model is built, so the run's ``config.yaml`` records
it); 0 means "derive it from ``DATASETS.TRAIN``" (the training dicts are loaded then). Nothing
here keeps state: the same config gives the same answer in every process, and the losses read the
iteration from Detectron2's event storage.
"""

import logging
from typing import Dict, List, Optional, Union

__all__ = ["images_per_epoch", "iters_per_epoch", "with_iters_per_epoch"]

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
                "the epoch length needs the training data: set DATASETS.TRAIN, or %s "
                "(iterations per epoch) > 0"
                % (" / ".join(_epoch_length_keys(cfg)) or "the loss's epoch length key")
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


def _epoch_length_keys(cfg) -> List[str]:
    from ..losses.build import config_epoch_length_keys

    return config_epoch_length_keys(cfg)


def iters_per_epoch(cfg, dataset_dicts: DictsArg = None) -> float:
    """Iterations per epoch of the training data: ``images_per_epoch / SOLVER.IMS_PER_BATCH``
    (``dataset_dicts`` when given, else ``DATASETS.TRAIN`` loaded)."""
    return images_per_epoch(cfg, dataset_dicts) / cfg.SOLVER.IMS_PER_BATCH


def with_iters_per_epoch(cfg, dataset_dicts: DictsArg):
    """``cfg``, or a clone in which each epoch-length key the config's losses declare
    (``epoch_length_key``) and leave at 0 is set to :func:`iters_per_epoch` of ``dataset_dicts``
    (``None``: loaded from ``DATASETS.TRAIN``). A frozen config gives a frozen clone; a run whose
    losses need no epoch length keeps the keys unset, and so does a config without training data
    (then the loss names the key it misses)."""
    from ..config import lookup_key

    if dataset_dicts is None and not cfg.DATASETS.TRAIN:
        return cfg
    keys = [k for k in _epoch_length_keys(cfg) if not lookup_key(cfg, k) > 0]
    if not keys:
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
    for key in keys:
        cfg.merge_from_list([key, float(value)])
        logger.info("%s = %.6g (from the training data)", key, value)
    if frozen:
        cfg.freeze()
    return cfg
