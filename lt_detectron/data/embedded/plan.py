"""The plan of ``lt_shapes``: every count, box, polygon and json record, no pixels.

:func:`plan_lt_shapes` lays the class instances out over the images (each class in its target
number of images, at most ``max_objects`` objects per image), places them without box overlap
and writes the LVIS-format records; the categories' ``frequency`` follows LVIS' rule on the
train image counts (:func:`lt_detectron.class_stats.lvis_frequency`).
"""

import math
from collections import Counter
from typing import List

import numpy as np

from ...class_stats import lvis_frequency
from .spec import _SPLIT_INDEX, _UNIT, DEFAULTS, VERSION, class_specs, long_tail_targets

__all__ = ["plan_lt_shapes"]


def _rot(theta: float) -> np.ndarray:
    c, s = math.cos(theta), math.sin(theta)
    return np.array([[c, -s], [s, c]])


def _poly_area(p: np.ndarray) -> float:
    x, y = p[:, 0], p[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def _layout(rng, n_images: int, targets, max_objects: int):
    """Assign class instances to images: class k in ``images_k`` distinct images with
    ``instances_k`` instances in total, at most ``max_objects`` objects per image."""
    load = np.zeros(n_images, dtype=int)
    objs: List[List[int]] = [[] for _ in range(n_images)]
    order = sorted(range(len(targets)), key=lambda k: (-targets[k][0], k))
    for k in order:
        n_img, n_inst = targets[k]
        avail = np.flatnonzero(load < max_objects)
        n = min(n_img, len(avail))
        if n == 0:
            continue
        w = (max_objects - load[avail]).astype(float) ** 2
        chosen = rng.choice(avail, size=n, replace=False, p=w / w.sum())
        for i in chosen:
            objs[i].append(k)
        load[chosen] += 1
        for _ in range(n_inst - n):
            cand = chosen[load[chosen] < max_objects]
            if len(cand) == 0:
                break
            i = cand[rng.integers(len(cand))]
            objs[i].append(k)
            load[i] += 1
    return objs


def _place(rng, classes: List[int], specs, size: int, min_size: float, max_size: float):
    """Place objects (class indices) without box overlap. Returns list of object dicts."""
    sizes = np.exp(rng.uniform(np.log(min_size), np.log(max_size), len(classes)))
    order = np.argsort(-sizes, kind="stable")
    boxes: List[tuple] = []
    placed = []
    for j in order:
        k = classes[j]
        fam = specs[k]["family"]
        s = float(sizes[j])
        ok = False
        while not ok and s >= 0.5 * min_size:
            for _ in range(60):
                theta = math.radians(rng.uniform(-20, 20)) + (
                    math.pi / 2 if fam == "bar" and rng.random() < 0.5 else 0
                )
                poly = (_UNIT[fam] * (s / 2)) @ _rot(theta).T
                lo, hi = poly.min(0), poly.max(0)
                if np.any(hi - lo > size - 2):
                    break
                cx = rng.uniform(1 - lo[0], size - 1 - hi[0])
                cy = rng.uniform(1 - lo[1], size - 1 - hi[1])
                p = np.round(poly + [cx, cy], 2)
                x0, y0 = p.min(0)
                x1, y1 = p.max(0)
                if all(
                    x0 > bx1 + 1 or x1 < bx0 - 1 or y0 > by1 + 1 or y1 < by0 - 1
                    for bx0, by0, bx1, by1 in boxes
                ):
                    ok = True
                    break
            if not ok:
                s *= 0.85
        if not ok:  # practically never happens with the default sizes; counted in the plan
            continue
        boxes.append((x0, y0, x1, y1))
        placed.append(
            dict(
                k=k,
                poly=p,
                center=(cx, cy),
                theta=theta,
                size=s,
                hue=specs[k]["hue"] + float(np.clip(rng.normal(0, 6), -12, 12)),
                sat=float(rng.uniform(0.55, 0.95)),
                val=float(rng.uniform(0.55, 0.95)),
            )
        )
    return placed


def plan_lt_shapes(seed: int = 0, **cfg) -> dict:
    """Everything except pixels: categories, images, annotations, render parameters.

    Returns ``{"config", "specs", "targets", "train": lvis_dict, "val": lvis_dict,
    "objects": {"train": [[obj, ...] per image], "val": ...}, "dropped": int}``.
    """
    cfg = {**DEFAULTS, **cfg}
    unknown = set(cfg) - set(DEFAULTS)
    if unknown:
        raise TypeError(f"unknown lt_shapes options: {sorted(unknown)}")
    C = cfg["num_classes"]
    specs = class_specs(C)
    targets = long_tail_targets(C, cfg["num_train_images"], cfg["f_max_images"])
    out = {
        "config": cfg,
        "seed": seed,
        "specs": specs,
        "targets": targets,
        "objects": {},
        "dropped": 0,
    }

    rng_val_counts = np.random.default_rng([seed, 99])
    vpc = cfg["val_instances_per_class"]
    jit = max(0, vpc // 8)
    val_inst = [int(vpc + rng_val_counts.integers(-jit, jit + 1)) for _ in range(C)]
    split_targets = {
        "train": [(t["images"], t["instances"]) for t in targets],
        "val": [(int(math.ceil(m / 1.25)), m) for m in val_inst],
    }
    n_images = {"train": cfg["num_train_images"], "val": cfg["num_val_images"]}
    size = cfg["image_size"]
    per_split = {}
    for split in ("train", "val"):
        rng = np.random.default_rng([seed, _SPLIT_INDEX[split]])
        layout = _layout(rng, n_images[split], split_targets[split], cfg["max_objects"])
        images, anns, objects = [], [], []
        for classes in layout:
            if not classes:
                continue
            rng.shuffle(classes)
            placed = _place(rng, classes, specs, size, cfg["min_size"], cfg["max_size"])
            out["dropped"] += len(classes) - len(placed)
            if not placed:
                continue
            img_id = len(images) + 1
            present = set()
            for o in placed:
                p = o["poly"]
                x0, y0 = p.min(0)
                x1, y1 = p.max(0)
                cid = specs[o["k"]]["id"]
                present.add(cid)
                anns.append(
                    dict(
                        id=len(anns) + 1,
                        image_id=img_id,
                        category_id=cid,
                        bbox=[
                            float(x0),
                            float(y0),
                            round(float(x1 - x0), 2),
                            round(float(y1 - y0), 2),
                        ],
                        area=round(_poly_area(p), 2),
                        segmentation=[[float(v) for v in p.reshape(-1)]],
                        iscrowd=0,
                    )
                )
            images.append(
                dict(
                    id=img_id,
                    file_name=f"{img_id:06d}.jpg",
                    # detectron2's stock load_lvis_json derives the path from coco_url:
                    # image_root + "<split>/<file>", so pass image_root = dataset root + "/"
                    coco_url=f"lt_shapes/{split}/{img_id:06d}.jpg",
                    height=size,
                    width=size,
                    neg_category_ids=[
                        s["id"]
                        for s in sorted(specs, key=lambda s: s["id"])
                        if s["id"] not in present
                    ],
                    not_exhaustive_category_ids=[],
                )
            )
            objects.append(placed)
        per_split[split] = (images, anns)
        out["objects"][split] = objects

    missing = {s["id"] for s in specs} - {a["category_id"] for a in per_split["val"][1]}
    if missing:
        raise ValueError(
            f"val too small for all classes (missing ids {sorted(missing)}): "
            "raise num_val_images or lower val_instances_per_class"
        )
    # categories: frequency / image_count / instance_count from the TRAIN annotations
    tr_anns = per_split["train"][1]
    inst_c = Counter(a["category_id"] for a in tr_anns)
    img_c = Counter(c for c, _ in {(a["category_id"], a["image_id"]) for a in tr_anns})
    cats = []
    for s in sorted(specs, key=lambda s: s["id"]):
        t = targets[s["rank"]]
        n = img_c[s["id"]]
        cats.append(
            dict(
                id=s["id"],
                name=s["name"],
                synset=f"{s['name']}.n.01",
                synonyms=[s["name"]],
                def_=f"a {s['texture']} {s['family']} (lt_shapes synthetic class)",
                frequency=str(lvis_frequency(n)),
                image_count=n,
                instance_count=inst_c[s["id"]],
                family=s["family"],
                texture=s["texture"],
                lvis_source=dict(
                    rank=t["lvis_rank"],
                    id=t["lvis_id"],
                    name=t["lvis_name"],
                    frequency=t["lvis_frequency"],
                    image_count=t["lvis_image_count"],
                    instance_count=t["lvis_instance_count"],
                ),
            )
        )
    for c in cats:
        c["def"] = c.pop("def_")
    info = dict(
        description="lt_shapes: synthetic long-tailed detection dataset (lt_detectron)",
        version=VERSION,
        seed=int(seed),
        config={k: cfg[k] for k in sorted(cfg)},
        long_tail_source="LVIS v1 train category statistics (CC BY 4.0), rank aligned",
    )
    for split in ("train", "val"):
        images, anns = per_split[split]
        out[split] = dict(
            info=dict(info, split=split),
            licenses=[],
            images=images,
            annotations=anns,
            categories=cats,
        )
    return out
