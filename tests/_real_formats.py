"""Small jsons in the exact LVIS v1 / COCO formats, for the registration and validation tests.

LVIS v0.5 (:func:`lvis_v0_5_json`): the 1230 real categories; image records name the COCO 2014
file (``file_name`` ``COCO_val2014_000000xxxxxx.jpg``) and the COCO 2017 one (``coco_url``).
LVIS v1: the 1203 real categories (id, name, synset, synonyms, def, frequency, image_count,
instance_count from the shipped table), images with coco_url / neg_category_ids /
not_exhaustive_category_ids, annotations with bbox / area / segmentation / category_id.
The category records are those of ``lt_detectron.utils.testing`` (the full fixtures' generator);
this module writes small files with hand-placed annotations for the unit tests.
COCO: the 80 real, non-contiguous ids (1..90) and names, iscrowd, file_name (COCO 2017
``000000xxxxxx.jpg``, or COCO 2014 ``COCO_val2014_000000xxxxxx.jpg`` with ``year=2014``).
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


def coco_json(path, per_image, size=64, seed=0, categories=None, year=2017):
    """``per_image``: list of COCO category ids per image (the 80 real ids unless ``categories``).

    ``year=2014``: the COCO 2014 naming (``COCO_val2014_%012d.jpg``, with its ``coco_url``)."""
    rng = np.random.default_rng(seed)
    images, anns, aid = [], [], 1
    for k, cids in enumerate(per_image):
        img_id = 1 + k
        img = {"id": img_id, "file_name": "%012d.jpg" % img_id, "height": size, "width": size}
        if year == 2014:
            img["file_name"] = "COCO_val2014_%012d.jpg" % img_id
            img["coco_url"] = "http://images.cocodataset.org/val2014/" + img["file_name"]
        images.append(img)
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


def lvis_v0_5_categories():
    """The 1230 LVIS v0.5 category records: detectron2's copy (id, name, synset, synonyms, def,
    frequency) plus the train image/instance counts of the shipped table."""
    from detectron2.data.datasets.lvis_v0_5_categories import LVIS_CATEGORIES

    from lt_detectron.data.lvis_stats import load_shipped_stats

    st = load_shipped_stats("lvis_v0.5_train")
    rows = {int(i): k for k, i in enumerate(st["id"])}
    cats = []
    for c in sorted(LVIS_CATEGORIES, key=lambda c: c["id"]):
        k = rows[c["id"]]
        cats.append(
            {
                **{key: c[key] for key in ("frequency", "id", "synset", "def", "name")},
                "synonyms": list(c["synonyms"]),
                "image_count": int(st["image_count"][k]),
                "instance_count": int(st["instance_count"][k]),
            }
        )
    return cats


def lvis_v0_5_json(path, per_image, splits=None, size=64, seed=0):
    """LVIS v0.5 format. ``per_image``: LVIS v0.5 category ids per image; ``splits``: the COCO 2017
    folder of each image (default ``train2017``). As in the real files, ``file_name`` is the COCO
    2014 name (train2017 holds images of COCO 2014 val too) and ``coco_url`` the COCO 2017 one.
    Returns the dict written."""
    rng = np.random.default_rng(seed)
    splits = splits or ["train2017"] * len(per_image)
    images, anns, aid = [], [], 1
    for k, (cids, split) in enumerate(zip(per_image, splits)):
        img_id = 397133 + 7 * k
        present = sorted(set(cids))
        images.append(
            {
                "date_captured": "2013-11-14 17:02:52",
                "neg_category_ids": [c for c in (1, 2, 3) if c not in present],
                "id": img_id,
                "license": 4,
                "height": size,
                "width": size,
                "flickr_url": "http://farm7.staticflickr.com/6116/6255196340_da26cf2c9e_z.jpg",
                "coco_url": "http://images.cocodataset.org/%s/%012d.jpg" % (split, img_id),
                "not_exhaustive_category_ids": [],
                "file_name": "COCO_val2014_%012d.jpg" % img_id,
            }
        )
        for c in cids:
            anns.append(_ann(aid, img_id, c, _box(rng, size)))
            aid += 1
    data = {
        "images": images,
        "annotations": anns,
        "categories": lvis_v0_5_categories(),
        "licenses": [{"id": 4, "name": "Attribution License", "url": ""}],
    }
    with open(path, "w") as f:
        json.dump(data, f)
    return data
