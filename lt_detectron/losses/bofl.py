"""BOFL: Balance-Oriented Focal Loss with linear scheduling (Gil et al., arXiv 2012.13763). Paper only.

Pieces (see docs/methods.md#bofl; [interp] marks our reading of unspecified details):

* dataset weight   alpha_i = n / (C n_i), n = sum_i n_i     (:func:`bofl_dataset_weights`)
* schedule         lambda(e) = clip((e - d) / (T - d), 0, 1), e = floor(epoch) (0-based), updated only at
                   epoch boundaries unless ``per_iteration`` [interp]       (:class:`BOFLSchedule`)
* class weights    w_hat_{i,k} = (1 + kappa lambda (alpha_i - 1)) * eta_hat ** n_{i,k},
                   eta_hat = 1 + lambda (eta - 1) [interp: eta scheduled too]  (:func:`bofl_class_weights`)
                   n_{i,k} = number of GT objects of class i in image (or local batch) k, **not all-reduced**
* loss             sum over locations and channels of w_hat_{i,k(loc)} * alpha_t * focal_i, i.e. the weight
                   multiplies the plain sigmoid focal loss (including alpha_t) [interp], reduction = sum; the
                   detector keeps its own normaliser. lambda = 0 gives weights exactly 1 -> plain focal.

Dense-head convention: C channels, no background channel; a background location has an all-zero target.
For a sigmoid ROI classifier (extension, not in the paper) pass the same weights as ``class_weights`` of
:func:`lt_detectron.losses.sigmoid.sigmoid_bce_loss` ((C,) or per-ROI rows (R, C)).

In training, :class:`BOFLWeighting` turns the iteration into lambda: epoch = iteration / iterations per
epoch (the iteration from Detectron2's event storage, the epoch length a number given at construction:
``MODEL.LT.BOFL.ITERS_PER_EPOCH``, which the trainer fills from the training data, see
:mod:`lt_detectron.data.epochs`), and logs ``bofl/lambda``. It is shared by the dense loss registered as
``bofl`` (:class:`BOFLDenseLoss`, focal and heat-map forms) and the sigmoid ROI loss with
``MODEL.LT.BOFL.ENABLED`` (an optional ROI switch this module registers).

:func:`bofl_settings` is the one translation of ``MODEL.LT.BOFL`` into the keyword arguments of
:class:`BOFLWeighting`, used by the losses and the schedule plot.
"""

import math
from typing import Optional, Sequence

import torch
import torch.nn as nn

from .base import (
    DENSE_LOSS_REGISTRY,
    ROI_LOSS_REGISTRY,
    DenseBatch,
    DenseLoss,
    class_counts,
    log_scalar,
    register_roi_option,
    storage_iteration,
)
from .build import roi_loss_name
from .bofl_functional import (
    BOFLSchedule,
    batch_class_counts,
    bofl_class_weights,
    bofl_dataset_weights,
    bofl_focal_loss,
)
from .focal import labels_to_targets, penalty_reduced_focal_loss

__all__ = [
    "bofl_dataset_weights",
    "BOFLSchedule",
    "bofl_class_weights",
    "batch_class_counts",
    "bofl_focal_loss",
    "BOFLWeighting",
    "BOFLDenseLoss",
    "BOFL_OPTION",
    "EPOCH_LENGTH_KEY",
    "bofl_settings",
    "bofl_epoch_length_key",
    "config_uses_bofl",
]

# the optional ROI switch of BOFL's channel weights (losses that honour it list it in supported_options)
BOFL_OPTION = "MODEL.LT.BOFL.ENABLED"
register_roi_option(BOFL_OPTION, lambda cfg: bool(cfg.MODEL.LT.BOFL.ENABLED))
# where BOFL reads the run's epoch length (iterations per epoch; 0 = not given, the trainer fills it)
EPOCH_LENGTH_KEY = "MODEL.LT.BOFL.ITERS_PER_EPOCH"


