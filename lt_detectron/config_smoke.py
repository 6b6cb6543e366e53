"""Smoke-test overrides: shrink any config so that it trains a couple of iterations and evaluates,
on a CPU, in minutes (``tools/train_net.py --smoke``, ``dev/check_configs.py``).

What shrinks, together (each alone is not enough: a 1333 px Mask R-CNN at 16 images per batch does
not fit a laptop, and BOFL with its deferral of 3 epochs never switches on in 2 iterations):

- iterations: ``SOLVER.MAX_ITER`` (2), one warm-up iteration, no learning-rate step (the config's
  steps lie past the end), no periodic checkpoint or evaluation (the final evaluation still runs);
- batch and learning rate: 2 images per batch, ``SOLVER.BASE_LR`` scaled by the same ratio
  (the linear scaling rule: a config's learning rate belongs to its batch size);
- input size: 160 px short side, 256 px long side, in training and test;
- detections per image: 10 (``TEST.DETECTIONS_PER_IMAGE`` and ``TEST.LT.MAX_DETS``), from 100
  proposals (``MODEL.RPN.POST_NMS_TOPK_TEST``: with 1203 classes and LVIS' score threshold of
  1e-4, the per-class NMS of 1000 proposals takes seconds per image on a CPU);
- the ROI heads' score threshold: 0 (``MODEL.ROI_HEADS.SCORE_THRESH_TEST``): a model two iterations
  old scores near its prior, at LVIS' threshold of 1e-4 or below, and an evaluation that sees no
  detection checks nothing (the 10 per image still bound the cost);
- BOFL's deferral: 0 epochs (a few iterations are a fraction of one epoch);
- ``DATALOADER.NUM_WORKERS`` 0.

The device and the weights are left alone: add ``MODEL.DEVICE cpu`` for a CPU, and a local
``MODEL.WEIGHTS`` when the config names detectron2's ImageNet weights and there is no network.
"""

from typing import List, Sequence

__all__ = ["SMOKE_ITERS", "SMOKE_IMS_PER_BATCH", "smoke_overrides", "apply_smoke_overrides"]

SMOKE_ITERS = 2
SMOKE_IMS_PER_BATCH = 2


def smoke_overrides(cfg, iters: int = SMOKE_ITERS, ims_per_batch: int = SMOKE_IMS_PER_BATCH):
    """The ``KEY VALUE ...`` list (as for ``cfg.merge_from_list``) that shrinks ``cfg``."""
    from .losses.bofl import config_uses_bofl

    lr = cfg.SOLVER.BASE_LR * min(1.0, ims_per_batch / max(1, cfg.SOLVER.IMS_PER_BATCH))
    opts = [
        "SOLVER.MAX_ITER", str(iters),
        "SOLVER.IMS_PER_BATCH", str(ims_per_batch),
        "SOLVER.BASE_LR", repr(lr),
        "SOLVER.STEPS", "()",
        "SOLVER.WARMUP_ITERS", "1",
        "SOLVER.CHECKPOINT_PERIOD", "1000000",
        "TEST.EVAL_PERIOD", "0",
        "INPUT.MIN_SIZE_TRAIN", "(160,)",
        "INPUT.MAX_SIZE_TRAIN", "256",
        "INPUT.MIN_SIZE_TEST", "160",
        "INPUT.MAX_SIZE_TEST", "256",
        "TEST.DETECTIONS_PER_IMAGE", "10",
        "TEST.LT.MAX_DETS", "10",
        "MODEL.RPN.POST_NMS_TOPK_TEST", "100",
        "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0",
        "DATALOADER.NUM_WORKERS", "0",
    ]  # fmt: skip
    if config_uses_bofl(cfg):
        opts += ["MODEL.LT.BOFL.DEFERRED_EPOCHS", "0"]
    return opts


def apply_smoke_overrides(cfg, opts: Sequence[str] = ()):
    """Merge :func:`smoke_overrides` into ``cfg`` (already merged with the command-line ``opts``);
    a key given in ``opts`` keeps the user's value. Returns ``cfg``."""
    user = set(opts[0::2])
    batch = cfg.SOLVER.IMS_PER_BATCH if "SOLVER.IMS_PER_BATCH" in user else SMOKE_IMS_PER_BATCH
    iters = cfg.SOLVER.MAX_ITER if "SOLVER.MAX_ITER" in user else SMOKE_ITERS
    shrink = smoke_overrides(cfg, iters=iters, ims_per_batch=batch)
    keep: List[str] = []
    for key, value in zip(shrink[0::2], shrink[1::2]):
        if key not in user:
            keep += [key, value]
    cfg.merge_from_list(keep)
    return cfg
