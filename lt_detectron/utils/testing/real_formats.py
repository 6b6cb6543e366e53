"""Fixtures in the exact on-disk formats of LVIS v1, COCO 2017, COCO-LT and detectron2's ImageNet
R-50 weights, small enough to train on a CPU (in the spirit of ``detectron2/utils/testing.py``).

:func:`make_fixtures` writes, under ``root`` laid out as ``$DETECTRON2_DATASETS``::

    lvis/lvis_v1_train.json, lvis/lvis_v1_val.json        LVIS v1 format, all 1203 real categories
    coco/annotations/instances_{train,val}2017.json       COCO format, the 80 real ids (1..90)
    coco/annotations/coco_lt_train.json                   built by lt_detectron.data.coco_lt
    coco/train2017/000000xxxxxx.jpg, coco/val2017/...     small JPEGs named as COCO names them
    ImageNetPretrained/MSRA/R-50.pkl                      random-weight R-50, MSRA/caffe2 blob names

so ``DETECTRON2_DATASETS=root`` makes the builtin names (``lvis_v1_train``, ``coco_2017_val``,
``coco_lt_train`` ...) resolve to it and ``MODEL.WEIGHTS root/ImageNetPretrained/MSRA/R-50.pkl``
stands in for ``detectron2://ImageNetPretrained/MSRA/R-50.pkl``.

What is real and what is made up:

- LVIS categories: the real records (ids, names, ``synset``, ``synonyms``, ``def``,
  ``frequency`` from detectron2's ``lvis_v1_categories``; ``image_count``/``instance_count``
  from the shipped table ``lt_detectron/data/stats/lvis_v1_train.csv``, the full LVIS v1 train
  counts as in the real files, so the annotations are a *subset* of what the counts describe).
  Note: as in the real file, ``name`` and ``synonyms[0]`` differ for id 162 (``bull`` /
  ``horned_cow``; detectron2's builtin metadata uses ``synonyms[0]``).
  COCO categories: the real ids, names and supercategories.
- Images: random ``64..128`` px JPEGs with the annotated polygons painted in; ids are random
  COCO-range ids, file names ``%012d.jpg``. LVIS val draws images from train2017 and val2017,
  as LVIS v1 val does; LVIS image records carry ``coco_url`` (no ``file_name``), COCO's carry both.
- Annotations: polygons (ellipse-like octagons), ``bbox`` their tight box, ``area`` their
  polygon area. LVIS uses a handful of rare/common/frequent categories with a long tail and
  ``neg_category_ids`` / ``not_exhaustive_category_ids`` per image; COCO uses a long-tailed set
  of categories plus one ``iscrowd=1`` annotation (uncompressed RLE) per split.

Everything is a function of ``seed`` (same seed, same bytes).
"""

from __future__ import annotations

import json
import os
from typing import Dict

import numpy as np

from ...data.coco_lt import build_coco_lt, load_lvis_counts
from .categories import COCO_SUPERCATEGORIES, coco_categories, lvis_v1_categories
from .weights import make_r50_msra_pkl

__all__ = [
    "COCO_SUPERCATEGORIES",
    "coco_categories",
    "lvis_v1_categories",
    "make_lvis_coco_fixtures",
    "make_coco_lt_fixture",
    "make_fixtures",
    "fixture_paths",
]


_LICENSES = [
    {
        "url": "http://creativecommons.org/licenses/by-nc-sa/2.0/",
        "id": 1,
        "name": "Attribution-NonCommercial-ShareAlike License",
    },
    {
        "url": "http://creativecommons.org/licenses/by-nc/2.0/",
        "id": 2,
        "name": "Attribution-NonCommercial License",
    },
    {
        "url": "http://creativecommons.org/licenses/by-nc-nd/2.0/",
        "id": 3,
        "name": "Attribution-NonCommercial-NoDerivs License",
    },
    {"url": "http://creativecommons.org/licenses/by/2.0/", "id": 4, "name": "Attribution License"},
    {
        "url": "http://creativecommons.org/licenses/by-sa/2.0/",
        "id": 5,
        "name": "Attribution-ShareAlike License",
    },
    {
        "url": "http://creativecommons.org/licenses/by-nd/2.0/",
        "id": 6,
        "name": "Attribution-NoDerivs License",
    },
    {"url": "http://flickr.com/commons/usage/", "id": 7, "name": "No known copyright restrictions"},
    {"url": "http://www.usa.gov/copyright.shtml", "id": 8, "name": "United States Government Work"},
]