def bofl_epoch_length_key(cfg) -> Optional[str]:
    """:data:`EPOCH_LENGTH_KEY` when BOFL's schedule is linear in epochs, else None (``LINEAR_SCHEDULE
    False`` is lambda = 1 from the first iteration and needs no epoch length)."""
    return EPOCH_LENGTH_KEY if cfg.MODEL.LT.BOFL.LINEAR_SCHEDULE else None


def _epoch_length(cfg) -> float:
    """``MODEL.LT.BOFL.ITERS_PER_EPOCH``, which must have been given (> 0)."""
    value = float(cfg.MODEL.LT.BOFL.ITERS_PER_EPOCH)
    if not value > 0:
        raise ValueError(
            "BOFL's schedule is in epochs and needs the epoch length, but %s is %r. Build the model "
            "through LTTrainer or lt_detectron's heads (they fill it from DATASETS.TRAIN), call "
            "lt_detectron.data.epochs.with_iters_per_epoch(cfg, None) first, or set %s > 0 (iterations "
            "per epoch); MODEL.LT.BOFL.LINEAR_SCHEDULE False needs none"
            % (EPOCH_LENGTH_KEY, value, EPOCH_LENGTH_KEY)
        )
    return value


def bofl_settings(cfg) -> dict:
    """``MODEL.LT.BOFL`` as the settings of BOFL's weights (ROI and dense heads, and the plots).

    Returns ``dict(kappa, eta, batch_counts, total_epochs, deferred_epochs, per_iteration,
    iters_per_epoch)``. ``LINEAR_SCHEDULE False`` (the paper's "WF without LS" ablation) gives
    lambda = 1 from the first iteration: a schedule with total = deferred = 0 epochs, which needs
    no epoch length (``iters_per_epoch`` None). A linear schedule reads the epoch length from
    ``MODEL.LT.BOFL.ITERS_PER_EPOCH`` (a clear error when it is 0) and lasts ``TOTAL_EPOCHS`` or, when
    0, ``ceil(SOLVER.MAX_ITER / iterations per epoch)`` epochs, more than ``DEFERRED_EPOCHS``: a clear
    error names the keys otherwise.
    """
    b = cfg.MODEL.LT.BOFL
    mode = str(b.BATCH_COUNTS).lower()
    if mode not in ("image", "batch", "none"):
        raise ValueError(
            "MODEL.LT.BOFL.BATCH_COUNTS must be image, batch or none, got %r" % (b.BATCH_COUNTS,)
        )
    linear = bool(b.LINEAR_SCHEDULE)
    total = 0
    if linear:
        if b.TOTAL_EPOCHS > 0:
            total = int(b.TOTAL_EPOCHS)
        else:
            total = max(1, int(math.ceil(cfg.SOLVER.MAX_ITER / _epoch_length(cfg))))
    if linear and total < b.DEFERRED_EPOCHS:
        how = (
            "MODEL.LT.BOFL.TOTAL_EPOCHS = %d" % b.TOTAL_EPOCHS
            if b.TOTAL_EPOCHS > 0
            else "SOLVER.MAX_ITER = %d at SOLVER.IMS_PER_BATCH = %d on %s (%.1f iterations per epoch; "
            "MODEL.LT.BOFL.TOTAL_EPOCHS = 0 means derived from them)"
            % (
                cfg.SOLVER.MAX_ITER,
                cfg.SOLVER.IMS_PER_BATCH,
                ", ".join(cfg.DATASETS.TRAIN),
                _epoch_length(cfg),
            )
        )
        raise ValueError(
            "BOFL's linear schedule is %d epoch(s) long (%s), shorter than MODEL.LT.BOFL.DEFERRED_EPOCHS = %d. "
            "Lengthen the schedule (SOLVER.MAX_ITER or MODEL.LT.BOFL.TOTAL_EPOCHS), lower "
            "MODEL.LT.BOFL.DEFERRED_EPOCHS, or set MODEL.LT.BOFL.LINEAR_SCHEDULE False."
            % (total, how, b.DEFERRED_EPOCHS)
        )
    return dict(
        kappa=float(b.KAPPA),
        eta=None if mode == "none" else float(b.ETA),
        batch_counts=mode,
        total_epochs=total,
        deferred_epochs=b.DEFERRED_EPOCHS if linear else 0,
        per_iteration=bool(b.PER_ITERATION),
        iters_per_epoch=_epoch_length(cfg) if linear else None,
    )


