"""``lt_shapes``: a tiny, synthetic, long-tailed detection dataset in LVIS format.

The dataset is generated on first use (a few seconds) from a seed, so the project's demo,
tests and docs can train and evaluate a long-tailed detector without downloading LVIS.

* Classes are ``texture x shape family`` (e.g. ``striped_disk``): 8 shape families (disk,
  square, triangle, ring, cross, bar, diamond, star), each with up to 4 texture/hue variants
  (solid, striped, checkered, dotted; siblings also differ by a 20 degree hue step), so
  siblings inside a family are confusable while families differ by shape.
* The per-class TRAIN counts follow the real LVIS v1 long tail: the C classes are rank
  aligned with C LVIS v1 categories taken at evenly spaced ranks of the LVIS instance-count
  order (from the shipped ``stats/lvis_v1_train.csv``), and their LVIS instance counts are
  mapped to tiny-dataset image counts by a monotone, piecewise log-linear map whose knots put
  one third of the classes in each LVIS band (by train image count: ``r`` <= 10 images,
  ``c`` 11-100, ``f`` > 100). The instances-per-image ratio of the LVIS class is kept in a
  compressed form (``ratio ** 0.35`` clipped to [1, 2.5]).
* Rank -> (family, variant) is a Latin square, so every family has one class per band and
  every texture occurs in every band: a rare class always has frequent siblings.
* Val is near-balanced (about ``val_instances_per_class`` instances per class), so AP on rare
  classes (APr) is measurable.
* Images are exhaustively annotated: ``neg_category_ids`` lists every category absent from the
  image and ``not_exhaustive_category_ids`` is empty. Objects never overlap (their boxes are
  disjoint), so annotation is unambiguous. Segmentations are polygons (for ``ring`` the outer
  contour; the hole is not encoded).

Layout on disk (``root``)::

    train/000001.jpg ...      val/000001.jpg ...
    lt_shapes_train.json      lt_shapes_val.json      (LVIS format, loadable by lvis-api)
    preview.png, classes.png  (only with ``--preview``)

Generation is split in a *plan* (all counts, boxes, polygons and json content; no pixels;
:func:`plan_lt_shapes`) and a *render* step (pixels only, one independent RNG per image).

CLI::

    python -m lt_detectron.data.embedded [--root DIR] [--seed 0] [--preview] [--force]
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import sys
import time
import uuid
from collections import Counter, defaultdict
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
from PIL import Image, ImageDraw

__all__ = [
    "VERSION",
    "DEFAULTS",
    "FAMILIES",
    "TEXTURES",
    "CacheDirError",
    "cache_base",
    "cleanup_stale_temp",
    "default_cache_root",
    "ensure_cache_dir",
    "class_specs",
    "long_tail_targets",
    "plan_lt_shapes",
    "generate_lt_shapes",
    "get_lt_shapes",
    "lt_shapes_paths",
    "lt_shapes_summary",
    "band_summary",
    "format_summary",
    "render_preview",
    "render_class_strip",
]

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
_LVIS_R_MAX, _LVIS_C_MAX = 10, 100  # LVIS frequency thresholds (train image counts)
_SPLIT_INDEX = {"train": 0, "val": 1}


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
    for cid, s in enumerate(sorted(specs, key=lambda s: (FAMILIES.index(s["family"]), s["variant"])), 1):
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
    from .lvis_stats import load_shipped_stats

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
    y = np.log([1.0, _LVIS_R_MAX + 0.5, _LVIS_C_MAX + 0.5, float(f_max_images)])
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


# ----------------------------------------------------------------------------- geometry
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
            [[-w, -1], [w, -1], [w, -w], [1, -w], [1, w], [w, w], [w, 1], [-w, 1], [-w, w], [-1, w], [-1, -w], [-w, -w]]
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


def _rot(theta: float) -> np.ndarray:
    c, s = math.cos(theta), math.sin(theta)
    return np.array([[c, -s], [s, c]])


def _poly_area(p: np.ndarray) -> float:
    x, y = p[:, 0], p[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


# ----------------------------------------------------------------------------- plan
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
                theta = math.radians(rng.uniform(-20, 20)) + (math.pi / 2 if fam == "bar" and rng.random() < 0.5 else 0)
                poly = (_UNIT[fam] * (s / 2)) @ _rot(theta).T
                lo, hi = poly.min(0), poly.max(0)
                if np.any(hi - lo > size - 2):
                    break
                cx = rng.uniform(1 - lo[0], size - 1 - hi[0])
                cy = rng.uniform(1 - lo[1], size - 1 - hi[1])
                p = np.round(poly + [cx, cy], 2)
                x0, y0 = p.min(0)
                x1, y1 = p.max(0)
                if all(x0 > bx1 + 1 or x1 < bx0 - 1 or y0 > by1 + 1 or y1 < by0 - 1 for bx0, by0, bx1, by1 in boxes):
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
    out = {"config": cfg, "seed": seed, "specs": specs, "targets": targets, "objects": {}, "dropped": 0}

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
                        bbox=[float(x0), float(y0), round(float(x1 - x0), 2), round(float(y1 - y0), 2)],
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
                    neg_category_ids=[s["id"] for s in sorted(specs, key=lambda s: s["id"]) if s["id"] not in present],
                    not_exhaustive_category_ids=[],
                )
            )
            objects.append(placed)
        per_split[split] = (images, anns)
        out["objects"][split] = objects

    missing = {s["id"] for s in specs} - {a["category_id"] for a in per_split["val"][1]}
    if missing:
        raise ValueError(f"val too small for all classes (missing ids {sorted(missing)}): "
                         "raise num_val_images or lower val_instances_per_class")
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
                frequency="r" if n <= _LVIS_R_MAX else ("c" if n <= _LVIS_C_MAX else "f"),
                image_count=n,
                instance_count=inst_c[s["id"]],
                family=s["family"],
                texture=s["texture"],
                lvis_source=dict(
                    rank=t["lvis_rank"], id=t["lvis_id"], name=t["lvis_name"], frequency=t["lvis_frequency"],
                    image_count=t["lvis_image_count"], instance_count=t["lvis_instance_count"],
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
        out[split] = dict(info=dict(info, split=split), licenses=[], images=images, annotations=anns, categories=cats)
    return out


# ----------------------------------------------------------------------------- render
def _hsv_to_rgb(h, s, v):
    h = (h % 360) / 60.0
    c = v * s
    x = c * (1 - abs(h % 2 - 1))
    m = v - c
    r, g, b = [(c, x, 0), (x, c, 0), (0, c, x), (0, x, c), (x, 0, c), (c, 0, x)][int(h) % 6]
    return np.array([r + m, g + m, b + m]) * 255.0


def _background(rng, size: int) -> np.ndarray:
    base = _hsv_to_rgb(rng.uniform(0, 360), rng.uniform(0.0, 0.3), rng.uniform(0.25, 0.75))
    img = np.empty((size, size, 3), np.float32)
    img[:] = base
    # smooth low-frequency variation
    lo = rng.normal(0, 14, (4, 4, 3)).astype(np.float32)
    for c in range(3):
        img[..., c] += np.asarray(Image.fromarray(lo[..., c], mode="F").resize((size, size), Image.BILINEAR))
    # linear illumination gradient
    g = rng.normal(0, 12, 2)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
    img += (g[0] * xx + g[1] * yy)[..., None]
    # faint clutter lines
    n_lines = int(rng.integers(0, 4))
    if n_lines:
        layer = Image.new("L", (size, size), 0)
        d = ImageDraw.Draw(layer)
        for _ in range(n_lines):
            pts = [tuple(rng.uniform(0, size, 2)) for _ in range(2)]
            d.line(pts, fill=255, width=int(rng.integers(1, 3)))
        a = np.asarray(layer, np.float32)[..., None] / 255.0 * rng.uniform(0.15, 0.35)
        col = _hsv_to_rgb(rng.uniform(0, 360), rng.uniform(0, 0.4), rng.uniform(0.2, 0.9))
        img = img * (1 - a) + col * a
    return img


def _draw_object(img: np.ndarray, o: dict, family: str, texture: str, rng, ss: int = 4) -> None:
    size = img.shape[0]
    p = o["poly"]
    x0, y0 = np.floor(p.min(0)).astype(int)
    x1, y1 = np.ceil(p.max(0)).astype(int)
    x0, y0 = max(x0, 0), max(y0, 0)
    x1, y1 = min(x1, size), min(y1, size)
    w, h = x1 - x0, y1 - y0
    m = Image.new("L", (w * ss, h * ss), 0)
    d = ImageDraw.Draw(m)
    d.polygon([((x - x0) * ss, (y - y0) * ss) for x, y in p], fill=255)
    if family == "ring":
        cx, cy = o["center"]
        inner = _UNIT["ring"] * (o["size"] / 2 * _RING_INNER) + [cx, cy]
        d.polygon([((x - x0) * ss, (y - y0) * ss) for x, y in inner], fill=0)
    alpha = np.asarray(m.resize((w, h), Image.BOX), np.float32)[..., None] / 255.0

    # local (object) frame coordinates of pixel centres
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32) + 0.5
    dx, dy = xx - o["center"][0], yy - o["center"][1]
    c, s = math.cos(o["theta"]), math.sin(o["theta"])
    u, v = c * dx + s * dy, -s * dx + c * dy
    col = _hsv_to_rgb(o["hue"], o["sat"], o["val"]).astype(np.float32)
    light = col * 0.35 + 255.0 * 0.65
    dark = col * 0.4
    size_px = o["size"]
    phase = rng.uniform(0, 100)
    if texture == "solid":
        t = np.zeros_like(u)
        alt = col
    elif texture == "striped":
        per = max(3.0, size_px / 5)
        t = (np.floor(u / per + phase) % 2).astype(np.float32)
        alt = dark
    elif texture == "checkered":
        cell = max(3.0, size_px / 5)
        t = ((np.floor(u / cell + phase) + np.floor(v / cell + phase)) % 2).astype(np.float32)
        alt = light
    elif texture == "dotted":
        per = max(4.0, size_px / 4)
        fu = (u / per + phase) % 1 - 0.5
        fv = (v / per + phase) % 1 - 0.5
        t = (fu * fu + fv * fv < 0.09).astype(np.float32)
        alt = light
    else:
        raise KeyError(texture)
    fill = col * (1 - t[..., None]) + alt * t[..., None]
    sh = rng.normal(0, 0.12, 2)
    fill = fill * (1 + (sh[0] * u + sh[1] * v)[..., None] / max(size_px, 1))
    reg = img[y0:y1, x0:x1]
    img[y0:y1, x0:x1] = reg * (1 - alpha) + fill * alpha


def _render_image(seed: int, split: str, image_id: int, objs, specs, size: int) -> np.ndarray:
    rng = np.random.default_rng([seed, _SPLIT_INDEX[split], image_id, 7])
    img = _background(rng, size)
    for o in objs:
        sp = specs[o["k"]]
        _draw_object(img, o, sp["family"], sp["texture"], rng)
    img += rng.normal(0, rng.uniform(2, 6), img.shape).astype(np.float32)
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def _write_dataset(plan: dict, out_dir: Path) -> None:
    cfg = plan["config"]
    for split in ("train", "val"):
        d = out_dir / split
        d.mkdir(parents=True, exist_ok=True)
        for im, objs in zip(plan[split]["images"], plan["objects"][split]):
            arr = _render_image(plan["seed"], split, im["id"], objs, plan["specs"], cfg["image_size"])
            Image.fromarray(arr).save(d / im["file_name"], quality=cfg["jpeg_quality"], subsampling=0)
        with open(out_dir / f"lt_shapes_{split}.json", "w") as f:
            json.dump(plan[split], f, separators=(",", ":"))


# ----------------------------------------------------------------------------- public API
class CacheDirError(PermissionError):
    """The cache folder cannot be written (the message names ``LT_DETECTRON_CACHE`` and the fix)."""


def cache_base() -> str:
    """``$LT_DETECTRON_CACHE``, default ``~/.cache/lt_detectron`` (not created here)."""
    return os.environ.get("LT_DETECTRON_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "lt_detectron")


def _cache_dir_error(path, e: OSError) -> CacheDirError:
    env = os.environ.get("LT_DETECTRON_CACHE")
    return CacheDirError(
        "cannot write the lt_detectron cache folder %s (%s: %s). The cache is $LT_DETECTRON_CACHE (%s); "
        "point it to a writable folder, e.g. `export LT_DETECTRON_CACHE=/tmp/lt_detectron_cache`, or fix "
        "the folder's permissions." % (os.path.abspath(str(path)), type(e).__name__, e.strerror or e,
                                      "set to %r" % env if env else "unset, so ~/.cache/lt_detectron")
    )


def ensure_cache_dir(path) -> Path:
    """``mkdir -p path`` and check it is writable; :class:`CacheDirError` otherwise."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _cache_dir_error(path, e) from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise _cache_dir_error(path, PermissionError(13, "not writable"))
    return path


