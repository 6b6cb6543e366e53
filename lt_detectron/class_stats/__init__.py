"""The class-statistics registry.

Every balancing method and evaluator reads per-class training statistics through this module
and nowhere else. ``get_class_stats(dataset_names)`` returns one immutable :class:`ClassStats`
per tuple of training datasets, built once per process and cached. It is built
deterministically from the same files on every process (and, when ``torch.distributed`` is
initialised, a fingerprint is compared across ranks), so every rank sees identical values.

Counts come from the dataset's own annotations (after the ``bad_boxes`` check: dropped boxes
are not counted). The training json is parsed once per process: the trainer loads the dicts
(:func:`lt_detectron.data.loading.load_train_dicts`) and passes them as
``get_class_stats(names, dataset_dicts=...)``. Per dataset name, the ``source`` is:

- ``metadata``: ``MetadataCatalog.get(name).class_stats`` (``instance_counts``,
  ``image_counts``, ``num_images``, optional ``frequency``): the LVIS table shipped for the
  builtin full train splits, or counts given at registration, when it equals the counts of the
  annotations (given as dicts, from the cache, or counted now); otherwise (e.g. ``lvis_v1_train``
  pointing at a subset json) the counts of the annotations are used, with a warning. So the
  counts never depend on whether a cache entry exists.
  A dataset without ``json_file`` (a custom loader) and with such counts uses them as is.
- ``table``: that table as is, unchecked, only when the dataset's annotation json is absent (a
  loud warning says so; ``tools/evaluate_results.py`` repeats it next to its results).
- ``json``: counted, and equal to the ``image_count``/``instance_count`` of the json's
  category records (LVIS files carry them). Records that disagree (a subset of LVIS keeps the
  full file's records) are ignored with a warning.
- ``counted``: counted from the dicts (given, or one ``DatasetCatalog.get``), vectorised, and
  cached on disk keyed by the json's path, size, mtime and ``bad_boxes`` policy
  (``$LT_DETECTRON_CACHE/class_stats``).
- ``cache``: that cache, when no dicts are given.
- ``file``: ``MODEL.LT.CLASS_STATS_FILE`` (``stats_file=``), the statistics a training run recorded
  in ``OUTPUT_DIR/class_stats.json`` and its checkpoints (:mod:`.stats_file`); used only when a
  dataset is not registered in the process or its json is missing (inference without the data).

The source is in the log line and in :meth:`ClassStats.summary`.

Conventions: contiguous class ids ``0..C-1`` in the order of ``metadata.thing_classes``;
background is ``C`` (Detectron2's convention). ``frequency`` uses LVIS' rule on training
*image* counts: ``r`` <= 10 images, ``c`` 11-100, ``f`` > 100. Instance-count groups use
BAGS' bins on *instance* counts, default edges 10/100/1000 (``MODEL.LT.GROUP_EDGES``), i.e.
``[0,10) [10,100) [100,1000) [1000,inf)``. Both rules are in :mod:`.groups`, the one place
that defines them.

Modules: :mod:`.groups` (the banding / binning rules), :mod:`.stats` (:class:`ClassStats`),
:mod:`.counting` (counts of one dataset and their source), :mod:`.registry`
(:func:`get_class_stats`), :mod:`.stats_file` (the statistics as plain data, for a file),
:mod:`.audit` / :mod:`.audit_report` (a long-tail audit of a dataset: ``tools/audit_dataset.py``).
"""

from .audit import DatasetAudit, audit_dataset, audit_dicts, audit_json
from .audit_report import format_audit, write_audit
from .counting import count_from_dicts
from .groups import (
    DEFAULT_GROUP_EDGES,
    LVIS_COMMON_MAX_IMAGES,
    LVIS_RARE_MAX_IMAGES,
    check_group_edges,
    group_label,
    instance_bin_index,
    instance_bins,
    lvis_frequency,
)
from .registry import (
    build_class_stats,
    check_num_classes,
    clear_class_stats_cache,
    get_class_stats,
    get_train_class_stats,
)
from .stats import ClassStats, ClassStatsError
from .stats_file import (
    class_stats_from_dict,
    class_stats_to_dict,
    read_class_stats_file,
    write_class_stats_file,
)

__all__ = [
    "ClassStats",
    "ClassStatsError",
    "get_class_stats",
    "get_train_class_stats",
    "build_class_stats",
    "class_stats_to_dict",
    "class_stats_from_dict",
    "read_class_stats_file",
    "write_class_stats_file",
    "count_from_dicts",
    "DatasetAudit",
    "audit_dataset",
    "audit_dicts",
    "audit_json",
    "format_audit",
    "write_audit",
    "lvis_frequency",
    "check_num_classes",
    "clear_class_stats_cache",
    "DEFAULT_GROUP_EDGES",
    "LVIS_RARE_MAX_IMAGES",
    "LVIS_COMMON_MAX_IMAGES",
    "check_group_edges",
    "instance_bin_index",
    "instance_bins",
    "group_label",
]
