"""Plots of evaluation results, from the per-category AP the evaluators write.

=========================  ====================================================  ==========================
function                   what it shows                                         drawn by
=========================  ====================================================  ==========================
plot_ap_vs_instances       per-class AP vs training instances (log x), one       matplotlib (ours: hotcoco
                           colour per method, instance-count groups shaded,       has no such plot)
                           mean AP per group
plot_per_category_ap       per-category AP bars, best first, each class named    ``hotcoco.plot.per_category_ap``
                           with its frequency band and training instances
=========================  ====================================================  ==========================

:func:`read_per_category_csv` reads the ``{protocol}_per_category_{task}.csv`` that
:class:`~lt_detectron.evaluation.LTLVISEvaluator` / ``LTCOCOEvaluator`` write into their output
folder (``OUTPUT_DIR/inference/<dataset>/`` in training); :func:`write_result_plots` draws both
plots of one csv.
"""

import csv
import math
import os
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np

from ..class_stats import DEFAULT_GROUP_EDGES, instance_bins
from .plots import _figure, _np, _save, method_styles, sort_by_count

__all__ = [
    "ap_vs_instances_data",
    "plot_ap_vs_instances",
    "plot_per_category_ap",
    "read_per_category_csv",
    "write_result_plots",
]


# ---------------------------------------------------------------------- AP vs instances
def ap_vs_instances_data(
    per_class_ap: Mapping[str, Sequence[float]],
    instance_counts,
    bin_edges: Sequence[float] = DEFAULT_GROUP_EDGES,
) -> Dict[str, object]:
    """Per-class AP sorted by instance count and the mean AP per instance-count bin, per method.

    Bins are ``[0, e0) [e0, e1) ... [e_k, inf)`` (BAGS' default 10/100/1000;
    :func:`lt_detectron.class_stats.instance_bins`). NaN APs (classes
    absent from the evaluation set) are left out of the means; an empty bin has mean NaN.
    Returns ``order``, ``counts`` (sorted), ``ap`` (method -> AP in that order), ``bins``
    (list of ``(lo, hi)``), ``bin_counts`` (classes per bin) and ``bin_mean`` (method -> (B,)).
    """
    counts = _np(instance_counts)
    bins = instance_bins(
        counts, bin_edges, name="bin_edges"
    )  # [(lo, hi, class ids)], empty bins kept
    order = sort_by_count(counts)
    B = len(bins)
    ap_sorted, means = {}, {}
    for m, ap in per_class_ap.items():
        ap = _np(ap).reshape(-1)
        if ap.shape != counts.shape:
            raise ValueError(
                "per_class_ap[%r] has %d entries for %d classes" % (m, ap.shape[0], counts.shape[0])
            )
        ap_sorted[m] = ap[order]
        mean = np.full(B, np.nan)
        for b, (_, _, ids) in enumerate(bins):
            v = ap[ids][~np.isnan(ap[ids])]
            if len(v):
                mean[b] = v.mean()
        means[m] = mean
    return {
        "order": order,
        "counts": counts[order],
        "ap": ap_sorted,
        "bins": [(lo, hi) for lo, hi, _ in bins],
        "bin_counts": np.array([len(ids) for _, _, ids in bins]),
        "bin_mean": means,
    }


def _fmt_count(x: float) -> str:
    return "inf" if not math.isfinite(x) else "%d" % x


