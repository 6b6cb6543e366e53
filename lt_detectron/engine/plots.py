"""The plots the papers use to explain the methods, as pure functions (matplotlib, Agg backend).

Each ``plot_*`` function writes one PNG and returns its path; the numbers it draws come from
a matching ``*_data`` function (plain numpy in, dict of numpy arrays out), so they can be
checked or saved without a figure. Classes are always sorted by training instance count,
**descending** (head on the left, tail on the right, as in the papers), ties kept in class-id
order.

=====================  ===========================================  ===============================
function               what it shows                                paper
=====================  ===========================================  ===============================
plot_weight_norms      classifier weight norm ``||w_j||`` per class  BAGS Fig. 1, C2AM Fig. 1(a)
plot_eqlv2_ratios      accumulated positive/negative gradient       EQL v2 Fig. 1 (and Fig. 2 when
                       ratio ``g_j`` and the weights ``q_j, r_j``     written during training)
plot_bofl_schedule     BOFL weight ``alpha_hat_i`` over epochs       BOFL Fig. 1 / Fig. 2
plot_ap_vs_instances   per-class AP vs training instances, several  (benchmark summary)
                       methods, with binned means
=====================  ===========================================  ===============================
"""
import math
import os
from typing import Dict, Mapping, Optional, Sequence

import numpy as np

__all__ = [
    "sort_by_count",
    "weight_norm_data",
    "plot_weight_norms",
    "eqlv2_ratio_data",
    "plot_eqlv2_ratios",
    "bofl_schedule_data",
    "plot_bofl_schedule",
    "ap_vs_instances_data",
    "plot_ap_vs_instances",
]

DEFAULT_BIN_EDGES = (10, 100, 1000)  # BAGS' instance-count bins [0,10) [10,100) [100,1000) [1000,inf)
_MAX_TICK_LABELS = 40  # class names on the x axis only up to this many classes


# ---------------------------------------------------------------------- helpers
def _np(x, dtype=np.float64) -> np.ndarray:
    """Tensor / sequence -> 1-D or 2-D numpy array (detached, on the CPU)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().float().numpy()
    return np.asarray(x, dtype=dtype)


def sort_by_count(instance_counts, descending: bool = True) -> np.ndarray:
    """Class ids sorted by training instance count (stable: ties keep class-id order)."""
    counts = _np(instance_counts)
    return np.argsort(-counts if descending else counts, kind="stable")


def _figure(nrows=1, ncols=1, figsize=(7.0, 4.0), **kw):
    """A figure drawn by the Agg canvas, without pyplot's global state (safe inside training)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(nrows, ncols, **kw)


def _colors():
    import matplotlib

    return matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]


def _save(fig, path: str) -> str:
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight", format="png")
    return path


def _count_axis(ax, counts_sorted, label="#training instances"):
    """Instance counts on a second, logarithmic y axis (grey line)."""
    ax2 = ax.twinx()
    x = np.arange(len(counts_sorted))
    ax2.plot(x, np.maximum(counts_sorted, 0.8), color="0.45", lw=1.2, label=label)
    ax2.set_yscale("log")
    ax2.set_ylabel(label, color="0.35")
    ax2.tick_params(axis="y", colors="0.35")
    return ax2


def _class_ticks(ax, order, class_names):
    n = len(order)
    if class_names is not None and n <= _MAX_TICK_LABELS:
        ax.set_xticks(np.arange(n))
        ax.set_xticklabels([class_names[i] for i in order], rotation=90, fontsize=7)
    ax.set_xlabel("class, sorted by #training instances (descending)")
    ax.set_xlim(-0.6, n - 0.4)


