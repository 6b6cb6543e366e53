"""Sigmoid BCE classification losses over Detectron2-style C+1 logits, and the fused core they share.

The sigmoid baseline's maths: docs/methods.md#sigmoid-baseline.

Conventions (Detectron2): ``logits`` has shape (R, C+1) for R ROIs; the **background is the last column
(index C)** and ``gt_classes`` (R,) holds labels in [0, C], C meaning background.

The core, :func:`fused_weighted_bce`, evaluates

    L = (1/R) * sum_{r,j} w_rj * BCE(a * z_rj + b_j, y_rj),   y = one_hot(gt_classes, K),
    w_rj = y_rj * pos_weight_j + (1 - y_rj) * neg_weight_j          (weights are constants)

with a custom autograd Function that never materialises an (R, K) temporary in the forward: a chunk
of rows at a time (chunks.py) it forms x = a z + b, softplus(x) (:func:`~.fast_softplus.softplus_into`,
vectorised passes instead of F.softplus's slow log1p) and, for the statistics, sigma(x), in reused
scratch buffers. It saves z; backward recomputes sigma(x) into the gradient it returns,
dL/dz = g_out * (a/R) * neg_w * sigma(x), and writes the R gt entries (a/R) * g_out * q * (sigma(x) - 1).
One-hot targets are never materialised:
sum_j w_j BCE(x_j, 0) =
sum_j neg_w_j softplus(x_j) over the entries off the R ground-truth ones (zeroed in place before the
sum, never subtracted after it: a subtraction loses the whole loss to cancellation when a positive
logit is huge), plus q * softplus(-x) at the ground-truth entries. Optionally it also returns the
EQL v2 gradient statistics (per column j, summed over rows, **no 1/R**):

    pos_stat_j = sum_r y_rj * w_rj * |sigma(x_rj) - 1|,   neg_stat_j = sum_r (1 - y_rj) * w_rj * sigma(x_rj)

Numerically safe for any finite logit (softplus / sigmoid forms only, never exp(z)); positive-entry terms
use softplus(-x) and sigmoid(-x) so there is no 1 - sigma cancellation.

Registered as ``sigmoid`` in ``ROI_LOSS_REGISTRY`` (also chosen by Detectron2's
``MODEL.ROI_BOX_HEAD.USE_SIGMOID_CE``): :class:`SigmoidROILoss`, with the federated loss
(``MODEL.ROI_BOX_HEAD.USE_FED_LOSS``) and BOFL's channel weights (``MODEL.LT.BOFL.ENABLED``, an extension)
as options; ``predict_probs`` is sigmoid(z_fg) with a zero background column.
"""

from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from .base import ROI_LOSS_REGISTRY, ROIBatch, ROILoss, class_counts
from .bofl import BOFL_OPTION, BOFLWeighting, bofl_epoch_length_key, bofl_from_config
from .chunks import row_chunks
from .fast_softplus import softplus_into
from .federated import fed_loss_class_weights, fed_loss_mask

__all__ = [
    "fused_weighted_bce",
    "FusedWeightedBCEFunction",
    "sigmoid_bce_loss",
    "SigmoidROILoss",
]


def _softplus_threshold(dtype: torch.dtype) -> float:
    # above the threshold softplus(x) == x; the dropped term log1p(exp(-x)) is below eps * x
    return 40.0 if dtype == torch.float64 else 20.0


