"""Small jsons in the exact LVIS v1 / COCO formats, for the registration and validation tests.

LVIS v1: the 1203 real categories (id, name, synset, synonyms, def, frequency, image_count,
instance_count from the shipped table), images with coco_url / neg_category_ids /
not_exhaustive_category_ids, annotations with bbox / area / segmentation / category_id.
The category records are those of ``lt_detectron.utils.testing`` (the full fixtures' generator);
this module writes small files with hand-placed annotations for the unit tests.
COCO: the 80 real, non-contiguous ids (1..90) and names, iscrowd, file_name.
"""

import json

import numpy as np

from lt_detectron.utils.testing import coco_categories, lvis_v1_categories  # noqa: F401 (re-exported)


def _box(rng, size):
    w, h = rng.uniform(4, size / 2, 2)
    x, y = rng.uniform(0, size - w), rng.uniform(0, size - h)
    return [float(x), float(y), float(w), float(h)]


def _ann(aid, img_id, cat_id, box, coco=False):
    x, y, w, h = box
    a = {
        "id": aid,
        "image_id": img_id,
        "category_id": cat_id,
        "bbox": box,
        "area": w * h,
        "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]],
    }
    if coco:
        a["iscrowd"] = 0
    return a


def lvis_v1_json(
    path,
    per_image,
    size=64,
    seed=0,
    order=("info", "images", "annotations", "categories", "licenses"),
    split="train2017",
):
    """``per_image``: list (one entry per image) of LVIS category ids. Returns the dict written."""
    rng = np.random.default_rng(seed)
    cats = lvis_v1_categories()
    images, anns, aid = [], [], 1
    for k, cids in enumerate(per_image):
        img_id = 1000 + k
        present = sorted(set(cids))
        images.append(
            {
                "id": img_id,
                "height": size,
                "width": size,
                "license": 1,
                "coco_url": "http://images.cocodataset.org/%s/%012d.jpg" % (split, img_id),
                "flickr_url": "",
                "date_captured": "2013-11-14 16:28:13",
                "neg_category_ids": [c for c in (1, 2, 3) if c not in present],
                "not_exhaustive_category_ids": [],
            }
        )
        for c in cids:
            anns.append(_ann(aid, img_id, c, _box(rng, size)))
            aid += 1
    parts = {
        "info": {"description": "LVIS v1 format test fixture"},
        "images": images,
        "annotations": anns,
        "categories": cats,
        "licenses": [{"id": 1, "name": "x", "url": ""}],
    }
    data = {k: parts[k] for k in order}
    with open(path, "w") as f:
        json.dump(data, f)
    return data


def coco_json(path, per_image, size=64, seed=0, categories=None):
    """``per_image``: list of COCO category ids per image (the 80 real ids unless ``categories``)."""
    rng = np.random.default_rng(seed)
    images, anns, aid = [], [], 1
    for k, cids in enumerate(per_image):
        img_id = 1 + k
        images.append(
            {"id": img_id, "file_name": "%012d.jpg" % img_id, "height": size, "width": size}
        )
        for c in cids:
            anns.append(_ann(aid, img_id, c, _box(rng, size), coco=True))
            aid += 1
    data = {
        "info": {},
        "licenses": [],
        "images": images,
        "annotations": anns,
        "categories": coco_categories() if categories is None else categories,
    }
    with open(path, "w") as f:
        json.dump(data, f)
    return data
