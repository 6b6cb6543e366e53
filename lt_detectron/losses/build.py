"""Building a loss from the config: :func:`build_roi_loss` (``MODEL.LT.ROI_LOSS``) and
:func:`build_dense_loss` (``MODEL.LT.DENSE_LOSS``), which check what the loss declares it supports
(:mod:`.base`) with errors that name the config key and the fix."""

from .base import (
    DENSE_LOSS_REGISTRY,
    ROI_LOSS_REGISTRY,
    ROI_OPTIONS,
    DenseLoss,
    LossRegistry,
    ROILoss,
)

__all__ = ["build_roi_loss", "build_dense_loss", "roi_loss_name", "config_epoch_length_keys"]


def roi_loss_name(cfg) -> str:
    """``MODEL.LT.ROI_LOSS``, with Detectron2's ``MODEL.ROI_BOX_HEAD.USE_SIGMOID_CE`` meaning sigmoid
    when the loss is left at its default (softmax)."""
    name = str(cfg.MODEL.LT.ROI_LOSS).lower()
    if cfg.MODEL.ROI_BOX_HEAD.get("USE_SIGMOID_CE", False) and name == "softmax":
        return "sigmoid"
    return name


def config_epoch_length_keys(cfg) -> list:
    """The ``epoch_length_key`` of the config's ROI and dense losses, without None and repeats."""
    roi = ROI_LOSS_REGISTRY.get(roi_loss_name(cfg)).epoch_length_key(cfg)
    dense = DENSE_LOSS_REGISTRY.get(cfg.MODEL.LT.DENSE_LOSS).epoch_length_key(cfg)
    return [k for k in dict.fromkeys((roi, dense)) if k]


def _check_class_stats(cls, registry: LossRegistry, class_stats) -> None:
    if cls.needs_class_stats and class_stats is None:
        raise ValueError(
            "%s %s needs the training class statistics (per-class instance counts): set DATASETS.TRAIN to the "
            "training dataset(s), or pass class_stats= (a lt_detectron.ClassStats) when building the loss"
            % (registry.config_key, cls.name)
        )


def build_roi_loss(cfg, num_classes: int, class_stats=None) -> ROILoss:
    """The :class:`ROILoss` named by ``MODEL.LT.ROI_LOSS`` for ``num_classes`` classes.

    ``class_stats``: the training :class:`~lt_detectron.class_stats.ClassStats` (needed by the
    methods that use class frequencies; they raise a clear error without it). A config that turns
    on an option of :data:`ROI_OPTIONS` the loss does not support is an error naming the key.
    """
    cls = ROI_LOSS_REGISTRY.get(roi_loss_name(cfg))
    for key, enabled in ROI_OPTIONS.items():
        if enabled(cfg) and key not in cls.supported_options:
            able = [n for n, c in sorted(ROI_LOSS_REGISTRY) if key in c.supported_options]
            raise ValueError(
                "%s is on, but MODEL.LT.ROI_LOSS %s does not support it (losses that do: %s). Set MODEL.LT.ROI_LOSS "
                "to one of them, or turn %s off." % (key, cls.name, ", ".join(able) or "none", key)
            )
    _check_class_stats(cls, ROI_LOSS_REGISTRY, class_stats)
    return cls(**cls.from_config(cfg, num_classes, class_stats))


def build_dense_loss(
    cfg, num_classes: int, class_stats=None, *, focal_alpha: float = 0.25, focal_gamma: float = 2.0
) -> DenseLoss:
    """The :class:`DenseLoss` named by ``MODEL.LT.DENSE_LOSS`` for ``num_classes`` channels."""
    cls = DENSE_LOSS_REGISTRY.get(cfg.MODEL.LT.DENSE_LOSS)
    _check_class_stats(cls, DENSE_LOSS_REGISTRY, class_stats)
    return cls(
        **cls.from_config(
            cfg, num_classes, class_stats, focal_alpha=focal_alpha, focal_gamma=focal_gamma
        )
    )