def _gather_w(w: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """w: (K,) or (R, K); returns the weight at the gt entry of every row, (R,)."""
    if w.dim() == 1:
        return w[gt]
    return w.gather(1, gt[:, None]).squeeze(1)


def _input(z: torch.Tensor, a: float, b: Optional[torch.Tensor], out: Optional[torch.Tensor]):
    """x = a z + b (b: (K,) or None) written into ``out``; z itself when ``out`` is None (a = 1, no b)."""
    if out is None:
        return z
    return torch.add(b, z, alpha=a, out=out) if b is not None else torch.mul(z, a, out=out)


class FusedWeightedBCEFunction(torch.autograd.Function):
    """See :func:`fused_weighted_bce`. Inputs: (z, gt, neg_w, pos_w, a, b, with_stats)."""

    @staticmethod
    def forward(ctx, z, gt, neg_w, pos_w, a, b, with_stats):
        R, K = z.shape
        thr = _softplus_threshold(z.dtype)
        plain = a == 1.0 and b is None
        chunks = row_chunks(R, K, z.device)
        n = chunks[0][1]
        # scratch of one row chunk, reused: no (R, K) temporary in the forward (chunks.py)
        sp, tmp = torch.empty(n, K, dtype=z.dtype, device=z.device), torch.empty_like(z[:n])
        xs = None if plain else torch.empty_like(z[:n])
        xg = z.new_empty(R)
        neg_loss = z.new_zeros(())
        neg_stat = z.new_zeros(K) if with_stats else None
        for r0, r1 in chunks:
            rows = gt[r0:r1, None]
            x = _input(z[r0:r1], a, b, None if plain else xs[: r1 - r0])
            xg[r0:r1] = x.gather(1, rows).squeeze(1)
            # sum_{r,j != gt} neg_w * softplus(x): the gt entries are zeroed first rather than
            # subtracted afterwards, which cancels catastrophically when a positive logit is huge
            # (softplus(1e30) - softplus(1e30) swallows the rest of the sum)
            spc = softplus_into(x, sp[: r1 - r0], tmp[: r1 - r0]).scatter_(1, rows, 0.0)
            w = neg_w if neg_w.dim() == 1 else neg_w[r0:r1]
            neg_loss += torch.mv(spc, w).sum() if w.dim() == 1 else torch.mul(spc, w).sum()
            if with_stats:  # sum_r sigma(x) over the negatives, per column
                sig = torch.sigmoid(x, out=tmp[: r1 - r0]).scatter_(1, rows, 0.0)
                neg_stat += sig.sum(0) if w.dim() == 1 else torch.mul(sig, w).sum(0)
        qg = _gather_w(pos_w, gt)
        # + q * BCE(x, 1) at the gt entries: every term of the loss is >= 0, nothing cancels
        loss = (neg_loss + (qg * F.softplus(-xg, 1.0, thr)).sum()) / R
        one_minus_sg = torch.sigmoid(-xg)  # |sigma - 1| at the positive entries, (R,)
        gt_grad = (qg * one_minus_sg).neg_()  # d(sum w BCE)/dx at the gt entries, (R,)
        if with_stats:
            if neg_w.dim() == 1:
                neg_stat.mul_(neg_w)
            pos_stat = torch.zeros(K, dtype=z.dtype, device=z.device).index_add_(
                0, gt, qg * one_minus_sg
            )
        else:
            neg_stat = pos_stat = z.new_zeros(0)
        # backward recomputes sigma(x) chunk by chunk into the gradient it returns, forms
        # (a/R) * g * neg_w * sigma and writes the gt entries from gt_grad: z is saved, not sigma(x)
        ctx.save_for_backward(z, neg_w, gt, gt_grad, b)
        ctx.a = a
        ctx.scale = a / R
        ctx.mark_non_differentiable(pos_stat, neg_stat)
        return loss, pos_stat, neg_stat

    @staticmethod
    def backward(ctx, grad_loss, _g_pos, _g_neg):
        z, neg_w, gt, gt_grad, b = ctx.saved_tensors
        a = ctx.a
        plain = a == 1.0 and b is None
        s = grad_loss * ctx.scale
        grad = torch.empty_like(z)
        ws = neg_w * s if neg_w.dim() == 1 else None
        for r0, r1 in row_chunks(z.shape[0], z.shape[1], z.device):
            g = grad[r0:r1]
            torch.sigmoid(_input(z[r0:r1], a, b, None if plain else g), out=g)
            if ws is not None:
                g.mul_(ws)
            else:
                g.mul_(neg_w[r0:r1]).mul_(s)
        grad.scatter_(1, gt[:, None], (gt_grad * s)[:, None])
        return grad, None, None, None, None, None, None


def fused_weighted_bce(
    logits: torch.Tensor,
    gt_classes: torch.Tensor,
    neg_weight: torch.Tensor,
    pos_weight: Optional[torch.Tensor] = None,
    input_scale: float = 1.0,
    input_bias: Optional[torch.Tensor] = None,
    with_stats: bool = False,
) -> Tuple[torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]]:
    """Weighted one-hot sigmoid BCE, ``(1/R) sum_{r,j} w_rj BCE(a z_rj + b_j, onehot(gt)_rj)``.

    Args:
        logits: (R, K) logits z (float16/bfloat16 are computed in float32).
        gt_classes: (R,) int64 column of the positive target in every row, in [0, K). (For Detectron2
            C+1 logits, gt = C targets the background column; pass weight 0 there to ignore it.)
        neg_weight: (K,) or (R, K) weight of the entries with target 0 (treated as constant).
        pos_weight: (K,) or (R, K) weight of the entries with target 1; defaults to ``neg_weight``.
        input_scale: a, the BCE is evaluated at a * z + b (ECM uses a = 2).
        input_bias: b, (K,) per-column logit offset or None.
        with_stats: also return the EQL v2 statistics (pos_stat, neg_stat), each (K,), in the compute dtype
            (see module docstring); otherwise (None, None).

    Returns:
        (loss, pos_stat, neg_stat); loss is a scalar, reduction = sum / R. R = 0 gives ``logits.sum() * 0``
        (connected to the graph) and zero statistics.
    """
    if logits.dim() != 2:
        raise ValueError(f"logits must be (R, K), got {tuple(logits.shape)}")
    z = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    R, K = z.shape
    if pos_weight is None:
        pos_weight = neg_weight
    if R == 0:
        zero = torch.zeros(K, dtype=z.dtype, device=z.device)
        return (
            logits.sum() * 0.0,
            (zero if with_stats else None),
            (zero.clone() if with_stats else None),
        )
    gt = gt_classes.to(device=z.device, dtype=torch.long)
    # private copies of (K,) weights: callers may update their buffers in place after forward (ECM's
    # measured ratio, EQL v2 statistics) and the saved tensors must stay valid for backward
    neg_w = neg_weight.detach().to(device=z.device, dtype=z.dtype)
    neg_w = neg_w.clone() if neg_w.dim() == 1 else neg_w.contiguous()
    pos_w = pos_weight.detach().to(device=z.device, dtype=z.dtype)
    pos_w = pos_w.clone() if pos_w.dim() == 1 else pos_w.contiguous()
    b = (
        None
        if input_bias is None
        else input_bias.detach().to(device=z.device, dtype=z.dtype).clone()  # saved for backward
    )
    # never let autocast push the mv / reductions to fp16/bf16: the loss and statistics stay in z's dtype
    with torch.autocast(device_type=z.device.type, enabled=False):
        loss, pos_stat, neg_stat = FusedWeightedBCEFunction.apply(
            z.contiguous(), gt, neg_w, pos_w, float(input_scale), b, bool(with_stats)
        )
    if not with_stats:
        pos_stat = neg_stat = None
    return loss, pos_stat, neg_stat


