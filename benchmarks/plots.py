"""Plots of a benchmark run with several seeds (``python -m benchmarks.benchmark_lt --report``).

:func:`plot_seed_benchmark` draws one row per detector kind (ROI heads, then each dense family):

- left: per-class AP (mean over seeds, dots) against training instances (log x), and each method's
  mean AP per instance-count group (line) with the standard deviation over seeds as error bars;
- middle: AP, APr, APc, APf (mean over seeds) as grouped bars with the same error bars;
- right: the row's legend, in its own column so that it covers no data.

Every method has its colour everywhere (:func:`~.plots.method_style`: by loss; a method without
a colour of its own gets a spare one no other method of the figure has,
:func:`~.plots.method_styles`; the detector family by marker, line style and bar hatch).
"""

import warnings
from typing import Dict, Mapping, Optional, Sequence

import numpy as np

from lt_detectron.class_stats import DEFAULT_GROUP_EDGES
from lt_detectron.visualization.plots import _figure, _np, _save, method_styles, split_method
from lt_detectron.visualization.result_plots import _shade_groups, ap_vs_instances_data

__all__ = ["seed_statistics", "plot_seed_benchmark", "BAND_METRICS"]

BAND_METRICS = ("AP", "APr", "APc", "APf")
_HATCH = {"": "", "fcos": "", "centernet": "//", "retinanet": ".."}


def seed_statistics(
    per_class_ap: np.ndarray, instance_counts, bin_edges: Sequence[float] = DEFAULT_GROUP_EDGES
) -> Dict[str, np.ndarray]:
    """Of one method's per-class AP over seeds ``(S, C)`` (NaN: no validation ground truth):
    ``class_mean`` (C,), the per-seed group means ``group`` (S, B) (as
    :func:`~.result_plots.ap_vs_instances_data`, in count order), their ``group_mean`` and
    ``group_std`` (B,) (sample standard deviation, ``ddof=1``; 0 with one seed), and the data
    ``d`` of the seed mean (sorted counts, bins)."""
    ap = np.atleast_2d(_np(per_class_ap))
    S = ap.shape[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # classes without validation ground truth
        class_mean = np.nanmean(ap, axis=0)
    d = ap_vs_instances_data({"mean": class_mean}, instance_counts, bin_edges)
    per_seed = ap_vs_instances_data({s: ap[s] for s in range(S)}, instance_counts, bin_edges)
    group = np.stack([per_seed["bin_mean"][s] for s in range(S)])
    std = group.std(axis=0, ddof=1) if S > 1 else np.zeros(group.shape[1])
    return {
        "class_mean": class_mean,
        "group": group,
        "group_mean": group.mean(axis=0),
        "group_std": std,
        "d": d,
    }


def plot_seed_benchmark(
    panels: Mapping[str, Mapping[str, np.ndarray]],
    instance_counts,
    bands: Mapping[str, Mapping[str, Sequence[float]]],
    path: str,
    bin_edges: Sequence[float] = DEFAULT_GROUP_EDGES,
    title: Optional[str] = None,
) -> str:
    """Draw the benchmark figure (see the module docstring) and return ``path``.

    Args:
        panels: ``{row title: {method: per-class AP (S, C) over seeds}}`` (empty rows are skipped).
        instance_counts: (C,) training instances per class, the order of the per-class AP.
        bands: ``{method: {metric: (S,) values}}`` for the bars (:data:`BAND_METRICS`).
    """
    rows = [(t, m) for t, m in panels.items() if m]
    if not rows:
        raise ValueError("nothing to plot: every panel is empty")
    fig, axes = _figure(
        len(rows),
        3,
        figsize=(16.5, 4.6 * len(rows)),
        squeeze=False,
        gridspec_kw={"width_ratios": [3, 2, 1.05]},
    )
    for r, (row_title, methods) in enumerate(rows):
        ax, bx, lx = axes[r]
        stats = {m: seed_statistics(a, instance_counts, bin_edges) for m, a in methods.items()}
        first = next(iter(stats.values()))["d"]
        x, centres, _, _ = _shade_groups(ax, first, bin_edges)
        n = len(stats)
        styles = method_styles(list(methods))
        top = 1e-9
        for k, (m, st) in enumerate(stats.items()):
            col, marker, ls = styles[m]
            jit = 1.0 + 0.05 * (k - (n - 1) / 2.0)
            ap = st["d"]["ap"]["mean"]
            ax.scatter(x * jit, ap, s=12, alpha=0.45, color=col, marker=marker, edgecolors="none")
            ok = ~np.isnan(st["group_mean"])
            S = st["group"].shape[0]
            ax.errorbar(
                centres[ok] * jit,
                st["group_mean"][ok],
                yerr=st["group_std"][ok],
                color=col,
                ls=ls,
                lw=2,
                marker=marker,
                capsize=3,
                label="%s (%d seed%s)" % (m, S, "" if S == 1 else "s"),
                zorder=4,
            )
            finite = ap[~np.isnan(ap)]
            if len(finite):
                top = max(top, float(finite.max()))
        ax.set_ylim(-0.03 * top, top * 1.25)
        ax.set_xlabel("#training instances of the class (log; 0 drawn at 0.8)")
        ax.set_ylabel("box AP (%)")
        ax.set_title("%s: per-class AP (dots) and group means ± std" % row_title)
        lx.axis("off")
        handles, labels = ax.get_legend_handles_labels()
        lx.legend(handles, labels, loc="center left", fontsize=8.5, frameon=False, title=row_title)

        width = 0.8 / max(n, 1)
        for k, m in enumerate(methods):
            col, _, _ = styles[m]
            vals = [np.asarray(bands.get(m, {}).get(b, [np.nan]), np.float64) for b in BAND_METRICS]
            mean = [float(np.mean(v)) for v in vals]
            std = [float(np.std(v, ddof=1)) if len(v) > 1 else 0.0 for v in vals]
            pos = np.arange(len(BAND_METRICS)) - 0.4 + width * (k + 0.5)
            bx.bar(
                pos,
                mean,
                width * 0.92,
                yerr=std,
                color=col,
                hatch=_HATCH[split_method(m)[0]],
                edgecolor="white" if col == "#000000" else "0.2",
                lw=0.4,
                capsize=2,
                error_kw={"elinewidth": 0.9, "ecolor": "0.35"},
            )
        bx.set_xticks(np.arange(len(BAND_METRICS)))
        bx.set_xticklabels(["AP\n(all)", "APr\n(rare)", "APc\n(common)", "APf\n(frequent)"])
        bx.set_ylabel("box AP (%, mean over seeds, error bar: std)")
        bx.set_title("%s: AP by frequency band" % row_title)
        bx.grid(axis="y", color="0.9", lw=0.8)
        bx.set_axisbelow(True)
    height = fig.get_figheight()
    fig.subplots_adjust(hspace=0.38, wspace=0.22, top=1.0 - 0.75 / height, bottom=0.45 / height)
    if title:
        fig.suptitle(title, fontsize=12, y=1.0 - 0.25 / height)
    return _save(fig, path)
