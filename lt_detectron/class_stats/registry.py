"""The per-process registry: ``get_class_stats(dataset_names)`` builds a :class:`ClassStats` once
per tuple of training datasets, logs its summary, checks it is equal on every rank, and caches it."""

import logging
import os
import time
from typing import Dict, Optional, Sequence, Tuple, Union

from .counting import stats_for_dataset
from .groups import DEFAULT_GROUP_EDGES, check_group_edges, lvis_frequency
from .stats import ClassStats, ClassStatsError
from .stats_file import read_class_stats_file

__all__ = [
    "build_class_stats",
    "get_class_stats",
    "get_train_class_stats",
    "clear_class_stats_cache",
    "check_num_classes",
]

logger = logging.getLogger("lt_detectron.class_stats")


def build_class_stats(dataset_names: Union[str, Sequence[str]], dataset_dicts=None) -> ClassStats:
    """Build (uncached) the statistics of one or several training datasets with the same classes.

    ``dataset_dicts``: the already-loaded dicts, ``{name: list of dicts}`` or a callable
    ``name -> dicts`` (e.g. from :func:`lt_detectron.data.loading.load_train_dicts`); then no
    json is parsed here. Without them a dataset's counts come from its attached table, the
    on-disk cache, or one ``DatasetCatalog.get``.
    """
    names = (dataset_names,) if isinstance(dataset_names, str) else tuple(dataset_names)
    if not names:
        raise ClassStatsError("no training dataset given (cfg.DATASETS.TRAIN is empty)")
    parts = [stats_for_dataset(n, dataset_dicts) for n in names]
    classes, ids = parts[0][0], parts[0][1]
    for n, p in zip(names[1:], parts[1:]):
        if p[0] != classes:
            raise ClassStatsError(
                "training datasets %r and %r have different class lists (%d vs %d classes); "
                "datasets trained together must share metadata.thing_classes"
                % (names[0], n, len(classes), len(p[0]))
            )
    inst = sum(p[2] for p in parts)
    img = sum(p[3] for p in parts)
    n_img = sum(p[4] for p in parts)
    freq = parts[0][5] if len(parts) == 1 else lvis_frequency(img)
    source = "+".join(sorted(set(p[6] for p in parts)))
    return ClassStats(names, classes, ids, inst, img, n_img, freq, source)


_CACHE: Dict[Tuple[str, ...], ClassStats] = {}

_SOURCE_TEXT = {
    "metadata": "metadata.class_stats (the shipped LVIS table, or counts given at registration): equal "
    "to the counts of the annotations, or as given for a dataset without json_file",
    "table": "metadata.class_stats (the shipped LVIS table, or counts given at registration) as is, NOT "
    "checked: the annotation json is absent",
    "json": "counted from the annotations; equal to the image_count/instance_count of the json's categories",
    "counted": "counted from the annotations",
    "cache": "counts of the annotations from the on-disk cache, keyed by the json's size and mtime",
    "file": "MODEL.LT.CLASS_STATS_FILE: the statistics a training run recorded",
}


