"""Dataset registration: any COCO- or LVIS-format json, LVIS v1/v0.5, COCO-LT and the embedded set.

``register_lt_dataset(name, json_file, image_root)`` is the one call a user needs for their
own data. Class names and the dataset-id -> contiguous-id map are read from the json's
``categories`` at registration (cheaply: the json is scanned, not parsed, see
:func:`read_json_categories`), so the Visualizer shows names and nothing is loaded to learn
them. The annotations are read lazily (when the dataset is first used), validated with clear
errors (degenerate boxes: the ``bad_boxes`` policy, see :mod:`lt_detectron.data.validation`),
and the class statistics are counted from them by the class-statistics registry.

Datasets registered with detectron2's own ``register_lvis_instances`` /
``register_coco_instances`` work too: :func:`ensure_dataset_metadata` fills (or checks) their
``thing_classes`` and ``thing_dataset_id_to_contiguous_id`` from the same cheap read.
"""

import logging
import os
import time
from typing import Dict, List, Optional

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

from .image_files import image_relative_path
from .json_categories import (
    JsonCategories,
    categories_are_lvis,
    is_lvis_format,
    read_categories,
    read_json,
    read_json_categories,
)
from .validation import (
    DEFAULT_BAD_BOXES,
    DatasetFormatError,
    check_bad_boxes_policy,
    check_json_annotations,
)

__all__ = [
    "DatasetFormatError",
    "JsonCategories",
    "ensure_dataset_metadata",
    "is_lvis_format",
    "load_lt_json",
    "read_categories",
    "read_json_categories",
    "register_lt_dataset",
]

logger = logging.getLogger(__name__)


def _uses_detectron2_lvis_loader(name: str) -> bool:
    """Registered by detectron2's ``register_lvis_instances`` (its loader is ``load_lvis_json``)."""
    f = DatasetCatalog.data.get(name)  # the registered function (DatasetCatalog.get would call it)
    return getattr(f, "__module__", "") == "detectron2.data.datasets.lvis"


def _names_agree(given: List[str], cats: JsonCategories) -> Optional[int]:
    """First index where ``given`` differs from the json's names (an LVIS synonym also agrees)."""
    for i, (g, c) in enumerate(zip(given, cats.categories)):
        if g != c.get("name", str(c["id"])) and g not in (c.get("synonyms") or ()):
            return i
    if len(given) != len(cats.categories):
        return min(len(given), len(cats.categories))
    return None


def _apply_categories(name: str, cats: JsonCategories):
    """Set (or check) ``thing_classes`` / ``thing_dataset_id_to_contiguous_id`` of ``name``."""
    meta = MetadataCatalog.get(name)
    md = meta.as_dict()
    id_map = cats.id_map
    if (
        name in DatasetCatalog.list()
        and _uses_detectron2_lvis_loader(name)
        and "cocofied" not in name
    ):
        # detectron2's load_lvis_json maps category id -> id - 1 and takes the class names from
        # its builtin LVIS lists, chosen by the dataset's name
        if cats.ids != list(range(1, len(cats.ids) + 1)):
            raise DatasetFormatError(
                "dataset %r is registered with detectron2's register_lvis_instances, whose loader maps "
                "category id c to class c - 1, but the category ids of %s are not 1..%d. Register it with "
                "lt_detectron.data.register_lt_dataset(name, json_file, image_root) instead."
                % (name, os.path.abspath(cats.json_file), len(cats.ids))
            )
        if "thing_classes" not in md:
            from detectron2.data.datasets.lvis import get_lvis_instances_meta

            try:
                builtin = get_lvis_instances_meta(name)["thing_classes"]
            except ValueError:
                raise DatasetFormatError(
                    "dataset %r is registered with detectron2's register_lvis_instances, whose loader "
                    "(load_lvis_json) takes the class names from its builtin LVIS v0.5/v1 lists chosen by the "
                    "dataset's name, and %r names none of them. Register the json with "
                    "lt_detectron.data.register_lt_dataset(name, json_file, image_root), which reads the class "
                    "names from the json (or put 'lvis_v1' / 'lvis_v0.5' in the name if the json has exactly "
                    "those classes)." % (name, name)
                ) from None
            meta.set(thing_classes=list(builtin))
            md = meta.as_dict()
    if "thing_classes" in md:
        i = _names_agree(list(meta.thing_classes), cats)
        if i is not None:
            given = meta.thing_classes[i] if i < len(meta.thing_classes) else "<none>"
            in_json = cats.names[i] if i < len(cats.names) else "<none>"
            raise DatasetFormatError(
                "dataset %r: metadata.thing_classes (%d names) disagrees with the categories of %s (%d, in id "
                "order) at index %d: %r vs %r. Register the dataset without thing_classes (they are read from "
                "the json) or fix the list."
                % (
                    name,
                    len(meta.thing_classes),
                    os.path.abspath(cats.json_file),
                    len(cats.names),
                    i,
                    given,
                    in_json,
                )
            )
    else:
        meta.set(thing_classes=cats.names)
    if "thing_dataset_id_to_contiguous_id" in md:
        if dict(meta.thing_dataset_id_to_contiguous_id) != id_map:
            raise DatasetFormatError(
                "dataset %r: metadata.thing_dataset_id_to_contiguous_id disagrees with the category ids of %s "
                "(expected {id: index} over the sorted ids). Remove it from the registration."
                % (name, os.path.abspath(cats.json_file))
            )
    else:
        meta.set(thing_dataset_id_to_contiguous_id=id_map)
    if "evaluator_type" not in md:
        meta.set(evaluator_type="lvis" if cats.is_lvis else "coco_lt")
    if "json_format" not in md:
        meta.set(json_format="lvis" if cats.is_lvis else "coco")


