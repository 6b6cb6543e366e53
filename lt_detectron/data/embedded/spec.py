"""What ``lt_shapes`` holds: its options, the class specs (shape outline, texture, hue) and the
LVIS-aligned long-tail targets of the training counts."""

import math
from typing import List

import numpy as np

from ...class_stats import LVIS_COMMON_MAX_IMAGES, LVIS_RARE_MAX_IMAGES

__all__ = ["VERSION", "DEFAULTS", "FAMILIES", "TEXTURES", "class_specs", "long_tail_targets"]

# Bump when the generated content changes (folder name contains it -> old caches are not reused).
VERSION = "v2"

FAMILIES = ("disk", "square", "triangle", "ring", "cross", "bar", "diamond", "star")
TEXTURES = ("solid", "striped", "checkered", "dotted")

DEFAULTS = dict(
    num_classes=24,
    num_train_images=1000,
    num_val_images=200,
    image_size=128,
    min_size=12,  # object size (diameter of the shape's circumscribed circle), pixels
    max_size=40,
    max_objects=6,  # per image
    val_instances_per_class=24,
    f_max_images=400,  # train images of the most frequent class (default num_train_images)
    jpeg_quality=92,
)
_REF_TRAIN_IMAGES = 1000  # the count map is defined for this many train images, then scaled
_SPLIT_INDEX = {"train": 0, "val": 1}  # seeds of the per-split random generators


# ----------------------------------------------------------------------------- classes
def class_specs(num_classes: int = DEFAULTS["num_classes"]) -> List[dict]:
    """Visual definition of the classes, in LVIS-rank order (index 0 = most frequent).

    Each dict: ``rank``, ``family``, ``texture``, ``variant``, ``hue`` (degrees), ``name``, ``id``
    (category id, 1..C, ordered by family then variant).
    """
    if not 3 <= num_classes <= len(FAMILIES) * len(TEXTURES):
        raise ValueError(f"num_classes must be in [3, {len(FAMILIES) * len(TEXTURES)}]")
    nfam = min(len(FAMILIES), num_classes)
    nvar = int(math.ceil(num_classes / nfam))
    specs = []
    for i in range(num_classes):
        fam = i % nfam
        var = (i // nfam + fam) % nvar  # Latin square: each family/texture spans all bands
        specs.append(
            dict(
                rank=i,
                family=FAMILIES[fam],
                texture=TEXTURES[var],
                variant=var,
                hue=float((fam * 45 + var * 20) % 360),
                name=f"{TEXTURES[var]}_{FAMILIES[fam]}",
            )
        )
    for cid, s in enumerate(
        sorted(specs, key=lambda s: (FAMILIES.index(s["family"]), s["variant"])), 1
    ):
        s["id"] = cid
    return specs


def long_tail_targets(
    num_classes: int = DEFAULTS["num_classes"],
    num_train_images: int = DEFAULTS["num_train_images"],
    f_max_images: int = DEFAULTS["f_max_images"],
) -> List[dict]:
    """Target TRAIN counts per class (LVIS-rank order), from the shipped LVIS v1 statistics.

    Returns dicts with ``images``, ``instances`` (targets) and ``lvis_*`` (the source class).
    """
    from ..lvis_stats import load_shipped_stats

    st = load_shipped_stats("lvis_v1_train")
    order = np.lexsort((st["id"], -st["instance_count"]))
    ranks = np.round(np.linspace(0, len(order) - 1, num_classes)).astype(int)
    sel = order[ranks]
    inst = st["instance_count"][sel].astype(float)
    imgs = st["image_count"][sel].astype(float)
    logi = np.log(inst)

    # one third of the classes per band; knots halfway (in log) between band neighbours
    nf = int(round(num_classes / 3))
    nr = int(round(num_classes / 3))
    nc = num_classes - nf - nr
    x = np.array(
        [
            logi[-1],
            0.5 * (logi[nf + nc - 1] + logi[nf + nc]),
            0.5 * (logi[nf - 1] + logi[nf]),
            logi[0],
        ]
    )
    y = np.log([1.0, LVIS_RARE_MAX_IMAGES + 0.5, LVIS_COMMON_MAX_IMAGES + 0.5, float(f_max_images)])
    x = np.maximum.accumulate(x + np.arange(4) * 1e-9)
    tgt_img = np.exp(np.interp(logi, x, y))
    scale = num_train_images / _REF_TRAIN_IMAGES
    tgt_img = np.clip(np.round(tgt_img * scale), 1, num_train_images).astype(int)
    ratio = np.clip((inst / imgs) ** 0.35, 1.0, 2.5)
    tgt_inst = np.maximum(tgt_img, np.round(tgt_img * ratio)).astype(int)
    out = []
    for k in range(num_classes):
        j = sel[k]
        out.append(
            dict(
                images=int(tgt_img[k]),
                instances=int(tgt_inst[k]),
                lvis_rank=int(ranks[k]),
                lvis_id=int(st["id"][j]),
                lvis_name=str(st["name"][j]),
                lvis_frequency=str(st["frequency"][j]),
                lvis_image_count=int(st["image_count"][j]),
                lvis_instance_count=int(st["instance_count"][j]),
            )
        )
    return out


# ----------------------------------------------------------------------------- shape outlines
def _unit_polygon(family: str) -> np.ndarray:
    """Outer contour of a shape of 'radius' ~1 centred at 0, as (N, 2), y down."""
    if family in ("disk", "ring"):
        a = np.linspace(0, 2 * np.pi, 32, endpoint=False)
        return np.stack([np.cos(a), np.sin(a)], 1)
    if family == "square":
        h = 0.8
        return np.array([[-h, -h], [h, -h], [h, h], [-h, h]])
    if family == "triangle":
        a = np.deg2rad([-90, 30, 150])
        p = np.stack([np.cos(a), np.sin(a)], 1)
        return p + [0, 0.2]
    if family == "cross":
        w = 0.32
        return np.array(
            [
                [-w, -1],
                [w, -1],
                [w, -w],
                [1, -w],
                [1, w],
                [w, w],
                [w, 1],
                [-w, 1],
                [-w, w],
                [-1, w],
                [-1, -w],
                [-w, -w],
            ]
        )
    if family == "bar":
        w = 0.38
        return np.array([[-1, -w], [1, -w], [1, w], [-1, w]])
    if family == "diamond":
        return np.array([[0, -1], [0.62, 0], [0, 1], [-0.62, 0]])
    if family == "star":
        a = np.deg2rad(-90 + 36 * np.arange(10))
        r = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
        return np.stack([r * np.cos(a), r * np.sin(a)], 1)
    raise KeyError(family)


_UNIT = {f: _unit_polygon(f) for f in FAMILIES}
_RING_INNER = 0.55
