"""EQL v2: Equalization Loss v2 (Tan et al., CVPR 2021), following the authors' ``eqlv2.py``.

Two-stage (ROI) form, :class:`EQLv2Loss`:
    logits z (R, C+1), **background/objectness last (column C)**, gt_classes (R,) in [0, C] (C = bg).
    Target y = one_hot(gt, C+1): the last column is a category-agnostic objectness task trained with BCE
    (target 1 for background ROIs, 0 for foreground ROIs).
    f(x) = sigmoid(gamma (x - mu)); for foreground class j with accumulated ratio g_j:
        r_j = f(g_j) (negative weight), q_j = 1 + alpha (1 - f(g_j)) (positive weight);
        background column: q = r = 1.
    w_rj = y_rj q_j + (1 - y_rj) r_j (detached);  loss = sum_{r,j} w_rj BCE(z_rj, y_rj) / R.
    The weights use the statistics accumulated **up to the previous iteration**. After the loss, when the
    module is in training mode (``module.training``), the statistics are updated (foreground columns
    only, all ROIs, no 1/R):
        pos_grad_j += sum_r y_rj w_rj |sigma(z_rj) - 1|,  neg_grad_j += sum_r (1 - y_rj) w_rj sigma(z_rj)
    where the per-iteration increments are SUM-all-reduced across ranks first (a no-op without
    torch.distributed), then pos_neg = pos_grad / (neg_grad + 1e-10). ``pos_neg`` starts at 100 so the
    first-iteration weights are all 1. Empty batches (R = 0 on every rank) leave the state unchanged
    (the all-reduce is still issued so ranks stay in step); so does a batch whose reduced increments (or
    the updated sums) are not finite, e.g. one NaN logit on any rank: its statistics are skipped with
    a rate-limited warning, identically on every rank, so a step that AMP skips does not poison every
    later weight (the loss value of that batch itself may be non-finite). An infinite logit gives
    finite, saturated increments (sigma = 0 or 1) and is counted, as in the authors' code. Otherwise this is exactly the
    authors' update. In eval mode the loss is computed but the statistics are frozen.
    Buffers ``pos_grad``, ``neg_grad``, ``pos_neg`` (float32, length C) are persistent (in state_dict).
    The statistics are always accumulated in float32 (the loss runs in float32 for fp16/bf16 logits).

Dense form, :class:`EQLv2FocalLoss` (**our extension; untested in the literature**; EFL is the published
dense successor and is not implemented here): C sigmoid channels, no objectness column, background
locations have an all-zero target; the same q/r re-weighting multiplies the sigmoid focal loss
(alpha_t, gamma) elementwise, reduction = sum (the detector applies its own normaliser). The statistics use
the EQL v2 (BCE) gradient magnitude |sigma - y| times the EQL weight (as in the EQL v2 / EFL code), over
all valid locations given, all-reduced like the ROI version.

Inference: :func:`objectness_scores` = [sigma(z_fg) * (1 - sigma(z_bg)), sigma(z_bg)] (``test_with_obj``).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from .distributed import all_reduce_sum, warn_nonfinite_skip
from .focal import sigmoid_focal_loss
from .sigmoid import fused_weighted_bce

__all__ = ["eqlv2_map", "objectness_scores", "EQLv2Loss", "EQLv2FocalLoss"]


def eqlv2_map(x: torch.Tensor, gamma: float = 12.0, mu: float = 0.8) -> torch.Tensor:
    """f(x) = 1 / (1 + exp(-gamma (x - mu))), computed as a (overflow-free) sigmoid."""
    return torch.sigmoid(gamma * (x - mu))


def objectness_scores(logits: torch.Tensor) -> torch.Tensor:
    """(R, C+1) logits (bg last) -> (R, C+1) scores [sigma(z_fg) * (1 - sigma(z_bg)), sigma(z_bg)].

    The background column stays last so Detectron2's ``fast_rcnn_inference`` can drop it.
    """
    p = torch.sigmoid(logits)
    bg = p[:, -1:]
    fg = p[:, :-1] * torch.sigmoid(-logits[:, -1:])  # 1 - sigma(z_bg), without cancellation
    return torch.cat([fg, bg], dim=1)


class _EQLv2Stats(nn.Module):
    """Shared EQL v2 state: gradient accumulators and the q/r weight mapping (length C, float32)."""

    def __init__(self, num_classes: int, gamma: float = 12.0, mu: float = 0.8, alpha: float = 4.0):
        super().__init__()
        self.num_classes = int(num_classes)
        self.gamma = float(gamma)
        self.mu = float(mu)
        self.alpha = float(alpha)
        self.register_buffer("pos_grad", torch.zeros(self.num_classes, dtype=torch.float32))
        self.register_buffer("neg_grad", torch.zeros(self.num_classes, dtype=torch.float32))
        self.register_buffer("pos_neg", torch.full((self.num_classes,), 100.0, dtype=torch.float32))
        self.num_nonfinite_skips = 0  # batches whose statistics were dropped (this process; not checkpointed)

    def class_weights(self):
        """(neg_w, pos_w) for the C foreground classes: r = f(g), q = 1 + alpha (1 - f(g)), float32."""
        r = eqlv2_map(self.pos_neg.float(), self.gamma, self.mu)
        q = 1.0 + self.alpha * (1.0 - r)
        return r, q

    @torch.no_grad()
    def _update(self, pos_inc: torch.Tensor, neg_inc: torch.Tensor) -> bool:
        """Add this step's increments (all-reduced first); returns False when the update was skipped."""
        # one collective for both vectors; every rank must call this on every training step
        C = self.num_classes
        inc = torch.cat([pos_inc, neg_inc]).to(dtype=self.pos_grad.dtype, device=self.pos_grad.device)
        all_reduce_sum(inc)
        pos_grad = self.pos_grad + inc[:C]
        neg_grad = self.neg_grad + inc[C:]
        pos_neg = pos_grad / (neg_grad + 1e-10)
        # both decisions use the reduced increments and the (identical) buffers, so every rank takes the
        # same branch; one host sync for both
        observed, finite = torch.stack(
            [inc.ne(0).any(), torch.isfinite(torch.cat([pos_grad, neg_grad, pos_neg])).all()]
        ).tolist()
        if not observed:
            # no ROI on any rank (global R = 0): nothing observed; keep g instead of letting 0 / 1e-10
            # reset the initial g = 100 to 0
            return False
        if not finite:
            # a NaN logit on any rank (an overflowing fp16 step that AMP will skip, a diverging batch):
            # keeping the sums would make every later weight NaN, so this batch's statistics are dropped
            warn_nonfinite_skip(self, "EQL v2 statistics (pos_grad/neg_grad/pos_neg)")
            return False
        self.pos_grad.copy_(pos_grad)
        self.neg_grad.copy_(neg_grad)
        self.pos_neg.copy_(pos_neg)
        return True

    def extra_repr(self):
        return f"num_classes={self.num_classes}, gamma={self.gamma}, mu={self.mu}, alpha={self.alpha}"


