"""EFL: Equalized Focal Loss (Li et al., CVPR 2022), following the authors' ``efl.py`` (United-Perception).

The maths (focusing and weighting factors, the gradient statistics) and every choice:
docs/methods.md#efl (RetinaNet / FCOS: docs/methods.md#efl-on-retinanet--fcos; statistics:
docs/methods.md#efl-gradient-statistics; CenterNet, our extension:
docs/methods.md#efl-on-centernet-heat-maps-extension).

Contract:

- :class:`EqualizedFocalLoss` (``DENSE_LOSS_REGISTRY`` ``efl``): logits ``(M, C)`` of the valid
  locations, C sigmoid channels, labels ``(M,)`` in ``[0, C]`` with ``C`` = background (an all-zero
  target row); returns the loss as a **sum** (the detector divides by its own normaliser).
  :meth:`EqualizedFocalLoss.heatmap` takes ``(N, C, H, W)`` logits and Gaussian targets.
- State: :class:`~lt_detectron.losses.grad_stats.GradientStats` buffers ``stats.pos_grad``,
  ``stats.neg_grad``, ``stats.pos_neg`` (float32, ``(C,)``, persistent), updated in the **backward**
  pass from the gradient of the final loss, in training mode with gradients enabled, SUM-all-reduced
  across ranks: every rank must call the loss (``M = 0`` allowed) and back-propagate the same number
  of times per step. A step that observed nothing, or with non-finite statistics, leaves them
  unchanged.
- fp16 / bf16 logits are computed in float32; the gradient is computed in the forward pass and saved.
"""

import functools
from typing import Optional

import torch
from torch.autograd.function import once_differentiable

from .base import DENSE_LOSS_REGISTRY, DenseBatch, DenseLoss
from .grad_stats import GradientStats

__all__ = ["EqualizedFocalLoss", "efl_factors"]


def efl_factors(pos_neg: torch.Tensor, gamma_b: float, scale_factor: float):
    """(gamma_j, w_j): focusing factor gamma_b + s (1 - g_j) and weighting factor gamma_j / gamma_b."""
    gamma = gamma_b + scale_factor * (1.0 - pos_neg)
    return gamma, gamma / gamma_b


def _focal_terms(u: torch.Tensor, gamma: torch.Tensor, coef: torch.Tensor, need_grad: bool):
    """sum(coef * sigma(u)^gamma * softplus(u)) and, with ``need_grad``, its elementwise derivative in u.

    ``u`` is the logit of the wrong answer (z for a negative entry, -z for a positive one), so
    1 - p_t = sigma(u) and -log p_t = softplus(u); ``gamma`` and ``coef`` broadcast to ``u``.
    d/du = coef sigma(u)^gamma (gamma sigma(-u) softplus(u) + sigma(u)). Three buffers of u's size.
    """
    # softplus(u) = max(u, 0) + log(1 + exp(-|u|)) (torch's BCE-with-logits form; F.softplus, log1p and
    # logsigmoid are several times slower on CPU and allocate more); log sigma(u) = u - softplus(u)
    w = u.abs().neg_().exp_().add_(1.0).log_()
    sp = torch.clamp(u, min=0.0).add_(w)
    w = torch.sub(u, sp, out=w).mul_(gamma).exp_().mul_(coef)  # coef * sigma(u)^gamma
    buf = torch.mul(w, sp)
    loss = buf.sum()
    if not need_grad:
        return loss, None
    s = torch.sigmoid(u, out=buf)
    sp.mul_(gamma)
    sp.addcmul_(sp, s, value=-1.0)  # gamma softplus(u) (1 - sigma(u))
    return loss, s.add_(sp).mul_(w)


def _focal_form(z, labels, gamma, coef_neg, coef_pos, need_grad, need_stats):
    """EFL of (M, C) logits: every entry is first treated as a negative (one pass over M x C), then the
    M_pos positive entries (one per foreground row) are corrected; returns (loss, grad, pos_abs, neg_abs)."""
    C = z.shape[1]
    loss, grad = _focal_terms(z, gamma, coef_neg, need_grad)
    rows = torch.nonzero(labels < C).squeeze(1)
    cols = labels[rows]
    zp = z[rows, cols]
    loss_as_neg, _ = _focal_terms(zp, gamma[cols], coef_neg[cols], False)
    loss_pos, grad_pos = _focal_terms(zp.neg(), gamma[cols], coef_pos[cols], need_grad)
    loss = loss - loss_as_neg + loss_pos
    pos_abs = neg_abs = None
    if need_grad:
        if need_stats:
            grad[rows, cols] = 0.0
            neg_abs = grad.sum(0)
            pos_abs = torch.zeros_like(neg_abs).index_add_(
                0, cols, grad_pos
            )  # |dL/dz| = dL/du >= 0
        grad[rows, cols] = grad_pos.neg_()  # dL/dz = -dL/du for positives
    return loss, grad, pos_abs, neg_abs


