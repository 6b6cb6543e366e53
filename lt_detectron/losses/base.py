"""The loss protocol: what a detection head needs to know about a classification loss.

A head never switches on a loss's name. It builds the loss through :func:`~.build.build_roi_loss` /
:func:`~.build.build_dense_loss` (from the config and the class statistics) and then asks it:

ROI heads (:class:`ROILoss`, registered in ``ROI_LOSS_REGISTRY`` under ``MODEL.LT.ROI_LOSS``):
    - ``classifier_spec()``: the classification layer to build (:class:`ClassifierSpec`: number of
      logits K, linear or cosine, bias, bias prior);
    - ``forward(logits (R, K), gt_classes (R,), batch: ROIBatch) -> scalar``; ``gt_classes`` in
      [0, C], C = background (Detectron2's layout);
    - ``predict_probs(logits (R, K)) -> (R, C+1)`` probabilities, background LAST, so Detectron2's
      ``fast_rcnn_inference``, Mask R-CNN and Cascade R-CNN work unchanged;
    - ``accuracy_logits(logits) -> (R, C+1)`` what ``fast_rcnn/cls_accuracy`` is logged from.

Dense heads (:class:`DenseLoss`, ``DENSE_LOSS_REGISTRY``, ``MODEL.LT.DENSE_LOSS``): C sigmoid
channels, background = an all-zero target row.
    - ``forward(logits (M, C), labels (M,) in [0, C], batch: DenseBatch) -> scalar`` (SUM: each
      detector divides by its own normaliser);
    - ``heatmap(logits (N, C, H, W), heat (N, C, H, W), batch, alpha, beta) -> scalar`` (SUM), the
      CenterNet (penalty-reduced focal) form;
    - ``predict_probs(logits) -> sigmoid(logits)`` unless the method says otherwise.

Every loss builds itself: ``from_config(cfg, num_classes, class_stats, **head_kwargs) -> dict`` of
its ``__init__`` keyword arguments (a flat mapping, as Detectron2's ``from_config``), so the heads,
``examples/custom_meta_arch.py`` and user code build the same loss from the same config. State
that lives across iterations is kept in registered buffers (checkpointed with the model).

What a loss supports is declared on its class, and checked by :func:`~.build.build_roi_loss` /
:func:`~.build.build_dense_loss` with errors that name the config key and the fix:
    - ``needs_class_stats``: the loss needs the training :class:`~lt_detectron.class_stats.ClassStats`
      (instance counts); building it without them is an error;
    - ``supported_options`` (ROI): the optional config switches the loss honours, among
      :data:`ROI_OPTIONS` (Detectron2's ``MODEL.ROI_BOX_HEAD.USE_FED_LOSS``, and the switches a
      method module adds with :func:`register_roi_option`); a config that turns on another one is an
      error naming the losses that support it;
    - ``epoch_length_key(cfg)``: the config key the loss built from ``cfg`` reads the epoch length
      (iterations, a float) from, or None; the trainer fills a key left at 0 from the training data
      (:func:`lt_detectron.data.epochs.with_iters_per_epoch`);
    - ``plot_data()`` (optional): the per-class statistics the method plots draw (a dict: ``name``,
      ``title``, ``ratio`` (C,), ``ratio_label``, ``factors`` {label: (C,)}, ``factors_label``, ``params``;
      EQL v2, EFL), read by :func:`lt_detectron.engine.hooks.plot_sources`;
    - ``logit_columns()``: which class each logit column stands for, a ``(K,)`` long tensor (ROI:
      K = ``classifier_spec().num_logits``; dense: K = C): ``c`` in [0, C) is class c, ``C`` the
      background, a negative value ``-1 - g`` an auxiliary column g of the method (BAGS' "others" of
      group g, Seesaw's objectness). Default: column c = class c, background last (ROI). A classifier
      whose columns have a fixed meaning (e.g. rows built from class-name embeddings, Detic-style)
      sets the same ``logit_columns`` attribute and is checked with
      :func:`~lt_detectron.losses.logit_columns.check_logit_columns`;
      :class:`~lt_detectron.modeling.LongTailFastRCNNOutputLayers` checks its own;
    - ``score_activation``: ``"softmax"`` / ``"sigmoid"`` when ``predict_probs`` is exactly that
      function of the logits (softmax over all C+1 columns; sigmoid of the C class columns, background
      0), else None. The test-time calibrations (:mod:`lt_detectron.modeling.calibration`) ask it;
    - ``exact_gradient``: False when the method detaches terms that depend on the logits (e.g. Seesaw's
      compensation factor from the detached scores): autograd then gives the authors' surrogate
      gradient, not d(loss)/d(logits), and a numerical gradient check does not apply.

Registering a new method is one file under ``lt_detectron/losses/``::

    @ROI_LOSS_REGISTRY.register("mine")
    class MyLoss(ROILoss):
        ...

and one import line in ``lt_detectron/losses/__init__.py``.
"""