# ---------------------------------------------------------------------- weight norms
def weight_norm_data(weight, instance_counts, class_rows=None) -> Dict[str, np.ndarray]:
    """Per-class classifier weight norms, sorted by instance count (descending).

    Args:
        weight: ``(C, D)`` or ``(C+1, D)`` classifier weight (background row last is dropped);
            trailing dims (conv kernels) are flattened.
        instance_counts: ``(C,)`` training instance counts.
        class_rows: optional ``(C,)`` row of each class in ``weight`` (e.g. BAGS' grouped
            layout: ``layout.column_of_label[:C]``); default ``0..C-1``.
    Returns:
        dict with ``order`` (class ids), ``counts`` and ``norms`` (both in that order) and
        ``background_norm`` (NaN when ``weight`` has no extra row).
    """
    w = _np(weight)
    w = w.reshape(w.shape[0], -1)
    counts = _np(instance_counts)
    C = counts.shape[0]
    norms_all = np.linalg.norm(w, axis=1)
    if class_rows is not None:
        rows = _np(class_rows, np.int64).reshape(-1)
        if rows.shape[0] != C:
            raise ValueError("class_rows has %d entries for %d classes" % (rows.shape[0], C))
        norms, bg = norms_all[rows], float("nan")
    else:
        if w.shape[0] not in (C, C + 1):
            raise ValueError("weight has %d rows; expected C=%d or C+1=%d" % (w.shape[0], C, C + 1))
        norms = norms_all[:C]
        bg = float(norms_all[C]) if w.shape[0] == C + 1 else float("nan")
    order = sort_by_count(counts)
    return {"order": order, "counts": counts[order], "norms": norms[order], "background_norm": bg}


def plot_weight_norms(weight, instance_counts, class_names: Optional[Sequence[str]] = None,
                      path: str = "weight_norms.png", class_rows=None, title: Optional[str] = None) -> str:
    """Classifier weight norm per foreground class sorted by training instances (BAGS / C2AM Fig. 1).

    Bars: ``||w_j||``; grey line (log axis on the right): instance counts. Returns ``path``.
    """
    d = weight_norm_data(weight, instance_counts, class_rows)
    n = len(d["order"])
    fig, ax = _figure(figsize=(max(6.0, min(14.0, 0.25 * n + 3)), 4.0))
    ax.bar(np.arange(n), d["norms"], width=1.0 if n > 100 else 0.8, color="tab:blue", label="||w_j||")
    if not math.isnan(d["background_norm"]):
        ax.axhline(d["background_norm"], color="tab:red", ls="--", lw=1, label="background ||w_bg||")
    ax.set_ylabel("classifier weight norm ||w_j||")
    _class_ticks(ax, d["order"], class_names)
    _count_axis(ax, d["counts"])
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title(title or "Classifier weight norm per class (BAGS Fig. 1 / C2AM Fig. 1)")
    return _save(fig, path)


# ---------------------------------------------------------------------- EQL v2
def _sigmoid(x):
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # overflow-free


def eqlv2_ratio_data(pos_grad, neg_grad, instance_counts, gamma: float = 12.0, mu: float = 0.8,
                     alpha: float = 4.0) -> Dict[str, np.ndarray]:
    """EQL v2 accumulated gradient ratio per class, sorted by instance count (descending).

    ``ratio = pos_grad / (neg_grad + 1e-10)`` (the loss' own formula), ``r = f(ratio)`` the
    negative weight and ``q = 1 + alpha (1 - r)`` the positive weight, ``f(x) =
    sigmoid(gamma (x - mu))``. Returns ``order``, ``counts``, ``pos_grad``, ``neg_grad``,
    ``ratio``, ``q``, ``r`` (all in that order).
    """
    pos = _np(pos_grad).reshape(-1)
    neg = _np(neg_grad).reshape(-1)
    counts = _np(instance_counts)
    if not (pos.shape == neg.shape == counts.shape):
        raise ValueError("pos_grad %s, neg_grad %s and instance_counts %s must all be (C,)"
                         % (pos.shape, neg.shape, counts.shape))
    ratio = pos / (neg + 1e-10)
    r = _sigmoid(gamma * (ratio - mu))
    q = 1.0 + alpha * (1.0 - r)
    o = sort_by_count(counts)
    return {"order": o, "counts": counts[o], "pos_grad": pos[o], "neg_grad": neg[o], "ratio": ratio[o],
            "q": q[o], "r": r[o]}