class BOFLWeighting(nn.Module):
    """BOFL's class weights at a training iteration (state-free: a function of the iteration and the batch).

    Args:
        instance_counts: (C,) training instance counts.
        kappa, eta: intensity and batch-wise base (``eta`` None: no batch-wise factor).
        batch_counts: ``"image"`` (n_{i,k} per image), ``"batch"`` (per local batch) or ``"none"``.
        total_epochs, deferred_epochs, per_iteration: the schedule (:class:`BOFLSchedule`).
        iters_per_epoch: the epoch length; needed unless the schedule is constant (total = deferred = 0,
            ``LINEAR_SCHEDULE False``).
    The keyword arguments are the dict of :func:`bofl_settings`.
    """

    def __init__(
        self,
        instance_counts,
        *,
        kappa: float = 1.0,
        eta: Optional[float] = None,
        batch_counts: str = "batch",
        total_epochs: float = 1,
        deferred_epochs: float = 0,
        per_iteration: bool = False,
        iters_per_epoch: Optional[float] = None,
    ):
        super().__init__()
        if batch_counts not in ("image", "batch", "none"):
            raise ValueError(
                "MODEL.LT.BOFL.BATCH_COUNTS must be image, batch or none, got %r" % (batch_counts,)
            )
        self.register_buffer(
            "dataset_weights", bofl_dataset_weights(instance_counts), persistent=False
        )
        self.num_classes = int(self.dataset_weights.numel())
        self.schedule = BOFLSchedule(total_epochs, deferred_epochs, per_iteration)
        constant = self.schedule.total_epochs == 0 and self.schedule.deferred_epochs == 0
        if not constant and not (iters_per_epoch is not None and iters_per_epoch > 0):
            raise ValueError(
                "BOFL's schedule is in epochs and needs the epoch length: set MODEL.LT.BOFL.ITERS_PER_EPOCH > 0 "
                "(the trainer fills it from the training data) or DATASETS.TRAIN; got %r"
                % (iters_per_epoch,)
            )
        self.iters_per_epoch = None if iters_per_epoch is None else float(iters_per_epoch)
        self.kappa = float(kappa)
        self.batch_counts = batch_counts
        self.eta = None if (batch_counts == "none" or eta is None) else float(eta)

    @property
    def needs_gt_classes(self) -> bool:
        return self.eta is not None

    def epoch(self, iteration: Optional[int] = None) -> float:
        """Fractional epochs done at ``iteration`` (default: the event storage's iteration)."""
        it = storage_iteration(iteration)
        return 0.0 if self.iters_per_epoch is None else it / self.iters_per_epoch

    def current_lambda(self, iteration: Optional[int] = None) -> float:
        return float(self.schedule(self.epoch(iteration)))

    def forward(
        self,
        gt_classes_per_image: Optional[Sequence[torch.Tensor]] = None,
        iteration: Optional[int] = None,
    ):
        """``(w, lam)``: w (K, C) per image (``batch_counts`` image), else (1, C), float32 on the weights'
        device. Logs ``bofl/lambda`` in training."""
        lam = self.current_lambda(iteration)
        if self.training:
            log_scalar("bofl/lambda", lam)
        counts = None
        if self.eta is not None:
            if gt_classes_per_image is None:
                raise ValueError(
                    "BOFL's batch-wise factor (MODEL.LT.BOFL.BATCH_COUNTS %s) needs the GT classes of every image: "
                    "pass gt_classes_per_image in the loss's batch (the lt_detectron heads do)"
                    % self.batch_counts
                )
            counts = batch_class_counts(
                [g.detach() for g in gt_classes_per_image],
                self.num_classes,
                per_image=self.batch_counts == "image",
            )
        return bofl_class_weights(self.dataset_weights, lam, self.kappa, self.eta, counts), lam

    def extra_repr(self) -> str:
        s = self.schedule
        return (
            "kappa=%g, eta=%s, batch_counts=%s, total_epochs=%g, deferred_epochs=%g, per_iteration=%s, "
            "iters_per_epoch=%s"
            % (
                self.kappa,
                self.eta,
                self.batch_counts,
                s.total_epochs,
                s.deferred_epochs,
                s.per_iteration,
                self.iters_per_epoch,
            )
        )