def fixture_paths(root: str) -> Dict[str, str]:
    """Absolute paths of every file :func:`make_fixtures` writes under ``root``."""
    root = os.path.abspath(root)
    ann = os.path.join(root, "coco", "annotations")
    return {
        "root": root,
        "lvis_v1_train": os.path.join(root, "lvis", "lvis_v1_train.json"),
        "lvis_v1_val": os.path.join(root, "lvis", "lvis_v1_val.json"),
        "lvis_image_root": os.path.join(root, "coco"),
        "coco_train": os.path.join(ann, "instances_train2017.json"),
        "coco_val": os.path.join(ann, "instances_val2017.json"),
        "coco_lt_train": os.path.join(ann, "coco_lt_train.json"),
        "coco_train_images": os.path.join(root, "coco", "train2017"),
        "coco_val_images": os.path.join(root, "coco", "val2017"),
        "r50_pkl": os.path.join(root, "ImageNetPretrained", "MSRA", "R-50.pkl"),
    }


def _polygon(rng, width, height):
    """An ellipse-like octagon inside the image: (flat xy list, tight xywh box, area)."""
    w = float(rng.integers(max(12, width // 6), max(13, width // 2)))
    h = float(rng.integers(max(12, height // 6), max(13, height // 2)))
    x0 = float(rng.integers(0, width - int(w)))
    y0 = float(rng.integers(0, height - int(h)))
    t = np.arange(8) * (2 * np.pi / 8) + rng.uniform(0, np.pi / 4)
    xs = x0 + w / 2 + (w / 2) * np.cos(t)
    ys = y0 + h / 2 + (h / 2) * np.sin(t)
    xs, ys = np.round(xs, 2), np.round(ys, 2)
    poly = [float(v) for xy in zip(xs, ys) for v in xy]
    box = [float(xs.min()), float(ys.min()), float(xs.max() - xs.min()), float(ys.max() - ys.min())]
    area = 0.5 * abs(float(np.dot(xs, np.roll(ys, 1)) - np.dot(ys, np.roll(xs, 1))))
    return poly, [round(v, 2) for v in box], round(area, 2)


def _uncompressed_rle(poly, height, width):
    """COCO crowd segmentation: {"counts": [...], "size": [h, w]} (column-major runs, zeros first)."""
    from pycocotools import mask as mask_util

    m = mask_util.decode(mask_util.merge(mask_util.frPyObjects([poly], height, width)))
    flat = m.flatten(order="F")
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat[0] == 1:
        counts = [0] + counts
    return {"counts": [int(c) for c in counts], "size": [height, width]}, float(m.sum())


def _pick_lvis_classes(cats, rng, per_band):
    chosen = []
    for band in ("r", "c", "f"):
        ids = [c["id"] for c in cats if c["frequency"] == band]
        chosen += sorted(rng.choice(ids, size=per_band, replace=False).tolist())
    return chosen


def make_lvis_coco_fixtures(
    root: str,
    seed: int = 0,
    num_train2017: int = 28,
    num_val2017: int = 8,
    num_lvis_val_from_train2017: int = 4,
    lvis_classes_per_band: int = 3,
    num_coco_classes: int = 10,
) -> Dict[str, str]:
    """Write the LVIS v1 / COCO 2017 jsons and their images under ``root`` (see the module doc)."""
    from PIL import Image, ImageDraw

    paths = fixture_paths(root)
    rng = np.random.default_rng(seed)
    lvis_cats = lvis_v1_categories()
    coco_cats = coco_categories()
    lvis_ids = _pick_lvis_classes(lvis_cats, rng, lvis_classes_per_band)
    band = {c["id"]: c["frequency"] for c in lvis_cats}
    lvis_w = np.array([{"r": 1.0, "c": 3.0, "f": 8.0}[band[i]] for i in lvis_ids])
    coco_ids = sorted(
        rng.choice([c["id"] for c in coco_cats], size=num_coco_classes, replace=False).tolist()
    )
    coco_w = 1.0 / (1.0 + np.arange(num_coco_classes)) ** 1.5  # long tail over the chosen classes
    rng.shuffle(coco_w)

    all_ids = rng.choice(
        np.arange(1, 581930), size=num_train2017 + num_val2017, replace=False
    ).tolist()
    pools = {
        "train2017": sorted(all_ids[:num_train2017]),
        "val2017": sorted(all_ids[num_train2017:]),
    }
    # objects per image, shared by the LVIS and COCO annotations of that image
    images = {}
    ann_id = {"lvis": 1, "coco": 1}
    for split in ("train2017", "val2017"):
        os.makedirs(os.path.join(root, "coco", split), exist_ok=True)
        for k, img_id in enumerate(pools[split]):
            width, height = int(rng.integers(64, 129)), int(rng.integers(64, 129))
            objs = [_polygon(rng, width, height) for _ in range(int(rng.integers(1, 5)))]
            # every chosen class appears in train: cycle through them for the first images
            if split == "train2017" and k < len(lvis_ids):
                lvis_labels = [lvis_ids[k]] + rng.choice(
                    lvis_ids, size=len(objs) - 1, p=lvis_w / lvis_w.sum()
                ).tolist()
            else:
                lvis_labels = rng.choice(lvis_ids, size=len(objs), p=lvis_w / lvis_w.sum()).tolist()
            if k < num_coco_classes:
                coco_labels = [coco_ids[k]] + rng.choice(
                    coco_ids, size=len(objs) - 1, p=coco_w / coco_w.sum()
                ).tolist()
            else:
                coco_labels = rng.choice(coco_ids, size=len(objs), p=coco_w / coco_w.sum()).tolist()
            pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8) // 2 + 64
            im = Image.fromarray(pixels)
            draw = ImageDraw.Draw(im)
            for (poly, _, _), lab in zip(objs, lvis_labels):
                colour = tuple(int(v) for v in np.random.default_rng(lab).integers(0, 256, 3))
                draw.polygon(list(zip(poly[0::2], poly[1::2])), fill=colour)
            file_name = "%012d.jpg" % img_id
            im.save(os.path.join(root, "coco", split, file_name), quality=90)
            images[img_id] = {
                "split": split,
                "record": {
                    "license": int(rng.integers(1, 9)),
                    "file_name": file_name,
                    "coco_url": "http://images.cocodataset.org/%s/%s" % (split, file_name),
                    "height": height,
                    "width": width,
                    "date_captured": "2013-11-%02d %02d:%02d:%02d"
                    % (
                        rng.integers(1, 29),
                        rng.integers(0, 24),
                        rng.integers(0, 60),
                        rng.integers(0, 60),
                    ),
                    "flickr_url": "http://farm%d.staticflickr.com/%d/%d_%010x_z.jpg"
                    % (
                        rng.integers(1, 10),
                        rng.integers(1000, 9999),
                        img_id,
                        rng.integers(0, 1 << 40),
                    ),
                    "id": img_id,
                },
                "objs": objs,
                "lvis": lvis_labels,
                "coco": coco_labels,
            }

    def lvis_json(img_ids):
        imgs, anns = [], []
        for i in img_ids:
            rec = dict(images[i]["record"])
            rec.pop("file_name")  # LVIS v1 image records name the file only through coco_url
            present = sorted(set(images[i]["lvis"]))
            absent = [c for c in lvis_ids if c not in present]
            rec["neg_category_ids"] = sorted(
                rng.choice(absent, size=min(2, len(absent)), replace=False).tolist()
            )
            rec["not_exhaustive_category_ids"] = present[:1] if rng.random() < 0.25 else []
            imgs.append(rec)
            for (poly, box, area), lab in zip(images[i]["objs"], images[i]["lvis"]):
                anns.append(
                    {
                        "area": area,
                        "id": ann_id["lvis"],
                        "segmentation": [poly],
                        "image_id": i,
                        "bbox": box,
                        "category_id": int(lab),
                    }
                )
                ann_id["lvis"] += 1
        info = {
            "description": "LVIS v1 format fixture (lt_detectron.utils.testing)",
            "url": "https://www.lvisdataset.org",
            "version": "1.0",
            "year": 2020,
            "contributor": "lt_detectron",
            "date_created": "2020-01-01",
        }
        # key order of the real LVIS v1 files: annotations before categories
        return {
            "info": info,
            "annotations": anns,
            "images": imgs,
            "licenses": _LICENSES,
            "categories": lvis_cats,
        }

    def coco_json(img_ids, crowd):
        imgs, anns = [], []
        for i in img_ids:
            rec = images[i]["record"]
            imgs.append(dict(rec))
            for (poly, box, area), lab in zip(images[i]["objs"], images[i]["coco"]):
                anns.append(
                    {
                        "segmentation": [poly],
                        "area": area,
                        "iscrowd": 0,
                        "image_id": i,
                        "bbox": box,
                        "category_id": int(lab),
                        "id": ann_id["coco"],
                    }
                )
                ann_id["coco"] += 1
        if crowd:  # one crowd region, as COCO stores it: uncompressed RLE
            i = img_ids[-1]
            rec = images[i]["record"]
            poly, box, _ = _polygon(rng, rec["width"], rec["height"])
            rle, area = _uncompressed_rle(poly, rec["height"], rec["width"])
            anns.append(
                {
                    "segmentation": rle,
                    "area": area,
                    "iscrowd": 1,
                    "image_id": i,
                    "bbox": box,
                    "category_id": int(coco_ids[int(np.argmax(coco_w))]),
                    "id": ann_id["coco"],
                }
            )
            ann_id["coco"] += 1
        info = {
            "description": "COCO 2017 format fixture (lt_detectron.utils.testing)",
            "url": "http://cocodataset.org",
            "version": "1.0",
            "year": 2017,
            "contributor": "lt_detectron",
            "date_created": "2017/09/01",
        }
        return {
            "info": info,
            "licenses": _LICENSES,
            "images": imgs,
            "annotations": anns,
            "categories": coco_cats,
        }

    train_ids = pools["train2017"]
    n_lvis_train = num_train2017 - num_lvis_val_from_train2017
    out = {
        paths["lvis_v1_train"]: lvis_json(train_ids[:n_lvis_train]),
        paths["lvis_v1_val"]: lvis_json(train_ids[n_lvis_train:] + pools["val2017"]),
        paths["coco_train"]: coco_json(train_ids, crowd=True),
        paths["coco_val"]: coco_json(pools["val2017"], crowd=True),
    }
    for path, data in out.items():
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            json.dump(data, f)
    return paths


def make_coco_lt_fixture(root: str, seed: int = 0) -> str:
    """``coco/annotations/coco_lt_train.json`` from the COCO train fixture, by the shipped builder.

    On a few dozen images every class is below its LVIS-aligned target, so the builder keeps
    every non-crowd instance (crowd annotations are dropped): the output differs from the input
    in what the recipe changes (no crowd, achieved counts on the categories), not in size.
    """
    paths = fixture_paths(root)
    with open(paths["coco_train"]) as f:
        coco = json.load(f)
    out, _ = build_coco_lt(coco, load_lvis_counts(), seed=seed)
    with open(paths["coco_lt_train"], "w") as f:
        json.dump(out, f)
    return paths["coco_lt_train"]


def make_fixtures(root: str, seed: int = 0, weights: bool = True) -> Dict[str, str]:
    """All fixtures under ``root`` (see the module doc); returns :func:`fixture_paths`."""
    paths = make_lvis_coco_fixtures(root, seed=seed)
    make_coco_lt_fixture(root, seed=seed)
    if weights:
        make_r50_msra_pkl(paths["r50_pkl"], seed=seed)
    return paths