def _why_data_missing(name: str) -> Optional[str]:
    """Why the training data of ``name`` cannot give statistics in this process, or None when it can
    (registered, and its json exists or its metadata carries a count table)."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    if name not in DatasetCatalog.list():
        return "%s is not registered in this process" % name
    md = MetadataCatalog.get(name).as_dict()
    json_file = md.get("json_file")
    if json_file and not os.path.isfile(json_file) and md.get("class_stats") is None:
        return "the json of %s, %s, does not exist" % (name, os.path.abspath(json_file))
    return None


def _stats_from_file(names: Tuple[str, ...], stats_file: str, why: str) -> ClassStats:
    if not stats_file:
        raise ClassStatsError(
            "no class statistics for DATASETS.TRAIN %s: %s, and MODEL.LT.CLASS_STATS_FILE is empty. "
            "Register the training data (e.g. --register-dataset NAME JSON IMAGE_ROOT, or "
            "lt_detectron.data.register_lt_dataset), or set MODEL.LT.CLASS_STATS_FILE to the run's "
            "OUTPUT_DIR/class_stats.json (or to a checkpoint the run wrote, e.g. model_final.pth); "
            "the config.yaml a training run writes sets it." % (list(names), why)
        )
    if not os.path.isfile(os.path.expanduser(stats_file)):
        raise ClassStatsError(
            "no class statistics for DATASETS.TRAIN %s: %s, and MODEL.LT.CLASS_STATS_FILE %s does not "
            "exist. Register the training data (e.g. --register-dataset NAME JSON IMAGE_ROOT), or "
            "set MODEL.LT.CLASS_STATS_FILE to the run's class_stats.json (in its OUTPUT_DIR) or to a "
            "checkpoint the run wrote (model_final.pth)."
            % (list(names), why, os.path.abspath(os.path.expanduser(stats_file)))
        )
    stats = read_class_stats_file(stats_file)
    if tuple(stats.dataset_names) != tuple(names):
        raise ClassStatsError(
            "MODEL.LT.CLASS_STATS_FILE %s holds the statistics of %s, but DATASETS.TRAIN is %s: give "
            "the file of the run trained on DATASETS.TRAIN, or set DATASETS.TRAIN to %s"
            % (stats_file, list(stats.dataset_names), list(names), list(stats.dataset_names))
        )
    return stats


def _verify_across_ranks(stats: ClassStats):
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover
        return
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    fps = [None] * dist.get_world_size()
    dist.all_gather_object(fps, stats.fingerprint())
    if len(set(fps)) != 1:
        raise ClassStatsError(
            "class statistics differ across processes (fingerprints %s): every rank must read the "
            "same annotation files" % fps
        )


def get_class_stats(
    dataset_names: Union[str, Sequence[str]],
    verify_distributed: bool = True,
    dataset_dicts=None,
    group_edges: Optional[Sequence[float]] = None,
    stats_file: str = "",
) -> ClassStats:
    """The cached :class:`ClassStats` of these training datasets (built and logged on first use).

    ``stats_file`` (``MODEL.LT.CLASS_STATS_FILE``): a run's ``class_stats.json`` or checkpoint, read
    only when a dataset is not registered in this process or its json is missing (inference on a
    machine without the training data); the data, when present, is always the source.

    ``dataset_dicts``: see :func:`build_class_stats` (the trainer passes the dicts it loaded once).
    ``group_edges``: the instance-count groups of the logged table (the trainer passes
    ``MODEL.LT.GROUP_EDGES``, checked here on every call, so a bad value fails at startup; default
    10/100/1000). Only the log depends on it.
    """
    edges = (
        DEFAULT_GROUP_EDGES
        if group_edges is None
        else check_group_edges(group_edges, "group_edges (MODEL.LT.GROUP_EDGES)")
    )
    key = (dataset_names,) if isinstance(dataset_names, str) else tuple(dataset_names)
    if key not in _CACHE:
        t0 = time.perf_counter()
        why = "; ".join(filter(None, (_why_data_missing(n) for n in key))) if key else ""
        if why and dataset_dicts is None:
            stats = _stats_from_file(key, stats_file, why)
        else:
            stats = build_class_stats(key, dataset_dicts)
        dt = time.perf_counter() - t0
        table = stats.summary(edges)
        if verify_distributed:
            _verify_across_ranks(stats)
        logger.info(
            "class statistics of %s built in %.3fs, source: %s (%s):\n%s",
            ", ".join(key),
            dt,
            stats.source,
            _SOURCE_TEXT.get(stats.source, "several sources"),
            table,
        )
        _CACHE[key] = stats
    return _CACHE[key]


def get_train_class_stats(cfg) -> Optional[ClassStats]:
    """The statistics of ``cfg.DATASETS.TRAIN`` (None without training datasets), with
    ``MODEL.LT.CLASS_STATS_FILE`` as the fallback when the data is not here."""
    if not cfg.DATASETS.TRAIN:
        return None
    return get_class_stats(
        tuple(cfg.DATASETS.TRAIN), stats_file=cfg.MODEL.LT.get("CLASS_STATS_FILE", "")
    )


def clear_class_stats_cache():
    _CACHE.clear()


def check_num_classes(cfg_value: int, stats: ClassStats, key: str):
    """Raise a clear error when a config's class count disagrees with the dataset's."""
    if int(cfg_value) != stats.num_classes:
        raise ClassStatsError(
            "%s = %d but the training data %s has %d classes. Set %s %d in the config (or on the "
            "command line), or train on a dataset with %d classes."
            % (
                key,
                cfg_value,
                ", ".join(stats.dataset_names),
                stats.num_classes,
                key,
                stats.num_classes,
                cfg_value,
            )
        )
