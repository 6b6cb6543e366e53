"""Per-class and per-band summaries of a generated ``lt_shapes``, recomputed from its jsons."""

import json
from collections import Counter, defaultdict
from typing import List

from .cache import lt_shapes_paths

__all__ = ["lt_shapes_summary", "band_summary", "format_summary"]


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
        f"{'id':>3} {'name':<18} {'family':<9} {'band':<4} {'tr_img':>6} {'tr_inst':>7} "
        f"{'val_inst':>8}  lvis class (instances)",
    ]
    for r in rows:
        lines.append(
            f"{r['id']:>3} {r['name']:<18} {r['family']:<9} {r['frequency']:<4} {r['train_images']:>6} "
            f"{r['train_instances']:>7} {r['val_instances']:>8}  {r['lvis_name']} ({r['lvis_instances']})"
        )
    lines.append("")
    lines.append(
        f"{'band':<5} {'classes':>7} {'train_img*':>10} {'train_inst':>10} {'val_inst':>8}"
    )
    for b in band_summary(rows):
        lines.append(
            f"{b['band']:<5} {b['classes']:>7} {b['train_images']:>10} "
            f"{b['train_instances']:>10} {b['val_instances']:>8}"
        )
    lines.append("(*train_img: per-class image counts summed over the band's classes)")
    if root is not None:
        p = lt_shapes_paths(root)
        for s in ("train", "val"):
            d = json.load(open(p[f"{s}_json"]))
            lines.append(f"{s}: {len(d['images'])} images, {len(d['annotations'])} instances")
    return "\n".join(lines)
