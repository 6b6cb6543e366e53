"""Generated LVIS-format ground truth and detections, for evaluator tests and benchmarks.

Deterministic from a seed. Ground truth carries everything the federated protocol
looks at: per-image ``neg_category_ids`` / ``not_exhaustive_category_ids``, category
``frequency``/``image_count``/``instance_count``, classes absent from the split,
boxes of all three COCO area ranges and (optionally) polygon masks. Detections are
jittered copies of ground truth (right or confused class) plus random boxes, with
categories from the image's positive, negative and unrelated sets.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ...class_stats import lvis_frequency
from ...data.lvis_stats import load_shipped_stats

__all__ = [
    "lvis_v1_like_categories",
    "make_lvis_like_gt",
    "make_detections",
    "detections_to_results",
    "detections_to_instances",
]


def lvis_v1_like_categories(num_classes: int = 1203, seed: int = 0) -> List[dict]:
    """LVIS-v1-like category records (id, name, frequency, image_count, instance_count).

    1203 classes: the shipped LVIS v1 train statistics (``lt_detectron/data/stats/
    lvis_v1_train.csv``, LVIS annotations CC BY 4.0). Otherwise a Zipf-like long tail of image
    counts, banded by LVIS' rule (:func:`lt_detectron.class_stats.lvis_frequency`).
    """
    if num_classes == 1203:
        st = load_shipped_stats("lvis_v1_train")
        return [
            {
                "id": int(i),
                "name": str(n),
                "frequency": str(f),
                "image_count": int(ic),
                "instance_count": int(nc),
            }
            for i, n, f, ic, nc in zip(
                st["id"], st["name"], st["frequency"], st["image_count"], st["instance_count"]
            )
        ]
    rng = np.random.default_rng(seed)
    ranks = rng.permutation(num_classes) + 1
    image_counts = np.maximum(1, np.round(20000.0 / ranks**0.95)).astype(np.int64)
    freq = lvis_frequency(image_counts)
    cats = []
    for i in range(num_classes):
        ic = int(image_counts[i])
        cats.append(
            {
                "id": i + 1,
                "name": f"class_{i + 1}",
                "frequency": str(freq[i]),
                "image_count": ic,
                "instance_count": int(ic * (1 + rng.integers(0, 3))),
            }
        )
    return cats


def _polygon_in_box(x, y, w, h, rng) -> List[float]:
    """An irregular octagon inside the box (so mask IoU differs from box IoU)."""
    ang = np.linspace(0, 2 * np.pi, 8, endpoint=False) + rng.uniform(0, 0.4)
    rad = rng.uniform(0.7, 1.0, size=8)
    px = x + w / 2 + (w / 2) * rad * np.cos(ang)
    py = y + h / 2 + (h / 2) * rad * np.sin(ang)
    return np.stack([px, py], 1).ravel().round(2).tolist()


def make_lvis_like_gt(
    num_images: int,
    categories: Optional[List[dict]] = None,
    *,
    seed: int = 0,
    with_masks: bool = False,
    image_size: Tuple[int, int] = (480, 640),
    mean_classes_per_image: float = 3.0,
    mean_instances_per_class: float = 2.5,
    empty_class_ids: Sequence[int] = (),
    sampling_power: float = 1.0,
) -> dict:
    """An LVIS-format ground-truth dict (``images``, ``annotations``, ``categories``)."""
    rng = np.random.default_rng(seed)
    if categories is None:
        categories = lvis_v1_like_categories(seed=seed)
    cat_ids = np.array([c["id"] for c in categories])
    # classes appear in images with probability ~ image_count ** sampling_power
    weight = np.array([float(c.get("image_count", 1)) for c in categories]) ** sampling_power
    empty = set(int(e) for e in empty_class_ids)
    weight[[i for i, c in enumerate(cat_ids) if c in empty]] = 0.0
    prob = weight / weight.sum()
    H, W = image_size
    images, anns = [], []
    ann_id = 1
    for img_id in range(1, num_images + 1):
        k = min(len(cat_ids), 1 + rng.poisson(mean_classes_per_image - 1))
        pos = rng.choice(cat_ids, size=k, replace=False, p=prob)
        for c in pos:
            n = 1 + rng.poisson(mean_instances_per_class - 1)
            for _ in range(n):
                side = float(np.exp(rng.uniform(np.log(6), np.log(360))))
                ar = float(np.exp(rng.uniform(-0.7, 0.7)))
                w = min(W - 1.0, side * ar)
                h = min(H - 1.0, side / ar)
                x = float(rng.uniform(0, W - w))
                y = float(rng.uniform(0, H - h))
                a = {
                    "id": ann_id,
                    "image_id": img_id,
                    "category_id": int(c),
                    "bbox": [round(x, 2), round(y, 2), round(w, 2), round(h, 2)],
                    "area": round(w * h, 2),
                }
                if with_masks:
                    poly = _polygon_in_box(x, y, w, h, rng)
                    a["segmentation"] = [poly]
                    from pycocotools import mask as mask_utils

                    rle = mask_utils.frPyObjects([poly], H, W)
                    a["area"] = float(mask_utils.area(mask_utils.merge(rle)))
                anns.append(a)
                ann_id += 1
        pos_set = set(int(c) for c in pos)
        others = [
            int(c)
            for c in rng.choice(cat_ids, size=min(len(cat_ids), 6), replace=False, p=prob)
            if int(c) not in pos_set
        ]
        neg = sorted(set(others[:3]))
        not_exh = sorted(int(c) for c in pos if rng.random() < 0.25)
        images.append(
            {
                "id": img_id,
                "height": H,
                "width": W,
                "file_name": f"{img_id:012d}.jpg",
                "neg_category_ids": neg,
                "not_exhaustive_category_ids": not_exh,
            }
        )
    cats = [dict(c) for c in categories]
    return {
        "info": {"description": "generated LVIS-like data"},
        "licenses": [],
        "images": images,
        "annotations": anns,
        "categories": cats,
    }


def make_detections(
    gt: dict,
    dets_per_image: int = 300,
    *,
    seed: int = 1,
    with_masks: bool = False,
    extra_over_cap: int = 0,
) -> Dict[int, dict]:
    """Per image: ``{"boxes": (N,4) XYXY float32, "scores": (N,), "category_ids": (N,), "masks": [RLE] | None}``.

    ``extra_over_cap`` adds that many more detections per image (to test the 300 cap).
    """
    rng = np.random.default_rng(seed)
    cat_ids = np.array([c["id"] for c in gt["categories"]])
    by_img: Dict[int, list] = {}
    for a in gt["annotations"]:
        by_img.setdefault(a["image_id"], []).append(a)
    out = {}
    for img in gt["images"]:
        H, W = img["height"], img["width"]
        n = dets_per_image + extra_over_cap
        g = by_img.get(img["id"], [])
        gboxes = np.array([a["bbox"] for a in g], dtype=np.float64).reshape(-1, 4)
        gcats = np.array([a["category_id"] for a in g], dtype=np.int64)
        n_tp = min(n // 2, 8 * len(g))
        idx = rng.integers(0, max(1, len(g)), size=n_tp) if len(g) else np.zeros(0, np.int64)
        b = gboxes[idx].copy() if len(g) else np.zeros((0, 4))
        if len(b):
            jit = rng.normal(0, 0.12, size=(len(b), 4)) * np.concatenate([b[:, 2:], b[:, 2:]], 1)
            b += jit
        c = gcats[idx].copy() if len(g) else np.zeros(0, np.int64)
        swap = rng.random(len(c)) < 0.2
        c[swap] = rng.choice(cat_ids, size=int(swap.sum()))
        n_rand = n - len(b)
        side = np.exp(rng.uniform(np.log(6), np.log(360), size=n_rand))
        rb = np.stack(
            [
                rng.uniform(0, W - 40, n_rand),
                rng.uniform(0, H - 40, n_rand),
                side,
                side * np.exp(rng.uniform(-0.5, 0.5, n_rand)),
            ],
            1,
        )
        neg = np.array(img.get("neg_category_ids", []), dtype=np.int64)
        pool = np.concatenate([gcats, neg, rng.choice(cat_ids, size=4)])
        rc = rng.choice(pool, size=n_rand)
        xywh = np.concatenate([b, rb], 0)
        xywh[:, 2:] = np.maximum(xywh[:, 2:], 1.0)
        xywh[:, 0] = np.clip(xywh[:, 0], 0, W - 2)
        xywh[:, 1] = np.clip(xywh[:, 1], 0, H - 2)
        xywh[:, 2] = np.minimum(xywh[:, 2], W - xywh[:, 0])
        xywh[:, 3] = np.minimum(xywh[:, 3], H - xywh[:, 1])
        cats = np.concatenate([c, rc]).astype(np.int64)
        scores = np.concatenate([rng.uniform(0.3, 1.0, len(c)), rng.uniform(0.0, 0.7, n_rand)])
        # quantize scores to create ties (exercise tie handling)
        scores = np.round(scores, 3).astype(np.float32)
        xyxy = xywh.copy()
        xyxy[:, 2:] += xyxy[:, :2]
        masks = None
        if with_masks:
            from pycocotools import mask as mask_utils

            polys = [[_polygon_in_box(*bx, rng)] for bx in xywh]
            masks = [mask_utils.merge(mask_utils.frPyObjects(p, H, W)) for p in polys]
        out[img["id"]] = {
            "boxes": xyxy.astype(np.float32),
            "scores": scores,
            "category_ids": cats,
            "masks": masks,
        }
    return out


def detections_to_results(dets: Dict[int, dict], with_masks: bool = False) -> List[dict]:
    """LVIS/COCO result dicts (XYWH boxes) from :func:`make_detections` output, uncapped."""
    res = []
    for img_id, d in dets.items():
        b = d["boxes"].copy()  # float32, converted exactly like the evaluator does
        b[:, 2:] -= b[:, :2]
        bl = b.tolist()
        sl = d["scores"].tolist()
        for i in range(len(b)):
            r = {
                "image_id": int(img_id),
                "category_id": int(d["category_ids"][i]),
                "bbox": bl[i],
                "score": sl[i],
            }
            if with_masks:
                m = dict(d["masks"][i])
                r["segmentation"] = m
            res.append(r)
    return res


def detections_to_instances(
    det: dict,
    image_size: Tuple[int, int],
    dataset_to_contiguous: Dict[int, int],
    with_masks: bool = False,
):
    """Detectron2 ``Instances`` (pred_boxes, scores, pred_classes[, pred_masks]) of one image."""
    import torch
    from detectron2.structures import Boxes, Instances

    inst = Instances(image_size)
    inst.pred_boxes = Boxes(torch.from_numpy(np.ascontiguousarray(det["boxes"], dtype=np.float32)))
    inst.scores = torch.from_numpy(np.ascontiguousarray(det["scores"], dtype=np.float32))
    inst.pred_classes = torch.tensor(
        [dataset_to_contiguous[int(c)] for c in det["category_ids"]], dtype=torch.int64
    )
    if with_masks:
        from pycocotools import mask as mask_utils

        m = (
            mask_utils.decode(det["masks"])
            if len(det["masks"])
            else np.zeros((*image_size, 0), np.uint8)
        )
        inst.pred_masks = torch.from_numpy(np.ascontiguousarray(m.transpose(2, 0, 1)).astype(bool))
    return inst