STALE_TEMP_AGE_S = 3600.0  # a temporary folder untouched this long is stale even if its pid lives


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # exists (another user's), or not a pid we can judge
    return True


def cleanup_stale_temp(root, max_age_s: float = STALE_TEMP_AGE_S, min_age_s: float = 60.0) -> List[str]:
    """Remove temporary siblings ``.{root.name}.tmp-{pid}-{hex}`` left by killed generations.

    A folder is stale when its process is gone (and it is older than ``min_age_s``, so a
    generation on another machine sharing the folder is not hit at once) or when it was not
    modified for ``max_age_s``. Returns the removed paths.
    """
    root = Path(root)
    removed = []
    if not root.parent.is_dir():
        return removed
    prefix = ".%s.tmp-" % root.name
    now = time.time()
    for p in root.parent.iterdir():
        if not p.name.startswith(prefix) or not p.is_dir():
            continue
        try:
            pid = int(p.name[len(prefix):].split("-")[0])
        except ValueError:
            pid = -1
        try:
            age = now - p.stat().st_mtime
        except OSError:
            continue
        if age > max_age_s or (age > min_age_s and not (pid > 0 and _pid_alive(pid))):
            shutil.rmtree(p, ignore_errors=True)
            if not p.exists():
                removed.append(str(p))
    return removed