import math
from typing import Optional

import torch
import torch.nn as nn
from fvcore.common.registry import Registry

from .protocol_types import ClassifierSpec, DenseBatch, ROIBatch, log_scalar, storage_iteration

__all__ = [
    "LossRegistry",
    "ROI_LOSS_REGISTRY",
    "DENSE_LOSS_REGISTRY",
    "ClassifierSpec",
    "ROIBatch",
    "DenseBatch",
    "ROILoss",
    "DenseLoss",
    "ROI_OPTIONS",
    "register_roi_option",
    "train_class_stats",
    "class_counts",
    "storage_iteration",
    "log_scalar",
]


class LossRegistry(Registry):
    """fvcore's ``Registry`` keyed by the (lower-case) config value instead of the class name.

    ``@REGISTRY.register("name")`` registers a class under ``name``; :meth:`get` of an unknown name
    raises a ``KeyError`` that lists the registered names and the config key.
    """

    def __init__(self, name: str, config_key: str):
        super().__init__(name)
        self.config_key = config_key

    def register(self, name: str):  # type: ignore[override]
        if not isinstance(name, str):
            raise TypeError("register a loss with a name: @%s.register('name')" % self._name)

        def deco(cls):
            self._do_register(name.lower(), cls)
            cls.name = name.lower()
            return cls

        return deco

    def names(self):
        return sorted(k for k, _ in self)

    def get(self, name: str):
        key = str(name).lower()
        if key not in self:
            raise KeyError(
                "unknown %s %r; registered: %s (a new method registers itself in a module imported by "
                "lt_detectron.losses)" % (self.config_key, name, ", ".join(self.names()))
            )
        return super().get(key)


ROI_LOSS_REGISTRY = LossRegistry("ROI_LOSS", "MODEL.LT.ROI_LOSS")
ROI_LOSS_REGISTRY.__doc__ = "Classification losses of the ROI box predictor, by MODEL.LT.ROI_LOSS."
DENSE_LOSS_REGISTRY = LossRegistry("DENSE_LOSS", "MODEL.LT.DENSE_LOSS")
DENSE_LOSS_REGISTRY.__doc__ = (
    "Classification losses of RetinaNet / FCOS / CenterNet, by MODEL.LT.DENSE_LOSS."
)


# Optional config switches of the ROI heads: key -> whether the config turns it on (a method module
# adds its own with :func:`register_roi_option`). A loss lists the keys it honours in
# ``supported_options``; :func:`build_roi_loss` refuses the others.
ROI_OPTIONS = {
    "MODEL.ROI_BOX_HEAD.USE_FED_LOSS": lambda cfg: bool(
        cfg.MODEL.ROI_BOX_HEAD.get("USE_FED_LOSS", False)
    ),
}


def register_roi_option(key: str, enabled) -> None:
    """Add the optional ROI switch ``key`` to :data:`ROI_OPTIONS`; ``enabled(cfg) -> bool`` says
    whether a config turns it on."""
    ROI_OPTIONS[key] = enabled


