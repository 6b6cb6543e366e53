"""A Mask R-CNN with random weights that produces many detections, for mask-head tests and
benchmarks.

With random weights a ResNet + FPN's features grow to thousands (FrozenBN with unit statistics),
which saturates the RPN and the box classifier: a handful of proposals, one-hot scores, a few
detections. :func:`random_mask_rcnn` scales the FPN's output convs down so the features are of
order one; with ``MODEL.ROI_HEADS.SCORE_THRESH_TEST 0`` every image then reaches
``TEST.DETECTIONS_PER_IMAGE`` detections of many classes.
"""

import torch

from .config import lt_cfg

__all__ = ["random_mask_rcnn", "random_images"]


@torch.no_grad()
def random_mask_rcnn(config_file, *opts, mask_logit_std=None, seed=0, feature_scale=1e-3):
    """Build ``config_file`` (plus ``opts``) on CPU with random weights, in eval mode.

    Args:
        config_file: a Mask R-CNN config (e.g. ``configs/lvis_v1/...``).
        opts: ``KEY, VALUE, ...`` overrides (``MODEL.WEIGHTS`` is set to ``""`` first).
        mask_logit_std: if given, the mask predictor's weights are redrawn from N(0, this) and its
            biases from N(0, 1), so the mask probabilities spread over (0, 1) (Detectron2's
            initial std 0.001 leaves every probability near 0.5).
        seed: the torch seed for the weights.
        feature_scale: multiplies the FPN output convs (weights and biases).
    """
    from detectron2.modeling import build_model

    cfg = lt_cfg(config_file, "MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu", *opts)
    torch.manual_seed(seed)
    model = build_model(cfg).eval()
    for name, module in model.backbone.named_modules():
        if name.startswith("fpn_output"):
            module.weight.mul_(feature_scale)
            module.bias.mul_(feature_scale)
    if mask_logit_std is not None and cfg.MODEL.MASK_ON:
        predictor = model.roi_heads.mask_head.predictor
        predictor.weight.normal_(0, mask_logit_std)
        predictor.bias.normal_(0, 1)
    return model


def random_images(n, height, width, seed=0):
    """``n`` model inputs (uint8 noise images, with their output size)."""
    g = torch.Generator().manual_seed(seed)
    return [
        {
            "image": torch.randint(0, 256, (3, height, width), generator=g, dtype=torch.uint8),
            "height": height,
            "width": width,
        }
        for _ in range(n)
    ]