def bofl_from_config(cfg, class_stats) -> dict:
    """Keyword arguments of :class:`BOFLWeighting` from ``MODEL.LT.BOFL`` and the class statistics."""
    return dict(bofl_settings(cfg), instance_counts=class_counts(class_stats))


@DENSE_LOSS_REGISTRY.register("bofl")
class BOFLDenseLoss(DenseLoss):
    """BOFL for RetinaNet / FCOS (``forward``: :func:`bofl_focal_loss`, weights per image via
    ``batch.image_index`` or per batch) and CenterNet (``heatmap``: the same weights per channel on the
    penalty-reduced focal loss, k = one image). Sums; the detector normalises.

    Keyword arguments: ``focal_alpha``, ``focal_gamma`` and those of :class:`BOFLWeighting`.
    """

    needs_class_stats = True

    def __init__(
        self, instance_counts, *, focal_alpha: float = 0.25, focal_gamma: float = 2.0, **bofl
    ):
        weighting = BOFLWeighting(instance_counts, **bofl)
        super().__init__(weighting.num_classes, focal_alpha=focal_alpha, focal_gamma=focal_gamma)
        self.weighting = weighting

    @classmethod
    def from_config(
        cls,
        cfg,
        num_classes: int,
        class_stats=None,
        *,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
    ) -> dict:
        return dict(
            bofl_from_config(cfg, class_stats), focal_alpha=focal_alpha, focal_gamma=focal_gamma
        )

    @classmethod
    def epoch_length_key(cls, cfg) -> Optional[str]:
        return bofl_epoch_length_key(cfg)

    def current_lambda(self, iteration: Optional[int] = None) -> float:
        """lambda at ``iteration`` (default: the event storage's iteration)."""
        return self.weighting.current_lambda(iteration)

    def class_weights(self, gt_classes_per_image=None, iteration: Optional[int] = None):
        """``(w, lam)``: the weights of :class:`BOFLWeighting` for this batch."""
        return self.weighting(gt_classes_per_image, iteration)

    def forward(
        self, logits: torch.Tensor, labels: torch.Tensor, batch: Optional[DenseBatch] = None
    ) -> torch.Tensor:
        self._check_logits(logits)
        batch = batch or DenseBatch()
        w, _ = self.class_weights(batch.gt_classes_per_image, batch.iteration)
        w = w.to(device=logits.device, dtype=logits.dtype)
        target = labels_to_targets(labels, self.num_classes, logits.dtype)
        return bofl_focal_loss(
            logits,
            target,
            w,
            batch.image_index,
            self.focal_alpha,
            self.focal_gamma,
            reduction="sum",
        )

    def heatmap(
        self,
        logits: torch.Tensor,
        heat: torch.Tensor,
        batch: Optional[DenseBatch] = None,
        alpha: float = 2.0,
        beta: float = 4.0,
    ) -> torch.Tensor:
        batch = batch or DenseBatch()
        w, _ = self.class_weights(batch.gt_classes_per_image, batch.iteration)
        w = w.to(device=logits.device, dtype=torch.float32)
        return penalty_reduced_focal_loss(logits, heat, alpha, beta, weight=w[:, :, None, None])


def config_uses_bofl(cfg) -> bool:
    """Whether the config's dense loss is BOFL's or its ROI loss applies BOFL's weights (a loss that
    honours ``MODEL.LT.BOFL.ENABLED``, and the switch on): then BOFL's schedule plot applies."""
    if issubclass(DENSE_LOSS_REGISTRY.get(cfg.MODEL.LT.DENSE_LOSS), BOFLDenseLoss):
        return True
    roi = ROI_LOSS_REGISTRY.get(roi_loss_name(cfg))
    return bool(cfg.MODEL.LT.BOFL.ENABLED) and BOFL_OPTION in roi.supported_options
