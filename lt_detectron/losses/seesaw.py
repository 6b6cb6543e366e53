"""Seesaw loss (Wang et al., "Seesaw Loss for Long-Tailed Instance Segmentation", CVPR 2021), ROI heads.

The maths, the gradient, the count update and every choice: docs/methods.md#seesaw.

Contract:

- Logits ``(R, C + 2)``: columns ``0..C-1`` the class logits, ``C`` objectness "object", ``C+1``
  objectness "background" (background last, the authors' layout). Labels ``gt_classes`` ``(R,)`` in
  ``[0, C]``, ``C`` = background.
- Returns a scalar: ``loss_weight * (L_cls + L_obj) / max(R, 1)``; fp16 / bf16 logits are computed in
  float32; an empty batch gives a zero with a zero gradient. ``exact_gradient = False`` (the
  compensation factor uses detached scores).
- State: ``cum_samples`` ``(C,)``, a persistent float64 buffer (checkpointed). In training mode each
  forward first adds the batch's foreground labels (SUM-all-reduced across ranks, skipped on every
  rank when a logit is not finite) and then computes the loss; every rank must call ``forward`` on
  every training step, also with ``R = 0``. Frozen in eval mode.
- ``predict_probs``: ``(R, C + 1)`` scores, ``softmax(classes) * P(object)`` then ``P(background)``.
"""

import dataclasses
import math
from typing import Optional

import torch
import torch.nn.functional as F

from .base import ROI_LOSS_REGISTRY, ClassifierSpec, ROIBatch, ROILoss, log_scalar
from .distributed import all_reduce_sum, warn_nonfinite_skip

__all__ = ["SeesawLoss", "seesaw_logit_offsets", "seesaw_cross_entropy"]


@torch.no_grad()
def seesaw_logit_offsets(
    logits: torch.Tensor,
    labels: torch.Tensor,
    counts: torch.Tensor,
    p: float = 0.8,
    q: float = 2.0,
    eps: float = 1e-2,
) -> torch.Tensor:
    """The detached offsets ``log(M_ij C_rij)`` added to the class logits (0 in each row's label column).

    Args:
        logits: (P, C) class logits of foreground ROIs (no objectness / background column).
        labels: (P,) labels in [0, C).
        counts: (C,) cumulative per-class sample counts N (clamped to >= 1 here).
        p, q, eps: mitigation exponent, compensation exponent, lower bound of sigma_i.
    Returns:
        (P, C) offsets in the dtype of ``logits``: ``p min(0, log N_j - log N_i)`` (mitigation, <= 0) plus
        ``q max(0, log sigma_j - max(log sigma_i, log eps))`` (compensation, >= 0).
    """
    z = logits.detach()
    labels = labels.to(device=z.device, dtype=torch.long).reshape(-1, 1)
    if p > 0:
        log_n = (
            counts.detach()
            .to(device=z.device, dtype=torch.float64)
            .clamp(min=1.0)
            .log()
            .mul_(p)
            .to(z.dtype)
        )
        out = (log_n.unsqueeze(0) - log_n[labels]).clamp_(max=0.0)
    else:
        out = torch.zeros_like(z)
    if q > 0:
        comp = torch.log_softmax(z, dim=1)
        comp.sub_(comp.gather(1, labels).clamp_(min=math.log(eps))).clamp_(min=0.0)
        out.add_(comp, alpha=q)
    return out


def seesaw_cross_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    counts: torch.Tensor,
    p: float = 0.8,
    q: float = 2.0,
    eps: float = 1e-2,
    reduction: str = "sum",
) -> torch.Tensor:
    """Seesaw cross-entropy of (P, C) class logits with (P,) labels in [0, C) (docs/methods.md#seesaw),
    through autograd (the loss module uses the fused :class:`_SeesawFunction`).

    ``reduction``: ``"none"`` (P,), ``"sum"`` or ``"mean"``. P = 0 gives 0 (``"sum"``).
    """
    offsets = seesaw_logit_offsets(logits, labels, counts, p, q, eps)
    return F.cross_entropy(
        logits + offsets, labels.to(device=logits.device, dtype=torch.long), reduction=reduction
    )


