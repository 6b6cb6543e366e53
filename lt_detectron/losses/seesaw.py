"""Seesaw loss (Wang et al., "Seesaw Loss for Long-Tailed Instance Segmentation", CVPR 2021), ROI heads.

Layout. ``C`` foreground classes, ``R`` sampled ROIs. The classifier has ``K = C + 2`` outputs:

    columns 0..C-1   class logits z (softmax over the C classes, trained on foreground ROIs only)
    column  C        objectness logit "object"
    column  C+1      objectness logit "background"   (background LAST, as everywhere in lt_detectron)

``gt_classes`` (R,) in [0, C], C = background (Detectron2's layout). This is also the authors' layout
(mmdetection v2+: class logits first, then the 2-way objectness ``[object, background]``, background
label = ``num_classes``), so logits and labels map one to one, nothing is permuted.

Loss, for the P foreground ROIs r (label i = gt_r < C) and every class j:

    N_j        cumulative number of foreground ROIs of class j seen so far (``cum_samples``, this batch
               included), clamped to >= 1
    M_ij       mitigation   (N_j / N_i)^p            if N_j < N_i, else 1
    sigma_rj   softmax(z_r)_j over the C class logits, DETACHED
    C_rij      compensation (sigma_rj / max(sigma_ri, eps))^q   if that ratio > 1, else 1
    z'_rj      z_rj + log(M_ij C_rij) for j != i,   z'_ri = z_ri      (both factors are 1 at j = i)
    L_cls      sum_r CE(z'_r, i)

    L_obj      sum over ALL R ROIs of CE([z_rC, z_r(C+1)], 1[gt_r == C])   (2-way softmax)
    loss       loss_weight * (L_cls + L_obj) / max(R, 1)                    (scalar)

i.e. ``-log(e^{z_ri} / (e^{z_ri} + sum_{j != i} M_ij C_rij e^{z_rj}))`` as in the paper. Both terms are
normalised by the number of sampled ROIs R (mmdetection's ``avg_factor``, all ROIs have label weight 1) and
share ``loss_weight`` (1.0 in the authors' configs). The factors are computed in log space
(``log M = p min(0, log N_j - log N_i)``, ``log C = q max(0, log sigma_j - max(log sigma_i, log eps))``),
which equals the authors' ``log(pow(...))`` without the round trip; the gradient flows through z only
(M is a constant, C uses detached scores), as in the authors' code. fp16 / bf16 logits are computed in
float32. Empty batch (R = 0): zero loss (with a gradient of zeros).

Counts. ``cum_samples`` (C,) is a persistent float64 buffer (checkpointed with the model; exact integers up
to 2^53). In training mode (``module.training``) each forward FIRST adds the batch's foreground labels
and THEN computes the loss with the updated counts: the authors' order. Differences from the authors'
code (mmdetection ``SeesawLoss``):

- the per-batch increments are SUM-all-reduced across ranks (``all_reduce_sum``; a no-op without
  torch.distributed). mmdetection keeps one count per GPU, never reduced (its DDP does not broadcast
  buffers), and checkpoints rank 0's. Reduced counts are the same on every rank, so a resumed run continues
  exactly (every rank reloads the same counts), and they estimate the class frequencies of the global
  batch, which the ratio N_j / N_i stands for; per-GPU counts have the same ratios in expectation (each
  GPU sees 1/world_size of the data), so the factors differ only by sampling noise and by the clamp at 1
  for classes not yet seen on one GPU. Every rank must call ``forward`` on every training step (the
  all-reduce is a collective), also with R = 0;
- a batch with a non-finite logit on any rank (an overflowing AMP step, a diverging batch) adds nothing:
  its counts are skipped identically on every rank with a rate-limited warning (``warn_nonfinite_skip``),
  so counts follow the steps the optimizer takes; the loss of that batch itself is not finite either;
- only the C foreground counts are kept (mmdetection also counts the background ROIs in a (C+1)-th entry
  that it never reads);
- in eval mode the counts are frozen (mmdetection only calls the loss in training).

Inference (``predict_probs``): ``[softmax(z_cls) * P(object), P(background)]``, (R, C+1), background last
(the authors' ``get_activation``), so Detectron2's ``fast_rcnn_inference`` works unchanged.

The authors' LVIS recipe builds the classifier as a cosine layer with temperature 20 and a bias
(mmdetection ``NormedLinear``; ``MODEL.LT.CLASSIFIER cosine``, ``COSINE_SCALE 20``); the layer is
initialised with a normal(0, 0.01) weight and a zero bias (mmdetection's ``fc_cls`` init, also Detectron2's).
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
    """Seesaw cross-entropy of (P, C) class logits with (P,) labels in [0, C) (see the module docstring),
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
    See the module docstring for the layout, the maths and the (all-reduced) cumulative counts.

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
