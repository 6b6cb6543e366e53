"""The plots the papers use to explain the methods, as pure functions (matplotlib, Agg backend).
The plots of evaluation results (AP vs training instances) are in :mod:`.result_plots`.

Each ``plot_*`` function writes one PNG and returns its path; the numbers it draws come from
a matching ``*_data`` function (plain numpy in, dict of numpy arrays out), so they can be
checked or saved without a figure. Classes are always sorted by training instance count,
**descending** (head on the left, tail on the right, as in the papers), ties kept in class-id
order.

=====================  ===========================================  ===============================
function               what it shows                                paper
=====================  ===========================================  ===============================
plot_weight_norms      classifier weight norm ``||w_j||`` per class  BAGS Fig. 1, C2AM Fig. 1(a)
plot_class_statistics  a loss' accumulated positive/negative       EQL v2 Fig. 1 (and Fig. 2 when
                       gradient ratio and its factors (EQL v2:      written during training); EFL
                       ``q_j, r_j``; EFL: ``gamma_j, w_j``)
plot_bofl_schedule     BOFL weight ``alpha_hat_i`` over epochs       BOFL Fig. 1 / Fig. 2
=====================  ===========================================  ===============================
"""

import math
import os
from typing import Dict, Mapping, Optional, Sequence, Tuple

import numpy as np


__all__ = [
    "METHOD_COLORS",
    "method_color",
    "method_style",
    "method_styles",
    "split_method",
    "sort_by_count",
    "weight_norm_data",
    "plot_weight_norms",
    "class_statistics_data",
    "plot_class_statistics",
    "eqlv2_ratio_data",
    "plot_eqlv2_ratios",
]

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


# One colour per method in every plot (AP vs instances, group bars, the benchmark report): keyed by
# the loss, so BOFL is orange on FCOS, CenterNet and the sigmoid ROI head alike; the detector family
# is told by the marker and line style (:func:`method_style`).
METHOD_COLORS = {
    "softmax": "#000000",
    "focal": "#000000",
    "sigmoid": "#7f7f7f",
    "eqlv2": "#d62728",
    "ecm": "#2ca02c",
    "c2am": "#9467bd",
    "bags": "#8c564b",
    "bags_decoupled": "#e377c2",
    "seesaw": "#17becf",
    "bofl": "#ff7f0e",
    "bofl_wf": "#bcbd22",
    "bofl_wf_ls": "#dbb40c",
    "bofl_bb_ls": "#c49c94",
    "efl": "#1f77b4",
}
_FAMILY_STYLE = {
    "": ("o", "-"),
    "fcos": ("o", "-"),
    "centernet": ("s", "--"),
    "retinanet": ("^", ":"),
}
# for methods without a colour of their own: strong colours first (a lone run's plot gets the first)
_SPARE = (
    "#393b79",
    "#637939",
    "#9edae5",
    "#ff9896",
    "#c5b0d5",
    "#98df8a",
    "#f7b6d2",
    "#aec7e8",
    "#843c39",
    "#7b4173",
    "#8c6d31",
    "#5254a3",
    "#e7ba52",
    "#ce6dbd",
)


def split_method(method: str):
    """``"fcos_bofl_wf"`` -> ``("fcos", "bofl_wf")``; ROI methods have family ``""``;
    ``"sigmoid_<loss>"`` (that method's channel weights on the sigmoid ROI classifier, e.g.
    ``"sigmoid_bofl"``) -> ``("", "<loss>")`` when ``<loss>`` has a colour."""
    fam, _, rest = method.partition("_")
    if fam in _FAMILY_STYLE and fam and rest:
        return fam, rest
    if fam == "sigmoid" and rest in METHOD_COLORS:
        return "", rest
    return "", method


def method_color(method: str) -> str:
    """The method's colour (:data:`METHOD_COLORS`; an unknown name gets a fixed spare colour)."""
    loss = split_method(method)[1]
    if loss in METHOD_COLORS:
        return METHOD_COLORS[loss]
    import zlib

    return _SPARE[zlib.crc32(loss.encode()) % len(_SPARE)]


def method_style(method: str):
    """``(colour, marker, line style)`` of a method: colour by loss, marker/line by detector."""
    marker, ls = _FAMILY_STYLE[split_method(method)[0]]
    return method_color(method), marker, ls