def _shade_groups(ax, d, bin_edges):
    """Shade the instance-count groups of :func:`ap_vs_instances_data` ``d`` (alternately) and label
    them with their class count. Returns ``(x, centres, x_lo, x_hi)``: the classes' x (counts, zero
    drawn at 0.8), each group's geometric centre and the x limits."""
    x = np.maximum(d["counts"], 0.8)
    finite_edges = [e for e in bin_edges if math.isfinite(e)]
    x_hi = max(float(np.max(x)) if len(x) else 10.0, 1.0) * 2.0
    x_hi = max(x_hi, 4.0 * finite_edges[-1] if finite_edges else 0.0)  # room for the last label
    x_lo = 0.6
    centres = []
    for b, (lo, hi) in enumerate(d["bins"]):
        lo_, hi_ = max(lo, x_lo), min(hi, x_hi)
        centres.append(math.sqrt(max(lo, 1.0) * max(hi_, max(lo, 1.0))))
        if hi_ > lo_:
            ax.axvspan(lo_, hi_, color="0.92" if b % 2 == 0 else "0.84", zorder=0, lw=0)
            k = d["bin_counts"][b]
            label = "[%s, %s)\n%d class%s" % (
                _fmt_count(lo),
                _fmt_count(hi),
                k,
                "" if k == 1 else "es",
            )
            ax.text(
                math.sqrt(lo_ * hi_),
                0.99,
                label,
                transform=ax.get_xaxis_transform(),
                ha="center",
                va="top",
                fontsize=7.5,
                color="0.3",
            )
    ax.set_xscale("log")
    ax.set_xlim(x_lo, x_hi)
    return x, np.asarray(centres), x_lo, x_hi


def plot_ap_vs_instances(
    per_class_ap: Mapping[str, Sequence[float]],
    instance_counts,
    path: str = "ap_vs_instances.png",
    bin_edges: Sequence[float] = DEFAULT_GROUP_EDGES,
    title: Optional[str] = None,
    ylabel: str = "AP (%)",
) -> str:
    """Per-class AP vs training instance count for one or several methods (dots + group means).

    x: instance count (log; zero-count classes drawn at 0.8); each method in its own colour
    (:func:`~.plots.method_style`, the same in every plot); the
    instance-count groups are shaded (alternately) and labelled with their class count; the
    line joins each method's mean AP per group, drawn at the group's geometric centre.
    Returns ``path``.
    """
    d = ap_vs_instances_data(per_class_ap, instance_counts, bin_edges)
    fig, ax = _figure(figsize=(7.5, 4.8))
    x, centres, x_lo, x_hi = _shade_groups(ax, d, bin_edges)
    n_methods = max(1, len(d["ap"]))
    styles = method_styles(list(d["ap"]))
    for k, (m, ap) in enumerate(d["ap"].items()):
        col, marker, ls = styles[m]
        jitter = 1.0 + 0.04 * (k - (n_methods - 1) / 2.0)  # spread overlapping points a little
        ax.scatter(
            x * jitter, ap, s=16, alpha=0.7, color=col, marker=marker, edgecolors="none", zorder=3
        )
        ok = ~np.isnan(d["bin_mean"][m])
        ax.plot(
            centres[ok],
            d["bin_mean"][m][ok],
            color=col,
            ls=ls,
            lw=2,
            marker=marker,
            label=m + " (group mean)",
            zorder=4,
        )
    finite = np.concatenate([a[~np.isnan(a)] for a in d["ap"].values()] + [np.zeros(1)])
    top = max(float(finite.max()), 1e-9)
    ax.set_ylim(-0.03 * top, top * 1.22)  # room for the group labels
    ax.set_xlabel("#training instances of the class (log; 0 drawn at 0.8)")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(title or "Per-class AP vs training instances (dots: classes, lines: group means)")
    return _save(fig, path)