def default_cache_root(seed: int = 0) -> Path:
    """``$LT_DETECTRON_CACHE/lt_shapes_{VERSION}_seed{seed}`` (default base ``~/.cache/lt_detectron``)."""
    return Path(cache_base()) / f"lt_shapes_{VERSION}_seed{seed}"


def lt_shapes_paths(root) -> Dict[str, str]:
    root = Path(root)
    return dict(
        root=str(root),
        train_json=str(root / "lt_shapes_train.json"),
        val_json=str(root / "lt_shapes_val.json"),
        train_images=str(root / "train"),
        val_images=str(root / "val"),
    )


def _is_complete(root: Path) -> bool:
    p = lt_shapes_paths(root)
    return all(os.path.isfile(p[k]) for k in ("train_json", "val_json")) and all(
        os.path.isdir(p[k]) for k in ("train_images", "val_images")
    )


def generate_lt_shapes(root, seed: int = 0, overwrite: bool = False, preview: bool = False, **cfg) -> Dict[str, str]:
    """Generate the dataset into ``root`` (atomically) and return :func:`lt_shapes_paths`.

    Written to a temporary sibling folder, renamed to ``root`` only when complete: an
    interrupted generation never leaves a partial ``root``. ``cfg`` overrides :data:`DEFAULTS`.
    """
    root = Path(root)
    if root.exists():
        if not overwrite:
            raise FileExistsError(f"{root} exists (use overwrite=True)")
    plan = plan_lt_shapes(seed, **cfg)
    ensure_cache_dir(root.parent)
    for p in cleanup_stale_temp(root):
        logging.getLogger(__name__).warning("removed the temporary folder of an interrupted generation: %s", p)
    tmp = root.parent / f".{root.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        try:
            tmp.mkdir()
        except OSError as e:
            raise _cache_dir_error(root.parent, e) from None
        _write_dataset(plan, tmp)
        if preview:
            render_preview(tmp, tmp / "preview.png")
            render_class_strip(tmp, tmp / "classes.png")
        if root.exists() and overwrite:
            shutil.rmtree(root)
        try:
            os.rename(tmp, root)
        except OSError:
            if _is_complete(root):  # a concurrent generation finished first
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return lt_shapes_paths(root)