def method_styles(methods: Sequence[str]) -> Dict[str, Tuple[str, str, str]]:
    """:func:`method_style` of every method drawn in one figure, where no two methods share a colour:
    a method without a colour of its own takes the first spare colour no other method of the figure
    has (in the order given); only when they run out does it fall back to its fixed spare colour."""
    styles = {m: method_style(m) for m in methods}
    known = {m for m in methods if split_method(m)[1] in METHOD_COLORS}
    used = {styles[m][0] for m in known}
    free = [c for c in _SPARE if c not in used]
    for m in methods:
        if m in known or not free:
            continue
        _, marker, ls = styles[m]
        styles[m] = (free.pop(0), marker, ls)
    return styles


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


def plot_weight_norms(
    weight,
    instance_counts,
    class_names: Optional[Sequence[str]] = None,
    path: str = "weight_norms.png",
    class_rows=None,
    title: Optional[str] = None,
) -> str:
    """Classifier weight norm per foreground class sorted by training instances (BAGS / C2AM Fig. 1).

    Bars: ``||w_j||``; grey line (log axis on the right): instance counts. Returns ``path``.
    """
    d = weight_norm_data(weight, instance_counts, class_rows)
    n = len(d["order"])
    fig, ax = _figure(figsize=(max(6.0, min(14.0, 0.25 * n + 3)), 4.0))
    ax.bar(
        np.arange(n), d["norms"], width=1.0 if n > 100 else 0.8, color="tab:blue", label="||w_j||"
    )
    if not math.isnan(d["background_norm"]):
        ax.axhline(
            d["background_norm"], color="tab:red", ls="--", lw=1, label="background ||w_bg||"
        )
    ax.set_ylabel("classifier weight norm ||w_j||")
    _class_ticks(ax, d["order"], class_names)
    _count_axis(ax, d["counts"])
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title(title or "Classifier weight norm per class (BAGS Fig. 1 / C2AM Fig. 1)")
    return _save(fig, path)


# ---------------------------------------------------------------------- gradient statistics (EQL v2, EFL)
def class_statistics_data(stats: Mapping, instance_counts) -> Dict[str, object]:
    """A loss' per-class statistics (its ``plot_data()``: ``ratio`` (C,), ``factors`` {label: (C,)}),
    sorted by instance count (descending). Returns ``order``, ``counts``, ``ratio`` and ``factors``
    (label -> values), all in that order."""
    counts = _np(instance_counts)
    ratio = _np(stats["ratio"]).reshape(-1)
    factors = {k: _np(v).reshape(-1) for k, v in stats.get("factors", {}).items()}
    for k, v in [("ratio", ratio)] + list(factors.items()):
        if v.shape != counts.shape:
            raise ValueError(
                "%s has %d entries for %d classes (instance_counts)"
                % (k, v.shape[0], counts.shape[0])
            )
    o = sort_by_count(counts)
    return {
        "order": o,
        "counts": counts[o],
        "ratio": ratio[o],
        "factors": {k: v[o] for k, v in factors.items()},
    }


def plot_class_statistics(
    stats: Mapping,
    instance_counts,
    path: str = "class_statistics.png",
    class_names: Optional[Sequence[str]] = None,
    title: Optional[str] = None,
) -> str:
    """A loss' accumulated gradient ratio per class and the factors it maps it to (EQL v2 Fig. 1; EFL).

    ``stats`` is the loss' ``plot_data()`` (``title``, ``ratio``, ``ratio_label``, ``factors``,
    ``factors_label``, ``params``). Top panel: the ratio (and the counts on a log axis); bottom panel: the
    factors. Classes sorted by training instances. Returns ``path``.
    """
    d = class_statistics_data(stats, instance_counts)
    n = len(d["order"])
    fig, (a1, a2) = _figure(2, 1, figsize=(max(6.0, min(14.0, 0.25 * n + 3)), 6.5), sharex=True)
    x = np.arange(n)
    marker = "." if n <= 200 else None
    a1.plot(
        x,
        d["ratio"],
        color="tab:green",
        marker=marker,
        lw=1.2,
        label=stats.get("ratio_label", "ratio"),
    )
    a1.axhline(1.0, color="0.6", ls=":", lw=1)
    a1.set_ylabel("pos/neg gradient ratio")
    a1.legend(loc="upper right", fontsize=8)
    _count_axis(a1, d["counts"])
    a1.set_title(title or stats.get("title", "Gradient ratio per class"))
    colors = ["tab:blue", "tab:orange"] + _colors()
    for k, (label, v) in enumerate(d["factors"].items()):
        a2.plot(x, v, color=colors[k % len(colors)], marker=marker, lw=1.2, label=label)
    a2.set_ylabel(stats.get("factors_label", "factor"))
    a2.legend(loc="best", fontsize=8, title=stats.get("params"), title_fontsize=8)
    _class_ticks(a2, d["order"], class_names)
    return _save(fig, path)