# ---------------------------------------------------------------------- per-category bars (hotcoco)
def plot_per_category_ap(
    names: Sequence[str],
    ap,
    path: str = "ap_per_category.png",
    instance_counts=None,
    frequency: Optional[Sequence[str]] = None,
    title: Optional[str] = None,
) -> str:
    """Per-category AP bars, best first, drawn by ``hotcoco.plot.per_category_ap``.

    ``ap`` in percent (as the evaluators' csv), NaN classes (no ground truth) left out. Each bar is
    named ``name [band, n]`` when ``frequency`` / ``instance_counts`` are given. Up to 40 classes all
    bars; more: the best 20 and the worst 20. Returns ``path``.
    """
    from hotcoco.plot import per_category_ap
    from matplotlib import pyplot as plt  # hotcoco draws on a pyplot figure: closed below

    ap = _np(ap).reshape(-1)
    if len(names) != len(ap):
        raise ValueError("%d names for %d AP values" % (len(names), len(ap)))
    labels = []
    for i, n in enumerate(names):
        extra = [str(frequency[i])] if frequency is not None and frequency[i] else []
        if instance_counts is not None and instance_counts[i] >= 0:
            extra.append("%d inst." % instance_counts[i])
        labels.append("%s [%s]" % (n, ", ".join(extra)) if extra else str(n))
    # in % as the evaluators report it (hotcoco's plot scales its axis to the values)
    per_class = {lab: float(v) for lab, v in zip(labels, ap) if np.isfinite(v)}
    if not per_class:
        raise ValueError("no category has a finite AP")
    many = len(per_class) > 40
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig, ax = per_category_ap(
        {"per_class": per_class},
        top_n=20 if many else len(per_class),
        bottom_n=20 if many else 0,
        paper_mode=True,
    )
    try:
        ax.set_xlabel("AP (%)")
        # hotcoco's mean line averages the bars drawn (best and worst only when there are many)
        mean = float(np.mean(list(per_class.values())))
        for line in ax.lines:
            if line.get_label().startswith("Mean AP"):
                line.set_xdata([mean, mean])
                line.set_label("Mean AP: %.1f" % mean)
        ax.legend(fontsize=9, loc="lower right")
        ax.set_title(title or "Per-category AP", fontsize=11, pad=10)
        fig.savefig(path, dpi=110, bbox_inches="tight", format="png", facecolor=fig.get_facecolor())
    finally:
        plt.close(fig)
    return path


# ---------------------------------------------------------------------- the evaluators' csv
def read_per_category_csv(path: str) -> Dict[str, object]:
    """``{protocol}_per_category_{task}.csv`` -> ``category_id`` (int64, -1 when the csv has no such
    column), ``name`` (list), ``frequency`` (list, "" when unknown), ``train_instances`` (int64, -1
    unknown) and ``AP`` (float64, percent, NaN = no GT), in the csv's row order."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"name", "train_instances", "AP"} <= set(rows[0]):
        raise ValueError(
            "%s is not a per-category AP csv (columns name, train_instances, AP)" % path
        )
    return {
        "category_id": np.array([int(r.get("category_id") or -1) for r in rows], np.int64),
        "name": [r["name"] for r in rows],
        "frequency": [r.get("frequency") or "" for r in rows],
        "train_instances": np.array(
            [int(float(r["train_instances"] or -1)) for r in rows], np.int64
        ),
        "AP": np.array(
            [float(r["AP"]) if r["AP"] not in ("", "nan", None) else np.nan for r in rows],
            np.float64,
        ),
    }


def write_result_plots(
    csv_path: str,
    out_dir: str,
    label: str = "",
    suffix: str = "",
    group_edges: Sequence[float] = DEFAULT_GROUP_EDGES,
) -> List[str]:
    """Both plots of one per-category csv into ``out_dir``: ``ap_vs_instances_<stem><suffix>.png``
    and ``ap_per_category_<stem><suffix>.png`` (``stem``: the csv's name without
    ``_per_category`` and the extension, e.g. ``lvis_bbox``). Classes with an unknown training count
    are left out of the first. ``label``: the method name in the legend and titles. Returns the paths."""
    d = read_per_category_csv(csv_path)
    stem = os.path.splitext(os.path.basename(csv_path))[0].replace("_per_category", "")
    sfx = ("_" + suffix) if suffix else ""
    known = d["train_instances"] >= 0
    what = " of %s" % label if label else ""
    paths = [
        plot_ap_vs_instances(
            {label or "AP": d["AP"][known]},
            d["train_instances"][known],
            os.path.join(out_dir, "ap_vs_instances_%s%s.png" % (stem, sfx)),
            bin_edges=group_edges,
            title="Per-class %s AP%s vs training instances" % (stem.split("_")[-1], what),
        )
    ]
    paths.append(
        plot_per_category_ap(
            d["name"],
            d["AP"],
            os.path.join(out_dir, "ap_per_category_%s%s.png" % (stem, sfx)),
            instance_counts=d["train_instances"],
            frequency=d["frequency"],
            title="%s%s (%s)"
            % (stem, what, os.path.basename(os.path.dirname(os.path.abspath(csv_path)))),
        )
    )
    return paths
