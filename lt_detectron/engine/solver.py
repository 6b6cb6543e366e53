"""``build_lt_optimizer(cfg, model)``: detectron2's ``build_optimizer`` plus whole-model clipping.

detectron2 v0.6 knows two ``SOLVER.CLIP_GRADIENTS.CLIP_TYPE`` values, ``"value"`` and ``"norm"``,
and both act on each parameter tensor separately: with ``"norm"`` every tensor is scaled to at
most ``CLIP_VALUE`` on its own. The papers' mmdetection recipes (ECM: max-norm 5, BAGS: 35) clip
the norm of ALL gradients together (``torch.nn.utils.clip_grad_norm_`` over the model's
parameters), as DETR and Detic do. ``CLIP_TYPE "full_model"`` selects that here:

* ``"full_model"``: before each optimizer step, the total ``NORM_TYPE``-norm over every parameter
  of every param group is computed and all gradients are scaled by one common factor so that it
  is at most ``CLIP_VALUE``;
* anything else: exactly detectron2's ``build_optimizer`` (``"value"``/``"norm"`` through its
  ``maybe_add_gradient_clipping``).

Under AMP, detectron2's ``AMPTrainer`` calls ``GradScaler.step(optimizer)``, which unscales the
gradients before calling ``optimizer.step``: the clipping sees the true gradients.
"""

import torch
from detectron2.solver import build_optimizer
from detectron2.solver.build import get_default_optimizer_params

__all__ = ["FULL_MODEL", "build_lt_optimizer", "with_full_model_gradient_clipping"]

FULL_MODEL = "full_model"


def with_full_model_gradient_clipping(optimizer_type, clip_value, norm_type=2.0):
    """Return a subclass of ``optimizer_type`` whose ``step`` first clips the gradients of all
    its parameters together to a total ``norm_type``-norm of at most ``clip_value``."""
    if not (isinstance(optimizer_type, type) and issubclass(optimizer_type, torch.optim.Optimizer)):
        raise TypeError("expected a torch.optim.Optimizer subclass, got %r" % (optimizer_type,))
    clip_value = float(clip_value)
    norm_type = float(norm_type)

    def step(self, closure=None):
        params = [p for group in self.param_groups for p in group["params"] if p.grad is not None]
        if params:
            torch.nn.utils.clip_grad_norm_(params, clip_value, norm_type=norm_type)
        return super(clipped, self).step(closure)

    clipped = type(
        optimizer_type.__name__ + "WithFullModelGradientClip",
        (optimizer_type,),
        {"step": step, "__module__": __name__, "full_model_clip": (clip_value, norm_type)},
    )
    return clipped


def build_lt_optimizer(cfg, model):
    """detectron2's SGD optimizer; ``SOLVER.CLIP_GRADIENTS.CLIP_TYPE "full_model"`` adds
    whole-model gradient clipping (detectron2 v0.6 itself raises on that value)."""
    clip = cfg.SOLVER.CLIP_GRADIENTS
    if not (clip.ENABLED and clip.CLIP_TYPE == FULL_MODEL):
        return build_optimizer(cfg, model)
    if not clip.CLIP_VALUE > 0:
        raise ValueError(
            "SOLVER.CLIP_GRADIENTS.CLIP_VALUE must be > 0 with CLIP_TYPE 'full_model' (got %r): set "
            "the maximal total gradient norm, e.g. SOLVER.CLIP_GRADIENTS.CLIP_VALUE 5.0, or "
            "SOLVER.CLIP_GRADIENTS.ENABLED False" % (clip.CLIP_VALUE,)
        )
    params = get_default_optimizer_params(
        model,
        base_lr=cfg.SOLVER.BASE_LR,
        weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM,
        bias_lr_factor=cfg.SOLVER.BIAS_LR_FACTOR,
        weight_decay_bias=cfg.SOLVER.WEIGHT_DECAY_BIAS,
    )
    sgd = with_full_model_gradient_clipping(torch.optim.SGD, clip.CLIP_VALUE, clip.NORM_TYPE)
    return sgd(
        params,
        lr=cfg.SOLVER.BASE_LR,
        momentum=cfg.SOLVER.MOMENTUM,
        nesterov=cfg.SOLVER.NESTEROV,
        weight_decay=cfg.SOLVER.WEIGHT_DECAY,
    )
