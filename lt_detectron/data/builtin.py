"""Registration of the datasets lt_detectron knows by name (runs on ``import lt_detectron``).

- ``lvis_v1_*`` and ``lvis_v0.5_*``: Detectron2's builtin registration (paths under
  ``$DETECTRON2_DATASETS``), plus ``thing_dataset_id_to_contiguous_id`` and, for the train
  splits, the statistics shipped in ``lt_detectron/data/stats`` (so LVIS runs never count
  1.27M annotations at startup).
- ``coco_lt_train`` / ``coco_lt_val``: COCO-LT (json written by ``datasets/prepare_coco_lt.py``)
  and COCO val2017 evaluated with AP by training-instance bins.
- ``lt_shapes_train`` / ``lt_shapes_val``: the embedded long-tailed dataset, generated on first
  use into a cache folder.

Nothing is read at import: class names of the COCO-LT / lt_shapes datasets are filled from
their jsons by ``ensure_dataset_metadata`` (startup checks, loading), the files' existence is
checked by ``check_dataset_files``. Their ``bad_boxes`` policy is the default, ``"drop"``.
"""

import os

from detectron2.data import DatasetCatalog, MetadataCatalog

from .datasets import load_lt_json

# LVIS train split sizes (images), from the LVIS v1 / v0.5 train annotation files.
LVIS_TRAIN_IMAGES = {"lvis_v1_train": 100170, "lvis_v0.5_train": 57263}


def _datasets_root():
    return os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))


def _attach_lvis_stats():
    from .lvis_stats import load_shipped_stats

    for prefix in ("lvis_v1", "lvis_v0.5"):
        for name in DatasetCatalog.list():
            if not name.startswith(prefix + "_") or "cocofied" in name:
                continue
            meta = MetadataCatalog.get(name)
            C = len(meta.thing_classes)
            meta.set(thing_dataset_id_to_contiguous_id={i + 1: i for i in range(C)})
        train = prefix + "_train"
        if train in DatasetCatalog.list():
            s = load_shipped_stats(train)
            if len(s["id"]) != len(MetadataCatalog.get(train).thing_classes):
                continue  # pragma: no cover - shipped table and detectron2's list disagree
            MetadataCatalog.get(train).set(
                class_stats={
                    "instance_counts": s["instance_count"],
                    "image_counts": s["image_count"],
                    "num_images": LVIS_TRAIN_IMAGES[train],
                    "frequency": s["frequency"],
                }
            )


def _register_coco_lt():
    root = _datasets_root()
    splits = {
        "coco_lt_train": ("coco/annotations/coco_lt_train.json", "coco/train2017"),
        "coco_lt_val": ("coco/annotations/instances_val2017.json", "coco/val2017"),
    }
    for name, (json_rel, img_rel) in splits.items():
        if name in DatasetCatalog.list():
            continue
        json_file, image_root = os.path.join(root, json_rel), os.path.join(root, img_rel)
        DatasetCatalog.register(
            name, lambda j=json_file, r=image_root, n=name: load_lt_json(j, r, n)
        )
        MetadataCatalog.get(name).set(
            json_file=json_file, image_root=image_root, evaluator_type="coco_lt"
        )


def _register_embedded():
    from .embedded import default_cache_root, get_lt_shapes, lt_shapes_paths

    for split in ("train", "val"):
        name = "lt_shapes_" + split
        if name in DatasetCatalog.list():
            continue

        def load(split=split, name=name):
            paths = lt_shapes_paths(get_lt_shapes())  # generates on first use
            return load_lt_json(paths[split + "_json"], paths[split + "_images"], name)

        paths = lt_shapes_paths(default_cache_root())
        MetadataCatalog.get(name).set(
            json_file=paths[split + "_json"],
            image_root=paths[split + "_images"],
            evaluator_type="lvis",
        )
        DatasetCatalog.register(name, load)


def register_all():
    _attach_lvis_stats()
    _register_coco_lt()
    _register_embedded()