class _SeesawFunction(torch.autograd.Function):
    """forward(z (R, C+2), gt (R,), counts (C,), p, q, eps) -> (2,) [L_cls, L_obj] (sums, not normalised).

    Fused for speed: the (P, C) work runs on the foreground rows only, and backward writes the (R, C+2)
    gradient once (autograd would zero-fill and copy it per slice). Saves softmax(z') (P, C) and the
    objectness softmax (R, 2).
    """

    @staticmethod
    def forward(ctx, z, gt, counts, p, q, eps):
        R, K = z.shape
        C = K - 2
        fg_idx = (gt < C).nonzero().squeeze(1)
        labels = gt.index_select(0, fg_idx)
        z_cls = z[fg_idx, :C]  # (P, C) copy
        z_adj = seesaw_logit_offsets(z_cls, labels, counts, p, q, eps).add_(z_cls)
        del z_cls
        cls_prob = torch.log_softmax(z_adj, dim=1)
        del z_adj
        loss_cls = -cls_prob.gather(1, labels.unsqueeze(1)).sum()
        obj_prob = torch.log_softmax(z[:, C:], dim=1)  # (R, 2): [object, background]
        obj_target = (gt >= C).long()
        loss_obj = -obj_prob.gather(1, obj_target.unsqueeze(1)).sum()
        if ctx.needs_input_grad[0]:
            ctx.save_for_backward(cls_prob.exp_(), labels, fg_idx, obj_prob.exp_(), obj_target)
            ctx.shape = (R, K)
        return torch.stack([loss_cls, loss_obj])

    @staticmethod
    def backward(ctx, grad):
        cls_prob, labels, fg_idx, obj_prob, obj_target = ctx.saved_tensors
        R, K = ctx.shape
        C = K - 2
        g_cls, g_obj = grad.to(cls_prob.dtype).unbind()
        out = cls_prob.new_zeros(R, K)
        d_cls = cls_prob * g_cls  # (softmax(z') - onehot) * g: the offsets are constants
        d_cls.scatter_add_(1, labels.unsqueeze(1), (-g_cls).expand(labels.numel(), 1))
        out[:, :C].index_copy_(0, fg_idx, d_cls)
        d_obj = obj_prob * g_obj
        d_obj.scatter_add_(1, obj_target.unsqueeze(1), (-g_obj).expand(R, 1))
        out[:, C:] = d_obj
        return out, None, None, None, None, None