def plot_eqlv2_ratios(pos_grad, neg_grad, instance_counts, path: str = "eqlv2_ratios.png",
                      class_names: Optional[Sequence[str]] = None, gamma: float = 12.0, mu: float = 0.8,
                      alpha: float = 4.0, title: Optional[str] = None) -> str:
    """EQL v2 Fig. 1: accumulated positive/negative gradient ratio per class, sorted by instances.

    Top panel: the ratio ``g_j`` (and the counts on a log axis); bottom panel: the weights
    ``q_j`` (positives) and ``r_j`` (negatives) EQL v2 maps it to. Returns ``path``.
    """
    d = eqlv2_ratio_data(pos_grad, neg_grad, instance_counts, gamma, mu, alpha)
    n = len(d["order"])
    fig, (a1, a2) = _figure(2, 1, figsize=(max(6.0, min(14.0, 0.25 * n + 3)), 6.5), sharex=True)
    x = np.arange(n)
    a1.plot(x, d["ratio"], color="tab:green", marker="." if n <= 200 else None, lw=1.2,
            label="accumulated pos/neg gradient ratio g_j")
    a1.axhline(1.0, color="0.6", ls=":", lw=1)
    a1.set_ylabel("g_j = pos_grad / neg_grad")
    a1.legend(loc="upper right", fontsize=8)
    _count_axis(a1, d["counts"])
    a1.set_title(title or "EQL v2: gradient ratio per class (EQL v2 Fig. 1)")
    a2.plot(x, d["q"], color="tab:blue", lw=1.2, label="q_j (positive weight) = 1 + alpha (1 - f(g_j))")
    a2.plot(x, d["r"], color="tab:orange", lw=1.2, label="r_j (negative weight) = f(g_j)")
    a2.set_ylabel("EQL v2 weight")
    a2.set_ylim(-0.05, 1.0 + alpha + 0.2)
    a2.legend(loc="upper left", fontsize=8)
    _class_ticks(a2, d["order"], class_names)
    return _save(fig, path)


