"""A random-weight ImageNet-style ResNet in detectron2's MSRA ``.pkl`` format (for offline tests)."""

from __future__ import annotations

import os
import pickle
from typing import Optional

import numpy as np

__all__ = ["make_r50_msra_pkl"]


_C2_SUFFIX = {"weight": "w", "norm.weight": "bn_s", "norm.bias": "bn_b"}
_C2_BRANCH = {"shortcut": "branch1", "conv1": "branch2a", "conv2": "branch2b", "conv3": "branch2c"}


def _to_msra_name(name: str) -> Optional[str]:
    """detectron2 ResNet parameter name -> MSRA/caffe2 blob name (inverse of detectron2's
    ``convert_basic_c2_names``); None for running statistics (MSRA files hold folded BN only)."""
    if name.endswith(("running_mean", "running_var", "num_batches_tracked")):
        return None
    if name.startswith("stem.conv1."):
        rest = name[len("stem.conv1.") :]
        return {
            "weight": "conv1_w",
            "norm.weight": "res_conv1_bn_s",
            "norm.bias": "res_conv1_bn_b",
        }[rest]
    stage, block, conv, rest = name.split(".", 3)
    return "%s_%s_%s_%s" % (stage, block, _C2_BRANCH[conv], _C2_SUFFIX[rest])


def make_r50_msra_pkl(path: str, seed: int = 0, depth: int = 50) -> str:
    """A random-weight ImageNet-style ResNet in the format of ``detectron2://ImageNetPretrained/MSRA/R-50.pkl``.

    The network is detectron2's ``build_resnet_backbone`` (default cfg, ``DEPTH`` 50) with
    ``BN``; one forward pass on random input sets each BN's statistics, which are then folded
    into an affine ``_bn_s``/``_bn_b`` pair as the MSRA files store it (so activations keep a
    sane scale under FrozenBN; each block's last BN scale is 0.25, so res5 features have a
    standard deviation of about 1, as a trained R-50's have). Written as a plain pickled dict of float32
    arrays under caffe2
    names, the layout detectron2's ``DetectionCheckpointer`` converts with ``c2_conversion``.
    """
    import torch
    from detectron2.config import get_cfg
    from detectron2.layers import ShapeSpec
    from detectron2.modeling.backbone.resnet import build_resnet_backbone

    cfg = get_cfg()
    cfg.MODEL.RESNETS.DEPTH = depth
    cfg.MODEL.RESNETS.NORM = "BN"
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    torch.manual_seed(seed)
    net = build_resnet_backbone(cfg, ShapeSpec(channels=3))
    for name, m in net.named_modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average: after one batch, the batch statistics
            if name.endswith("conv3.norm"):
                # small last-BN scale in each residual branch (as trained ResNets have): the
                # residual stream stays near unit scale instead of growing block by block
                torch.nn.init.constant_(m.weight, 0.25)
    net.train()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        net(torch.randn(2, 3, 96, 96, generator=g) * 50.0)
    blobs = {}
    with torch.no_grad():
        for mod_name, m in net.named_modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                scale = m.weight / torch.sqrt(m.running_var + m.eps)
                blobs[_to_msra_name(mod_name + ".weight")] = scale.numpy().astype(np.float32)
                blobs[_to_msra_name(mod_name + ".bias")] = (
                    (m.bias - m.running_mean * scale).numpy().astype(np.float32)
                )
        for name, p in net.named_parameters():
            if name.endswith(".norm.weight") or name.endswith(".norm.bias"):
                continue
            blobs[_to_msra_name(name)] = p.detach().numpy().astype(np.float32)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        pickle.dump(blobs, f, protocol=4)
    os.replace(tmp, path)
    return path
