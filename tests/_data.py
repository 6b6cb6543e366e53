"""Small COCO/LVIS-format datasets written by tests."""

import json
import os
import uuid

import numpy as np


def write_coco_json(
    path,
    counts,
    images_per_class=None,
    lvis=False,
    seed=0,
    image_size=64,
    num_images=None,
    write_images=False,
):
    """A json whose class ``c`` (id ``10 + 3c``, non-contiguous on purpose) has ``counts[c]``
    annotations spread over ``images_per_class[c]`` images (default: one image each). ``lvis``: LVIS
    fields, the images' ``neg_category_ids`` and the categories' ``frequency`` (LVIS' rule on the
    class's image count)."""
    rng = np.random.default_rng(seed)
    C = len(counts)
    images_per_class = images_per_class or [None] * C
    cats = [{"id": 10 + 3 * c, "name": "class_%d" % c} for c in range(C)]
    if lvis:
        for c, n in enumerate(counts):
            k = min(images_per_class[c] or n, n)
            cats[c]["frequency"] = "r" if k <= 10 else ("c" if k <= 100 else "f")
    per_image = {}
    img_id = 1
    for c, n in enumerate(counts):
        k = images_per_class[c] or n
        ids = list(range(img_id, img_id + k)) if n else []
        img_id += k
        for j in range(n):
            per_image.setdefault(ids[j % k], []).append(c)
    total = num_images or (img_id - 1)
    images, anns = [], []
    aid = 1
    for i in range(1, total + 1):
        images.append(
            {"id": i, "file_name": "%06d.png" % i, "height": image_size, "width": image_size}
        )
        if lvis:
            present = {10 + 3 * c for c in per_image.get(i, [])}
            images[-1]["neg_category_ids"] = [c["id"] for c in cats if c["id"] not in present][:3]
            images[-1]["not_exhaustive_category_ids"] = []
        for c in per_image.get(i, []):
            x, y = rng.uniform(0, image_size / 2, 2)
            w, h = rng.uniform(4, image_size / 2, 2)
            anns.append(
                {
                    "id": aid,
                    "image_id": i,
                    "category_id": 10 + 3 * c,
                    "bbox": [x, y, w, h],
                    "area": w * h,
                    "iscrowd": 0,
                    "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]],
                }
            )
            aid += 1
    data = {"images": images, "annotations": anns, "categories": cats}
    with open(path, "w") as f:
        json.dump(data, f)
    if write_images:
        from PIL import Image

        root = os.path.dirname(path)
        for im in images:
            arr = rng.integers(0, 255, (image_size, image_size, 3), dtype=np.uint8)
            Image.fromarray(arr).save(os.path.join(root, im["file_name"]))
    return data


def unique_name(prefix="t"):
    return "%s_%s" % (prefix, uuid.uuid4().hex[:8])


def unregister(*names):
    from detectron2.data import DatasetCatalog, MetadataCatalog

    for n in names:
        if n in DatasetCatalog.list():
            DatasetCatalog.remove(n)
        if n in MetadataCatalog.list():
            MetadataCatalog.remove(n)


def touch_images(json_file, image_root):
    """Empty files where a COCO/LVIS json's images are (``file_name``, else ``<split>/<file>`` of
    ``coco_url``), for tests that load training dicts (the trainer checks that the images exist)
    but read no pixel."""
    with open(json_file) as f:
        images = json.load(f)["images"]
    for im in images:
        rel = im.get("file_name") or "/".join(im["coco_url"].split("/")[-2:])
        path = os.path.join(image_root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        open(path, "ab").close()