def get_lt_shapes(root=None, seed: int = 0) -> str:
    """Return the dataset folder (default :func:`default_cache_root`), generating it with the
    default options on first use. The json files are ``lt_shapes_{train,val}.json`` in it."""
    root = Path(root) if root is not None else default_cache_root(seed)
    if not _is_complete(root):
        if root.exists():
            if any(root.iterdir()):
                raise FileExistsError(f"{root} exists, is not empty and holds no complete lt_shapes dataset")
            root.rmdir()
        generate_lt_shapes(root, seed=seed)
    return str(root)


# ----------------------------------------------------------------------------- summary
def lt_shapes_summary(root) -> List[dict]:
    """Per-class rows recomputed from the json annotations (sorted by train instances, desc)."""
    p = lt_shapes_paths(root)
    data = {s: json.load(open(p[f"{s}_json"])) for s in ("train", "val")}
    rows = []
    counts = {}
    for s, d in data.items():
        inst = Counter(a["category_id"] for a in d["annotations"])
        imgs = defaultdict(set)
        for a in d["annotations"]:
            imgs[a["category_id"]].add(a["image_id"])
        counts[s] = (inst, {k: len(v) for k, v in imgs.items()})
    for c in data["train"]["categories"]:
        cid = c["id"]
        rows.append(
            dict(
                id=cid,
                name=c["name"],
                family=c.get("family", ""),
                texture=c.get("texture", ""),
                frequency=c["frequency"],
                train_images=counts["train"][1].get(cid, 0),
                train_instances=counts["train"][0].get(cid, 0),
                val_images=counts["val"][1].get(cid, 0),
                val_instances=counts["val"][0].get(cid, 0),
                lvis_name=c.get("lvis_source", {}).get("name", ""),
                lvis_instances=c.get("lvis_source", {}).get("instance_count", 0),
            )
        )
    rows.sort(key=lambda r: (-r["train_instances"], r["id"]))
    return rows


