"""The ``categories`` of a COCO/LVIS json, read cheaply.

:func:`read_json_categories` scans the file's bytes once for the key ``"categories"`` and decodes
only its value, so class names, the id map and the format are known at registration without parsing
the annotations. :func:`categories_are_lvis` decides the format from the category records (LVIS
categories carry ``frequency``), never from a key found elsewhere in the file. :func:`read_json`
parses a whole file with clear errors.
"""

import functools
import json
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from .validation import DatasetFormatError

__all__ = [
    "JsonCategories",
    "categories_are_lvis",
    "is_lvis_format",
    "read_categories",
    "read_json",
    "read_json_categories",
]


def _missing_file_error(json_file: str, what: str = "annotation file") -> DatasetFormatError:
    return DatasetFormatError(
        "%s %s does not exist. Check the path given at registration (for the builtin datasets: "
        "$DETECTRON2_DATASETS=%s, see datasets/README.md)"
        % (
            what,
            os.path.abspath(json_file),
            os.path.abspath(os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))),
        )
    )


def read_json(json_file: str) -> dict:
    """Parse a COCO/LVIS json.

    Raises :class:`DatasetFormatError` naming the file for a missing file, invalid json or missing keys.
    """
    if not os.path.isfile(json_file):
        raise _missing_file_error(json_file)
    try:
        with open(json_file) as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetFormatError(
            "annotation file %s is not valid json (%s). Re-download or regenerate it."
            % (json_file, e)
        ) from None
    if not isinstance(data, dict):
        raise DatasetFormatError(
            "annotation file %s must hold a json object with 'images', 'annotations' and 'categories'"
            % json_file
        )
    missing = [k for k in ("images", "annotations", "categories") if k not in data]
    if missing:
        raise DatasetFormatError(
            "annotation file %s lacks the key(s) %s: a COCO/LVIS-format file has 'images', "
            "'annotations' and 'categories'" % (json_file, ", ".join(missing))
        )
    return data


def read_categories(data: dict, json_file: str = "<json>"):
    """Sorted categories and the dataset-id -> contiguous-id map."""
    cats = data["categories"]
    if not isinstance(cats, list) or not all(
        isinstance(c, dict) and isinstance(c.get("id"), int) for c in cats
    ):
        raise DatasetFormatError(
            "annotation file %s: 'categories' must be a list of objects with an integer 'id'"
            % json_file
        )
    cats = sorted(cats, key=lambda c: c["id"])
    if not cats:
        raise DatasetFormatError("annotation file %s has no categories" % json_file)
    ids = [c["id"] for c in cats]
    if len(set(ids)) != len(ids):
        raise DatasetFormatError("annotation file %s has duplicate category ids" % json_file)
    return cats, {cid: i for i, cid in enumerate(ids)}


@dataclass(frozen=True)
class JsonCategories:
    """The ``categories`` of a COCO/LVIS json, sorted by id, and whether the file is LVIS-format."""

    json_file: str
    categories: Tuple[dict, ...]
    is_lvis: bool

    @property
    def ids(self) -> List[int]:
        return [c["id"] for c in self.categories]

    @property
    def names(self) -> List[str]:
        return [c.get("name", str(c["id"])) for c in self.categories]

    @property
    def id_map(self) -> Dict[int, int]:
        """Dataset id -> contiguous id, in the order of the ids (detectron2's convention)."""
        return {cid: i for i, cid in enumerate(self.ids)}

    def count_records(self):
        """``(image_count, instance_count)`` lists when every category carries both, else None."""
        if all("image_count" in c and "instance_count" in c for c in self.categories):
            return [int(c["image_count"]) for c in self.categories], [
                int(c["instance_count"]) for c in self.categories
            ]
        return None


def categories_are_lvis(categories, json_file: str = "<json>") -> bool:
    """Whether a json's category records are LVIS's: every one carries ``frequency`` (its band
    ``r``/``c``/``f``, which the LVIS protocol's APr/APc/APf need). A key elsewhere in the file (e.g.
    ``info.frequency`` in a COCO json) does not count. Some categories with it and some without is a
    :class:`DatasetFormatError` naming the file and the first category without it."""
    has = [isinstance(c, dict) and "frequency" in c for c in categories]
    if not any(has):
        return False
    if all(has):
        return True
    c = categories[has.index(False)]
    raise DatasetFormatError(
        "annotation file %s: %d of its %d categories carry 'frequency' (LVIS format) but category id "
        "%s (%r) does not. Give every category its LVIS frequency band ('r', 'c' or 'f') to evaluate "
        "it with the LVIS protocol, or remove the field from all of them for the COCO protocol."
        % (json_file, sum(has), len(has), c.get("id"), c.get("name"))
    )


