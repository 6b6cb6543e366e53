"""Weights for another backbone are an error, not a warning.

detectron2 loads a checkpoint whose keys the model lacks with a warning only, so ResNet-101 weights
load into a ResNet-50 "successfully": the first 6 ``res4`` blocks are kept, the other 17 dropped, and
training goes on from a truncated backbone. :func:`check_unexpected_backbone_keys` turns unexpected
*backbone* keys into :class:`CheckpointBackboneMismatch`, naming the file, the keys and the fix.
Unexpected keys of the heads (a COCO-trained box predictor, an ImageNet ``fc1000``) keep detectron2's
warning.

A key is a backbone key when it is under the model's ``backbone.`` prefix (a full-model ``.pth``), or,
for weights matched by detectron2's name heuristics (``.pkl``: ``res4.6.conv1.weight``), when its
first name is a module name used only inside the backbone (``res4``, ``stem``, ``bottom_up``).
"""

import os
import re
from typing import Iterable, List, Optional, Sequence

import torch.nn as nn
from detectron2.modeling import Backbone

from .safe_load import CheckpointError

__all__ = ["CheckpointBackboneMismatch", "backbone_key_names", "check_unexpected_backbone_keys"]

# ResNet depth -> blocks of (res2, res3, res4, res5), as detectron2's build_resnet_backbone builds them
RESNET_BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
_RES4_BLOCK = re.compile(r"(?:^|\.)res4\.(\d+)\.")


class CheckpointBackboneMismatch(CheckpointError):
    """The checkpoint holds backbone weights the model has no place for (another depth / backbone)."""


def _backbone_prefix(model: nn.Module) -> Optional[str]:
    """``"backbone."`` for a meta-architecture, ``""`` when the model is itself the backbone."""
    if isinstance(getattr(model, "backbone", None), nn.Module):
        return "backbone."
    return "" if isinstance(model, Backbone) else None


def _module_names(keys: Iterable[str]) -> set:
    """Every module name (not the parameter name, not a block index) of the dotted ``keys``."""
    return {p for k in keys for p in k.split(".")[:-1] if not p.isdigit()}


def backbone_key_names(model: nn.Module, keys: Sequence[str]) -> List[str]:
    """The ``keys`` (checkpoint names the model does not have) that belong to the model's backbone."""
    prefix = _backbone_prefix(model)
    if prefix is None:
        return []
    model_keys = list(model.state_dict().keys())
    inside = _module_names(k[len(prefix) :] for k in model_keys if k.startswith(prefix))
    outside = _module_names(k for k in model_keys if not k.startswith(prefix))
    only_backbone = inside - outside
    out = []
    for k in keys:
        if prefix and k.startswith(prefix):
            out.append(k)
        elif "." in k and k.split(".", 1)[0] in only_backbone:
            out.append(k)
    return out


def _res4_blocks(keys: Iterable[str]) -> int:
    idx = [int(m.group(1)) for k in keys for m in [_RES4_BLOCK.search(k)] if m]
    return max(idx) + 1 if idx else 0


def check_unexpected_backbone_keys(model: nn.Module, unexpected: Sequence[str], filename: str):
    """Raise :class:`CheckpointBackboneMismatch` when ``unexpected`` (keys of the checkpoint ``filename``
    that the model does not have, as detectron2 matched them) holds backbone keys."""
    bad = backbone_key_names(model, unexpected)
    if not bad:
        return
    # natural order (res4.6 before res4.10), so the first keys shown are the first extra blocks
    bad.sort(key=lambda k: [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in k.split(".")])
    ckpt_blocks = _res4_blocks(bad)
    model_blocks = _res4_blocks(model.state_dict().keys())
    depth = {v[2]: d for d, v in RESNET_BLOCKS.items()}.get(ckpt_blocks)
    if ckpt_blocks and model_blocks and ckpt_blocks != model_blocks:
        why = "its res4 has %d blocks (%s), the model's %d. Set MODEL.RESNETS.DEPTH %s" % (
            ckpt_blocks,
            "a ResNet-%d" % depth if depth else "no standard ResNet depth",
            model_blocks,
            depth if depth else "to the checkpoint's depth",
        )
    else:
        why = (
            "it was made for another backbone. Set MODEL.RESNETS.DEPTH (and MODEL.BACKBONE.NAME, "
            "MODEL.RESNETS.NUM_GROUPS / WIDTH_PER_GROUP for ResNeXt) to the checkpoint's backbone"
        )
    shown = ", ".join(bad[:5]) + (", ..." if len(bad) > 5 else "")
    raise CheckpointBackboneMismatch(
        "checkpoint %s has %d backbone weights that the model does not have (%s): %s, or use "
        "weights made for this backbone. (detectron2 would only warn and train from a truncated "
        "backbone.)" % (os.path.abspath(filename), len(bad), shown, why)
    )