def ensure_dataset_metadata(name: str, missing_ok: bool = False) -> Optional[JsonCategories]:
    """Fill (or check) the class metadata of any registered dataset that has a ``json_file``.

    Sets ``thing_classes`` (names in category-id order), ``thing_dataset_id_to_contiguous_id``
    (``{id: index}`` over the sorted ids: detectron2's map for COCO, and ``id -> id - 1`` for
    LVIS), ``json_format`` (``"lvis"``/``"coco"``) and, when missing, ``evaluator_type``, from
    the json's categories (read cheaply, :func:`read_json_categories`). When the metadata
    already has them (detectron2's builtin lists, or given at registration) they are checked
    against the json, and a disagreement is a :class:`DatasetFormatError` naming the dataset,
    the file and the first differing index (an LVIS synonym counts as agreeing: detectron2's
    LVIS v1 list names category 162 'horned_cow' where the json says 'bull'). Returns the
    categories, or None when the dataset has no ``json_file`` (or, with ``missing_ok``, when the
    file does not exist; otherwise that is a :class:`DatasetFormatError` with its absolute path).
    """
    meta = MetadataCatalog.get(name)
    json_file = meta.get("json_file", None)
    if not json_file or (missing_ok and not os.path.isfile(json_file)):
        return None
    cats = read_json_categories(json_file)
    _apply_categories(name, cats)
    return cats


