"""Fused sigmoid focal loss with per-column weights on the negative and the positive entries.

:func:`fused_weighted_focal` evaluates, for (M, C) logits z and labels (M,) in [0, C] (C = background,
an all-zero target row), the sum

    L = sum_{m,j} w_mj * alpha_t * (1 - p_t)^gamma * BCE(z_mj, y_mj),   y = onehot(labels)[:, :C],
    w_mj = y_mj * pos_weight_j + (1 - y_mj) * neg_weight_j          (weights are constants)

which is :func:`~lt_detectron.losses.focal.sigmoid_focal_loss` (fvcore's, alpha_t, gamma; reduction
sum) with ``weight=w``, written the way that function rounds (BCE(z, 0) = z - log sigma(z),
1 - p_t = 1 - (1 - p) on the negatives) so the values agree to float rounding. The EQL v2 dense form
(docs/methods.md#eql-v2-on-dense-heads-extension) uses it with its gradient statistics

    pos_stat_j = sum_m y_mj w_mj sigma(-z_mj),   neg_stat_j = sum_m (1 - y_mj) w_mj sigma(z_mj).

A custom autograd Function: the loss and its gradient are formed together in the forward, a chunk of
rows at a time (chunks.py), with log1p from :func:`~.fast_softplus.softplus_into`'s identity (torch's
log1p is slow on CPU); the gradient is the one (M, C) tensor it keeps, backward scales it. Every entry
is first treated as a negative, then the entries of the positive rows (one per foreground row) are
zeroed in the chunk and computed apart, so a huge positive logit cancels nothing.
"""

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from .chunks import row_chunks
from .fast_softplus import log1p_exp_neg_abs_into

__all__ = ["fused_weighted_focal"]


def _pos_terms(x, cw, gamma):
    """Loss and d/dx of cw * (1 - p)^gamma * BCE(x, 1) at the positive entries x (P,)."""
    p = torch.sigmoid(x)
    ce = -F.logsigmoid(x)
    q = 1 - p
    loss = ce * q.pow(gamma) * cw
    # d/dx: -(1 - p) [(1 - p)^gamma + gamma (1 - p)^(gamma - 1) p ce]
    inner = q.pow(gamma) + (gamma * q.pow(gamma - 1) * p * ce if gamma != 0 else 0.0)
    return loss.sum(), -(q * inner * cw), torch.sigmoid(-x)