def _heatmap_form(z, heat, gamma, weight, beta, need_grad, need_stats):
    """Penalty-reduced EFL of (N, C, H, W) logits; returns (loss, grad, pos_abs, neg_abs)."""
    pos = heat.eq(1)
    u = torch.where(pos, z.neg(), z)
    coef = torch.where(pos, torch.ones_like(heat), (1 - heat).pow(beta)).mul_(
        weight.view(1, -1, 1, 1)
    )
    loss, g = _focal_terms(u, gamma.view(1, -1, 1, 1), coef, need_grad)
    pos_abs = neg_abs = None
    if need_grad:
        if need_stats:
            pos_abs = torch.where(pos, g, torch.zeros_like(g)).sum((0, 2, 3))
            neg_abs = g.sum((0, 2, 3)) - pos_abs
        g = torch.where(pos, g.neg(), g)
    return loss, g, pos_abs, neg_abs


class _EFLFunction(torch.autograd.Function):
    """loss = form(z); backward: dL/dz = g * saved gradient, and the statistics update
    (docs/methods.md#efl-gradient-statistics)."""

    @staticmethod
    def forward(ctx, z, form, stats):
        need_grad = ctx.needs_input_grad[0]
        loss, grad, pos_abs, neg_abs = form(
            z, need_grad=need_grad, need_stats=need_grad and stats is not None
        )
        if need_grad:
            ctx.save_for_backward(grad)
            ctx.stats = stats
            ctx.abs_sums = (pos_abs, neg_abs)
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        (grad,) = ctx.saved_tensors
        if ctx.stats is not None:
            a = g.detach().abs().float()
            pos_abs, neg_abs = ctx.abs_sums
            ctx.stats.update(pos_abs.float() * a, neg_abs.float() * a)
        return grad * g, None, None


