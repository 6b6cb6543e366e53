"""Dataset registration: any COCO- or LVIS-format json, LVIS v1/v0.5, COCO-LT and the embedded set.

``register_lt_dataset(name, json_file, image_root)`` is the one call a user needs for their
own data. The json is read lazily (when the dataset is first used), validated with clear
errors, and its class statistics are computed automatically by the class-statistics registry.
"""
import json
import logging
import os
import time
from typing import Dict, List, Optional

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

__all__ = [
    "DatasetFormatError",
    "load_lt_json",
    "register_lt_dataset",
    "read_categories",
]

logger = logging.getLogger(__name__)


class DatasetFormatError(ValueError):
    """An annotation file is missing or malformed (the message names the file and the fix)."""


def _read_json(json_file: str) -> dict:
    if not os.path.isfile(json_file):
        raise DatasetFormatError(
            "annotation file %s does not exist. Check the path given at registration (for the "
            "builtin datasets: $DETECTRON2_DATASETS, see datasets/README.md)" % json_file
        )
    try:
        with open(json_file) as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetFormatError(
            "annotation file %s is not valid json (%s). Re-download or regenerate it." % (json_file, e)
        ) from None
    if not isinstance(data, dict):
        raise DatasetFormatError("annotation file %s must hold a json object with 'images', 'annotations' and 'categories'" % json_file)
    missing = [k for k in ("images", "annotations", "categories") if k not in data]
    if missing:
        raise DatasetFormatError(
            "annotation file %s lacks the key(s) %s: a COCO/LVIS-format file has 'images', "
            "'annotations' and 'categories'" % (json_file, ", ".join(missing))
        )
    return data


def read_categories(data: dict, json_file: str = "<json>"):
    """Sorted categories and the dataset-id -> contiguous-id map."""
    cats = sorted(data["categories"], key=lambda c: c["id"])
    if not cats:
        raise DatasetFormatError("annotation file %s has no categories" % json_file)
    ids = [c["id"] for c in cats]
    if len(set(ids)) != len(ids):
        raise DatasetFormatError("annotation file %s has duplicate category ids" % json_file)
    return cats, {cid: i for i, cid in enumerate(ids)}


