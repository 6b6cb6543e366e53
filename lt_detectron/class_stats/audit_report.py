"""A :class:`~.audit.DatasetAudit` as text, rows, json and files (``tools/audit_dataset.py``).

:func:`write_audit` writes ``<output>/<dataset>_audit.csv`` (one row per class), ``_audit.json``
(everything, with the per-class rows) and, with ``plot``, ``_audit.png``
(:func:`lt_detectron.visualization.plot_dataset_audit`).
"""

import csv
import json
import math
import os
from typing import Dict, List

import numpy as np
from tabulate import tabulate

from ..utils.atomic import atomic_write
from .audit import DatasetAudit
from .groups import LVIS_COMMON_MAX_IMAGES, LVIS_RARE_MAX_IMAGES, group_label

__all__ = ["audit_rows", "audit_to_dict", "format_audit", "repeat_histogram", "write_audit"]

CSV_COLUMNS = (
    "contiguous_id",
    "dataset_id",
    "name",
    "instance_count",
    "image_count",
    "frequency",
    "instance_group",
    "repeat_factor_sqrt",
    "repeat_factor_linear",
)


def _group_labels(audit: DatasetAudit) -> List[str]:
    bounds = (0.0,) + tuple(audit.group_edges) + (math.inf,)
    return [group_label(lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:])]


def _num(x):
    """A float for json / csv (None for NaN: a class in no image has no repeat factor)."""
    return None if math.isnan(x) else round(float(x), 6)


def audit_rows(audit: DatasetAudit) -> List[dict]:
    """One dict per class with :data:`CSV_COLUMNS`."""
    s, labels = audit.stats, _group_labels(audit)
    return [
        dict(
            contiguous_id=c,
            dataset_id=int(s.dataset_ids[c]),
            name=s.class_names[c],
            instance_count=int(s.instance_counts[c]),
            image_count=int(s.image_counts[c]),
            frequency=str(s.frequency[c]),
            instance_group=labels[int(audit.groups[c])],
            repeat_factor_sqrt=_num(audit.repeat_sqrt[c]),
            repeat_factor_linear=_num(audit.repeat_linear[c]),
        )
        for c in range(audit.num_classes)
    ]


def repeat_histogram(factors, max_factor: float = 1.0) -> Dict[str, object]:
    """Images per repeat factor: ``not_repeated`` (r = 1), then the images with r > 1 in the bins
    ``(1, 2) [2, 4) [4, 8) ...`` (``lo``, ``hi``) up to the largest factor (or ``max_factor``, to share bins between two
    histograms); ``mean`` is the epoch length multiplier, ``expanded_images`` the sum of the factors."""
    r = np.asarray(factors, np.float64)
    top = max(float(r.max()) if r.size else 1.0, float(max_factor))
    edges = [1.0, 2.0]
    while edges[-1] <= top:
        edges.append(edges[-1] * 2)
    above = r[r > 1]
    bins = [
        dict(lo=lo, hi=hi, images=int(((above >= lo) & (above < hi)).sum()))
        for lo, hi in zip(edges[:-1], edges[1:])
    ]
    return dict(
        not_repeated=int((r == 1).sum()),
        bins=bins,
        mean=float(r.mean()) if r.size else 1.0,
        max=float(r.max()) if r.size else 1.0,
        expanded_images=float(r.sum()),
    )


def _histograms(audit: DatasetAudit) -> Dict[str, dict]:
    """The sqrt and linear histograms over the same bins (the linear factors are the larger)."""
    top = float(audit.image_repeat_linear.max()) if audit.image_repeat_linear.size else 1.0
    return dict(
        sqrt=repeat_histogram(audit.image_repeat_sqrt, top),
        linear=repeat_histogram(audit.image_repeat_linear, top),
    )


def audit_to_dict(audit: DatasetAudit) -> dict:
    s = audit.stats
    return dict(
        dataset=audit.dataset,
        num_images=s.num_images,
        num_images_total=audit.num_images_total,
        num_classes=s.num_classes,
        num_instances=s.num_instances,
        bands={b: int((s.frequency == b).sum()) for b in "rcf"},
        group_edges=list(audit.group_edges),
        groups={
            label: int((audit.groups == g).sum()) for g, label in enumerate(_group_labels(audit))
        },
        repeat_thresh=audit.repeat_thresh,
        repeat_factors=_histograms(audit),
        methods=[dict(m) for m in audit.methods],
        classes=audit_rows(audit),
    )