class ROILoss(nn.Module):
    """Base of the ROI classification losses (see the module docstring).

    The common classifier options of ``MODEL.LT`` (``CLASSIFIER``, ``COSINE_SCALE``,
    ``PRIOR_PROB``) are handled here; a subclass adds its own keyword arguments and extends
    :meth:`from_config`. ``default_prior_prob`` is the bias prior used when ``PRIOR_PROB < 0``.
    """

    name = "roi_loss"
    default_prior_prob = 0.0
    needs_class_stats = False
    supported_options = frozenset()
    exact_gradient = True
    # "softmax" | "sigmoid" when predict_probs is exactly that of the logits (module docstring)
    score_activation = None

    def __init__(
        self,
        num_classes: int,
        *,
        classifier: str = "linear",
        cosine_scale: float = 20.0,
        prior_prob: float = -1.0,
    ):
        super().__init__()
        self._set_roi_options(num_classes, classifier, cosine_scale, prior_prob)

    def _set_roi_options(
        self,
        num_classes: int,
        classifier: str = "linear",
        cosine_scale: float = 20.0,
        prior_prob: float = -1.0,
    ) -> None:
        """What ``__init__`` sets; for a subclass that also derives from a module with its own
        ``__init__`` (e.g. EQL v2's statistics): it calls that one, then this."""
        if classifier not in ("linear", "cosine"):
            raise ValueError(
                "unknown MODEL.LT.CLASSIFIER %r; choose linear or cosine" % (classifier,)
            )
        self.num_classes = int(num_classes)
        self.classifier_kind = classifier
        self.cosine_scale = float(cosine_scale)
        self.prior_prob = float(self.default_prior_prob if prior_prob < 0 else prior_prob)

    @classmethod
    def from_config(cls, cfg, num_classes: int, class_stats=None) -> dict:
        lt = cfg.MODEL.LT
        return dict(
            num_classes=num_classes,
            classifier=lt.CLASSIFIER,
            cosine_scale=lt.COSINE_SCALE,
            prior_prob=lt.PRIOR_PROB,
        )

    @classmethod
    def epoch_length_key(cls, cfg) -> Optional[str]:
        """The config key this loss, built from ``cfg``, reads the epoch length from (None: none)."""
        return None

    def classifier_spec(self) -> ClassifierSpec:
        cosine = self.classifier_kind == "cosine"
        return ClassifierSpec(
            self.num_classes + 1,
            kind=self.classifier_kind,
            scale=self.cosine_scale if cosine else None,
            bias=True,
            prior_prob=self.prior_prob,
        )

    def logit_columns(self) -> torch.Tensor:
        """``(K,)`` the class of each logit column (module docstring): class c in column c, the
        background (``C``) last. A loss with another layout overrides it."""
        return torch.arange(self.num_classes + 1)

    def forward(
        self, logits: torch.Tensor, gt_classes: torch.Tensor, batch: Optional[ROIBatch] = None
    ) -> torch.Tensor:
        raise NotImplementedError

    def predict_probs(self, logits: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def accuracy_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """(R, C+1) scores whose argmax is the predicted class (for ``fast_rcnn/cls_accuracy``)."""
        if logits.shape[-1] == self.num_classes + 1:
            return logits
        return self.predict_probs(logits.detach())

    def _check_logits(self, logits: torch.Tensor, num_logits: Optional[int] = None) -> None:
        K = self.num_classes + 1 if num_logits is None else num_logits
        if logits.dim() != 2 or logits.shape[1] != K:
            raise ValueError(
                "%s expects logits (R, %d), got %s" % (type(self).__name__, K, tuple(logits.shape))
            )

    def extra_repr(self) -> str:
        return "num_classes=%d" % self.num_classes


class DenseLoss(nn.Module):
    """Base of the dense (RetinaNet / FCOS / CenterNet) classification losses.

    ``focal_alpha`` / ``focal_gamma`` are the detector's focal parameters (its own config keys),
    passed by the detector to :func:`build_dense_loss`.
    """

    name = "dense_loss"
    needs_class_stats = False
    exact_gradient = True

    def __init__(self, num_classes: int, *, focal_alpha: float = 0.25, focal_gamma: float = 2.0):
        super().__init__()
        self._set_dense_options(num_classes, focal_alpha, focal_gamma)

    def _set_dense_options(
        self, num_classes: int, focal_alpha: float = 0.25, focal_gamma: float = 2.0
    ) -> None:
        """What ``__init__`` sets (see :meth:`ROILoss._set_roi_options`)."""
        self.num_classes = int(num_classes)
        self.focal_alpha = float(focal_alpha)
        self.focal_gamma = float(focal_gamma)

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
        return dict(num_classes=num_classes, focal_alpha=focal_alpha, focal_gamma=focal_gamma)

    @classmethod
    def epoch_length_key(cls, cfg) -> Optional[str]:
        """The config key this loss, built from ``cfg``, reads the epoch length from (None: none)."""
        return None

    def logit_columns(self) -> torch.Tensor:
        """``(C,)`` the class of each channel: class c in channel c (no background channel)."""
        return torch.arange(self.num_classes)

    def forward(
        self, logits: torch.Tensor, labels: torch.Tensor, batch: Optional[DenseBatch] = None
    ) -> torch.Tensor:
        raise NotImplementedError

    def heatmap(
        self,
        logits: torch.Tensor,
        heat: torch.Tensor,
        batch: Optional[DenseBatch] = None,
        alpha: float = 2.0,
        beta: float = 4.0,
    ) -> torch.Tensor:
        raise NotImplementedError

    def predict_probs(self, logits: torch.Tensor) -> torch.Tensor:
        """Test scores of logits with the classes on dim 1 (``(M, C)`` or ``(N, C, H, W)``)."""
        return torch.sigmoid(logits)

    def prior_logits(self, prior_prob: float) -> torch.Tensor:
        """``(C,)`` classifier bias at which each class's trained probability starts at ``prior_prob``
        (the detectors' ``PRIOR_PROB`` initialisation): logit(prior_prob) for a loss on sigma(z)."""
        return torch.full((self.num_classes,), -math.log((1 - prior_prob) / prior_prob))

    @torch.no_grad()
    def init_prior_bias(self, bias: torch.Tensor, prior_prob: float) -> None:
        """Set a head's classification bias, ``(A * C,)`` anchor-major as Detectron2's heads lay out
        their channels, to :meth:`prior_logits` (the heads call it once, after their own init)."""
        p = self.prior_logits(prior_prob)
        if bias.numel() % p.numel():
            raise ValueError(
                f"classification bias of {bias.numel()} channels is not a multiple of {p.numel()} classes"
            )
        bias.copy_(p.to(bias).repeat(bias.numel() // p.numel()))

    def _check_logits(self, logits: torch.Tensor) -> None:
        if logits.dim() != 2 or logits.shape[1] != self.num_classes:
            raise ValueError(
                "%s expects logits (M, %d), got %s"
                % (type(self).__name__, self.num_classes, tuple(logits.shape))
            )

    def extra_repr(self) -> str:
        return "num_classes=%d, focal_alpha=%g, focal_gamma=%g" % (
            self.num_classes,
            self.focal_alpha,
            self.focal_gamma,
        )


def train_class_stats(cfg, num_classes: int, num_classes_key: str):
    """The training :class:`~lt_detectron.class_stats.ClassStats` of ``cfg.DATASETS.TRAIN`` (the
    class-statistics registry; ``MODEL.LT.CLASS_STATS_FILE`` when the data is not here), checked
    against ``num_classes`` (the config key ``num_classes_key``); None without training datasets."""
    if not cfg.DATASETS.TRAIN:
        return None
    from ..class_stats import check_num_classes, get_train_class_stats

    stats = get_train_class_stats(cfg)
    check_num_classes(num_classes, stats, num_classes_key)
    return stats


def class_counts(class_stats, field: str = "instance_counts") -> torch.Tensor:
    """A (C,) float64 copy of a count array of a ``ClassStats`` (``instance_counts`` or ``image_counts``)."""
    return torch.tensor(getattr(class_stats, field), dtype=torch.float64)
