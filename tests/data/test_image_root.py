"""Where the images of a registered dataset are, and the startup checks that find them missing.

``image_root`` of ``register_lt_dataset`` means what detectron2's own helper means for the same
json: the folder of ``file_name`` for COCO jsons (``register_coco_instances``), the folder that
holds ``train2017/`` and ``val2017/`` for LVIS v0.5 / v1 (``register_lvis_instances``). The
references below are detectron2's loaders themselves.
"""

import os
import re

import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import (
    load_coco_json,
    load_lvis_json,
    register_coco_instances,
    register_lvis_instances,
)
from PIL import Image

import lt_detectron  # noqa: F401
from lt_detectron.data import DatasetFormatError, prepare_datasets, register_lt_dataset
from lt_detectron.engine import prepare_training_data
from tests._data import datasets_cfg, unregister, unique_name
from tests._real_formats import coco_json, lvis_v0_5_json, lvis_v1_json


pytestmark = pytest.mark.usefixtures("isolated_cache")


def _startup(cfg):
    """What tools/train_net.py runs before any model: the launcher's prepare_datasets (test images),
    then the trainer's prepare_training_data (training images, from the dicts it loads)."""
    prepare_datasets(cfg)
    names = list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST)
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = len(MetadataCatalog.get(names[0]).thing_classes)
    prepare_training_data(cfg)


def _write_images(paths):
    for p in paths:
        os.makedirs(os.path.dirname(p), exist_ok=True)
        Image.new("RGB", (64, 64), (90, 120, 150)).save(p)


def test_coco_2014_file_names_are_kept(tmp_path):
    """Item 11: a COCO 2014 json (file names COCO_val2014_..., stored under those names) finds its
    images; the LVIS v0.5 rewrite to the last 16 characters must not touch it."""
    json_file, images = str(tmp_path / "instances_val2014.json"), str(tmp_path / "val2014")
    data = coco_json(json_file, [[1, 18], [3], [44, 1]], year=2014)
    _write_images([os.path.join(images, im["file_name"]) for im in data["images"]])
    name = unique_name("coco2014")
    register_lt_dataset(name, json_file, images)
    try:
        got = [d["file_name"] for d in DatasetCatalog.get(name)]
        ref = [d["file_name"] for d in load_coco_json(json_file, images)]
        assert sorted(got) == sorted(ref)
        assert all(os.path.basename(f).startswith("COCO_val2014_") for f in got)
        assert all(os.path.isfile(f) for f in got)
        _startup(datasets_cfg([name], [name]))  # the startup checks find every image
    finally:
        unregister(name)


@pytest.mark.parametrize("version", ["v0.5", "v1"])
def test_lvis_image_root_is_the_folder_detectron2_takes(tmp_path, version):
    """Item 11: one meaning of image_root for LVIS v0.5 and v1: the folder holding train2017/ and
    val2017/, as for detectron2's register_lvis_instances; v0.5 images are found under their 16-char
    COCO 2017 names (the last 16 characters of the COCO 2014 file_name)."""
    json_file, coco = str(tmp_path / "lvis.json"), str(tmp_path / "coco")
    splits = ["train2017", "val2017", "train2017"]
    if version == "v0.5":
        data = lvis_v0_5_json(json_file, [[1, 5], [2], [1230, 1]], splits=splits)
    else:
        data = lvis_v1_json(json_file, [[1, 5], [2], [1203, 1]])
    urls = [im["coco_url"].split("/")[-2:] for im in data["images"]]
    _write_images([os.path.join(coco, *u) for u in urls])
    name = unique_name("lvis")
    register_lt_dataset(name, json_file, coco)
    try:
        got = sorted(d["file_name"] for d in DatasetCatalog.get(name))
        ref = sorted(d["file_name"] for d in load_lvis_json(json_file, coco + os.sep))
        assert got == ref
        if version == "v0.5":
            by_id = {im["id"]: im["file_name"][-16:] for im in data["images"]}
            assert sorted(os.path.basename(f) for f in got) == sorted(by_id.values())
        assert all(os.path.isfile(f) for f in got)
        _startup(datasets_cfg([name], [name]))
    finally:
        unregister(name)


def _register(how, name, tmp_path):
    """A 5-image dataset registered ``how``; returns (expected absolute image paths, image_root)."""
    if how == "register_lvis_instances":
        json_file, root = str(tmp_path / "lvis_v1_small.json"), str(tmp_path / "coco")
        data = lvis_v1_json(json_file, [[1], [2], [3], [5], [1203]])
        paths = [os.path.join(root, *im["coco_url"].split("/")[-2:]) for im in data["images"]]
        register_lvis_instances(name, {}, json_file, root + os.sep)
        return paths, root
    json_file, root = str(tmp_path / "coco.json"), str(tmp_path / "images")
    data = coco_json(json_file, [[1], [3], [18], [44], [90]])
    paths = [os.path.join(root, im["file_name"]) for im in data["images"]]
    if how == "register_lt_dataset":
        register_lt_dataset(name, json_file, root)
    else:
        register_coco_instances(name, {}, json_file, root)
    return paths, root


@pytest.mark.parametrize(
    "how,role",
    [
        ("register_lt_dataset", "train"),
        ("register_coco_instances", "test"),
        ("register_lvis_instances", "train"),
    ],
)
def test_missing_images_named_at_startup(tmp_path, how, role):
    """Item 11: a missing image is a startup error (before any model) with the count, the first
    missing files (absolute) and the image_root given, for every way of registering."""
    name = unique_name("lvis_v1_small" if how == "register_lvis_instances" else "mine")
    paths, root = _register(how, name, tmp_path)
    missing = [paths[1], paths[3]]
    _write_images([p for p in paths if p not in missing])
    try:
        cfg = datasets_cfg([name]) if role == "train" else datasets_cfg([], [name])
        with pytest.raises(FileNotFoundError) as e:
            _startup(cfg)
        msg = str(e.value)
        assert re.search(r"\b%d of %d images\b" % (len(missing), len(paths)), msg), msg
        for p in missing:
            assert os.path.abspath(p) in msg
        for p in paths:
            if p not in missing:
                assert os.path.abspath(p) not in msg
        assert name in msg and os.path.abspath(root) in msg
        _write_images(missing)
        _startup(cfg)  # all there now
    finally:
        unregister(name)


def test_test_set_without_json_file_is_a_startup_error(tmp_path):
    """Issue 22 §2: a test set registered without json_file (custom loader) would train to the end
    and fail at the final evaluation; it is named at startup with the fixes."""
    json_file, images = str(tmp_path / "train.json"), str(tmp_path / "images")
    data = coco_json(json_file, [[1], [3]])
    _write_images([os.path.join(images, im["file_name"]) for im in data["images"]])
    train, custom = unique_name("tr"), unique_name("custom")
    register_lt_dataset(train, json_file, images)
    dicts = load_coco_json(json_file, images)
    DatasetCatalog.register(custom, lambda: dicts)
    MetadataCatalog.get(custom).set(thing_classes=list(MetadataCatalog.get(train).thing_classes))
    try:
        with pytest.raises(DatasetFormatError) as e:
            prepare_datasets(datasets_cfg([train], [custom]))
        msg = str(e.value)
        for fix in (custom, "json_file", "register_lt_dataset", "DATASETS.TEST"):
            assert fix in msg, msg
        prepare_datasets(datasets_cfg([train, custom]))  # training on it needs no json
        prepare_datasets(datasets_cfg([train], [train]))
    finally:
        unregister(train, custom)