def band_summary(rows: List[dict]) -> List[dict]:
    """Per band (f, c, r, total): classes, train images (summed over classes), train/val instances."""
    out = []
    for band in ("f", "c", "r", "all"):
        rs = [r for r in rows if band == "all" or r["frequency"] == band]
        out.append(
            dict(
                band=band,
                classes=len(rs),
                train_images=sum(r["train_images"] for r in rs),
                train_instances=sum(r["train_instances"] for r in rs),
                val_instances=sum(r["val_instances"] for r in rs),
            )
        )
    return out


def format_summary(rows: List[dict], root=None) -> str:
    lines = [
        f"{'id':>3} {'name':<18} {'family':<9} {'band':<4} {'tr_img':>6} {'tr_inst':>7} {'val_inst':>8}  lvis class (instances)",
    ]
    for r in rows:
        lines.append(
            f"{r['id']:>3} {r['name']:<18} {r['family']:<9} {r['frequency']:<4} {r['train_images']:>6} "
            f"{r['train_instances']:>7} {r['val_instances']:>8}  {r['lvis_name']} ({r['lvis_instances']})"
        )
    lines.append("")
    lines.append(f"{'band':<5} {'classes':>7} {'train_img*':>10} {'train_inst':>10} {'val_inst':>8}")
    for b in band_summary(rows):
        lines.append(
            f"{b['band']:<5} {b['classes']:>7} {b['train_images']:>10} {b['train_instances']:>10} {b['val_instances']:>8}"
        )
    lines.append("(*train_img: per-class image counts summed over the band's classes)")
    if root is not None:
        p = lt_shapes_paths(root)
        for s in ("train", "val"):
            d = json.load(open(p[f"{s}_json"]))
            lines.append(f"{s}: {len(d['images'])} images, {len(d['annotations'])} instances")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- previews
def _cat_maps(d):
    return {c["id"]: c for c in d["categories"]}


