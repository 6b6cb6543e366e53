"""Per-class accumulated gradient statistics, the state shared by EQL v2 and EFL.

For every foreground class j the module keeps (float32 buffers of length C, persistent, so they are
checkpointed with the model):

    pos_grad_j = sum over the steps so far of the positive-entry gradient magnitudes of class j,
    neg_grad_j = the same over the negative entries,
    pos_neg_j  = pos_grad_j / (neg_grad_j + 1e-10), clamped to ``max_ratio`` when one is given.

``pos_neg`` starts at ``init_ratio`` (EQL v2: 100, so its first weights are all 1; EFL: 1, so its first
loss is the plain focal loss). What a "gradient magnitude" is belongs to each method; this module only
accumulates: :meth:`update` SUM-all-reduces one step's increments across ranks (a no-op without
torch.distributed) and adds them. Every rank must call it on every training step (it is a collective);
both decisions below use the reduced increments and the identical buffers, so all ranks take the same
branch:

- nothing observed (all reduced increments are 0, e.g. no location on any rank): the state is kept
  (instead of letting 0 / 1e-10 reset ``pos_neg`` to 0);
- non-finite reduced increments or sums (a NaN logit on any rank, an overflowing fp16 step that AMP
  will skip): the step's statistics are dropped with the rate-limited
  :func:`~lt_detectron.losses.distributed.warn_nonfinite_skip`, so one bad step does not poison every
  later weight.
"""

from typing import Optional

import torch
import torch.nn as nn

from .distributed import all_reduce_sum, warn_nonfinite_skip

__all__ = ["GradientStats"]


class GradientStats(nn.Module):
    """Buffers ``pos_grad``, ``neg_grad``, ``pos_neg`` (C,) and their all-reduced update (module docstring).

    Args:
        num_classes: C.
        init_ratio: the initial ``pos_neg``.
        max_ratio: clamp ``pos_neg`` to at most this (EFL: 1); None: no clamp (EQL v2).
        what: how the warning of a skipped non-finite step names these statistics.
    """

    def __init__(
        self,
        num_classes: int,
        init_ratio: float,
        max_ratio: Optional[float] = None,
        what: str = "gradient statistics (pos_grad/neg_grad/pos_neg)",
    ):
        super().__init__()
        self.num_classes = int(num_classes)
        self.max_ratio = None if max_ratio is None else float(max_ratio)
        self.what = what
        self.register_buffer("pos_grad", torch.zeros(self.num_classes, dtype=torch.float32))
        self.register_buffer("neg_grad", torch.zeros(self.num_classes, dtype=torch.float32))
        self.register_buffer(
            "pos_neg", torch.full((self.num_classes,), float(init_ratio), dtype=torch.float32)
        )
        self.num_nonfinite_skips = (
            0  # steps whose statistics were dropped (this process; not checkpointed)
        )

    @torch.no_grad()
    def update(self, pos_inc: torch.Tensor, neg_inc: torch.Tensor) -> bool:
        """Add one step's (C,) increments, all-reduced first; returns False when the step was skipped."""
        C = self.num_classes
        # one collective for both vectors
        inc = torch.cat([pos_inc.reshape(-1), neg_inc.reshape(-1)]).to(
            dtype=self.pos_grad.dtype, device=self.pos_grad.device
        )
        if inc.numel() != 2 * C:
            raise ValueError(
                "gradient statistics of %d classes got increments of %d and %d entries"
                % (C, pos_inc.numel(), neg_inc.numel())
            )
        all_reduce_sum(inc)
        pos_grad = self.pos_grad + inc[:C]
        neg_grad = self.neg_grad + inc[C:]
        pos_neg = pos_grad / (neg_grad + 1e-10)
        if self.max_ratio is not None:
            pos_neg = pos_neg.clamp(max=self.max_ratio)
        # one host sync for both decisions
        observed, finite = torch.stack(
            [inc.ne(0).any(), torch.isfinite(torch.cat([pos_grad, neg_grad, pos_neg])).all()]
        ).tolist()
        if not observed:
            return False
        if not finite:
            warn_nonfinite_skip(self, self.what)
            return False
        self.pos_grad.copy_(pos_grad)
        self.neg_grad.copy_(neg_grad)
        self.pos_neg.copy_(pos_neg)
        return True

    _update = update  # the name EQL v2's callers use

    def extra_repr(self) -> str:
        return "num_classes=%d, max_ratio=%s" % (self.num_classes, self.max_ratio)
