"""The plot of a dataset's long-tail audit (``tools/audit_dataset.py``): per-class counts sorted, with
the LVIS bands coloured (log scale), and the histogram of the images' repeat factors.

:func:`audit_plot_data` returns the numbers drawn; :func:`plot_dataset_audit` writes the PNG.
"""

from typing import Dict

import numpy as np

from .plots import _MAX_TICK_LABELS, _figure, _save, sort_by_count

__all__ = ["BAND_COLORS", "audit_plot_data", "plot_dataset_audit"]

BAND_COLORS = {"r": "#d62728", "c": "#ff7f0e", "f": "#1f77b4"}
_BAND_NAMES = {"r": "rare", "c": "common", "f": "frequent"}


def audit_plot_data(audit) -> Dict[str, object]:
    """``order`` (class ids, descending instance count), ``instances``, ``images``, ``band`` and
    ``names`` in that order; ``bins`` (labels), ``sqrt`` and ``linear`` (images per bin)."""
    from ..class_stats.audit_report import audit_to_dict

    s = audit.stats
    order = sort_by_count(s.instance_counts)
    hist = audit_to_dict(audit)["repeat_factors"]
    labels = ["1"] + [
        ("(%g,%g)" if b["lo"] == 1 else "[%g,%g)") % (b["lo"], b["hi"])
        for b in hist["sqrt"]["bins"]
    ]

    def counts(h):
        return np.array([h["not_repeated"]] + [b["images"] for b in h["bins"]], np.int64)

    return dict(
        order=order,
        instances=np.asarray(s.instance_counts)[order],
        images=np.asarray(s.image_counts)[order],
        band=np.asarray(s.frequency)[order],
        names=[s.class_names[i] for i in order],
        bins=labels,
        sqrt=counts(hist["sqrt"]),
        linear=counts(hist["linear"]),
        repeat_thresh=audit.repeat_thresh,
    )


def plot_dataset_audit(audit, path: str) -> str:
    """Write the two-panel audit figure to ``path``; returns ``path``."""
    d = audit_plot_data(audit)
    C = len(d["order"])
    fig, (ax, axh) = _figure(1, 2, figsize=(13.0, 4.2), gridspec_kw=dict(width_ratios=[2, 1]))
    x = np.arange(C)
    floor = 0.5  # zero counts drawn at the bottom of the log axis
    colors = [BAND_COLORS.get(b, "#7f7f7f") for b in d["band"]]
    ax.bar(x, np.maximum(d["instances"], floor), width=1.0 if C > 100 else 0.85, color=colors, lw=0)
    seen = d["images"] > 0  # a class in no image has no dot (and no visible bar)
    ax.plot(x[seen], d["images"][seen], "k.", ms=2 if C > 200 else 5, label="images")
    for y in (10.5, 100.5):  # the band boundaries are on image counts
        ax.axhline(
            y, color="grey", lw=0.7, ls="--", label="band edges (images)" if y < 50 else None
        )
    ax.set_yscale("log")
    ax.set_ylim(bottom=floor)
    ax.set_xlim(-0.5, C - 0.5)
    ax.set_ylabel("training instances (bars) / images (dots)")
    ax.set_xlabel("classes sorted by training instances")
    if C <= _MAX_TICK_LABELS:
        ax.set_xticks(x)
        ax.set_xticklabels(d["names"], rotation=90, fontsize=7)
    else:
        ax.set_xticks([])
    from matplotlib.patches import Patch

    handles = [
        Patch(color=BAND_COLORS[b], label="%s (%d)" % (_BAND_NAMES[b], int((d["band"] == b).sum())))
        for b in "rcf"
    ]
    handles += ax.get_legend_handles_labels()[0]
    ax.legend(handles=handles, fontsize=8, loc="upper right")
    empty = int((d["instances"] == 0).sum())
    ax.set_title(
        "%s: %d classes%s, LVIS bands by training images"
        % (audit.dataset, C, " (%d without instances)" % empty if empty else ""),
        fontsize=10,
    )

    k = np.arange(len(d["bins"]))
    w = 0.4
    axh.bar(k - w / 2, np.maximum(d["sqrt"], 0), w, label="max(1, sqrt(t/f_c))", color="#2ca02c")
    axh.bar(k + w / 2, np.maximum(d["linear"], 0), w, label="max(1, t/f_c)", color="#9467bd")
    axh.set_yscale("symlog", linthresh=1)
    axh.set_ylim(bottom=0)
    axh.set_xticks(k)
    axh.set_xticklabels(d["bins"], rotation=45, fontsize=8)
    axh.set_xlabel("image repeat factor r")
    axh.set_ylabel("images")
    axh.legend(fontsize=8)
    axh.set_title("repeat factors, t = %g" % d["repeat_thresh"], fontsize=10)
    return _save(fig, path)