def render_preview(root, out=None, n: int = 16, cols: int = 4, scale: int = 2) -> str:
    """Grid of the first ``n`` train images with boxes and class names."""
    p = lt_shapes_paths(root)
    d = json.load(open(p["train_json"]))
    cats = _cat_maps(d)
    by_img = defaultdict(list)
    for a in d["annotations"]:
        by_img[a["image_id"]].append(a)
    ims = d["images"][:n]
    H, W = ims[0]["height"] * scale, ims[0]["width"] * scale
    rows = int(math.ceil(len(ims) / cols))
    canvas = Image.new("RGB", (cols * (W + 4), rows * (H + 4)), (255, 255, 255))
    colors = {"f": (0, 200, 0), "c": (255, 200, 0), "r": (255, 0, 0)}
    for i, im in enumerate(ims):
        img = Image.open(os.path.join(p["train_images"], im["file_name"])).convert("RGB").resize((W, H), Image.NEAREST)
        dr = ImageDraw.Draw(img)
        for a in by_img[im["id"]]:
            x, y, w, h = [v * scale for v in a["bbox"]]
            c = cats[a["category_id"]]
            dr.rectangle([x, y, x + w, y + h], outline=colors[c["frequency"]])
            dr.text((x + 1, max(0, y - 10)), c["name"], fill=colors[c["frequency"]])
        canvas.paste(img, ((i % cols) * (W + 4), (i // cols) * (H + 4)))
    out = str(out or os.path.join(p["root"], "preview.png"))
    canvas.save(out)
    return out


def render_class_strip(root, out=None, per_class: int = 6, cell: int = 48) -> str:
    """One row per class (sorted by train instances): name, band, and up to ``per_class`` train crops."""
    p = lt_shapes_paths(root)
    d = json.load(open(p["train_json"]))
    cats = _cat_maps(d)
    files = {im["id"]: im["file_name"] for im in d["images"]}
    crops = defaultdict(list)
    for a in d["annotations"]:
        if len(crops[a["category_id"]]) < per_class:
            crops[a["category_id"]].append(a)
    order = sorted(cats, key=lambda c: -cats[c]["instance_count"])
    label_w = 150
    canvas = Image.new("RGB", (label_w + per_class * (cell + 2), len(order) * (cell + 2)), (255, 255, 255))
    dr = ImageDraw.Draw(canvas)
    cache = {}
    for r, cid in enumerate(order):
        c = cats[cid]
        dr.text((2, r * (cell + 2) + cell // 2 - 10), f"{c['name']}", fill=(0, 0, 0))
        dr.text((2, r * (cell + 2) + cell // 2 + 2), f"{c['frequency']}  {c['image_count']} img", fill=(90, 90, 90))
        for j, a in enumerate(crops[cid]):
            fn = files[a["image_id"]]
            if fn not in cache:
                cache[fn] = Image.open(os.path.join(p["train_images"], fn)).convert("RGB")
            x, y, w, h = a["bbox"]
            m = 2
            crop = cache[fn].crop((int(x) - m, int(y) - m, int(math.ceil(x + w)) + m, int(math.ceil(y + h)) + m))
            crop = crop.resize((cell, cell), Image.NEAREST)
            canvas.paste(crop, (label_w + j * (cell + 2), r * (cell + 2)))
    out = str(out or os.path.join(p["root"], "classes.png"))
    canvas.save(out)
    return out


# ----------------------------------------------------------------------------- CLI
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Generate / summarise the embedded lt_shapes dataset.")
    ap.add_argument("--root", default=None, help="dataset folder (default: $LT_DETECTRON_CACHE/lt_shapes_<ver>_seed<seed>)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--preview", action="store_true", help="also write preview.png and classes.png into the folder")
    ap.add_argument("--force", action="store_true", help="regenerate even if the folder exists")
    args = ap.parse_args(argv)
    root = Path(args.root) if args.root else default_cache_root(args.seed)
    t0 = time.time()
    if args.force or not _is_complete(root):
        generate_lt_shapes(root, seed=args.seed, overwrite=True)
        print(f"generated {root} in {time.time() - t0:.1f}s")
    else:
        print(f"using existing {root}")
    if args.preview:
        print("wrote", render_preview(root), "and", render_class_strip(root))
    print(format_summary(lt_shapes_summary(root), root))
    return 0


if __name__ == "__main__":
    sys.exit(main())