class _FusedWeightedFocal(torch.autograd.Function):
    """forward(z, labels, neg_coef, pos_coef, gamma, with_stats) -> (loss, pos_stat, neg_stat);
    ``*_coef`` = alpha_t * weight, (C,)."""

    @staticmethod
    def forward(ctx, z, labels, neg_coef, pos_coef, gamma, with_stats):
        # the statistics returned here are the unweighted sums of sigma(z) (negatives) and
        # sigma(-z) (positives) per column; fused_weighted_focal applies the weights
        M, C = z.shape
        pos_rows = torch.nonzero(labels < C).squeeze(1)
        pos_cols = labels[pos_rows]
        chunks = row_chunks(M, C, z.device)
        n = chunks[0][1]
        grad = torch.empty_like(z)
        bufs = [torch.empty(n, C, dtype=z.dtype, device=z.device) for _ in range(4)]
        loss = z.new_zeros(())
        neg_stat = z.new_zeros(C) if with_stats else None
        bounds = torch.searchsorted(
            pos_rows, torch.tensor([r for r, _ in chunks] + [M], device=z.device)
        ).tolist()
        for k, (r0, r1) in enumerate(chunks):
            x = z[r0:r1]
            ce, sig, u, tmp = (b[: r1 - r0] for b in bufs)
            pr = pos_rows[bounds[k] : bounds[k + 1]] - r0
            pc = pos_cols[bounds[k] : bounds[k + 1]]
            # BCE(x, 0) = x - log sigma(x), log sigma(x) = min(x, 0) - log1p(exp(-|x|))
            lg = log1p_exp_neg_abs_into(x, ce, tmp)
            torch.clamp_max(x, 0.0, out=tmp).sub_(lg)
            torch.sub(x, tmp, out=ce)
            torch.sigmoid(x, out=sig)
            torch.neg(sig, out=tmp).add_(1.0)  # 1 - p
            torch.neg(tmp, out=u).add_(1.0)  # 1 - p_t = 1 - (1 - p), as fvcore rounds it
            g = grad[r0:r1]
            # d/dx [u^gamma ce] = u^gamma p + gamma u^(gamma - 1) p (1 - p) ce
            if gamma != 0:
                torch.mul(sig, tmp, out=g).mul_(ce).mul_(torch.pow(u, gamma - 1)).mul_(gamma)
            else:
                g.zero_()
            torch.pow(u, gamma, out=u)
            g.addcmul_(u, sig).mul_(neg_coef)
            ce.mul_(u).index_put_((pr, pc), ce.new_zeros(()))
            loss += torch.mv(ce, neg_coef).sum()
            if with_stats:
                neg_stat += sig.index_put_((pr, pc), sig.new_zeros(())).sum(0)
        xp = z[pos_rows, pos_cols]
        loss_pos, grad_pos, sig_neg = _pos_terms(xp, pos_coef[pos_cols], gamma)
        grad[pos_rows, pos_cols] = grad_pos
        if with_stats:
            pos_stat = torch.zeros(C, dtype=z.dtype, device=z.device).index_add_(
                0, pos_cols, sig_neg
            )
        else:
            pos_stat = neg_stat = z.new_zeros(0)
        ctx.save_for_backward(grad)
        ctx.mark_non_differentiable(pos_stat, neg_stat)
        return loss + loss_pos, pos_stat, neg_stat

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss, _g_pos, _g_neg):
        (grad,) = ctx.saved_tensors
        return grad * grad_loss, None, None, None, None, None


def fused_weighted_focal(
    logits: torch.Tensor,
    labels: torch.Tensor,
    neg_weight: torch.Tensor,
    pos_weight: torch.Tensor,
    alpha: float = 0.25,
    gamma: float = 2.0,
    with_stats: bool = False,
):
    """Weighted sigmoid focal loss (module docstring), a **sum**.

    Args:
        logits: (M, C), no background column; float16/bfloat16 are computed in float32.
        labels: (M,) in [0, C], C = background (no positive entry in that row).
        neg_weight, pos_weight: (C,) weights of the negative / positive entries (detached).
        alpha: alpha_t = alpha on the positives, 1 - alpha on the negatives; < 0 disables it.
        gamma: the focusing exponent, >= 0.
        with_stats: also return (pos_stat, neg_stat), each (C,) in the compute dtype, else (None, None).

    Returns:
        (loss, pos_stat, neg_stat). M = 0 gives ``logits.sum() * 0`` and zero statistics.
    """
    if logits.dim() != 2:
        raise ValueError(f"logits must be (M, C), got {tuple(logits.shape)}")
    if not gamma >= 0:
        raise ValueError(f"the focal gamma must be >= 0, got {gamma!r}")
    z = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    M, C = z.shape
    if M == 0:
        zero = z.new_zeros(C) if with_stats else None
        return logits.sum() * 0.0, zero, (None if zero is None else zero.clone())
    a_neg, a_pos = (1.0 - alpha, alpha) if alpha >= 0 else (1.0, 1.0)
    neg_coef = neg_weight.detach().to(device=z.device, dtype=z.dtype) * a_neg
    pos_coef = pos_weight.detach().to(device=z.device, dtype=z.dtype) * a_pos
    gt = labels.to(device=z.device, dtype=torch.long)
    with torch.autocast(device_type=z.device.type, enabled=False):
        loss, pos_stat, neg_stat = _FusedWeightedFocal.apply(
            z.contiguous(), gt, neg_coef, pos_coef, float(gamma), bool(with_stats)
        )
    if not with_stats:
        return loss, None, None
    return (
        loss,
        pos_stat * pos_weight.detach().to(pos_stat),
        neg_stat * neg_weight.detach().to(neg_stat),
    )
