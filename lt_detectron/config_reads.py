"""Which config keys a run reads, and a warning for the lt_detectron keys it sets but never reads.

:func:`record_reads` returns a copy of a config whose reads (attribute, item and ``get``) are recorded
as dotted key names; copies and clones of it record into the same set. ``LTTrainer.build_model``
builds the model from such a copy once, at startup, and :func:`warn_unused_lt_keys` then names every
``MODEL.LT`` key set to a non-default value that the model never read (e.g. ``MODEL.LT.EQLV2.GAMMA``
in a softmax run): a value with no effect is reported instead of silently ignored. With
``TEST.LT.AP_PROTOCOL fixed``, a model whose inference does not read the protocol (the dense
detectors: only the ROI box predictor keeps the top-k per class) is named too, and so is a
``TEST.LT.CALIBRATION`` other than none that no box predictor read. The same recorder
measures, in the tests, which keys whole ``tools/train_net.py`` runs read.
"""

from __future__ import annotations

import logging
from typing import Iterable, List, Set, Tuple

from detectron2.config import CfgNode

__all__ = ["record_reads", "unused_lt_keys", "warn_unused_lt_keys"]

logger = logging.getLogger(__name__)


class _RecordingCfgNode(CfgNode):
    """A ``CfgNode`` that adds the dotted name of every key read to the sets in ``_sinks`` (set on a
    per-recording subclass, so clones share them)."""

    _sinks: Tuple[Set[str], ...] = ()

    def __init__(self, init_dict=None, key_list=None, new_allowed=False):
        super().__init__(init_dict, key_list, new_allowed)
        self.__dict__["_prefix"] = ".".join(key_list or ())

    def _note(self, key) -> None:
        path = "%s.%s" % (self._prefix, key) if self._prefix else str(key)
        for sink in self._sinks:
            sink.add(path)

    def __getattr__(self, name):
        value = super().__getattr__(name)
        self._note(name)
        return value

    def __getitem__(self, key):
        value = super().__getitem__(key)
        self._note(key)
        return value

    def get(self, key, default=None):
        if key in self:
            self._note(key)
        return super().get(key, default)


def record_reads(cfg: CfgNode) -> Tuple[CfgNode, Set[str]]:
    """``(recording copy of cfg, set of the dotted keys read from it)``; a recording of a recording
    also records into the outer one's set. The copy is frozen when ``cfg`` is."""
    sink: Set[str] = set()
    outer = getattr(type(cfg), "_sinks", ())
    cls = type("RecordingCfgNode", (_RecordingCfgNode,), {"_sinks": tuple(outer) + (sink,)})
    copy = cls(cfg)
    if cfg.is_frozen():
        copy.freeze()
    return copy, sink


def _leaves(node, prefix) -> Iterable[Tuple[str, object]]:
    for k, v in dict.items(node):
        key = "%s.%s" % (prefix, k)
        if isinstance(v, CfgNode):
            yield from _leaves(v, key)
        else:
            yield key, v


def unused_lt_keys(cfg: CfgNode, reads: Set[str]) -> List[Tuple[str, object, object]]:
    """``(key, value, default)`` of the ``MODEL.LT`` keys of ``cfg`` set to a non-default value and
    absent from ``reads``; then the ``TEST.LT`` keys whose value another key makes irrelevant."""
    from detectron2.config import get_cfg

    from .config import lookup_key, add_lt_config

    # read below CfgNode's accessors, so that a recording config does not count this check as a use
    default = add_lt_config(get_cfg())
    out = []
    if "LT" in dict.__getitem__(cfg, "MODEL"):
        for key, value in _leaves(lookup_key(cfg, "MODEL.LT"), "MODEL.LT"):
            try:
                d = lookup_key(default, key)
            except KeyError:
                continue  # a key added by another project
            if key not in reads and value != d:
                out.append((key, value, d))
    if "LT" in dict.__getitem__(cfg, "TEST"):
        t, td = lookup_key(cfg, "TEST.LT"), lookup_key(default, "TEST.LT")
        fixed = dict.__getitem__(t, "AP_PROTOCOL") == "fixed"
        calibration = str(dict.__getitem__(t, "CALIBRATION")).lower()
        for key, irrelevant in (
            ("TOPK_PER_CLASS", not fixed),  # Fixed AP's k
            ("MAX_DETS", fixed),  # Fixed AP has no per-image cap
            ("BOUNDARY_DILATION", not dict.__getitem__(t, "BOUNDARY_AP")),
            ("CALIBRATION_GAMMA", calibration != "norcal"),  # NorCal's gamma
            ("CALIBRATION_TAU", calibration not in ("logit_adjustment", "tau_norm")),
        ):
            value, d = dict.__getitem__(t, key), dict.__getitem__(td, key)
            if irrelevant and value != d:
                out.append(("TEST.LT." + key, value, d))
    return out


def warn_unused_lt_keys(cfg: CfgNode, reads: Set[str]) -> List[str]:
    """Log a warning naming each key of :func:`unused_lt_keys`; returns the keys."""
    from .config import lookup_key

    unused = unused_lt_keys(cfg, reads)
    for key, value, default in unused:
        logger.warning(
            "%s = %r (default %r) has no effect in this run (MODEL.META_ARCHITECTURE %s, "
            "MODEL.LT.ROI_LOSS %s, MODEL.LT.DENSE_LOSS %s, TEST.LT.AP_PROTOCOL %s): nothing reads it. "
            "Remove it from the config, or choose the method or protocol that uses it.",
            key,
            value,
            default,
            lookup_key(cfg, "MODEL.META_ARCHITECTURE"),
            lookup_key(cfg, "MODEL.LT.ROI_LOSS"),
            lookup_key(cfg, "MODEL.LT.DENSE_LOSS"),
            lookup_key(cfg, "TEST.LT.AP_PROTOCOL"),
        )
    if lookup_key(cfg, "TEST.LT.AP_PROTOCOL") == "fixed" and "TEST.LT.AP_PROTOCOL" not in reads:
        # the ROI box predictor reads the protocol to keep the top-k per class at inference
        logger.warning(
            "TEST.LT.AP_PROTOCOL fixed: the inference of this model (MODEL.META_ARCHITECTURE %s) does "
            "not keep the TEST.LT.TOPK_PER_CLASS best detections of each class, it keeps "
            "TEST.DETECTIONS_PER_IMAGE = %d per image; Fixed AP is computed from those and can be "
            "lower than the model could reach. Raise TEST.DETECTIONS_PER_IMAGE to keep more.",
            lookup_key(cfg, "MODEL.META_ARCHITECTURE"),
            lookup_key(cfg, "TEST.DETECTIONS_PER_IMAGE"),
        )
    calibration = str(lookup_key(cfg, "TEST.LT.CALIBRATION")).lower()
    if calibration != "none" and "TEST.LT.CALIBRATION" not in reads:
        # only the ROI box predictor (LongTailFastRCNNOutputLayers) calibrates its scores
        logger.warning(
            "TEST.LT.CALIBRATION %s has no effect: this model (MODEL.META_ARCHITECTURE %s) has no "
            "lt_detectron ROI box predictor, which is what calibrates. Set TEST.LT.CALIBRATION none.",
            calibration,
            lookup_key(cfg, "MODEL.META_ARCHITECTURE"),
        )
        unused.append(("TEST.LT.CALIBRATION", calibration, "none"))
    return [k for k, _, _ in unused]
