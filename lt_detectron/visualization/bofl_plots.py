"""BOFL's weight schedule plot (BOFL Fig. 1 / Fig. 2): :func:`plot_bofl_schedule` and the numbers it
draws, :func:`bofl_schedule_data`. Importable from :mod:`.plots` too."""

import math
from typing import Dict, Optional, Sequence

import numpy as np

from .plots import _colors, _figure, _np, _save, sort_by_count

__all__ = ["bofl_schedule_data", "plot_bofl_schedule"]


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


def bofl_schedule_data(
    instance_counts,
    total_epochs: float,
    deferred_epochs: float = 0,
    kappa: float = 1.0,
    classes: Optional[Sequence[int]] = None,
    per_iteration: bool = False,
    steps_per_epoch: int = 20,
) -> Dict[str, np.ndarray]:
    """BOFL's dataset-level weight ``alpha_hat_i(e) = 1 + kappa * lambda(e) * (alpha_i - 1)`` over epochs.

    ``alpha_i = n / (C n_i)`` and ``lambda(e)`` are the loss' own
    (:func:`lt_detectron.losses.bofl.bofl_dataset_weights`, :class:`~lt_detectron.losses.bofl.BOFLSchedule`).
    ``classes`` default: head, mid and tail class (by instance count). The epochs sampled are
    ``0, 1, ..., max(1, ceil(T))`` (``lambda`` changes only at epoch boundaries; T = 0 is the constant
    schedule of ``LINEAR_SCHEDULE False``, lambda = 1), or ``steps_per_epoch`` points per epoch with
    ``per_iteration``. The settings come from :func:`lt_detectron.data.epochs.bofl_settings`.
    Returns ``epochs`` (E,), ``lam`` (E,), ``classes`` (K,), ``alpha`` (K,) and ``alpha_hat`` (K, E).
    """
    import torch

    from ..losses.bofl import BOFLSchedule, bofl_dataset_weights

    counts = _np(instance_counts)
    classes = _default_bofl_classes(counts) if classes is None else [int(c) for c in classes]
    sched = BOFLSchedule(total_epochs, deferred_epochs, per_iteration)
    end = max(1, int(math.ceil(total_epochs)))
    if per_iteration:
        epochs = np.linspace(0.0, float(end), end * steps_per_epoch + 1)
    else:
        epochs = np.arange(end + 1, dtype=np.float64)
    lam = np.array([sched(e) for e in epochs])
    alpha = bofl_dataset_weights(counts, dtype=torch.float64).numpy()[classes]
    alpha_hat = 1.0 + kappa * lam[None, :] * (alpha[:, None] - 1.0)
    return {
        "epochs": epochs,
        "lam": lam,
        "classes": np.asarray(classes, dtype=np.int64),
        "alpha": alpha,
        "alpha_hat": alpha_hat,
    }


def plot_bofl_schedule(
    instance_counts,
    total_epochs: float,
    deferred_epochs: float = 0,
    kappa: float = 1.0,
    path: str = "bofl_schedule.png",
    classes: Optional[Sequence[int]] = None,
    class_names: Optional[Sequence[str]] = None,
    per_iteration: bool = False,
    title: Optional[str] = None,
) -> str:
    """BOFL Fig. 1/2: the weight ``alpha_hat_i`` of a few classes over training.

    Solid: linear scheduling after ``deferred_epochs`` (what the loss does); dashed: the
    constant weight without scheduling, ``1 + kappa (alpha_i - 1)``. Top panel: ``lambda(e)``.
    Returns ``path``.
    """
    d = bofl_schedule_data(
        instance_counts, total_epochs, deferred_epochs, kappa, classes, per_iteration
    )
    counts = _np(instance_counts)
    fig, (a0, a1) = _figure(
        2, 1, figsize=(7.0, 6.0), sharex=True, gridspec_kw={"height_ratios": [1, 2.2]}
    )
    where = None if per_iteration else "post"
    draw = (
        (lambda ax, x, y, **k: ax.plot(x, y, **k))
        if per_iteration
        else (lambda ax, x, y, **k: ax.step(x, y, where=where, **k))
    )
    draw(a0, d["epochs"], d["lam"], color="k", lw=1.5)
    a0.set_ylabel("lambda(epoch)")
    a0.set_ylim(-0.05, 1.05)
    a0.axvline(deferred_epochs, color="0.6", ls=":", lw=1)
    a0.set_title(
        title
        or "BOFL weight schedule (T=%g epochs, deferred d=%g, kappa=%g)"
        % (total_epochs, deferred_epochs, kappa)
    )
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
