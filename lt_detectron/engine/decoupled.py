"""The decoupled recipes' second phase (BAGS, cRT, LWS): ``MODEL.LT.FREEZE_ALL_BUT_CLS`` keeps only the
classification layers trainable, ``MODEL.LT.REINIT_CLS`` re-initialises them when training starts
from ``MODEL.WEIGHTS`` (not when resuming). Used by :class:`~lt_detectron.engine.LTTrainer`."""

import logging

import torch
from detectron2.utils import comm

__all__ = ["freeze_all_but_classifier", "reset_classifiers"]

logger = logging.getLogger("lt_detectron")


def freeze_all_but_classifier(model):
    """Freeze every parameter except the box predictors' ``cls_score`` layers (of a layer that names
    ``decoupled_trainable``, e.g. LWS' scales, only those); returns the names of those kept."""
    keep_names = set()
    for mname, m in model.named_modules():
        if mname.rsplit(".", 1)[-1] != "cls_score":
            continue
        only = getattr(m, "decoupled_trainable", None)
        for pname, _ in m.named_parameters():
            if only is None or pname in only:
                keep_names.add("%s.%s" % (mname, pname))
    trainable = []
    for name, p in model.named_parameters():
        keep = name in keep_names
        p.requires_grad_(keep)
        if keep:
            trainable.append(name)
    if not trainable:
        raise ValueError(
            "MODEL.LT.FREEZE_ALL_BUT_CLS: the model has no 'cls_score' parameters to train"
        )
    # frozen BatchNorm statistics too: the decoupled phase trains the classifier only
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()
            m.train = lambda mode=True, _m=m: _m  # stays in eval mode
    return trainable


def reset_classifiers(model):
    """Re-initialise the classification layer of every box predictor that can
    (``reset_classifier()``), identically on every process; returns how many."""
    heads = [m for m in model.modules() if callable(getattr(m, "reset_classifier", None))]
    if comm.get_world_size() == 1:
        for m in heads:
            m.reset_classifier()
    else:  # the same fresh weights on every rank (DDP broadcast the parameters when it was built)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(comm.shared_random_seed())
            for m in heads:
                m.reset_classifier()
    logger.info(
        "MODEL.LT.REINIT_CLS: training starts from MODEL.WEIGHTS with %d re-initialised "
        "classifier(s)",
        len(heads),
    )
    return len(heads)
