"""Pictures of a generated ``lt_shapes``: a grid of train images with their boxes, and one row of
crops per class."""

import json
import math
import os
from collections import defaultdict

from PIL import Image, ImageDraw

from .cache import lt_shapes_paths

__all__ = ["render_preview", "render_class_strip"]


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
        img = (
            Image.open(os.path.join(p["train_images"], im["file_name"]))
            .convert("RGB")
            .resize((W, H), Image.NEAREST)
        )
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
    canvas = Image.new(
        "RGB", (label_w + per_class * (cell + 2), len(order) * (cell + 2)), (255, 255, 255)
    )
    dr = ImageDraw.Draw(canvas)
    cache = {}
    for r, cid in enumerate(order):
        c = cats[cid]
        dr.text((2, r * (cell + 2) + cell // 2 - 10), f"{c['name']}", fill=(0, 0, 0))
        dr.text(
            (2, r * (cell + 2) + cell // 2 + 2),
            f"{c['frequency']}  {c['image_count']} img",
            fill=(90, 90, 90),
        )
        for j, a in enumerate(crops[cid]):
            fn = files[a["image_id"]]
            if fn not in cache:
                cache[fn] = Image.open(os.path.join(p["train_images"], fn)).convert("RGB")
            x, y, w, h = a["bbox"]
            m = 2
            crop = cache[fn].crop(
                (int(x) - m, int(y) - m, int(math.ceil(x + w)) + m, int(math.ceil(y + h)) + m)
            )
            crop = crop.resize((cell, cell), Image.NEAREST)
            canvas.paste(crop, (label_w + j * (cell + 2), r * (cell + 2)))
    out = str(out or os.path.join(p["root"], "classes.png"))
    canvas.save(out)
    return out