def format_audit(audit: DatasetAudit) -> str:
    """The printed summary: totals, bands, groups, repeat factors, what each loss reads."""
    s = audit.stats
    inst, img = s.instance_counts, s.image_counts
    dropped = audit.num_images_total - s.num_images
    lines = [
        "Long-tail audit of %s: %d images%s, %d classes, %d instances (crowd excluded)"
        % (
            audit.dataset,
            s.num_images,
            " (%d without annotations left out)" % dropped if dropped else "",
            s.num_classes,
            s.num_instances,
        ),
        "",
        "LVIS bands (training images per class: r <= %d, c %d-%d, f > %d):"
        % (
            LVIS_RARE_MAX_IMAGES,
            LVIS_RARE_MAX_IMAGES + 1,
            LVIS_COMMON_MAX_IMAGES,
            LVIS_COMMON_MAX_IMAGES,
        ),
    ]
    rows = []
    for b in "rcf":
        m = s.frequency == b
        rows.append([b, int(m.sum()), int(inst[m].sum()), int(img[m].sum())])
    lines.append(tabulate(rows, ["band", "classes", "instances", "class-images"], "pipe"))
    edges = ", ".join("%g" % e for e in audit.group_edges)
    lines += [
        "",
        "Instance groups (training instances per class; MODEL.LT.GROUP_EDGES %s):" % edges,
    ]
    rows = []
    for g, label in enumerate(_group_labels(audit)):
        m = audit.groups == g
        rows.append([label, int(m.sum()), int(inst[m].sum())])
    lines.append(tabulate(rows, ["group", "classes", "instances"], "pipe"))
    h = _histograms(audit)
    lines += [
        "",
        "Repeat factors at t = %g (RepeatFactorTrainingSampler; image r = max over its classes):"
        % audit.repeat_thresh,
    ]
    rows = [
        ["images not repeated (r = 1)", h["sqrt"]["not_repeated"], h["linear"]["not_repeated"]],
        ["mean r (epoch length x)", "%.3f" % h["sqrt"]["mean"], "%.3f" % h["linear"]["mean"]],
        ["max r", "%.3f" % h["sqrt"]["max"], "%.3f" % h["linear"]["max"]],
    ]
    for bs, bl in zip(h["sqrt"]["bins"], h["linear"]["bins"]):
        rng = ("(%g, %g)" if bs["lo"] == 1 else "[%g, %g)") % (bs["lo"], bs["hi"])
        rows.append(["images with r in " + rng, bs["images"], bl["images"]])
    lines.append(
        tabulate(rows, ["", "max(1, sqrt(t/f_c))", "max(1, t/f_c)"], "pipe", disable_numparse=True)
    )
    lines += ["", "Class statistics each loss reads (asked of the loss registries):"]
    rows = []
    for m in audit.methods:
        reads = ", ".join(m["reads"]) or "-"
        if m["error"]:
            reads = "? (%s)" % m["error"]
        rows.append(
            ["%s %s" % (m["key"], m["name"]), "yes" if m["needs_class_stats"] else "no", reads]
        )
    lines.append(tabulate(rows, ["loss", "needs class stats", "reads"], "pipe"))
    return "\n".join(lines)


def write_audit(audit: DatasetAudit, output_dir: str, plot: bool = True) -> Dict[str, str]:
    """Write the csv, the json and (``plot``) the png into ``output_dir``; returns their paths."""
    os.makedirs(output_dir, exist_ok=True)
    stem = os.path.join(output_dir, audit.dataset.replace(os.sep, "_") + "_audit")
    paths = {"csv": stem + ".csv", "json": stem + ".json"}

    def write_csv(f):
        w = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        w.writeheader()
        for row in audit_rows(audit):
            w.writerow({k: "" if v is None else v for k, v in row.items()})

    atomic_write(paths["csv"], write_csv, mode="w")
    atomic_write(paths["json"], lambda f: json.dump(audit_to_dict(audit), f, indent=1), mode="w")
    if plot:
        from ..visualization.audit_plots import plot_dataset_audit

        paths["png"] = plot_dataset_audit(audit, stem + ".png")
    return paths
