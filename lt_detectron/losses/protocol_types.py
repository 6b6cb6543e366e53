"""The data the loss protocol passes around (:mod:`lt_detectron.losses.base`): the classification
layer a loss asks for (:class:`ClassifierSpec`), what a loss may use besides logits and labels
(:class:`ROIBatch`, :class:`DenseBatch`), and the helpers that read the training iteration from and
log scalars to Detectron2's event storage.
"""

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn as nn

__all__ = ["ClassifierSpec", "ROIBatch", "DenseBatch", "storage_iteration", "log_scalar"]


@dataclass(frozen=True)
class ClassifierSpec:
    """The classification layer a loss needs.

    Attributes:
        num_logits: K, the layer's outputs (C+1 for most ROI losses, background last).
        kind: ``"linear"`` or ``"cosine"``.
        scale: cosine only: the temperature s of ``s * cos``; None gives raw cosines in [-1, 1]
            (the loss applies its own scale, as C2AM).
        bias: whether the layer has a bias.
        prior_prob: > 0 sets the bias to ``-log((1 - p) / p)``; 0 keeps the head's default init.
        init_std: std of a normal weight init; None keeps the head's default init.
    """

    num_logits: int
    kind: str = "linear"
    scale: Optional[float] = None
    bias: bool = True
    prior_prob: float = 0.0
    init_std: Optional[float] = None


@dataclass
class ROIBatch:
    """What an ROI loss may use besides the logits and labels (filled by the box predictor).

    Attributes:
        rois_per_image: number of sampled ROIs of each image (the rows of the logits, in order).
        gt_classes_per_image: the GT objects' classes of each image (not the ROIs'), or None.
        classifier: the classification layer (e.g. C2AM reads its weight norms).
        iteration: the training iteration; None reads Detectron2's event storage.
    """

    rois_per_image: Sequence[int] = ()
    gt_classes_per_image: Optional[Sequence[torch.Tensor]] = None
    classifier: Optional[nn.Module] = None
    iteration: Optional[int] = None


@dataclass
class DenseBatch:
    """What a dense loss may use besides the logits and labels (filled by the detector).

    Attributes:
        image_index: (M,) the image of each location of (M, C) logits, or None.
        gt_classes_per_image: the GT objects' classes of each image, or None.
        iteration: the training iteration; None reads Detectron2's event storage.
    """

    image_index: Optional[torch.Tensor] = None
    gt_classes_per_image: Optional[Sequence[torch.Tensor]] = None
    iteration: Optional[int] = None


def storage_iteration(iteration: Optional[int] = None) -> int:
    """``iteration`` if given, else the iteration of Detectron2's event storage (0 outside training)."""
    if iteration is not None:
        return int(iteration)
    try:
        from detectron2.utils.events import get_event_storage

        return int(get_event_storage().iter)
    except (AssertionError, ImportError):  # no storage: not inside a training loop
        return 0


def log_scalar(name: str, value: float) -> None:
    """``put_scalar`` into Detectron2's event storage when inside a training loop; else nothing."""
    try:
        from detectron2.utils.events import get_event_storage

        get_event_storage().put_scalar(name, float(value), smoothing_hint=False)
    except (AssertionError, ImportError):
        pass
