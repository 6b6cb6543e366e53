"""Startup checks of the datasets a config names, before any model is built.

- :func:`check_dataset_names`: every name is registered.
- :func:`check_dataset_files`: every json / image folder exists (absolute paths in the error),
  for any registration (``register_lt_dataset``, detectron2's ``register_lvis_instances`` /
  ``register_coco_instances``, the builtin names), and the test jsons' boxes are finite.
- :func:`check_class_lists` / :func:`check_same_class_lists`: train and test datasets share one
  class list (``tools/evaluate_results.py`` checks its ground truth against the training data too).
- :func:`prepare_datasets`: all of the above, after generating ``lt_shapes_*`` if used, and
  :func:`~lt_detectron.data.image_files.check_image_files` on the test sets (once, in the
  launcher of ``tools/train_net.py``; the training images are checked where the trainer loads
  the training dicts, :func:`~lt_detectron.data.loading.load_train_dicts`).
"""

import logging
import os
import time

from detectron2.data import DatasetCatalog, MetadataCatalog

from .datasets import DatasetFormatError, ensure_dataset_metadata

__all__ = [
    "prepare_datasets",
    "ensure_embedded_generated",
    "check_dataset_names",
    "check_dataset_files",
    "check_class_lists",
    "check_same_class_lists",
]

logger = logging.getLogger(__name__)


def check_dataset_names(names):
    known = DatasetCatalog.list()
    for n in names:
        if n not in known:
            hint = sorted(k for k in known if k.split("_")[0] == n.split("_")[0])[:10]
            raise KeyError(
                "unknown dataset %r in the config. Registered datasets%s. Register your own with "
                "lt_detectron.data.register_lt_dataset(name, json_file, image_root)."
                % (
                    n,
                    (" with a similar name: " + ", ".join(hint))
                    if hint
                    else ": see DatasetCatalog.list()",
                )
            )


def _datasets_root():
    return os.path.abspath(os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets")))


def _check_test_jsons(test):
    """Every test dataset has a ``json_file``: the evaluators read it, and detectron2 evaluates
    ``DATASETS.TEST`` at the end of every training (``TEST.EVAL_PERIOD`` adds periodic ones)."""
    bad = [n for n in test if not MetadataCatalog.get(n).get("json_file", None)]
    if bad:
        raise DatasetFormatError(
            "test dataset(s) %s have no json_file in their metadata, and the LVIS / COCO evaluators read "
            "the ground truth from it: evaluation (at the end of training, and every TEST.EVAL_PERIOD "
            "iterations) would fail after training. Register them with "
            "lt_detectron.data.register_lt_dataset(name, json_file, image_root) or detectron2's "
            "register_coco_instances / register_lvis_instances, or set "
            "MetadataCatalog.get(name).json_file to their COCO/LVIS-format json; to train without "
            'evaluation, set DATASETS.TEST "()".' % ", ".join(repr(n) for n in bad)
        )


def check_dataset_files(cfg, check_test_boxes: bool = True):
    """Every train and test dataset's ``json_file`` and ``image_root`` exist; test boxes are finite.

    Every test dataset must have a ``json_file`` (the evaluators read it; a
    :class:`DatasetFormatError` names the dataset and the fixes). Train datasets without
    ``json_file`` in their metadata (custom loaders) are skipped. All missing
    paths are reported at once, absolute. With ``check_test_boxes`` each TEST json is parsed once
    (:func:`~lt_detectron.data.validation.check_json_boxes`): a NaN or negative-size box is an
    error naming the file now, not after inference. Also fills the class metadata
    (:func:`~lt_detectron.data.datasets.ensure_dataset_metadata`).
    """
    from .validation import check_json_boxes

    train, test = list(cfg.DATASETS.TRAIN), list(cfg.DATASETS.TEST)
    check_dataset_names(train + test)
    problems = []
    seen = set()
    for role, names in (("train", train), ("test", test)):
        for name in names:
            meta = MetadataCatalog.get(name)
            json_file, image_root = meta.get("json_file", None), meta.get("image_root", None)
            if json_file and not os.path.isfile(json_file):
                problems.append(
                    "%s dataset %r: annotation file %s does not exist"
                    % (role, name, os.path.abspath(json_file))
                )
            if image_root and not os.path.isdir(image_root):
                problems.append(
                    "%s dataset %r: image folder %s does not exist"
                    % (role, name, os.path.abspath(image_root))
                )
    _check_test_jsons(test)
    if problems:
        raise FileNotFoundError(
            "missing dataset files:\n  "
            + "\n  ".join(problems)
            + "\nThe builtin datasets live under "
            "$DETECTRON2_DATASETS (now %s; see datasets/README.md); your own datasets at the paths given to "
            "register_lt_dataset / --register-dataset / detectron2's register_*_instances."
            % _datasets_root()
        )
    for name in train + test:
        ensure_dataset_metadata(name)
    if check_test_boxes:
        for name in test:
            json_file = MetadataCatalog.get(name).get("json_file", None)
            if json_file and json_file not in seen:
                seen.add(json_file)
                t0 = time.perf_counter()
                check_json_boxes(json_file)
                logger.info("checked the boxes of %s in %.2fs", json_file, time.perf_counter() - t0)


def _synonyms(name):
    meta = MetadataCatalog.get(name)
    json_file = meta.get("json_file", None)
    if not json_file or not os.path.isfile(json_file):
        return None
    from .datasets import read_json_categories

    return [
        set([c.get("name")] + list(c.get("synonyms") or ()))
        for c in read_json_categories(json_file).categories
    ]


def _first_difference(a, b, syn_a, syn_b):
    for i, (x, y) in enumerate(zip(a, b)):
        if x == y:
            continue
        # one LVIS category, named by its json name in one list and a synonym in the other
        # (detectron2's LVIS v1 list says 'horned_cow' where the json says 'bull')
        if syn_a is not None and i < len(syn_a) and y in syn_a[i] and x in syn_a[i]:
            continue
        if syn_b is not None and i < len(syn_b) and x in syn_b[i] and y in syn_b[i]:
            continue
        return i
    return None if len(a) == len(b) else min(len(a), len(b))


def check_class_lists(cfg):
    """All train and test datasets of ``cfg`` share the class list of the first train dataset.

    A test set with other classes (fewer, or permuted) would otherwise train to the end and then
    fail, or evaluate silently with the wrong mapping. See :func:`check_same_class_lists`.
    """
    check_same_class_lists(list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST))