def load_lt_json(
    json_file: str,
    image_root: str,
    dataset_name: Optional[str] = None,
    bad_boxes: Optional[str] = None,
) -> List[Dict]:
    """Load a COCO- or LVIS-format json into Detectron2 dataset dicts.

    Category ids become contiguous ids ``0..C-1`` in the order of the category ids. LVIS
    fields ``neg_category_ids`` and ``not_exhaustive_category_ids`` are kept (as dataset ids,
    as Detectron2 does). When ``dataset_name`` is given, its metadata gets (or is checked
    against) ``thing_classes`` and ``thing_dataset_id_to_contiguous_id``. Degenerate boxes are
    handled by ``bad_boxes`` (default: the dataset's metadata ``bad_boxes``, else ``"drop"``;
    see :mod:`lt_detectron.data.validation`). Each image's ``file_name`` is ``image_root`` joined
    with :func:`~lt_detectron.data.image_files.image_relative_path` (see ``register_lt_dataset``).
    """
    t0 = time.perf_counter()
    if bad_boxes is None:
        bad_boxes = (
            MetadataCatalog.get(dataset_name).get("bad_boxes", DEFAULT_BAD_BOXES)
            if dataset_name
            else DEFAULT_BAD_BOXES
        )
    check_bad_boxes_policy(bad_boxes)
    data = read_json(json_file)
    cats, id_map = read_categories(data, json_file)
    is_lvis = categories_are_lvis(cats, json_file)
    if dataset_name is not None:
        _apply_categories(dataset_name, JsonCategories(json_file, tuple(cats), is_lvis))
    image_sizes = {
        img.get("id"): (img.get("height", float("nan")), img.get("width", float("nan")))
        for img in data["images"]
    }
    annotations, _ = check_json_annotations(data["annotations"], image_sizes, json_file, bad_boxes)
    anns_per_image: Dict[int, list] = {}
    for a in annotations:
        anns_per_image.setdefault(a["image_id"], []).append(a)
    image_ids = set()
    dicts = []
    for img in data["images"]:
        image_ids.add(img["id"])
        record = {
            "file_name": os.path.join(image_root, image_relative_path(img, is_lvis, json_file)),
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
                raise DatasetFormatError(
                    "annotation %s in %s has no valid 'bbox' [x, y, w, h]"
                    % (a.get("id"), json_file)
                )
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
    logger.info(
        "loaded %d images, %d annotations from %s in %.2fs",
        len(dicts),
        len(annotations),
        json_file,
        time.perf_counter() - t0,
    )
    return dicts


def register_lt_dataset(
    name: str,
    json_file: str,
    image_root: str,
    evaluator_type: Optional[str] = None,
    bad_boxes: str = DEFAULT_BAD_BOXES,
    **metadata,
):
    """Register a COCO- or LVIS-format dataset; its class statistics are counted automatically.

    Args:
        name: the dataset name used in ``cfg.DATASETS.TRAIN/TEST``.
        json_file: COCO- or LVIS-format annotation file.
        image_root: the folder the json's image paths are relative to, the same folder detectron2's
            own helper takes for that json: for COCO-format (and custom) jsons the folder of the
            images' ``file_name`` (as ``register_coco_instances``; COCO 2014 names are kept); for
            LVIS v0.5 / v1 jsons the folder that holds ``train2017/`` and ``val2017/`` (as
            ``register_lvis_instances``: each image is ``<split>/<file>`` of its ``coco_url``).
            An LVIS-format json whose images carry their own ``file_name`` (not a COCO 2014
            name, e.g. ``lt_shapes``) uses it, relative to ``image_root``. See
            docs/user_guide.md, section 1. Every image is checked to exist before any model is
            built (training images: ``load_train_dicts``; test images: ``prepare_datasets``).
        evaluator_type: ``"lvis"`` (federated LVIS protocol, APr/APc/APf) or ``"coco_lt"``
            (COCO metrics + AP by training-instance bins). Default: ``"lvis"`` when the file
            categories are LVIS's (each carries ``frequency``), else ``"coco_lt"``.
        bad_boxes: what to do with degenerate boxes (non-finite, width/height <= 0, more than
            1 px outside the image): ``"drop"`` (default; counted and logged), ``"error"`` or
            ``"clip"``. See :mod:`lt_detectron.data.validation`.
        metadata: extra metadata (e.g. ``class_stats`` to give counts instead of counting).

    When the json exists, its categories are read now (cheaply), so ``thing_classes`` and
    ``thing_dataset_id_to_contiguous_id`` are known at registration; otherwise when first used
    (``check_dataset_files`` names a missing file at startup).
    """
    if name in DatasetCatalog.list():
        raise ValueError("dataset %r is already registered; pick another name" % name)
    check_bad_boxes_policy(bad_boxes, "register_lt_dataset(..., bad_boxes=...)")
    if evaluator_type is not None and evaluator_type not in ("lvis", "coco_lt", "coco"):
        raise ValueError(
            "evaluator_type must be 'lvis', 'coco_lt' or 'coco', got %r" % evaluator_type
        )
    DatasetCatalog.register(name, lambda: load_lt_json(json_file, image_root, name))
    md = dict(json_file=json_file, image_root=image_root, bad_boxes=bad_boxes, **metadata)
    if evaluator_type is not None:
        md["evaluator_type"] = evaluator_type
    MetadataCatalog.get(name).set(**md)
    if os.path.isfile(json_file):
        try:
            ensure_dataset_metadata(name)
        except BaseException:
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
            raise
