"""Where a json's images are (the one meaning of ``image_root``) and the startup check that they exist.

``image_root`` is the folder the json's image paths are relative to, as for detectron2's own
helper for the same file (see docs/user_guide.md, section 1):

- an image record with a ``file_name``: ``image_root/file_name`` (COCO convention, detectron2's
  ``register_coco_instances``; COCO 2014 names such as ``COCO_val2014_000000000042.jpg`` are
  kept as they are);
- an LVIS record without one (LVIS v1), or an LVIS v0.5 record, whose ``file_name`` is the COCO
  2014 name while COCO 2017 stores the image as ``<split>/000000xxxxxx.jpg``:
  ``image_root/<split>/<file>``, the last two parts of ``coco_url`` (detectron2's
  ``register_lvis_instances``: ``image_root`` holds ``train2017/`` and ``val2017/``).

The rule depends only on the json (no guessing from which files exist), so it cannot pick a
wrong file silently; :func:`check_image_files` stats every image once at startup and names the
missing ones with the ``image_root`` that was given.
"""

import logging
import os
import re
import time
from typing import Dict, List, Optional

from detectron2.data import DatasetCatalog, MetadataCatalog

from .validation import DatasetFormatError

__all__ = ["IMAGE_ROOT_HELP", "check_image_files", "image_relative_path"]

logger = logging.getLogger(__name__)

# the COCO 2014/2015 file name LVIS v0.5 image records carry (COCO_val2014_000000397133.jpg),
# while COCO 2017 stores the image as <split>/000000397133.jpg
_COCO_2014_NAME = re.compile(r"COCO_[a-z]+20\d\d_\d{12}\.jpg")

IMAGE_ROOT_HELP = (
    "image_root must be the folder the json's image paths are relative to: the folder that holds "
    "the images' file_name (COCO format, custom jsons), or, for LVIS v0.5 / v1 jsons (images located "
    "by their coco_url), the folder that holds train2017/ and val2017/, e.g. datasets/coco/; the same "
    "folder detectron2's register_coco_instances / register_lvis_instances take (docs/user_guide.md, "
    "section 1)"
)


def image_relative_path(img: Dict, is_lvis: bool, json_file: str) -> str:
    """The path of one json image record relative to ``image_root`` (module docstring).

    ``is_lvis``: the json is LVIS-format (categories with ``frequency`` or images with
    ``neg_category_ids``). A record with neither ``file_name`` nor ``coco_url`` is a
    :class:`DatasetFormatError` naming the file and the image id.
    """
    file_name = img.get("file_name")
    url = img.get("coco_url")
    lvis_v0_5 = (
        is_lvis
        and url is not None
        and isinstance(file_name, str)
        and _COCO_2014_NAME.fullmatch(file_name) is not None
    )
    if file_name is not None and not lvis_v0_5:
        return file_name
    if url is None:
        raise DatasetFormatError(
            "image %s in %s has neither 'file_name' nor 'coco_url': give each image record the path "
            "of its file relative to image_root in 'file_name'" % (img.get("id"), json_file)
        )
    return "/".join(url.split("/")[-2:])  # LVIS: http://images.cocodataset.org/train2017/xxx.jpg


def _missing(paths: List[str]) -> List[str]:
    """The paths that are not files (one ``os.stat`` each)."""
    return [p for p in paths if not os.path.isfile(p)]


def check_image_files(names, dicts_by_name: Optional[Dict[str, List[dict]]] = None, first: int = 5):
    """Every image of the datasets ``names`` exists: one ``os.stat`` per image of the loaded dicts.

    Works for any registration (``register_lt_dataset``, detectron2's ``register_*_instances``,
    custom loaders): the ``file_name`` of each dataset dict is checked, from ``dicts_by_name``
    when given (the dicts already loaded), else from ``DatasetCatalog.get(name)`` (one more
    parse of its json). A :class:`FileNotFoundError` lists, per dataset, the count of missing
    images, the first ``first`` of them (absolute paths), the ``image_root`` given and what it
    must point to.
    """
    problems = []
    for name in dict.fromkeys(names):
        dicts = dicts_by_name[name] if dicts_by_name is not None else DatasetCatalog.get(name)
        t0 = time.perf_counter()
        paths = list(dict.fromkeys(d["file_name"] for d in dicts if "file_name" in d))
        del dicts
        missing = _missing(paths)
        logger.info(
            "dataset %s: %d image files checked in %.2fs",
            name,
            len(paths),
            time.perf_counter() - t0,
        )
        if not missing:
            continue
        meta = MetadataCatalog.get(name)
        root = meta.get("image_root", None)
        problems.append(
            "dataset %r (json %s): %d of %d images do not exist, e.g.\n    %s\n  image_root given: %s"
            % (
                name,
                os.path.abspath(meta.json_file) if meta.get("json_file", None) else "<none>",
                len(missing),
                len(paths),
                "\n    ".join(os.path.abspath(p) for p in missing[:first]),
                os.path.abspath(root) if root else "<none in the metadata>",
            )
        )
    if problems:
        raise FileNotFoundError(
            "missing image files:\n  "
            + "\n  ".join(problems)
            + "\n%s. The builtin datasets live under $DETECTRON2_DATASETS (now %s; datasets/README.md)."
            % (
                IMAGE_ROOT_HELP,
                os.path.abspath(os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))),
            )
        )