def check_same_class_lists(names):
    """The registered datasets ``names`` share the class list of the first one (names in category-id
    order; an LVIS category may be named by a synonym). The error names both datasets, their
    annotation files, the first differing index and both class names there."""
    names = list(names)
    if len(names) < 2:
        return
    lists = {}
    for n in names:
        ensure_dataset_metadata(n, missing_ok=True)  # a missing file is check_dataset_files' error
        meta = MetadataCatalog.get(n)
        if "thing_classes" in meta.as_dict():
            lists[n] = list(meta.thing_classes)
        else:
            logger.warning(
                "dataset %s has no json_file and no metadata.thing_classes: its class list cannot be compared "
                "with the other datasets' at startup (set thing_classes in its metadata to have it checked)",
                n,
            )
    if not lists:
        return
    ref = next(n for n in names if n in lists)
    for n in names:
        if n == ref or n not in lists:
            continue
        a, b = lists[ref], lists[n]
        if a == b:
            continue
        i = _first_difference(a, b, _synonyms(ref), _synonyms(n))
        if i is None:
            continue
        raise DatasetFormatError(
            "datasets %r (%d classes) and %r (%d classes) have different class lists: first difference at "
            "index %d: %r vs %r (annotation files %s and %s). Train and test datasets must share the "
            "categories (same ids, same order): register the test json with the training json's "
            "categories, or pair a ground truth with the training json of its classes."
            % (
                ref,
                len(a),
                n,
                len(b),
                i,
                a[i] if i < len(a) else "<none>",
                b[i] if i < len(b) else "<none>",
                _json_path(ref),
                _json_path(n),
            )
        )


def _json_path(name) -> str:
    json_file = MetadataCatalog.get(name).get("json_file", None)
    return os.path.abspath(json_file) if json_file else "<no json_file>"


def ensure_embedded_generated(cfg):
    """Generate the embedded ``lt_shapes_*`` dataset (once, cached) if ``DATASETS.TRAIN/TEST`` use it."""
    names = list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST)
    check_dataset_names(names)
    if any(n.startswith("lt_shapes_") for n in names):
        from .embedded import get_lt_shapes

        get_lt_shapes()


def prepare_datasets(cfg, check_images: bool = True):
    """Validate ``DATASETS.TRAIN/TEST`` of a merged config, generate ``lt_shapes_*`` if used, check
    files and class lists, and, with ``check_images``, that every image of the test sets exists
    (their dicts are loaded once more for it; the training images are checked by
    :func:`~lt_detectron.data.loading.load_train_dicts`, from the dicts the trainer loads anyway).
    Returns ``cfg``. (The caller parses the config: ``lt_detectron.engine.defaults.load_config``; it
    calls this once, before the worker processes start.)"""
    from .image_files import check_image_files

    ensure_embedded_generated(cfg)
    check_dataset_files(cfg)
    check_class_lists(cfg)
    if check_images:
        check_image_files(cfg.DATASETS.TEST)
    return cfg