class EQLv2Loss(_EQLv2Stats):
    """EQL v2 ROI classification loss. ``forward(logits (R, C+1), gt_classes (R,)) -> scalar`` (sum / R).

    See the module docstring for the exact math. Statistics update only when ``self.training``.
    """

    def get_weights(self, dtype=torch.float32):
        """(neg_w, pos_w), each (C+1,), with weight 1 for the background/objectness column."""
        r, q = self.class_weights()
        one = r.new_ones(1)
        return torch.cat([r, one]).to(dtype), torch.cat([q, one]).to(dtype)

    def forward(self, logits: torch.Tensor, gt_classes: torch.Tensor) -> torch.Tensor:
        if logits.dim() != 2 or logits.shape[1] != self.num_classes + 1:
            raise ValueError(f"expected logits (R, {self.num_classes + 1}), got {tuple(logits.shape)}")
        neg_w, pos_w = self.get_weights()
        loss, pos_stat, neg_stat = fused_weighted_bce(
            logits, gt_classes, neg_w, pos_w, with_stats=self.training
        )
        if self.training:
            C = self.num_classes
            self._update(pos_stat[:C], neg_stat[:C])
        return loss


class EQLv2FocalLoss(_EQLv2Stats):
    """Dense EQL v2 on a sigmoid focal head (extension; see module docstring).

    ``forward(logits (M, C), gt_classes (M,) in [0, C], C = background) -> scalar``, reduction = sum of
    w * focal(z, onehot) over all entries (no normalisation). Rows must already exclude ignored locations.
    Defaults: focal gamma 2, alpha 0.25; EQL gamma 12, mu 0.8, alpha 4.
    """

    def __init__(self, num_classes, gamma=12.0, mu=0.8, alpha=4.0, focal_gamma=2.0, focal_alpha=0.25):
        super().__init__(num_classes, gamma, mu, alpha)
        self.focal_gamma = float(focal_gamma)
        self.focal_alpha = float(focal_alpha)

    def forward(self, logits: torch.Tensor, gt_classes: torch.Tensor) -> torch.Tensor:
        C = self.num_classes
        if logits.dim() != 2 or logits.shape[1] != C:
            raise ValueError(f"expected logits (M, {C}), got {tuple(logits.shape)}")
        z = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
        r, q = self.class_weights()
        r = r.to(z.dtype)
        q = q.to(z.dtype)
        M = z.shape[0]
        gt = gt_classes.to(device=z.device, dtype=torch.long)
        # one-hot over C+1 then drop background: bg rows are all-zero
        y = F.one_hot(gt, C + 1)[:, :C].to(z.dtype) if M > 0 else z.new_zeros(0, C)
        w = (y * q + (1 - y) * r).detach()
        if M == 0:
            loss = logits.sum() * 0.0
        else:
            loss = sigmoid_focal_loss(z, y, self.focal_alpha, self.focal_gamma, reduction="none", weight=w).sum()
        if self.training:
            with torch.no_grad():
                s = torch.sigmoid(z.detach())
                pos_inc = (y * w * torch.sigmoid(-z.detach())).sum(0)
                neg_inc = ((1 - y) * w * s).sum(0)
            self._update(pos_inc, neg_inc)
        return loss
