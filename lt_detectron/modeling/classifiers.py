"""Classifier layers for the long-tail ROI heads (pure torch nn.Modules, no Detectron2 config).

* :class:`CosineClassifier` -- ``out = s * cos(theta) (+ b)`` with ``cos theta_j = W_j . x / (||W_j|| ||x||)``.
  - ``scale=None``: returns RAW cosines in [-1, 1] (C2AM: the loss applies ``s`` and the margins, and
    inference uses ``softmax(s * cos)``); combine with ``bias=False``.
  - ``scale=float``: fixed temperature (buffer); ``learn_scale=True`` makes it a parameter.
  - ``bias=True``: a bias is added AFTER scaling (mmdet ``NormedLinear`` as used by ECM: temperature 20
    with bias, i.e. ``scale=20.0, bias=True``).
  - ``weight_norms()`` returns the (out_features,) row norms ``||W_j||`` (C2AM margins; the loss
    detaches them).
* :class:`LWSLinear` -- a linear layer with a learnable per-output scale of its weight rows,
  ``out_j = f_j (W_j . x) + b_j`` (LWS, docs/methods.md#crt-and-lws); its state dict is a linear
  layer's plus ``weight_scale`` (init 1), so a trained linear classifier loads into it, and
  ``decoupled_trainable`` names the only parameter the decoupled phase trains.
* :func:`init_prior_bias` sets ``bias = -log((1 - p) / p)`` (e.g. EQLv2 / sigmoid heads, p = 0.001).
* :func:`build_classifier` builds the layer a loss asks for (its
  :class:`~lt_detectron.losses.base.ClassifierSpec`): ``linear`` -> ``nn.Linear`` with Detectron2's
  Fast R-CNN init (normal std 0.01, zero bias) unless the spec gives ``init_std``; ``cosine`` ->
  :class:`CosineClassifier` (``scale``, ``bias``); then the bias prior when ``prior_prob > 0``.

Shapes: input ``(R, in_features)`` (extra trailing dims are flattened), output ``(R, out_features)``;
for a Detectron2 ROI head ``out_features = C + 1`` with background last.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["CosineClassifier", "LWSLinear", "init_prior_bias", "build_classifier"]


class CosineClassifier(nn.Module):
    """Cosine-similarity classifier.

    Args:
        in_features: feature dimension ``D``.
        num_classes_plus_bg: number of outputs ``K`` (``C + 1`` for a Detectron2 ROI head).
        scale: ``None`` -> raw cosines; a float -> ``s * cos``.
        learn_scale: make ``s`` a learnable parameter (requires a float ``scale``).
        bias: add a learnable bias (initialised to 0) after scaling.
        eps: lower bound of the norms in the normalisation (``x / max(||x||, eps)``); keeps zero
            features / rows finite (their cosines are 0).
        init_std: std of the normal weight init (mmdet default 0.01).
    """

    def __init__(
        self,
        in_features: int,
        num_classes_plus_bg: int,
        scale: Optional[float] = None,
        bias: bool = False,
        eps: float = 1e-6,
        learn_scale: bool = False,
        init_std: float = 0.01,
    ):
        super().__init__()
        self.in_features = int(in_features)
        self.out_features = int(num_classes_plus_bg)
        self.eps = float(eps)
        self.weight = nn.Parameter(torch.empty(self.out_features, self.in_features))
        nn.init.normal_(self.weight, std=init_std)
        if scale is None:
            if learn_scale:
                raise ValueError("learn_scale=True needs an initial float scale")
            self.scale = None
        elif learn_scale:
            self.scale = nn.Parameter(torch.tensor(float(scale)))
        else:
            self.register_buffer("scale", torch.tensor(float(scale)))
        self.bias = nn.Parameter(torch.zeros(self.out_features)) if bias else None

    def cosine(self, x: torch.Tensor) -> torch.Tensor:
        """Raw cosines (R, K) in [-1, 1] (up to rounding)."""
        if x.dim() > 2:
            x = torch.flatten(x, start_dim=1)
        xn = F.normalize(x, dim=1, eps=self.eps)
        wn = F.normalize(self.weight, dim=1, eps=self.eps)
        return xn @ wn.t()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (R, D) -> (R, K): ``cos``, or ``s * cos``, plus ``bias`` if enabled."""
        out = self.cosine(x)
        if self.scale is not None:
            out = out * self.scale
        if self.bias is not None:
            out = out + self.bias
        return out

    def weight_norms(self) -> torch.Tensor:
        """(K,) row norms ``||W_j||`` (differentiable; detach where needed)."""
        return self.weight.norm(dim=1)

    def extra_repr(self) -> str:
        s = None if self.scale is None else float(self.scale)
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, scale={s}, "
            f"learn_scale={isinstance(self.scale, nn.Parameter)}, bias={self.bias is not None}"
        )


class LWSLinear(nn.Linear):
    """``nn.Linear`` with learnable weight scaling: ``out = x (f * W)^T + b``, f (out_features,) init 1.

    The bias is not scaled (the scale multiplies the weight rows, as the eqlv2 authors' LWS layer).
    """

    # with MODEL.LT.FREEZE_ALL_BUT_CLS only these parameters of the layer train
    decoupled_trainable = ("weight_scale",)

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__(in_features, out_features, bias=bias)
        self.weight_scale = nn.Parameter(torch.ones(out_features))

    @classmethod
    def from_linear(cls, layer: nn.Linear) -> "LWSLinear":
        """An LWS layer holding ``layer``'s weight and bias, scales 1 (same outputs)."""
        out = cls(layer.in_features, layer.out_features, bias=layer.bias is not None)
        with torch.no_grad():
            out.weight.copy_(layer.weight)
            if layer.bias is not None:
                out.bias.copy_(layer.bias)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() > 2:
            x = torch.flatten(x, start_dim=1)
        return F.linear(x, self.weight * self.weight_scale[:, None], self.bias)


def init_prior_bias(module: nn.Module, prior_prob: float) -> nn.Module:
    """Set ``module.bias`` to ``-log((1 - p) / p)`` so that ``sigmoid(bias) = p``; returns ``module``.

    Works for ``nn.Linear`` and :class:`CosineClassifier` with a bias; raises if there is none.
    """
    p = float(prior_prob)
    if not 0.0 < p < 1.0:
        raise ValueError(f"prior_prob must be in (0, 1), got {prior_prob}")
    bias = getattr(module, "bias", None)
    if bias is None:
        raise ValueError(f"{type(module).__name__} has no bias to initialise")
    with torch.no_grad():
        bias.fill_(-math.log((1.0 - p) / p))
    return module


def build_classifier(spec, in_features: int) -> nn.Module:
    """The classification layer of a :class:`~lt_detectron.losses.base.ClassifierSpec` on ``in_features``
    inputs: ``(R, in_features) -> (R, spec.num_logits)``."""
    std = 0.01 if spec.init_std is None else float(spec.init_std)
    if spec.kind == "linear":
        layer = nn.Linear(in_features, spec.num_logits, bias=spec.bias)
        nn.init.normal_(layer.weight, std=std)  # Detectron2's FastRCNNOutputLayers init
        if layer.bias is not None:
            nn.init.constant_(layer.bias, 0.0)
    elif spec.kind == "cosine":
        layer = CosineClassifier(
            in_features, spec.num_logits, scale=spec.scale, bias=spec.bias, init_std=std
        )
    else:
        raise ValueError("unknown classifier kind %r; choose linear or cosine" % (spec.kind,))
    if spec.prior_prob > 0 and getattr(layer, "bias", None) is not None:
        init_prior_bias(layer, spec.prior_prob)
    return layer
