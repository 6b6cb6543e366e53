"""Training-free calibration of a trained ROI classifier at test time (``TEST.LT.CALIBRATION``).

Each calibration maps the box predictor's logits ``(R, C+1)`` (class c in column c, background last)
to calibrated logits of the same layout; the loss's own ``predict_probs`` then turns them into
scores, so the activation stays the one the model was trained with. Nothing is written into the
model's parameters or its checkpoint (the state lives in non-persistent buffers). The maths, the
sources and every interpretation choice: docs/methods.md#post-hoc-calibration.

==================  =====================================  ========================================
``CALIBRATION``     calibrated logits, c < C (bg unchanged)  counts / parameter
==================  =====================================  ========================================
norcal              ``z_c - gamma * log N_c``              training image counts, ``_GAMMA``
logit_adjustment    ``z_c - tau * log(n_c / sum_k n_k)``   training instance counts, ``_TAU``
tau_norm            ``(z_c - b_c) / ||w_c||^tau + b_c``    the linear classifier's rows, ``_TAU``
==================  =====================================  ========================================

What a calibration needs is declared on its class and checked when the predictor is built, with an
error that names ``TEST.LT.CALIBRATION`` and the fix: ``activations`` (the loss's
``score_activation``: the scores must be a softmax / sigmoid of the logits), the default logit layout
(``logit_columns()`` = class c in column c, background last) and, for ``needs_linear_classifier``,
an ``nn.Linear`` classification layer. Register a new one with
``@CALIBRATION_REGISTRY.register("name")``.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from ..config import LTConfigError
from ..losses.base import LossRegistry, class_counts

__all__ = [
    "CALIBRATION_REGISTRY",
    "Calibration",
    "NorCal",
    "LogitAdjustment",
    "TauNorm",
    "build_calibration",
]

CALIBRATION_REGISTRY = LossRegistry("CALIBRATION", "TEST.LT.CALIBRATION")
CALIBRATION_REGISTRY.__doc__ = (
    "Test-time calibrations of the ROI box predictor, by TEST.LT.CALIBRATION."
)

_KEY = "TEST.LT.CALIBRATION"


class Calibration(nn.Module):
    """Base: ``forward(logits (R, C+1), classifier) -> (R, C+1)`` calibrated logits.

    Class attributes: ``activations`` (the ``score_activation`` values of the losses it applies to),
    ``needs_linear_classifier``, ``param_key`` (the config key of its strength), ``counts_field``
    (the ``ClassStats`` field it reads, or None).
    """

    name = "calibration"
    activations = ("softmax", "sigmoid")
    needs_linear_classifier = False
    param_key = ""
    counts_field: Optional[str] = None

    def __init__(self, num_classes: int, strength: float):
        super().__init__()
        if not strength >= 0:
            raise ValueError("%s must be >= 0, got %r" % (self.param_key, strength))
        self.num_classes = int(num_classes)
        self.strength = float(strength)

    def check(self, cls_loss, classifier: nn.Module) -> None:
        """Raise an :class:`~lt_detectron.config.LTConfigError` (a ``ValueError``) naming
        ``TEST.LT.CALIBRATION`` when this calibration does not apply
        to ``cls_loss`` (its activation or logit layout) or to ``classifier``."""
        loss = "MODEL.LT.ROI_LOSS %s" % getattr(cls_loss, "name", type(cls_loss).__name__)
        act = getattr(cls_loss, "score_activation", None)
        if act not in self.activations:
            raise LTConfigError(
                "%s %s does not apply to %s: its scores are not a %s of its logits (score_activation "
                "%r). Set %s none, or use a loss with score_activation in %s (e.g. softmax, sigmoid)."
                % (_KEY, self.name, loss, " / ".join(self.activations), act, _KEY, self.activations)
            )
        C = self.num_classes
        cols = cls_loss.logit_columns().to(torch.long).cpu()
        if not torch.equal(cols, torch.arange(C + 1)):
            raise LTConfigError(
                "%s %s needs logits with class c in column c and the background last; %s has %d "
                "columns in another layout. Set %s none for this loss."
                % (_KEY, self.name, loss, cols.numel(), _KEY)
            )
        if self.needs_linear_classifier and type(classifier) is not nn.Linear:
            raise LTConfigError(
                "%s %s rescales the rows of a linear classifier (nn.Linear), but the classifier is %s "
                "(MODEL.LT.CLASSIFIER). Use MODEL.LT.CLASSIFIER linear, or another %s."
                % (_KEY, self.name, type(classifier).__name__, _KEY)
            )

    def forward(self, logits: torch.Tensor, classifier: nn.Module) -> torch.Tensor:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return "%s=%g" % (self.param_key, self.strength)


class _ForegroundShift(Calibration):
    """``z_c + shift_c`` for the C class columns; the background column unchanged."""

    def __init__(self, num_classes: int, strength: float, shift: torch.Tensor):
        super().__init__(num_classes, strength)
        shift = torch.as_tensor(shift, dtype=torch.float32).flatten()
        if shift.numel() != self.num_classes:
            raise ValueError(
                "%s %s: %d class counts for %d classes"
                % (_KEY, self.name, shift.numel(), self.num_classes)
            )
        # not checkpointed: a saved model stays the trained one
        self.register_buffer("shift", torch.cat([shift, shift.new_zeros(1)]), persistent=False)

    def forward(self, logits: torch.Tensor, classifier: nn.Module = None) -> torch.Tensor:
        return logits + self.shift.to(logits.dtype)


@CALIBRATION_REGISTRY.register("norcal")
class NorCal(_ForegroundShift):
    """NorCal (Pan et al., NeurIPS 2021): class c's unnormalised score ``exp(z_c)`` divided by
    ``N_c^gamma`` (N_c: training images with class c, at least 1), background kept, renormalised by
    the loss's softmax; for a sigmoid loss each class-vs-background pair. ``counts``: (C,) N_c."""

    param_key = "TEST.LT.CALIBRATION_GAMMA"
    counts_field = "image_counts"

    def __init__(self, num_classes: int, strength: float, counts):
        n = torch.as_tensor(counts, dtype=torch.float64).clamp(min=1.0)
        super().__init__(num_classes, strength, -float(strength) * n.log())