def sigmoid_bce_loss(
    logits: torch.Tensor, gt_classes: torch.Tensor, class_weights: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """Detectron2 ``USE_SIGMOID_CE`` classification loss (``FastRCNNOutputLayers.sigmoid_cross_entropy_loss``).

    BCE on the C foreground columns only (the background column C of the (R, C+1) logits is ignored);
    a background ROI (gt = C) has an all-zero target. Reduction: sum over rows and columns / R.

    Args:
        logits: (R, C+1), background last.
        gt_classes: (R,) in [0, C].
        class_weights: optional per-column weights of the C foreground columns, (C,) or per-ROI (R, C),
            applied to positive and negative entries alike (e.g. a federated-loss 0/1 mask, or BOFL
            per-class weights from :func:`lt_detectron.losses.bofl.bofl_class_weights`). Not normalised.

    Returns:
        scalar loss (``logits.sum() * 0`` when R = 0).
    """
    R, K = logits.shape
    C = K - 1
    if class_weights is None:
        w = logits.new_ones(
            K,
            dtype=torch.float32
            if logits.dtype in (torch.float16, torch.bfloat16)
            else logits.dtype,
        )
        w[C] = 0.0
    else:
        cw = class_weights.detach()
        if cw.dim() == 1:
            if cw.numel() != C:
                raise ValueError(f"class_weights must have C={C} entries, got {cw.numel()}")
            w = torch.cat([cw, cw.new_zeros(1)])
        else:
            if cw.shape != (R, C):
                raise ValueError(
                    f"class_weights must be (C,) or (R, C)=({R}, {C}), got {tuple(cw.shape)}"
                )
            w = torch.cat([cw, cw.new_zeros(R, 1)], dim=1)
    loss, _, _ = fused_weighted_bce(logits, gt_classes, w)
    return loss


@ROI_LOSS_REGISTRY.register("sigmoid")
class SigmoidROILoss(ROILoss):
    """Detectron2's sigmoid BCE ROI loss (:func:`sigmoid_bce_loss`), optionally on the federated class subset
    and/or with BOFL's per-class weights. ``forward(logits (R, C+1), gt_classes (R,), batch) -> scalar``.

    Args (keyword-only, besides ``num_classes`` and the classifier options; bias prior 0.01 by default):
        use_fed_loss, fed_loss_num_classes: train each iteration on the batch's GT classes plus sampled ones
            (:func:`~lt_detectron.losses.federated.fed_loss_mask`), with the (C,) ``fed_loss_weights``.
        bofl: the keyword arguments of :class:`~lt_detectron.losses.bofl.BOFLWeighting` (incl.
            ``instance_counts``), or None. Per-image weights are repeated over each image's ROIs
            (``batch.rois_per_image``); the batch-wise factor counts the GT objects of
            ``batch.gt_classes_per_image``, not the sampled ROIs.
    """

    default_prior_prob = 0.01
    supported_options = frozenset({"MODEL.ROI_BOX_HEAD.USE_FED_LOSS", BOFL_OPTION})
    score_activation = "sigmoid"

    def __init__(
        self,
        num_classes: int,
        *,
        use_fed_loss: bool = False,
        fed_loss_num_classes: int = 50,
        fed_loss_weights: Optional[Sequence[float]] = None,
        bofl: Optional[dict] = None,
        classifier: str = "linear",
        cosine_scale: float = 20.0,
        prior_prob: float = -1.0,
    ):
        super().__init__(
            num_classes, classifier=classifier, cosine_scale=cosine_scale, prior_prob=prior_prob
        )
        C = self.num_classes
        self.use_fed_loss = bool(use_fed_loss)
        if self.use_fed_loss:
            if fed_loss_weights is None or len(fed_loss_weights) != C:
                raise ValueError(
                    "the federated loss needs (C,) = (%d,) sampling weights (from the class statistics)"
                    % C
                )
            self.fed_loss_num_classes = int(fed_loss_num_classes)
            self.register_buffer(
                "fed_loss_weights",
                torch.as_tensor(fed_loss_weights, dtype=torch.float32),
                persistent=False,
            )
        self.bofl = None
        if bofl:
            self.bofl = BOFLWeighting(**bofl)
            if self.bofl.num_classes != C:
                raise ValueError(
                    "BOFL got %d instance counts for %d classes" % (self.bofl.num_classes, C)
                )

    @classmethod
    def from_config(cls, cfg, num_classes: int, class_stats=None) -> dict:
        ret = super().from_config(cfg, num_classes, class_stats)
        head = cfg.MODEL.ROI_BOX_HEAD
        use_fed = bool(head.get("USE_FED_LOSS", False))
        use_bofl = bool(cfg.MODEL.LT.BOFL.ENABLED)
        for key, on in (
            ("MODEL.ROI_BOX_HEAD.USE_FED_LOSS", use_fed),
            ("MODEL.LT.BOFL.ENABLED", use_bofl),
        ):
            if on and class_stats is None:
                raise ValueError(
                    "%s needs the training class statistics: set DATASETS.TRAIN (or pass class_stats)"
                    % key
                )
        if use_fed:
            ret.update(
                use_fed_loss=True,
                fed_loss_num_classes=head.FED_LOSS_NUM_CLASSES,
                fed_loss_weights=fed_loss_class_weights(
                    class_counts(class_stats, "image_counts"), head.FED_LOSS_FREQ_WEIGHT_POWER
                ).tolist(),
            )
        if use_bofl:
            ret["bofl"] = bofl_from_config(cfg, class_stats)
        return ret

    @classmethod
    def epoch_length_key(cls, cfg) -> Optional[str]:
        return bofl_epoch_length_key(cfg) if cfg.MODEL.LT.BOFL.ENABLED else None

    def _bofl_weights(self, R: int, batch: ROIBatch) -> torch.Tensor:
        """(R, C) BOFL weights of the ROIs (per image or per local batch)."""
        w, _ = self.bofl(batch.gt_classes_per_image, batch.iteration)
        if w.shape[0] == 1:
            return w.expand(R, self.num_classes)
        sizes = list(batch.rois_per_image)
        if len(sizes) != w.shape[0] or sum(sizes) != R:
            raise ValueError(
                "BOFL per-image weights need ROIBatch.rois_per_image (%s) summing to R = %d for %d images"
                % (sizes, R, w.shape[0])
            )
        return torch.repeat_interleave(w, torch.as_tensor(sizes, device=w.device), dim=0)

    def forward(
        self, logits: torch.Tensor, gt_classes: torch.Tensor, batch: Optional[ROIBatch] = None
    ) -> torch.Tensor:
        self._check_logits(logits)
        batch = batch or ROIBatch()
        weights = None
        if self.bofl is not None:
            weights = self._bofl_weights(logits.shape[0], batch)
        if self.use_fed_loss:
            mask = fed_loss_mask(
                gt_classes, self.fed_loss_num_classes, self.num_classes, self.fed_loss_weights
            )
            weights = mask.to(logits.dtype) if weights is None else weights * mask
        return sigmoid_bce_loss(logits, gt_classes, class_weights=weights)

    def predict_probs(self, logits: torch.Tensor) -> torch.Tensor:
        probs = torch.sigmoid(logits)
        return torch.cat([probs[:, :-1], torch.zeros_like(probs[:, -1:])], dim=1)
