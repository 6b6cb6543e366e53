"""A long-tail audit of one dataset: per-class counts, LVIS bands, instance groups, repeat factors,
and which class statistics each registered loss reads.

:func:`audit_dataset` (a registered name), :func:`audit_json` (a COCO/LVIS json) and
:func:`audit_dicts` (Detectron2 dataset dicts) return a
:class:`DatasetAudit`; :mod:`.audit_report` prints and writes it, and
:func:`lt_detectron.visualization.plot_dataset_audit` draws it. ``tools/audit_dataset.py`` is the
command.

- Counts: :func:`~.counting.count_from_dicts` (crowd annotations skipped), the counts every method
  and evaluator reads.
- Bands: :func:`~.groups.lvis_frequency` on image counts (r <= 10 images, c 11-100, f > 100).
- Groups: :func:`~.groups.instance_bins` on instance counts (``MODEL.LT.GROUP_EDGES``).
- Repeat factors (Detectron2's ``RepeatFactorTrainingSampler``, LVIS paper appendix B.2): with
  ``f_c`` the fraction of images that hold class ``c`` (every annotation, crowd included, as the
  sampler counts), ``r_c = max(1, sqrt(t / f_c))``, or ``max(1, t / f_c)`` without the square root;
  an image's factor is the largest ``r_c`` of its classes (1 without annotations).
- Images: with ``filter_empty`` (the default, as ``DATALOADER.FILTER_EMPTY_ANNOTATIONS``) the images
  without a non-crowd annotation are left out first, as the training loader does.
"""

import itertools
import operator
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .counting import count_from_dicts
from .groups import DEFAULT_GROUP_EDGES, check_group_edges, instance_bin_index, lvis_frequency
from .stats import ClassStats, ClassStatsError

__all__ = [
    "DatasetAudit",
    "audit_dicts",
    "audit_dataset",
    "audit_json",
    "class_repeat_factors",
    "image_repeat_factors",
    "stats_read_by_losses",
    "STATS_FIELDS",
]

# the per-class statistics a loss can read from ClassStats (what the audit reports per method)
STATS_FIELDS = ("instance_counts", "image_counts", "num_images", "frequency")


def _annotation_arrays(dataset_dicts) -> Tuple[np.ndarray, np.ndarray]:
    """``(category ids, image indices)`` of every annotation, crowd included."""
    per_image = [d.get("annotations") or () for d in dataset_dicts]
    lengths = np.fromiter(map(len, per_image), dtype=np.int64, count=len(per_image))
    anns = list(itertools.chain.from_iterable(per_image))
    cats = np.fromiter(map(operator.itemgetter("category_id"), anns), np.int64, count=len(anns))
    imgs = np.repeat(np.arange(len(per_image), dtype=np.int64), lengths)
    return cats, imgs


def class_repeat_factors(
    images_per_class, num_images: int, repeat_thresh: float, sqrt: bool = True
) -> np.ndarray:
    """``(C,)`` ``r_c = max(1, sqrt(t / f_c))`` (``max(1, t / f_c)`` without ``sqrt``), ``f_c`` =
    ``images_per_class / num_images``; NaN for a class in no image (no image carries it)."""
    if not repeat_thresh > 0:
        raise ValueError("repeat threshold must be > 0, got %r" % (repeat_thresh,))
    n = np.asarray(images_per_class, np.float64)
    out = np.full(n.shape, np.nan)
    seen = n > 0
    ratio = repeat_thresh / (n[seen] / max(int(num_images), 1))
    out[seen] = np.maximum(1.0, np.sqrt(ratio) if sqrt else ratio)
    return out