@CALIBRATION_REGISTRY.register("logit_adjustment")
class LogitAdjustment(_ForegroundShift):
    """Post-hoc logit adjustment (Menon et al., ICLR 2021): ``z_c - tau * log pi_c`` with the prior
    ``pi_c = n_c / sum_k n_k`` (n_c: training instances of class c, at least 1); the background
    logit unchanged. ``counts``: (C,) n_c."""

    param_key = "TEST.LT.CALIBRATION_TAU"
    counts_field = "instance_counts"

    def __init__(self, num_classes: int, strength: float, counts):
        n = torch.as_tensor(counts, dtype=torch.float64).clamp(min=1.0)
        super().__init__(num_classes, strength, -float(strength) * (n / n.sum()).log())


@CALIBRATION_REGISTRY.register("tau_norm")
class TauNorm(Calibration):
    """tau-normalisation (Kang et al., ICLR 2020): class rows ``w_c / ||w_c||^tau`` of the linear
    classifier, applied to the logits as ``(z_c - b_c) / ||w_c||^tau + b_c`` (equal to recomputing
    them from the features); the bias and the background row kept. The classifier is not changed."""

    param_key = "TEST.LT.CALIBRATION_TAU"
    needs_linear_classifier = True

    def __init__(self, num_classes: int, strength: float, counts=None):
        super().__init__(num_classes, strength)

    def forward(self, logits: torch.Tensor, classifier: nn.Module) -> torch.Tensor:
        C = self.num_classes
        w = classifier.weight[:C].detach()
        scale = w.norm(dim=1).clamp(min=1e-12).pow(-self.strength).to(logits.dtype)
        b = (
            classifier.bias[:C].detach().to(logits.dtype)
            if classifier.bias is not None
            else logits.new_zeros(C)
        )
        fg = (logits[:, :C] - b) * scale + b
        return torch.cat([fg, logits[:, C:]], dim=1)


def build_calibration(cfg, num_classes: int, class_stats=None) -> Optional[Calibration]:
    """The calibration of ``cfg.TEST.LT.CALIBRATION`` (None for ``none``), with its strength and
    the training counts of ``class_stats`` (a :class:`~lt_detectron.class_stats.ClassStats`)."""
    t = cfg.TEST.LT
    name = str(t.CALIBRATION).lower()
    # both strengths are read by every ROI model (unused_lt_keys names the one that has no effect)
    strengths = {"CALIBRATION_GAMMA": t.CALIBRATION_GAMMA, "CALIBRATION_TAU": t.CALIBRATION_TAU}
    if name == "none":
        return None
    cls = CALIBRATION_REGISTRY.get(name)
    strength = strengths[cls.param_key.rsplit(".", 1)[1]]
    counts = None
    if cls.counts_field is not None:
        if class_stats is None:
            raise LTConfigError(
                "%s %s needs the training class counts, but the config has no training data: set "
                "DATASETS.TRAIN to the model's training datasets, or MODEL.LT.CLASS_STATS_FILE to "
                "the class statistics its run recorded." % (_KEY, name)
            )
        counts = class_counts(class_stats, cls.counts_field)
    return cls(num_classes, strength, counts)