def load_lt_json(json_file: str, image_root: str, dataset_name: Optional[str] = None) -> List[Dict]:
    """Load a COCO- or LVIS-format json into Detectron2 dataset dicts.

    Category ids become contiguous ids ``0..C-1`` in the order of the category ids. LVIS
    fields ``neg_category_ids`` and ``not_exhaustive_category_ids`` are kept (as dataset ids,
    as Detectron2 does). When ``dataset_name`` is given, its metadata gets ``thing_classes``
    and ``thing_dataset_id_to_contiguous_id``.
    """
    t0 = time.perf_counter()
    data = _read_json(json_file)
    cats, id_map = read_categories(data, json_file)
    if dataset_name is not None:
        meta = MetadataCatalog.get(dataset_name)
        names = [c.get("name", str(c["id"])) for c in cats]
        if "thing_classes" in meta.as_dict():
            if list(meta.thing_classes) != names:
                raise DatasetFormatError(
                    "dataset %r: metadata.thing_classes (%d names) differs from the categories of %s "
                    "(%d)" % (dataset_name, len(meta.thing_classes), json_file, len(names))
                )
        else:
            meta.set(thing_classes=names, thing_dataset_id_to_contiguous_id=id_map)
    anns_per_image: Dict[int, list] = {}
    for a in data["annotations"]:
        anns_per_image.setdefault(a["image_id"], []).append(a)
    image_ids = set()
    dicts = []
    for img in data["images"]:
        image_ids.add(img["id"])
        file_name = img.get("file_name")
        if file_name is None:
            url = img.get("coco_url")
            if url is None:
                raise DatasetFormatError("image %s in %s has neither 'file_name' nor 'coco_url'" % (img.get("id"), json_file))
            file_name = "/".join(url.split("/")[-2:])  # LVIS v1: train2017/xxx.jpg
        elif file_name.startswith("COCO_") and len(file_name) > 16:
            file_name = file_name[-16:]  # LVIS v0.5: COCO_val2014_000000xxxxxx.jpg
        record = {
            "file_name": os.path.join(image_root, file_name),
            "height": img["height"],
            "width": img["width"],
            "image_id": img["id"],
        }
        if "neg_category_ids" in img:
            record["neg_category_ids"] = img["neg_category_ids"]
            record["not_exhaustive_category_ids"] = img.get("not_exhaustive_category_ids", [])
        objs = []
        for a in anns_per_image.get(img["id"], ()):
            cid = a["category_id"]
            if cid not in id_map:
                raise DatasetFormatError(
                    "annotation %s in %s has category_id %s, which is missing from 'categories'. "
                    "Add the category or drop its annotations." % (a.get("id"), json_file, cid)
                )
            bbox = a.get("bbox")
            if bbox is None or len(bbox) != 4:
                raise DatasetFormatError("annotation %s in %s has no valid 'bbox' [x, y, w, h]" % (a.get("id"), json_file))
            obj = {"bbox": bbox, "bbox_mode": BoxMode.XYWH_ABS, "category_id": id_map[cid]}
            if a.get("iscrowd", 0):
                obj["iscrowd"] = 1
            seg = a.get("segmentation")
            if seg:
                if isinstance(seg, list):
                    seg = [p for p in seg if len(p) % 2 == 0 and len(p) >= 6]
                    if not seg:
                        seg = None
                if seg is not None:
                    obj["segmentation"] = seg
            objs.append(obj)
        record["annotations"] = objs
        dicts.append(record)
    orphans = set(anns_per_image) - image_ids
    if orphans:
        raise DatasetFormatError(
            "%d annotation(s) in %s refer to image ids missing from 'images' (e.g. %s)"
            % (sum(len(anns_per_image[i]) for i in orphans), json_file, next(iter(orphans)))
        )
    logger.info("loaded %d images, %d annotations from %s in %.2fs", len(dicts), len(data["annotations"]), json_file, time.perf_counter() - t0)
    return dicts


def _is_lvis_format(json_file: str) -> Optional[bool]:
    """LVIS json files carry 'frequency' on categories; peek without parsing a huge file fully."""
    if not os.path.isfile(json_file):
        return None
    with open(json_file) as f:
        head = f.read(1 << 20)
    return '"frequency"' in head or '"neg_category_ids"' in head


def register_lt_dataset(
    name: str,
    json_file: str,
    image_root: str,
    evaluator_type: Optional[str] = None,
    **metadata,
):
    """Register a COCO- or LVIS-format dataset; its class statistics are counted automatically.

    Args:
        name: the dataset name used in ``cfg.DATASETS.TRAIN/TEST``.
        json_file: COCO- or LVIS-format annotation file.
        image_root: folder the images' ``file_name`` is relative to.
        evaluator_type: ``"lvis"`` (federated LVIS protocol, APr/APc/APf) or ``"coco_lt"``
            (COCO metrics + AP by training-instance bins). Default: ``"lvis"`` when the file
            carries LVIS fields, else ``"coco_lt"``.
        metadata: extra metadata (e.g. ``class_stats`` to give counts instead of counting).
    """
    if name in DatasetCatalog.list():
        raise ValueError("dataset %r is already registered; pick another name" % name)
    if evaluator_type is None:
        evaluator_type = "lvis" if _is_lvis_format(json_file) else "coco_lt"
    if evaluator_type not in ("lvis", "coco_lt", "coco"):
        raise ValueError("evaluator_type must be 'lvis', 'coco_lt' or 'coco', got %r" % evaluator_type)
    DatasetCatalog.register(name, lambda: load_lt_json(json_file, image_root, name))
    MetadataCatalog.get(name).set(json_file=json_file, image_root=image_root, evaluator_type=evaluator_type, **metadata)
