"""Small COCO/LVIS-format datasets written by tests, and the evaluator tests' categories and ground
truth."""

import json
import os
import uuid

import numpy as np

# the repository root (tests/ is one level below it)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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


def datasets_cfg(train, test=()):
    """A config (``lt_cfg``) with ``DATASETS.TRAIN`` / ``DATASETS.TEST`` set."""
    from lt_detectron.utils.testing import lt_cfg

    cfg = lt_cfg()
    cfg.DATASETS.TRAIN = tuple(train)
    cfg.DATASETS.TEST = tuple(test)
    return cfg


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


# ------------------------------------------------------------------ evaluator tests
IMAGE_SIZE = (96, 128)  # of the generated evaluation images


def eval_categories():
    """36 LVIS-style categories (ids 2, 4, ..., 72), bands r/c/f in turn, with training counts."""
    rng = np.random.default_rng(3)
    cats = []
    for i in range(1, 37):
        freq = "rcf"[i % 3]
        img = {"r": 5, "c": 50, "f": 500}[freq] + int(rng.integers(0, 5))
        inst = int(img * (1 + (i % 4)) + (2000 if i % 7 == 0 else 0))
        cats.append(
            {
                "id": i * 2,
                "name": f"cls{i}",
                "frequency": freq,
                "image_count": img,
                "instance_count": inst,
            }
        )
    return cats


class FakeStats:
    """Stand-in for lt_detectron.class_stats.ClassStats (only what evaluators read)."""

    def __init__(self, cats):
        self.dataset_ids = tuple(c["id"] for c in cats)
        self.class_names = tuple(c["name"] for c in cats)
        self.num_classes = len(cats)
        self.instance_counts = np.array([c["instance_count"] for c in cats], np.int64)
        self.image_counts = np.array([c["image_count"] for c in cats], np.int64)

    def instance_groups(self, edges=(10, 100, 1000), drop_empty=True):
        bounds = [0] + list(edges) + [float("inf")]
        out = []
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            ids = np.nonzero((self.instance_counts >= lo) & (self.instance_counts < hi))[0]
            if len(ids) or not drop_empty:
                out.append((lo, hi, ids))
        return out


def coco_eval_gt(num_images=16, with_masks=False):
    """A COCO-format ground truth of 11 classes whose training counts fill the COCO-LT bins
    (one bin empty, one class without instances): ``(gt, categories with counts)``."""
    from lt_detectron.utils.testing import make_lvis_like_gt

    # training counts: bins [1,10) 3 classes, [10,100) 4, [100,1000) 0 (empty), [1000,inf) 3, 0 instances: 1
    inst = [2, 5, 9, 10, 40, 60, 99, 1000, 4000, 20000, 0]
    cats = [
        {
            "id": 10 + i,
            "name": f"c{i}",
            "supercategory": "x",
            "image_count": max(1, n // 2),
            "instance_count": n,
        }
        for i, n in enumerate(inst)
    ]
    gt = make_lvis_like_gt(
        num_images,
        cats,
        seed=4,
        with_masks=with_masks,
        image_size=IMAGE_SIZE,
        sampling_power=0.0,
        mean_classes_per_image=3,
    )
    for im in gt["images"]:  # plain COCO format
        im.pop("neg_category_ids")
        im.pop("not_exhaustive_category_ids")
    for a in gt["annotations"]:
        a["iscrowd"] = 0
    gt["categories"] = [{"id": c["id"], "name": c["name"], "supercategory": "x"} for c in cats]
    return gt, cats


def lt_shapes_val_subset(out_json, n):
    """The first ``n`` images of the embedded ``lt_shapes`` val split and their annotations, as an
    LVIS-format json written to ``out_json``: returns ``(out_json, image_root)`` (as strings)."""
    from lt_detectron.data.embedded import get_lt_shapes, lt_shapes_paths

    paths = lt_shapes_paths(get_lt_shapes())
    with open(paths["val_json"]) as f:
        data = json.load(f)
    keep = {im["id"] for im in data["images"][:n]}
    data["images"] = [im for im in data["images"] if im["id"] in keep]
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] in keep]
    with open(out_json, "w") as f:
        json.dump(data, f)
    return str(out_json), paths["val_images"]
