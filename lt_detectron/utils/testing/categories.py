"""The real category records of LVIS v1 and COCO 2017, as the annotation files hold them (used by
the real-format fixtures, :mod:`lt_detectron.utils.testing.real_formats`).
"""

from typing import List

from ...data.lvis_stats import load_shipped_stats

__all__ = ["COCO_SUPERCATEGORIES", "coco_categories", "lvis_v1_categories"]

# COCO 2017 supercategory of each thing id (ids 1..90, 80 used)
COCO_SUPERCATEGORIES = {
    **{1: "person"},
    **{i: "vehicle" for i in range(2, 10)},
    **{i: "outdoor" for i in range(10, 16)},
    **{i: "animal" for i in range(16, 26)},
    **{i: "accessory" for i in (27, 28, 31, 32, 33)},
    **{i: "sports" for i in range(34, 44)},
    **{i: "kitchen" for i in (44, 46, 47, 48, 49, 50, 51)},
    **{i: "food" for i in range(52, 62)},
    **{i: "furniture" for i in (62, 63, 64, 65, 67, 70)},
    **{i: "electronic" for i in range(72, 78)},
    **{i: "appliance" for i in range(78, 83)},
    **{i: "indoor" for i in range(84, 91)},
}


def lvis_v1_categories() -> List[dict]:
    """The 1203 LVIS v1 category records as the real files hold them: ids, names, ``synset``,
    ``synonyms``, ``def``, ``frequency`` from detectron2's copy of the LVIS v1 categories, and
    the train ``image_count``/``instance_count`` from the shipped table (``lt_detectron/data/stats``)."""
    from detectron2.data.datasets.lvis_v1_categories import LVIS_CATEGORIES

    st = load_shipped_stats("lvis_v1_train")
    rows = {int(i): k for k, i in enumerate(st["id"])}
    cats = []
    for c in sorted(LVIS_CATEGORIES, key=lambda c: c["id"]):
        k = rows[c["id"]]
        if (st["name"][k], st["frequency"][k]) != (c["name"], c["frequency"]):
            raise ValueError(
                "the shipped LVIS v1 table disagrees with detectron2's LVIS v1 categories at id %d"
                % c["id"]
            )
        cats.append(
            {
                "id": c["id"],
                "name": c["name"],
                "synset": c["synset"],
                "synonyms": list(c["synonyms"]),
                "def": c["def"],
                "instance_count": int(st["instance_count"][k]),
                "image_count": int(st["image_count"][k]),
                "frequency": c["frequency"],
            }
        )
    return cats


def coco_categories() -> List[dict]:
    """The 80 COCO 2017 thing categories: real ids (1..90), names, supercategories."""
    from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES

    return [
        {"supercategory": COCO_SUPERCATEGORIES[c["id"]], "id": c["id"], "name": c["name"]}
        for c in COCO_CATEGORIES
        if c["isthing"]
    ]