_SCAN_CHUNK = 1 << 24
_KEY_CATS = b'"categories"'


def _scan(json_file: str):
    """One pass over the bytes: the positions of ``"categories"``."""
    overlap = len(_KEY_CATS) - 1
    cat_pos = set()

    def find_all(data, base, key):
        i = data.find(key)
        while i >= 0:
            cat_pos.add(base + i)
            i = data.find(key, i + 1)

    with open(json_file, "rb") as f:
        offset, tail = 0, b""
        while True:
            buf = f.read(_SCAN_CHUNK)
            if not buf:
                break
            # keys inside this chunk, then keys straddling the previous chunk's end (small copy)
            find_all(buf, offset, _KEY_CATS)
            edge = tail + buf[:overlap]
            find_all(edge, offset - len(tail), _KEY_CATS)
            tail = buf[-overlap:]
            offset += len(buf)
    return sorted(cat_pos)


def _decode_value_at(f, pos: int, json_file: str):
    """Decode the json value that follows the key at byte ``pos`` (``"categories" : <value>``)."""
    dec = json.JSONDecoder()
    size = 1 << 20
    while True:
        f.seek(pos + len(_KEY_CATS))
        raw = f.read(size)
        at_eof = len(raw) < size
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            if at_eof or e.start < len(raw) - 4:
                raise
            text = raw[: e.start].decode("utf-8")
        j = len(text) - len(text.lstrip())
        if not text[j : j + 1] == ":":
            return None  # the string "categories" is not a key here
        j += 1
        j += len(text[j:]) - len(text[j:].lstrip())
        try:
            value, _ = dec.raw_decode(text, j)
            return value
        except json.JSONDecodeError:
            if at_eof:
                raise DatasetFormatError(
                    "annotation file %s: its 'categories' are not valid json" % json_file
                ) from None
            size *= 4


def read_json_categories(json_file: str) -> JsonCategories:
    """Read the ``categories`` of a COCO/LVIS json without parsing the rest of it (memoised on the
    file's path, size and mtime). See :func:`_read_json_categories`."""
    if not os.path.isfile(json_file):
        raise _missing_file_error(json_file)
    st = os.stat(json_file)
    return _read_json_categories(os.path.abspath(json_file), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _read_json_categories(json_file: str, size: int, mtime_ns: int) -> JsonCategories:
    """Read the ``categories`` of a COCO/LVIS json without parsing the rest of it.

    The file's bytes are scanned once for the key ``"categories"`` (wherever it is: the key order
    does not matter), and only the value after the key is decoded. When the key string occurs
    more than once, or the decoded value is not a list of categories, the whole file is parsed
    with ``json.load`` instead. LVIS-format: the categories carry ``frequency``
    (:func:`categories_are_lvis`).
    """
    if not os.path.isfile(json_file):
        raise _missing_file_error(json_file)
    positions = _scan(json_file)
    cats = None
    if len(positions) == 1:
        with open(json_file, "rb") as f:
            try:
                cats = _decode_value_at(f, positions[0], json_file)
            except UnicodeDecodeError:
                cats = None
        if not (isinstance(cats, list) and all(isinstance(c, dict) and "id" in c for c in cats)):
            cats = None
    if cats is None:  # ambiguous or unusual layout: parse the file
        data = read_json(json_file)
        cats = data["categories"]
    sorted_cats, _ = read_categories({"categories": cats}, json_file)
    return JsonCategories(
        json_file, tuple(sorted_cats), categories_are_lvis(sorted_cats, json_file)
    )


def is_lvis_format(json_file: str) -> Optional[bool]:
    """True when the file's categories are LVIS's (:func:`categories_are_lvis`), None when it does
    not exist."""
    if not os.path.isfile(json_file):
        return None
    return read_json_categories(json_file).is_lvis
