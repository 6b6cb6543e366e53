"""The pixels of ``lt_shapes``: one image per plan entry, from its own random generator
(``seed``, split, image id), so any image can be rendered alone."""

import json
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .spec import _RING_INNER, _SPLIT_INDEX, _UNIT

__all__ = ["write_dataset"]


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
        img[..., c] += np.asarray(
            Image.fromarray(lo[..., c], mode="F").resize((size, size), Image.BILINEAR)
        )
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


def write_dataset(plan: dict, out_dir: Path) -> None:
    """Render the images of ``plan`` (:func:`~.plan.plan_lt_shapes`) and write them and the jsons under ``out_dir``."""
    cfg = plan["config"]
    for split in ("train", "val"):
        d = out_dir / split
        d.mkdir(parents=True, exist_ok=True)
        for im, objs in zip(plan[split]["images"], plan["objects"][split]):
            arr = _render_image(
                plan["seed"], split, im["id"], objs, plan["specs"], cfg["image_size"]
            )
            Image.fromarray(arr).save(
                d / im["file_name"], quality=cfg["jpeg_quality"], subsampling=0
            )
        with open(out_dir / f"lt_shapes_{split}.json", "w") as f:
            json.dump(plan[split], f, separators=(",", ":"))