@ROI_LOSS_REGISTRY.register("seesaw")
class SeesawLoss(ROILoss):
    """Seesaw loss with the authors' objectness branch, ``MODEL.LT.ROI_LOSS seesaw``.

    ``forward(logits (R, C+2), gt_classes (R,) in [0, C]) -> scalar``; ``predict_probs -> (R, C+1)``.
    Layout and state: the module docstring; the maths: docs/methods.md#seesaw.

    Args:
        num_classes: C.
        p: mitigation exponent (0 disables the mitigation factor).
        q: compensation exponent (0 disables the compensation factor).
        eps: lower bound of the score of the label class in the compensation ratio.
        loss_weight: weight of both terms.
        classifier, cosine_scale, prior_prob: the classifier options of ``MODEL.LT`` (see :class:`ROILoss`).
    """

    exact_gradient = False  # the compensation factor uses the detached scores, as the authors'

    def __init__(
        self,
        num_classes: int,
        *,
        p: float = 0.8,
        q: float = 2.0,
        eps: float = 1e-2,
        loss_weight: float = 1.0,
        **kwargs,
    ):
        super().__init__(num_classes, **kwargs)
        for key, value, ok in (
            ("P", p, p >= 0),
            ("Q", q, q >= 0),
            ("EPS", eps, 0 < eps <= 1),
            ("LOSS_WEIGHT", loss_weight, loss_weight >= 0),
        ):
            if not (ok and math.isfinite(value)):
                raise ValueError(
                    "MODEL.LT.SEESAW.%s = %r is invalid: P, Q and LOSS_WEIGHT must be >= 0 and "
                    "0 < EPS <= 1 (the authors' values: P 0.8, Q 2.0, EPS 0.01, LOSS_WEIGHT 1.0)"
                    % (key, value)
                )
        self.p = float(p)
        self.q = float(q)
        self.eps = float(eps)
        self.loss_weight = float(loss_weight)
        self.register_buffer("cum_samples", torch.zeros(self.num_classes, dtype=torch.float64))
        self.num_nonfinite_skips = (
            0  # batches whose counts were dropped (this process; not checkpointed)
        )

    @classmethod
    def from_config(cls, cfg, num_classes: int, class_stats=None) -> dict:
        ret = super().from_config(cfg, num_classes, class_stats)
        s = cfg.MODEL.LT.SEESAW
        ret.update(p=s.P, q=s.Q, eps=s.EPS, loss_weight=s.LOSS_WEIGHT)
        return ret

    def logit_columns(self) -> torch.Tensor:
        """``(C+2,)``: the classes, then the objectness ``[object (-1), background (C)]``."""
        C = self.num_classes
        return torch.cat([torch.arange(C), torch.tensor([-1, C])])

    def classifier_spec(self) -> ClassifierSpec:
        # C class logits + the 2-way objectness; normal(0, 0.01) weight, zero bias (authors' fc_cls init)
        return dataclasses.replace(
            super().classifier_spec(), num_logits=self.num_classes + 2, init_std=0.01
        )

    @torch.no_grad()
    def _accumulate(self, logits: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        """Add this batch's foreground counts (all-reduced) unless a logit is non-finite on some rank.

        Returns the reduced "all finite" flag (a 0-dim bool tensor; no host synchronisation here).
        """
        C = self.num_classes
        buf = torch.zeros(C + 2, dtype=self.cum_samples.dtype, device=self.cum_samples.device)
        # counts of every label (background in slot C, dropped) and, in slot C+1, a non-finite flag;
        # one collective for both, so every rank takes the same decision
        buf.index_add_(
            0,
            gt.to(buf.device).clamp(0, C),
            torch.ones(gt.numel(), dtype=buf.dtype, device=buf.device),
        )
        if logits.numel():
            # min and max are finite iff every logit is (NaN propagates); much cheaper than isfinite().all()
            buf[C + 1] = (~torch.isfinite(torch.stack(torch.aminmax(logits)))).any().to(buf.dtype)
        all_reduce_sum(buf)
        finite = buf[C + 1] == 0
        self.cum_samples.copy_(torch.where(finite, self.cum_samples + buf[:C], self.cum_samples))
        return finite

    def forward(
        self, logits: torch.Tensor, gt_classes: torch.Tensor, batch: Optional[ROIBatch] = None
    ) -> torch.Tensor:
        self._check_logits(logits, self.num_classes + 2)
        R = logits.shape[0]
        if gt_classes.shape != (R,):
            raise ValueError(
                "gt_classes must be (R,) = (%d,), got %s" % (R, tuple(gt_classes.shape))
            )
        z = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
        gt = gt_classes.to(device=z.device, dtype=torch.long)
        finite = (
            self._accumulate(z.detach(), gt) if self.training else None
        )  # the authors update first
        if R == 0:
            loss_cls = loss_obj = z.sum() * 0.0
        else:
            loss_cls, loss_obj = _SeesawFunction.apply(
                z, gt, self.cum_samples, self.p, self.q, self.eps
            ).unbind()
        scale = self.loss_weight / max(R, 1)
        if finite is not None:
            # one host synchronisation: the skip decision (the same on every rank) and the two terms' logs
            ok, cls_val, obj_val = torch.stack(
                [finite.to(z.dtype), loss_cls.detach(), loss_obj.detach()]
            ).tolist()
            if not ok:
                warn_nonfinite_skip(self, "the Seesaw cumulative class counts (cum_samples)")
            log_scalar("seesaw/loss_cls_classes", cls_val * scale)
            log_scalar("seesaw/loss_cls_objectness", obj_val * scale)
        return (loss_cls + loss_obj) * scale

    def predict_probs(self, logits: torch.Tensor) -> torch.Tensor:
        """(R, C+2) logits -> (R, C+1) ``[softmax(z_cls) * P(object), P(background)]``, background last."""
        self._check_logits(logits, self.num_classes + 2)
        C = self.num_classes
        obj = F.softmax(logits[:, C:], dim=-1)
        return torch.cat([F.softmax(logits[:, :C], dim=-1) * obj[:, :1], obj[:, 1:]], dim=1)

    def accuracy_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """(R, C+1) log-probabilities of :meth:`predict_probs` (same argmax, no underflow to 0)."""
        self._check_logits(logits, self.num_classes + 2)
        C = self.num_classes
        z = logits.detach().float()
        obj = F.log_softmax(z[:, C:], dim=-1)
        return torch.cat([F.log_softmax(z[:, :C], dim=-1) + obj[:, :1], obj[:, 1:]], dim=1)

    def extra_repr(self) -> str:
        return "num_classes=%d, p=%g, q=%g, eps=%g, loss_weight=%g" % (
            self.num_classes,
            self.p,
            self.q,
            self.eps,
            self.loss_weight,
        )