def eqlv2_ratio_data(
    pos_grad, neg_grad, instance_counts, gamma: float = 12.0, mu: float = 0.8, alpha: float = 4.0
) -> Dict[str, np.ndarray]:
    """EQL v2 accumulated gradient ratio per class from raw statistics, sorted by instance count.

    ``ratio = pos_grad / (neg_grad + 1e-10)`` (the loss' own formula), ``r = f(ratio)`` the
    negative weight and ``q = 1 + alpha (1 - r)`` the positive weight, ``f(x) =
    sigmoid(gamma (x - mu))`` (:func:`lt_detectron.losses.eqlv2.eqlv2_map`). Returns ``order``,
    ``counts``, ``pos_grad``, ``neg_grad``, ``ratio``, ``q``, ``r`` (all in that order).
    """
    import torch

    from ..losses.eqlv2 import eqlv2_map

    pos = _np(pos_grad).reshape(-1)
    neg = _np(neg_grad).reshape(-1)
    counts = _np(instance_counts)
    if not (pos.shape == neg.shape == counts.shape):
        raise ValueError(
            "pos_grad %s, neg_grad %s and instance_counts %s must all be (C,)"
            % (pos.shape, neg.shape, counts.shape)
        )
    ratio = pos / (neg + 1e-10)
    r = eqlv2_map(torch.from_numpy(ratio), gamma, mu).numpy()
    q = 1.0 + alpha * (1.0 - r)
    o = sort_by_count(counts)
    return {
        "order": o,
        "counts": counts[o],
        "pos_grad": pos[o],
        "neg_grad": neg[o],
        "ratio": ratio[o],
        "q": q[o],
        "r": r[o],
    }


def plot_eqlv2_ratios(
    pos_grad,
    neg_grad,
    instance_counts,
    path: str = "eqlv2_ratios.png",
    class_names: Optional[Sequence[str]] = None,
    gamma: float = 12.0,
    mu: float = 0.8,
    alpha: float = 4.0,
    title: Optional[str] = None,
) -> str:
    """EQL v2 Fig. 1 from raw ``pos_grad``/``neg_grad`` (C,): :func:`plot_class_statistics` of an
    :class:`~lt_detectron.losses.EQLv2Loss` holding them. Returns ``path``."""
    import torch

    from ..losses.eqlv2 import EQLv2Loss

    pos = torch.as_tensor(_np(pos_grad).reshape(-1), dtype=torch.float32)
    loss = EQLv2Loss(pos.numel(), gamma, mu, alpha)
    loss.pos_grad.copy_(pos)
    loss.neg_grad.copy_(torch.as_tensor(_np(neg_grad).reshape(-1), dtype=torch.float32))
    loss.pos_neg.copy_(loss.pos_grad / (loss.neg_grad + 1e-10))
    return plot_class_statistics(loss.plot_data(), instance_counts, path, class_names, title)


def __getattr__(name):
    """The AP plots moved to :mod:`.result_plots` and the BOFL schedule plot to :mod:`.bofl_plots`
    (they use the helpers above); importable from here too."""
    if name in ("ap_vs_instances_data", "plot_ap_vs_instances"):
        from . import result_plots

        return getattr(result_plots, name)
    if name in ("bofl_schedule_data", "plot_bofl_schedule"):
        from . import bofl_plots

        return getattr(bofl_plots, name)
    raise AttributeError("module %r has no attribute %r" % (__name__, name))
