"""Every shipped LVIS / COCO-LT / dense config trains for the epochs its name (or paper) states.

An "epoch" is one pass over the training split's images, ``MAX_ITER * IMS_PER_BATCH / images``,
with the real split sizes below. With ``RepeatFactorTrainingSampler`` the epoch is still counted
over the un-expanded split (detectron2's convention: its LVIS configs train the same iterations
with and without RFS), and the config says so in a comment. "1x" = 12 epochs, "2x" = 24, "3x" =
36, "140e" = 140 (the mmdetection convention the papers used); multi-step schedules decay the LR
at the papers' epochs, cosine schedules have no steps. Everything within 2%.
"""

import glob
import os
import re

import pytest

import lt_detectron  # noqa: F401
from lt_detectron.utils.testing import lt_cfg

from tests._data import ROOT

CONFIGS = sorted(
    p
    for folder in ("lvis_v1", "coco_lt", "dense")
    for p in glob.glob(os.path.join(ROOT, "configs", folder, "*.yaml"))
)
IDS = [os.path.relpath(p, os.path.join(ROOT, "configs")) for p in CONFIGS]

# training images per split (detectron2 drops COCO images without annotations: 118,287 in the json)
SPLIT_IMAGES = {
    "lvis_v1_train": 100170,
    "lvis_v0.5_train": 57263,
    "coco_2017_train": 117266,
    # the BAGS paper's COCO-LT: 9,100 images (datasets/prepare_coco_lt.py's output size depends on
    # the seed and the COCO json; the configs say how to rescale)
    "coco_lt_train": 9100,
}
# schedules stated by a config's name token
NAME_EPOCHS = {"1x": 12, "2x": 24, "3x": 36}
# configs whose name states no schedule: the paper's epochs
DECLARED_EPOCHS = {
    "lvis_v1/bags_mask_rcnn_R_50_FPN_decoupled.yaml": 12,  # BAGS: 12 more epochs
    "coco_lt/bags_faster_rcnn_R_50_FPN_decoupled.yaml": 12,
    # cRT / LWS (eqlv2 authors' decoupled configs): 75,000 iterations at batch 16 on LVIS v1
    "lvis_v1/crt_mask_rcnn_R_50_FPN_decoupled.yaml": 12,
    "lvis_v1/lws_mask_rcnn_R_50_FPN_decoupled.yaml": 12,
    "coco_lt/crt_faster_rcnn_R_50_FPN_decoupled.yaml": 12,
    "coco_lt/lws_faster_rcnn_R_50_FPN_decoupled.yaml": 12,
    "dense/Base-FCOS.yaml": 12,  # FCOS 1x
    "dense/Base-LT-RetinaNet.yaml": 12,  # RetinaNet 1x
    "dense/Base-CenterNet.yaml": 140,  # CenterNet / BOFL: 140 epochs
}
# epochs at which a multi-step schedule decays the LR
STEP_EPOCHS = {12: (8, 11), 24: (16, 22), 36: (27, 33), 140: (90, 120)}
# configs whose official recipe decays elsewhere (recipes/recipes.yaml records the source)
RECIPE_STEP_EPOCHS = {"lvis_v1/ecm_mask_rcnn_R_50_FPN_2x.yaml": (20, 22)}  # ECM-Loss r50_ecm_2x.py
TOLERANCE = 0.02


def stated_epochs(rel):
    tokens = re.split(r"[_\-.]", os.path.basename(rel)[: -len(".yaml")])
    found = [NAME_EPOCHS[t] for t in tokens if t in NAME_EPOCHS]
    found += [int(t[:-1]) for t in tokens if re.fullmatch(r"\d+e", t)]
    if rel in DECLARED_EPOCHS:
        assert not found, "%s: schedule both in the name and in DECLARED_EPOCHS" % rel
        return DECLARED_EPOCHS[rel]
    assert len(found) == 1, (
        "%s: the name states no schedule (1x/2x/3x/<N>e); add it to DECLARED_EPOCHS" % rel
    )
    return found[0]


def load(path):
    cfg = lt_cfg(path)
    return cfg


def split_images(cfg, rel):
    unknown = [d for d in cfg.DATASETS.TRAIN if d not in SPLIT_IMAGES]
    assert not unknown, "%s: no split size for %s" % (rel, unknown)
    return sum(SPLIT_IMAGES[d] for d in cfg.DATASETS.TRAIN)