def image_repeat_factors(
    dataset_dicts, num_classes: int, repeat_thresh: float, sqrt: bool = True
) -> Tuple[np.ndarray, np.ndarray]:
    """``(per-image factors (N,), per-class factors (C,))`` as Detectron2's
    ``RepeatFactorTrainingSampler.repeat_factors_from_category_frequency`` (``sqrt=True``) computes
    them from the same dicts, vectorised; ``sqrt=False`` drops the square root."""
    cats, imgs = _annotation_arrays(dataset_dicts)
    n = len(dataset_dicts)
    if cats.size and (cats.min() < 0 or cats.max() >= num_classes):
        raise ClassStatsError(
            "an annotation has category id %d, outside 0..%d: the dicts and the class list disagree"
            % (int(cats[(cats < 0) | (cats >= num_classes)][0]), num_classes - 1)
        )
    pairs = np.unique(imgs * num_classes + cats)  # distinct (image, class)
    per_class = np.bincount(pairs % num_classes, minlength=num_classes)
    r_c = class_repeat_factors(per_class, n, repeat_thresh, sqrt)
    r_img = np.ones(n, np.float64)
    np.maximum.at(r_img, pairs // num_classes, r_c[pairs % num_classes])
    return r_img, r_c


@dataclass(frozen=True)
class DatasetAudit:
    """The numbers of one audit (plain numpy; per-class arrays in contiguous-id order)."""

    dataset: str
    stats: ClassStats  # counts, image counts, LVIS bands
    num_images_total: int  # before filter_empty
    group_edges: Tuple[float, ...]
    groups: np.ndarray  # (C,) instance group of each class (0 .. len(edges))
    repeat_thresh: float
    repeat_sqrt: np.ndarray  # (C,) r_c with the square root (NaN: class in no image)
    repeat_linear: np.ndarray  # (C,) r_c without it
    image_repeat_sqrt: np.ndarray  # (N,) per-image factors
    image_repeat_linear: np.ndarray
    methods: Tuple[dict, ...]  # stats_read_by_losses()

    @property
    def num_classes(self) -> int:
        return self.stats.num_classes


def _proxy_reads(stats: ClassStats):
    """A stand-in for ``stats`` that records which of its attributes are read."""

    reads = set()

    class Recorder:
        def __getattr__(self, name):
            value = getattr(stats, name)
            reads.add(name)
            return value

    return Recorder(), reads


def stats_read_by_losses(stats: ClassStats) -> Tuple[dict, ...]:
    """For every loss in ``ROI_LOSS_REGISTRY`` and ``DENSE_LOSS_REGISTRY``: ``{"key", "name",
    "needs_class_stats", "reads", "error"}``, where ``reads`` are the :data:`STATS_FIELDS` its
    ``from_config`` read from ``stats`` when built from the default config (asked of the registries,
    never listed by hand). ``error`` is the message when the loss could not be built that way."""
    from detectron2.config import get_cfg

    from ..config import add_lt_config
    from ..losses import DENSE_LOSS_REGISTRY, ROI_LOSS_REGISTRY

    cfg = add_lt_config(get_cfg())
    out = []
    for registry in (ROI_LOSS_REGISTRY, DENSE_LOSS_REGISTRY):
        for name in registry.names():
            cls = registry.get(name)
            proxy, reads = _proxy_reads(stats)
            error = None
            try:
                key = cls.epoch_length_key(cfg)
                own = cfg.clone()
                if key:  # a schedule in epochs needs an epoch length to build; any will do here
                    own.merge_from_list([key, 1.0])
                cls.from_config(own, stats.num_classes, proxy)
            except Exception as e:  # reported, not raised: the audit is about the data
                error = "%s: %s" % (type(e).__name__, e)
            out.append(
                dict(
                    key=registry.config_key,
                    name=name,
                    needs_class_stats=bool(getattr(cls, "needs_class_stats", False)),
                    reads=[f for f in STATS_FIELDS if f in reads],
                    error=error,
                )
            )
    return tuple(out)


def audit_dicts(
    dataset_dicts: List[dict],
    class_names: Sequence[str],
    *,
    dataset: str = "dataset",
    dataset_ids: Optional[Sequence[int]] = None,
    repeat_thresh: float = 0.001,
    group_edges: Sequence[float] = DEFAULT_GROUP_EDGES,
    filter_empty: bool = True,
) -> DatasetAudit:
    """Audit Detectron2 dataset dicts (contiguous ``category_id`` 0..C-1 in ``class_names`` order)."""
    edges = check_group_edges(group_edges, "group edges (MODEL.LT.GROUP_EDGES)")
    total = len(dataset_dicts)
    if filter_empty:
        from detectron2.data.build import filter_images_with_only_crowd_annotations

        dataset_dicts = filter_images_with_only_crowd_annotations(dataset_dicts)
    C = len(class_names)
    inst, img, n = count_from_dicts(dataset_dicts, C)
    freq = lvis_frequency(img)
    ids = tuple(range(C)) if dataset_ids is None else tuple(int(i) for i in dataset_ids)
    stats = ClassStats((dataset,), tuple(class_names), ids, inst, img, n, freq, "counted")
    r_img_s, r_s = image_repeat_factors(dataset_dicts, C, repeat_thresh, sqrt=True)
    r_img_l, r_l = image_repeat_factors(dataset_dicts, C, repeat_thresh, sqrt=False)
    return DatasetAudit(
        dataset=dataset,
        stats=stats,
        num_images_total=total,
        group_edges=edges,
        groups=instance_bin_index(inst, edges),
        repeat_thresh=float(repeat_thresh),
        repeat_sqrt=r_s,
        repeat_linear=r_l,
        image_repeat_sqrt=r_img_s,
        image_repeat_linear=r_img_l,
        methods=stats_read_by_losses(stats),
    )


def audit_dataset(
    name: str,
    *,
    repeat_thresh: float = 0.001,
    group_edges: Sequence[float] = DEFAULT_GROUP_EDGES,
    filter_empty: bool = True,
) -> DatasetAudit:
    """Audit the registered dataset ``name`` (its dicts loaded once, with the ``bad_boxes`` check)."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from ..data.loading import load_dataset_dicts

    if name.startswith("lt_shapes_"):
        from ..data.embedded import get_lt_shapes

        get_lt_shapes()  # the embedded dataset, generated once and cached
    if name not in DatasetCatalog.list():
        close = [n for n in DatasetCatalog.list() if name.split("_")[0] in n][:8]
        raise ClassStatsError(
            "dataset %r is not registered. Give a json with --json PATH, register it with "
            "--register-dataset NAME JSON IMAGE_ROOT, or pick a registered name%s"
            % (name, (": e.g. " + ", ".join(close)) if close else "")
        )
    dicts = load_dataset_dicts(name)
    md = MetadataCatalog.get(name).as_dict()
    if "thing_classes" not in md:
        raise ClassStatsError("dataset %r has no metadata.thing_classes; cannot audit it" % name)
    classes = tuple(md["thing_classes"])
    id_map: Dict[int, int] = md.get("thing_dataset_id_to_contiguous_id", {})
    inv = {v: k for k, v in id_map.items()}
    return audit_dicts(
        dicts,
        classes,
        dataset=name,
        dataset_ids=[inv.get(i, i) for i in range(len(classes))],
        repeat_thresh=repeat_thresh,
        group_edges=group_edges,
        filter_empty=filter_empty,
    )


def audit_json(
    json_file: str,
    *,
    repeat_thresh: float = 0.001,
    group_edges: Sequence[float] = DEFAULT_GROUP_EDGES,
    filter_empty: bool = True,
) -> DatasetAudit:
    """Audit a COCO- or LVIS-format json directly (nothing registered; its images are not needed).
    The audit is named after the file (``instances_train.json`` -> ``instances_train``)."""
    import os

    from ..data.datasets import load_lt_json
    from ..data.json_categories import read_json_categories

    if not os.path.isfile(json_file):
        raise FileNotFoundError(
            "annotation file %s does not exist: give the path of a COCO- or LVIS-format json "
            "(--json PATH), or a registered dataset name (--dataset NAME)"
            % os.path.abspath(json_file)
        )
    cats = read_json_categories(json_file)
    dicts = load_lt_json(json_file, os.path.dirname(os.path.abspath(json_file)))
    name = os.path.splitext(os.path.basename(json_file))[0]
    return audit_dicts(
        dicts,
        cats.names,
        dataset=name,
        dataset_ids=cats.ids,
        repeat_thresh=repeat_thresh,
        group_edges=group_edges,
        filter_empty=filter_empty,
    )