@DENSE_LOSS_REGISTRY.register("efl")
class EqualizedFocalLoss(DenseLoss):
    """Equalized Focal Loss (docs/methods.md#efl): ``MODEL.LT.DENSE_LOSS: "efl"``.

    Args:
        num_classes: C (no background channel).
        focal_alpha: alpha of alpha_t (the detector's; 0.25; < 0 disables it).
        focal_gamma: gamma_b, the base focusing factor (the detector's focal gamma; 2.0); must be > 0.
        scale_factor: s, the range of the class-dependent focusing factor (``MODEL.LT.EFL.SCALE_FACTOR``, 8.0).
    """

    def __init__(
        self,
        num_classes: int,
        *,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        scale_factor: float = 8.0,
    ):
        super().__init__(num_classes, focal_alpha=focal_alpha, focal_gamma=focal_gamma)
        if not self.focal_gamma > 0:
            raise ValueError(
                "EFL divides by the base focusing factor gamma_b = the detector's focal gamma "
                "(e.g. MODEL.RETINANET.FOCAL_LOSS_GAMMA / MODEL.FCOS.FOCAL_LOSS_GAMMA), got %g; "
                "set it > 0 (the paper: 2.0)" % self.focal_gamma
            )
        if not scale_factor >= 0:
            raise ValueError(
                "MODEL.LT.EFL.SCALE_FACTOR must be >= 0 (the paper: 8.0), got %r" % (scale_factor,)
            )
        self.scale_factor = float(scale_factor)
        self.stats = GradientStats(
            self.num_classes,
            init_ratio=1.0,
            max_ratio=1.0,
            what="EFL statistics (pos_grad/neg_grad/pos_neg)",
        )

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
        ret = super().from_config(
            cfg, num_classes, class_stats, focal_alpha=focal_alpha, focal_gamma=focal_gamma
        )
        ret["scale_factor"] = cfg.MODEL.LT.EFL.SCALE_FACTOR
        return ret

    def class_factors(self, gamma_b: Optional[float] = None):
        """(gamma_j, w_j), each (C,) float32, from the current statistics (``gamma_b``: the focal gamma)."""
        return efl_factors(
            self.stats.pos_neg.float(),
            self.focal_gamma if gamma_b is None else float(gamma_b),
            self.scale_factor,
        )

    def plot_data(self) -> dict:
        """The per-class statistics the method plots draw (the loss protocol's ``plot_data``,
        :func:`lt_detectron.visualization.plots.plot_class_statistics`): g_j and the factors gamma_j, w_j the
        loss uses next, each (C,), with gamma_b = the focal gamma."""
        gamma, w = self.class_factors()
        return {
            "name": "efl_ratios",
            "title": "EFL gradient ratio per class",
            "ratio": self.stats.pos_neg.detach().float().cpu(),
            "ratio_label": "g_j = min(pos_grad / neg_grad, 1)",
            "factors": {
                "gamma_j (focusing factor) = gamma_b + s (1 - g_j)": gamma.detach().cpu(),
                "w_j (weighting factor) = gamma_j / gamma_b": w.detach().cpu(),
            },
            "factors_label": "EFL factor",
            "params": "gamma_b=%g, s=%g" % (self.focal_gamma, self.scale_factor),
        }

    def _tracked_stats(self, logits):
        return (
            self.stats
            if (self.training and torch.is_grad_enabled() and logits.requires_grad)
            else None
        )

    def forward(
        self, logits: torch.Tensor, labels: torch.Tensor, batch: Optional[DenseBatch] = None
    ) -> torch.Tensor:
        """Summed EFL of (M, C) logits with labels (M,) in [0, C] (C = background)."""
        self._check_logits(logits)
        C = self.num_classes
        if labels.shape != logits.shape[:1]:
            raise ValueError(
                "EFL expects labels (M,) = (%d,), got %s" % (logits.shape[0], tuple(labels.shape))
            )
        labels = labels.to(device=logits.device, dtype=torch.long)
        if labels.numel() and bool(((labels < 0) | (labels > C)).any()):
            raise ValueError(
                "EFL labels must be in [0, %d] (%d = background); remove ignored locations first"
                % (C, C)
            )
        z = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
        gamma, w = (t.to(device=z.device, dtype=z.dtype) for t in self.class_factors())
        a = self.focal_alpha
        coef_neg, coef_pos = (w * (1 - a), w * a) if a >= 0 else (w, w)
        form = functools.partial(
            _focal_form, labels=labels, gamma=gamma, coef_neg=coef_neg, coef_pos=coef_pos
        )
        with torch.autocast(device_type=z.device.type, enabled=False):
            return _EFLFunction.apply(z.contiguous(), form, self._tracked_stats(logits))

    def heatmap(
        self,
        logits: torch.Tensor,
        heat: torch.Tensor,
        batch: Optional[DenseBatch] = None,
        alpha: float = 2.0,
        beta: float = 4.0,
    ) -> torch.Tensor:
        """Summed penalty-reduced EFL of (N, C, H, W) logits vs Gaussian heat maps (extension; module
        docstring): CenterNet's exponent ``alpha`` is gamma_b here, ``beta`` the penalty reduction."""
        if logits.dim() != 4 or logits.shape[1] != self.num_classes or heat.shape != logits.shape:
            raise ValueError(
                "EFL heatmap expects logits and heat (N, %d, H, W) of one shape, got %s and %s"
                % (self.num_classes, tuple(logits.shape), tuple(heat.shape))
            )
        if not alpha > 0:
            raise ValueError(
                "EFL's heat-map form divides by CenterNet's focusing exponent alpha "
                "(MODEL.CENTERNET.HM_ALPHA), got %r; set it > 0 (CenterNet: 2)" % (alpha,)
            )
        z = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
        gamma, w = (t.to(device=z.device, dtype=z.dtype) for t in self.class_factors(gamma_b=alpha))
        heat = heat.detach().to(device=z.device, dtype=z.dtype)
        form = functools.partial(_heatmap_form, heat=heat, gamma=gamma, weight=w, beta=float(beta))
        with torch.autocast(device_type=z.device.type, enabled=False):
            return _EFLFunction.apply(z.contiguous(), form, self._tracked_stats(logits))

    def extra_repr(self) -> str:
        return super().extra_repr() + ", scale_factor=%g" % self.scale_factor
