"""C2AM: Category-Aware Angular Margin loss (Wang et al., CVPR 2022). See docs/methods.md#c2am.

Pure torch; no Detectron2 config objects. The paper has no public code. The margins, the background
choice and the clamps: docs/methods.md#c2am.

Contract:

- ``C`` foreground classes, background label ``C`` (last), ``K = C + 1`` cosine classes, ``R`` ROIs,
  ``gt_classes`` ``(R,)`` in ``[0, C]``. The inputs are the raw cosines ``(R, K)`` of a bias-free
  cosine classifier (:class:`lt_detectron.modeling.classifiers.CosineClassifier` with ``scale=None``)
  and its weight norms (detached).
- :func:`c2am_loss`: a scalar, the cross-entropy averaged over the ROIs
  (``reduction='mean'``). A custom autograd Function processes ROIs in row chunks with reused scratch
  buffers and stores one ``(R, K)`` gradient buffer (handed on as the gradient itself when the
  output gradient is 1, on CPU); its gradient equals that of
  ``cos(min(acos(clamp(c)) + m, pi))`` exactly.
- :class:`C2AMROILoss` (``ROI_LOSS_REGISTRY`` ``c2am``, from ``MODEL.LT.C2AM.*``) asks for that
  classifier and reads its weight norms from ``ROIBatch.classifier``; ``predict_probs`` is
  ``softmax(s * cos)``, ``(R, K)``, background last. No state across iterations.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

from .base import ROI_LOSS_REGISTRY, ClassifierSpec, ROIBatch, ROILoss
from .chunks import row_chunk_size

__all__ = ["C2AMROILoss", "c2am_margins", "c2am_loss"]


def _log_norms(weight_norms: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    n = weight_norms.detach().to(dtype)
    return n.clamp_min(torch.finfo(dtype).tiny).log()


def c2am_margins(
    weight_norms: torch.Tensor,
    alpha: float = 0.5,
    gt_classes: Optional[torch.Tensor] = None,
    background_margin: bool = True,
) -> torch.Tensor:
    """Angular margins ``m_ij = clamp((alpha/pi) * log(||W_i|| / ||W_j||), 0, pi)`` (detached).

    Args:
        weight_norms: (K,) class-weight norms, background last.
        gt_classes: optional (R,) labels in [0, K-1]; rows ``i = gt_classes`` are returned (R, K),
            otherwise the full (K, K) matrix.
        background_margin: if False, zero every margin whose row or column is the background (K-1).
    """
    logn = _log_norms(
        weight_norms, weight_norms.dtype if weight_norms.is_floating_point() else torch.float32
    )
    rows = logn if gt_classes is None else logn[gt_classes]
    m = ((alpha / math.pi) * (rows.unsqueeze(1) - logn.unsqueeze(0))).clamp_(0.0, math.pi)
    if not background_margin:
        K = logn.shape[0]
        labels = torch.arange(K, device=logn.device) if gt_classes is None else gt_classes
        m[labels == K - 1] = 0.0
        m[:, K - 1] = 0.0
    return m


class _C2AMFunction(torch.autograd.Function):
    """forward(cos (R, K), gt (R,), fill_rows, scale, eps, reduction) -> the loss: per ROI (R,) for
    ``reduction="none"``, else its mean or sum (a scalar).

    ``fill_rows(r0, r1, cosm, sinm, act)`` writes cos(m), sin(m) and (m > 0) of ROIs r0:r1 into the
    (r1 - r0, K) buffers. Stores G = d(loss)/d(cos) for an output gradient of 1 (the 1/R of the mean
    included); backward hands G itself on when the output gradient is exactly 1 on CPU (a second
    (R, K) tensor would be a fresh allocation, chunks.py), else G times it.
    """

    @staticmethod
    def forward(ctx, cos, gt, fill_rows, scale, eps, reduction):
        R, K = cos.shape
        need_grad = ctx.needs_input_grad[0]
        loss = cos.new_empty(R)
        G = torch.empty_like(cos) if need_grad else None
        ch = row_chunk_size(R, K, cos.device)
        g_scale = scale / R if reduction == "mean" else scale
        _c2am_chunks(cos, gt, fill_rows, scale, eps, loss, G, ch, g_scale)
        if need_grad:
            ctx.save_for_backward(G)
            ctx.per_roi = reduction == "none"
        if reduction == "mean":
            return loss.mean()
        return loss.sum() if reduction == "sum" else loss

    @staticmethod
    def backward(ctx, grad_loss):
        (G,) = ctx.saved_tensors
        if ctx.per_roi:
            grad = G * grad_loss.unsqueeze(1)
        elif G.device.type == "cpu" and float(grad_loss) == 1.0:
            grad = G  # not modified here; autograd copies it where the graph is retained
        else:
            grad = G * grad_loss
        return grad, None, None, None, None, None


def _c2am_chunks(cos, gt, fill_rows, scale, eps, loss, G, ch, g_scale):
    """Fill ``loss`` (R,) and, if not None, ``G`` (R, K) chunk by chunk (see _C2AMFunction); G is
    d loss_r / d cos times ``g_scale``."""
    R, K = cos.shape
    lo, hi = -1.0 + eps, 1.0 - eps
    one = cos.new_ones(())
    need_grad = G is not None
    bufs = None
    for r0 in range(0, R, ch):
        r1 = min(R, r0 + ch)
        n = r1 - r0
        if bufs is None or bufs[0].shape[0] != n:
            bufs = [cos.new_empty(n, K) for _ in range(6)] + [
                torch.empty(n, K, dtype=torch.bool, device=cos.device) for _ in range(2)
            ]
        cosm, sinm, cc, st, sn, z, act, tmpb = bufs
        c = cos[r0:r1]
        y = gt[r0:r1].unsqueeze(1)
        fill_rows(r0, r1, cosm, sinm, act)  # cos m, sin m, m > 0 for these ROIs
        torch.clamp(c, lo, hi, out=cc)
        torch.addcmul(one, cc, cc, value=-1.0, out=st).sqrt_()  # sin(theta) > 0
        torch.mul(st, cosm, out=sn)
        sn.addcmul_(cc, sinm)  # sin(theta + m)
        cosm.mul_(cc).addcmul_(st, sinm, value=-1.0)  # cos(theta + m)
        torch.lt(sn, 0.0, out=tmpb)  # theta + m > pi -> cos = -1
        cosm.masked_fill_(tmpb, -1.0)
        # where m = 0, cos(theta + m) is clamp(c) exactly (cos m = 1, sin m = 0): c itself except at
        # the (rare) clamped entries, which keep c without a margin and a gradient 1
        torch.ne(c, cc, out=tmpb)
        clamped = bool(tmpb.any())
        if clamped:
            torch.where(act, cosm, c, out=z)
        else:
            z, cosm = cosm, z
        z.mul_(scale)
        zy = z.gather(1, y).squeeze(1)
        # logsumexp as torch.logsumexp computes it (max, exp of the shifted logits, log of the sum),
        # keeping the exponentials for the softmax: one exp pass and no temporary
        mx = z.amax(1, keepdim=True)
        mx.masked_fill_(mx.abs() == math.inf, 0.0)
        total = z.sub_(mx).exp_().sum(1, keepdim=True)
        lse = total.log().add_(mx).squeeze(1)
        loss[r0:r1] = lse - zy
        if need_grad:
            # d cos(theta+m)/dc = sin(theta+m)/sin(theta) (0 past pi or outside the clamp range); where
            # m = 0, sin(theta+m) is sin(theta) itself and the ratio exactly 1 (the identity)
            sn.div_(st).clamp_min_(0.0)
            if clamped:
                sn.masked_fill_(tmpb.logical_and_(act), 0.0)
            # G = g_scale * (softmax - onehot) * d: e * (d g_scale / total) off the gt entries, and
            # (e_y - total) * (d_y g_scale / total) at them
            sn.mul_(total.reciprocal().mul_(g_scale))
            Gc = torch.mul(z, sn, out=G[r0:r1])
            Gc.scatter_(1, y, (z.gather(1, y) - total) * sn.gather(1, y))


def c2am_loss(
    cos_logits: torch.Tensor,
    weight_norms: torch.Tensor,
    gt_classes: torch.Tensor,
    scale: float = 30.0,
    alpha: float = 0.5,
    background_margin: bool = True,
    eps: float = 1e-6,
    reduction: str = "mean",
) -> torch.Tensor:
    """Functional C2AM loss.

    Args:
        cos_logits: (R, K=C+1) RAW cosines in [-1, 1] (unscaled), background column last.
        weight_norms: (K,) classifier row norms ``||W_j||``; detached internally (no gradient).
        gt_classes: (R,) long in [0, C] (C = background).
        scale: ``s``; alpha: margin strength; eps: clamp of the cosine in the angular path.
        reduction: 'mean' (over R) | 'sum' | 'none' (per-ROI (R,)).
    Returns: scalar (or (R,) for 'none'); R = 0 gives a zero connected to the graph.
    """
    if cos_logits.dim() != 2:
        raise ValueError(f"cos_logits must be (R, K), got {tuple(cos_logits.shape)}")
    R, K = cos_logits.shape
    if weight_norms.shape != (K,):
        raise ValueError(f"weight_norms must be ({K},), got {tuple(weight_norms.shape)}")
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"bad reduction {reduction}")
    if R == 0:
        z = cos_logits.sum() * 0.0
        return cos_logits.new_zeros(0) + z if reduction == "none" else z
    if cos_logits.dtype in (torch.float16, torch.bfloat16):
        cos_logits = cos_logits.float()  # margins / acos in fp32 (docs/methods.md#c2am)
    gt = gt_classes.to(device=cos_logits.device, dtype=torch.long)
    dtype = cos_logits.dtype
    logn = _log_norms(weight_norms, dtype).to(cos_logits.device)
    a = float(alpha) / math.pi
    bg = K - 1
    if R >= K:  # cheaper: (K, K) tables of cos m / sin m / (m > 0), then row gathers
        # an infinite norm gives inf - inf = NaN: no margin there (m = 0), as m > 0 is False for NaN
        table = (a * (logn.unsqueeze(1) - logn.unsqueeze(0))).clamp_(0.0, math.pi).nan_to_num_(0.0)
        if not background_margin:
            table[bg] = 0.0
            table[:, bg] = 0.0
        tabs = (table.cos(), table.sin(), table > 0)

        def fill_rows(r0, r1, cosm, sinm, act):
            y = gt[r0:r1]
            torch.index_select(tabs[0], 0, y, out=cosm)
            torch.index_select(tabs[1], 0, y, out=sinm)
            torch.index_select(tabs[2], 0, y, out=act)
    else:  # only the rows of the labels in the batch

        def fill_rows(r0, r1, cosm, sinm, act):
            y = gt[r0:r1]
            m = (a * (logn[y].unsqueeze(1) - logn.unsqueeze(0))).clamp_(0.0, math.pi)
            m.nan_to_num_(0.0)
            if not background_margin:
                m[y == bg] = 0.0
                m[:, bg] = 0.0
            torch.gt(m, 0.0, out=act)
            torch.cos(m, out=cosm)
            torch.sin(m, out=sinm)

    return _C2AMFunction.apply(cos_logits, gt, fill_rows, float(scale), float(eps), reduction)


@ROI_LOSS_REGISTRY.register("c2am")
class C2AMROILoss(ROILoss):
    """C2AM as a protocol ROI loss: ``forward(cos_logits (R, C+1), gt_classes (R,), batch) -> scalar`` (mean).

    The classifier (``classifier_spec``) is a bias-free cosine layer returning RAW cosines; ``batch.classifier``
    must be that layer (its ``weight_norms()`` give the margins). ``MODEL.LT.CLASSIFIER`` / ``COSINE_SCALE``
    / ``PRIOR_PROB`` do not apply: the scale is ``MODEL.LT.C2AM.SCALE``.
    """

    def __init__(
        self,
        num_classes: int,
        scale: float = 30.0,
        alpha: float = 0.5,
        background_margin: bool = True,
        eps: float = 1e-6,
    ):
        super().__init__(num_classes)
        if not 0.0 < eps < 0.5:
            raise ValueError("eps must be in (0, 0.5)")
        self.scale = float(scale)
        self.alpha = float(alpha)
        self.background_margin = bool(background_margin)
        self.eps = float(eps)

    @classmethod
    def from_config(cls, cfg, num_classes: int, class_stats=None) -> dict:
        c = cfg.MODEL.LT.C2AM
        return dict(
            num_classes=num_classes,
            scale=c.SCALE,
            alpha=c.ALPHA,
            background_margin=c.BACKGROUND_MARGIN,
        )

    def classifier_spec(self) -> ClassifierSpec:
        return ClassifierSpec(self.num_classes + 1, kind="cosine", scale=None, bias=False)

    def forward(
        self, logits: torch.Tensor, gt_classes: torch.Tensor, batch: Optional[ROIBatch] = None
    ) -> torch.Tensor:
        self._check_logits(logits)
        classifier = None if batch is None else batch.classifier
        if classifier is None or not hasattr(classifier, "weight_norms"):
            raise ValueError(
                "C2AM's margins need the classifier's weight norms: pass ROIBatch(classifier=<the cosine layer built "
                "from classifier_spec()>) (LongTailFastRCNNOutputLayers does)"
            )
        return c2am_loss(
            logits,
            classifier.weight_norms(),
            gt_classes,
            self.scale,
            self.alpha,
            self.background_margin,
            self.eps,
            "mean",
        )

    def predict_probs(self, logits: torch.Tensor) -> torch.Tensor:
        return F.softmax(self.scale * logits, dim=-1)

    def extra_repr(self) -> str:
        return "num_classes=%d, scale=%g, alpha=%g, background_margin=%s" % (
            self.num_classes,
            self.scale,
            self.alpha,
            self.background_margin,
        )