# ---------------------------------------------------------------------- BOFL
def _default_bofl_classes(counts: np.ndarray):
    """Head (most instances), mid (median rank) and tail (fewest, > 0) classes."""
    order = sort_by_count(counts)
    nz = order[counts[order] > 0]
    if len(nz) == 0:
        nz = order
    picks = [int(nz[0]), int(nz[len(nz) // 2]), int(nz[-1])]
    out = []
    for c in picks:
        if c not in out:
            out.append(c)
    return out


def bofl_schedule_data(instance_counts, total_epochs: float, deferred_epochs: float = 0, kappa: float = 1.0,
                       classes: Optional[Sequence[int]] = None, per_iteration: bool = False,
                       steps_per_epoch: int = 20) -> Dict[str, np.ndarray]:
    """BOFL's dataset-level weight ``alpha_hat_i(e) = 1 + kappa * lambda(e) * (alpha_i - 1)`` over epochs.

    ``alpha_i = n / (C n_i)`` and ``lambda(e)`` are the loss' own
    (:func:`lt_detectron.losses.bofl.bofl_dataset_weights`, :class:`~lt_detectron.losses.bofl.BOFLSchedule`).
    ``classes`` default: head, mid and tail class (by instance count). The epochs sampled are
    ``0, 1, ..., ceil(T)`` (``lambda`` changes only at epoch boundaries), or ``steps_per_epoch``
    points per epoch with ``per_iteration``. Returns ``epochs`` (E,), ``lam`` (E,), ``classes``
    (K,), ``alpha`` (K,) and ``alpha_hat`` (K, E).
    """
    import torch

    from ..losses.bofl import BOFLSchedule, bofl_dataset_weights

    counts = _np(instance_counts)
    classes = _default_bofl_classes(counts) if classes is None else [int(c) for c in classes]
    sched = BOFLSchedule(total_epochs, deferred_epochs, per_iteration)
    end = int(math.ceil(total_epochs))
    if per_iteration:
        epochs = np.linspace(0.0, float(end), end * steps_per_epoch + 1)
    else:
        epochs = np.arange(end + 1, dtype=np.float64)
    lam = np.array([sched(e) for e in epochs])
    alpha = bofl_dataset_weights(counts, dtype=torch.float64).numpy()[classes]
    alpha_hat = 1.0 + kappa * lam[None, :] * (alpha[:, None] - 1.0)
    return {"epochs": epochs, "lam": lam, "classes": np.asarray(classes, dtype=np.int64), "alpha": alpha,
            "alpha_hat": alpha_hat}


def plot_bofl_schedule(instance_counts, total_epochs: float, deferred_epochs: float = 0, kappa: float = 1.0,
                       path: str = "bofl_schedule.png", classes: Optional[Sequence[int]] = None,
                       class_names: Optional[Sequence[str]] = None, per_iteration: bool = False,
                       title: Optional[str] = None) -> str:
    """BOFL Fig. 1/2: the weight ``alpha_hat_i`` of a few classes over training.

    Solid: linear scheduling after ``deferred_epochs`` (what the loss does); dashed: the
    constant weight without scheduling, ``1 + kappa (alpha_i - 1)``. Top panel: ``lambda(e)``.
    Returns ``path``.
    """
    d = bofl_schedule_data(instance_counts, total_epochs, deferred_epochs, kappa, classes, per_iteration)
    counts = _np(instance_counts)
    fig, (a0, a1) = _figure(2, 1, figsize=(7.0, 6.0), sharex=True, gridspec_kw={"height_ratios": [1, 2.2]})
    where = None if per_iteration else "post"
    draw = (lambda ax, x, y, **k: ax.plot(x, y, **k)) if per_iteration else \
        (lambda ax, x, y, **k: ax.step(x, y, where=where, **k))
    draw(a0, d["epochs"], d["lam"], color="k", lw=1.5)
    a0.set_ylabel("lambda(epoch)")
    a0.set_ylim(-0.05, 1.05)
    a0.axvline(deferred_epochs, color="0.6", ls=":", lw=1)
    a0.set_title(title or "BOFL weight schedule (T=%g epochs, deferred d=%g, kappa=%g)"
                 % (total_epochs, deferred_epochs, kappa))
    colors = _colors()
    for k, c in enumerate(d["classes"]):
        name = class_names[c] if class_names is not None else "class %d" % c
        col = colors[k % len(colors)]
        label = "%s (%d inst., alpha=%.3g)" % (name, counts[c], d["alpha"][k])
        draw(a1, d["epochs"], d["alpha_hat"][k], color=col, lw=1.8, label=label)
        a1.axhline(1.0 + kappa * (d["alpha"][k] - 1.0), color=col, ls="--", lw=1)
    a1.axvline(deferred_epochs, color="0.6", ls=":", lw=1)
    if np.nanmax(d["alpha_hat"]) / max(np.nanmin(d["alpha_hat"]), 1e-12) > 50:
        a1.set_yscale("log")
    a1.set_xlabel("epoch (0-based)")
    a1.set_ylabel("alpha_hat_i (solid: scheduled, dashed: constant)")
    a1.legend(fontsize=8, loc="best")
    return _save(fig, path)


# ---------------------------------------------------------------------- AP vs instances
def _bin_index(counts: np.ndarray, edges: Sequence[float]) -> np.ndarray:
    return np.searchsorted(np.asarray(edges, dtype=np.float64), counts, side="right")


def ap_vs_instances_data(per_class_ap: Mapping[str, Sequence[float]], instance_counts,
                         bin_edges: Sequence[float] = DEFAULT_BIN_EDGES) -> Dict[str, object]:
    """Per-class AP sorted by instance count and the mean AP per instance-count bin, per method.

    Bins are ``[0, e0) [e0, e1) ... [e_k, inf)`` (BAGS' default 10/100/1000). NaN APs (classes
    absent from the evaluation set) are left out of the means; an empty bin has mean NaN.
    Returns ``order``, ``counts`` (sorted), ``ap`` (method -> AP in that order), ``bins``
    (list of ``(lo, hi)``), ``bin_counts`` (classes per bin) and ``bin_mean`` (method -> (B,)).
    """
    counts = _np(instance_counts)
    edges = [float(e) for e in bin_edges]
    if any(b <= a for a, b in zip(edges, edges[1:])):
        raise ValueError("bin_edges must be strictly increasing, got %r" % (list(bin_edges),))
    order = sort_by_count(counts)
    idx = _bin_index(counts, edges)
    bounds = [0.0] + edges + [float("inf")]
    B = len(bounds) - 1
    ap_sorted, means = {}, {}
    for m, ap in per_class_ap.items():
        ap = _np(ap).reshape(-1)
        if ap.shape != counts.shape:
            raise ValueError("per_class_ap[%r] has %d entries for %d classes" % (m, ap.shape[0], counts.shape[0]))
        ap_sorted[m] = ap[order]
        mean = np.full(B, np.nan)
        for b in range(B):
            v = ap[(idx == b) & ~np.isnan(ap)]
            if len(v):
                mean[b] = v.mean()
        means[m] = mean
    return {"order": order, "counts": counts[order], "ap": ap_sorted,
            "bins": list(zip(bounds[:-1], bounds[1:])), "bin_counts": np.bincount(idx, minlength=B),
            "bin_mean": means}


def plot_ap_vs_instances(per_class_ap: Mapping[str, Sequence[float]], instance_counts,
                         path: str = "ap_vs_instances.png", bin_edges: Sequence[float] = DEFAULT_BIN_EDGES,
                         title: Optional[str] = None, ylabel: str = "AP") -> str:
    """Per-class AP vs training instance count for several methods (scatter + binned means).

    x: instance count (log; zero-count classes drawn at 0.8); one colour per method; the
    line joins each method's mean AP per instance bin, drawn at the bin's geometric centre.
    Returns ``path``.
    """
    d = ap_vs_instances_data(per_class_ap, instance_counts, bin_edges)
    fig, ax = _figure(figsize=(7.5, 4.8))
    colors = _colors()
    x = np.maximum(d["counts"], 0.8)
    centres = []
    for lo, hi in d["bins"]:
        lo_ = max(lo, 1.0)
        hi_ = hi if math.isfinite(hi) else max(float(np.max(d["counts"])) if len(x) else 10.0, lo_ * 10.0)
        centres.append(math.sqrt(lo_ * max(hi_, lo_)))
    n_methods = max(1, len(d["ap"]))
    for k, (m, ap) in enumerate(d["ap"].items()):
        col = colors[k % len(colors)]
        jitter = 1.0 + 0.04 * (k - (n_methods - 1) / 2.0)  # spread overlapping points a little
        ax.scatter(x * jitter, ap, s=14, alpha=0.55, color=col, edgecolors="none")
        ok = ~np.isnan(d["bin_mean"][m])
        ax.plot(np.asarray(centres)[ok], d["bin_mean"][m][ok], color=col, lw=2, marker="o", label=m)
    for lo, _ in d["bins"][1:]:
        ax.axvline(lo, color="0.8", lw=0.8, ls=":")
    ax.set_xscale("log")
    ax.set_xlabel("#training instances of the class (log)")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8, loc="best")
    ax.set_title(title or "Per-class AP vs training instances (dots: classes, lines: bin means)")
    return _save(fig, path)