def test_parsing_of_names():
    assert stated_epochs("lvis_v1/c2am_mask_rcnn_R_50_FPN_2x.yaml") == 24
    assert stated_epochs("dense/focal_centernet_R_50_FPN_140e_coco_lt.yaml") == 140
    assert stated_epochs("lvis_v1/Base-Mask-RCNN-R50-FPN-GN-scratch-3x.yaml") == 36
    with pytest.raises(AssertionError, match="states no schedule"):
        stated_epochs("lvis_v1/new_method_mask_rcnn_R_50_FPN.yaml")


def test_every_family_has_configs():
    assert len(CONFIGS) >= 50
    for folder in ("lvis_v1", "coco_lt", "dense"):
        assert any(i.startswith(folder + "/") for i in IDS), folder


@pytest.mark.parametrize("path", CONFIGS, ids=IDS)
def test_schedule_matches_stated_epochs(path):
    rel = os.path.relpath(path, os.path.join(ROOT, "configs"))
    cfg = load(path)
    epochs = stated_epochs(rel)
    images = split_images(cfg, rel)
    batch = cfg.SOLVER.IMS_PER_BATCH

    def epoch_of(it):
        return it * batch / images

    trained = epoch_of(cfg.SOLVER.MAX_ITER)
    assert abs(trained / epochs - 1) <= TOLERANCE, (
        "%s: SOLVER.MAX_ITER %d x IMS_PER_BATCH %d / %d images = %.2f epochs, the name/paper states %d "
        "(MAX_ITER should be %d)"
        % (rel, cfg.SOLVER.MAX_ITER, batch, images, trained, epochs, round(epochs * images / batch))
    )
    sched = cfg.SOLVER.LR_SCHEDULER_NAME
    if sched == "WarmupMultiStepLR":
        expected = RECIPE_STEP_EPOCHS.get(rel, STEP_EPOCHS[epochs])
        got = tuple(epoch_of(s) for s in cfg.SOLVER.STEPS)
        assert len(got) == len(expected), "%s: SOLVER.STEPS %s, expected steps at epochs %s" % (
            rel,
            cfg.SOLVER.STEPS,
            expected,
        )
        for g, e in zip(got, expected):
            assert abs(g / e - 1) <= TOLERANCE, (
                "%s: SOLVER.STEPS %s are at epochs %s, the paper's are %s (iterations %s)"
                % (
                    rel,
                    cfg.SOLVER.STEPS,
                    ["%.2f" % x for x in got],
                    expected,
                    [round(x * images / batch) for x in expected],
                )
            )
    else:
        assert sched == "WarmupCosineLR", "%s: unexpected LR_SCHEDULER_NAME %s" % (rel, sched)
        assert tuple(cfg.SOLVER.STEPS) == (), "%s: a cosine schedule ignores SOLVER.STEPS %s" % (
            rel,
            cfg.SOLVER.STEPS,
        )
    assert cfg.SOLVER.WARMUP_ITERS < cfg.SOLVER.MAX_ITER / 2, rel

    # BOFL's own epoch count, when given, is the schedule's
    if cfg.MODEL.LT.DENSE_LOSS == "bofl" or cfg.MODEL.LT.BOFL.ENABLED:
        assert cfg.MODEL.LT.BOFL.TOTAL_EPOCHS in (0, epochs), rel
        assert cfg.MODEL.LT.BOFL.DEFERRED_EPOCHS < epochs, rel

    # the file itself states the epoch count, and what an epoch is under RFS
    with open(path) as f:
        text = f.read()
    assert re.search(r"\b%d epochs\b" % epochs, text), "%s: no comment stating '%d epochs'" % (
        rel,
        epochs,
    )
    if cfg.DATALOADER.SAMPLER_TRAIN == "RepeatFactorTrainingSampler":
        assert "un-expanded" in text, (
            "%s: RFS config must say that epochs count the un-expanded split" % rel
        )


def test_known_bad_schedules_fail():
    """The check catches what the configs used to have."""
    images, batch = SPLIT_IMAGES["coco_lt_train"], 128
    assert 129360 * batch / images > 140 * 10  # the old "140e" CenterNet on COCO-LT
    assert (
        abs(180000 * 16 / SPLIT_IMAGES["lvis_v1_train"] / 24 - 1) > TOLERANCE
    )  # the old C2AM "2x"
    assert (
        abs(90000 * 16 / SPLIT_IMAGES["coco_2017_train"] / 12 - 1) > TOLERANCE
    )  # detectron2's 90k "1x"
