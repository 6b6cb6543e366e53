"""Validation with clear errors: boxes, files, class lists, images, caches."""

import json
import logging
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances

import lt_detectron  # noqa: F401
from lt_detectron.class_stats import build_class_stats
from lt_detectron.data import (
    BadBoxError,
    DatasetFormatError,
    ImageReadError,
    LTDatasetMapper,
    check_class_lists,
    check_dataset_files,
    load_train_dicts,
    register_lt_dataset,
)
from lt_detectron.data import embedded
from tests._data import datasets_cfg, touch_images, unregister, unique_name
from tests._real_formats import coco_categories, coco_json


SMALL = dict(
    num_train_images=60, num_val_images=40, image_size=96, val_instances_per_class=8, max_size=32
)


pytestmark = pytest.mark.usefixtures("isolated_cache")


# image 1..6, 64x64; one bad box each in images 2-5, valid edge cases in image 6
BAD = {
    2: [float("nan"), 3, 10, 10],  # non-finite
    3: [5, 5, -4, 10],  # negative width
    4: [5, 5, 10, 0],  # zero height
    5: [60, 10, 10, 10],  # 6 px outside on the right
}
EDGE = [[5, 5, 0.5, 0.3], [-0.8, 10, 20, 20], [50, 50, 14.9, 14.9]]  # tiny, 0.8 px out, 0.9 px out


def _bad_json(path):
    """COCO-format json (real ids); classes: person (1) on images 1-5, plus car (3) on image 6 edge cases."""
    data = coco_json(path, [[1], [1, 1], [1, 1], [1, 1], [1, 1], []])
    anns = data["annotations"]
    ids = {}
    for img, box in BAD.items():
        a = [x for x in anns if x["image_id"] == img][0]
        a["bbox"] = box
        ids[img] = a["id"]
    aid = max(a["id"] for a in anns) + 1
    for box in EDGE:
        anns.append(
            {
                "id": aid,
                "image_id": 6,
                "category_id": 3,
                "bbox": box,
                "area": 1.0,
                "iscrowd": 0,
                "segmentation": [[1, 1, 2, 1, 2, 2]],
            }
        )
        aid += 1
    with open(path, "w") as f:
        json.dump(data, f)  # NaN is written as the NaN literal, which json.load reads back
    return data, ids


def test_bad_boxes_error_names_file_image_and_annotation(tmp_path):
    p = str(tmp_path / "train.json")
    _, ids = _bad_json(p)
    name = unique_name("err")
    register_lt_dataset(name, p, str(tmp_path), bad_boxes="error")
    try:
        with pytest.raises(BadBoxError) as e:
            DatasetCatalog.get(name)
        msg = str(e.value)
        assert os.path.abspath(p) in msg
        for img in (2, 3, 4, 5):
            assert "image id %d, annotation id %d" % (img, ids[img]) in msg
        assert "non-finite: 1, width or height <= 0: 2, more than 1 px outside the image: 1" in msg
        assert "bad_boxes='drop'" in msg  # the fix
    finally:
        unregister(name)


def test_bad_boxes_dropped_counted_and_not_in_the_statistics(tmp_path, caplog):
    p = str(tmp_path / "train.json")
    _bad_json(p)
    name = unique_name("drop")
    register_lt_dataset(name, p, str(tmp_path))  # default: drop
    try:
        with caplog.at_level(logging.WARNING, logger="lt_detectron.data.validation"):
            s = build_class_stats(name)
        ids = [c["id"] for c in coco_categories()]
        # person: 9 boxes in the json, 4 degenerate -> 5; car: the 3 edge cases are all valid
        assert s.instance_counts[ids.index(1)] == 5 and s.instance_counts[ids.index(3)] == 3
        assert s.image_counts[ids.index(1)] == 5  # image 2..5 keep one valid person box each
        assert "4 degenerate of 12 boxes in %s" % os.path.abspath(p) in caplog.text
        assert "dropped 4, clipped 0" in caplog.text
        dicts = DatasetCatalog.get(name)
        boxes = [a["bbox"] for d in dicts for a in d["annotations"]]
        assert (
            all(np.isfinite(b).all() and b[2] > 0 and b[3] > 0 for b in boxes) and len(boxes) == 8
        )
    finally:
        unregister(name)


def test_bad_boxes_clip(tmp_path):
    p = str(tmp_path / "train.json")
    _bad_json(p)
    name = unique_name("clip")
    register_lt_dataset(name, p, str(tmp_path), bad_boxes="clip")
    try:
        dicts = DatasetCatalog.get(name)
        img5 = [d for d in dicts if d["image_id"] == 5][0]
        assert [60, 10, 4, 10] in [list(map(float, a["bbox"])) for a in img5["annotations"]]
        assert (
            sum(len(d["annotations"]) for d in dicts) == 9
        )  # 3 dropped (nan, w<0, h=0), 1 clipped
    finally:
        unregister(name)
    with pytest.raises(ValueError, match="bad_boxes.*'drop', 'error', 'clip'.*'fix'"):
        register_lt_dataset(unique_name("x"), p, str(tmp_path), bad_boxes="fix")


def test_bad_boxes_of_a_detectron2_registered_dataset(tmp_path, caplog):
    """register_coco_instances: lt_detectron does not own the loader; the load-once path checks the dicts."""
    p = str(tmp_path / "train.json")
    _bad_json(p)
    touch_images(p, str(tmp_path))
    a, b = unique_name("d2drop"), unique_name("d2err")
    register_coco_instances(a, {}, p, str(tmp_path))
    register_coco_instances(b, {"bad_boxes": "error"}, p, str(tmp_path))
    try:
        with caplog.at_level(logging.WARNING, logger="lt_detectron.data.validation"):
            dicts = load_train_dicts(datasets_cfg([a]))
        assert sum(len(d["annotations"]) for d in dicts[a]) == 8
        assert "4 degenerate of 12 boxes" in caplog.text
        s = build_class_stats(a, dataset_dicts=dicts)
        assert s.instance_counts[0] == 5  # person
        with pytest.raises(
            BadBoxError, match=r"image id 2 \(.*000000000002.jpg\), annotation #0 of the image"
        ):
            load_train_dicts(datasets_cfg([b]))
    finally:
        unregister(a, b)


def test_test_json_with_a_nan_box_is_named_at_startup(tmp_path):
    train, test = str(tmp_path / "train.json"), str(tmp_path / "val.json")
    coco_json(train, [[1], [3]])
    data = coco_json(test, [[1], [3]])
    data["annotations"][1]["bbox"][2] = float("nan")
    json.dump(data, open(test, "w"))
    a, b = unique_name("tr"), unique_name("te")
    register_lt_dataset(a, train, str(tmp_path))
    register_lt_dataset(b, test, str(tmp_path))
    try:
        with pytest.raises(
            BadBoxError,
            match=r"test annotation file %s .*image id 2, annotation id 2" % os.path.abspath(test),
        ):
            check_dataset_files(datasets_cfg([a], [b]))
    finally:
        unregister(a, b)


def test_missing_files_listed_with_absolute_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    os.makedirs("imgs")
    coco_json("train.json", [[1]])
    a, b, c = unique_name("tr"), unique_name("te"), unique_name("d2")
    register_lt_dataset(a, "train.json", "imgs")
    register_lt_dataset(b, "missing_val.json", "imgs")
    register_coco_instances(c, {}, "gone.json", "no_images")
    try:
        with pytest.raises(FileNotFoundError) as e:
            check_dataset_files(datasets_cfg([a], [b, c]))
        msg = str(e.value)
        assert (
            "test dataset %r: annotation file %s does not exist"
            % (b, tmp_path / "missing_val.json")
            in msg
        )
        assert (
            "test dataset %r: annotation file %s does not exist" % (c, tmp_path / "gone.json")
            in msg
        )
        assert "image folder %s does not exist" % (tmp_path / "no_images") in msg
        assert "DETECTRON2_DATASETS" in msg
        check_dataset_files(datasets_cfg([a]))  # the train set alone is fine
    finally:
        unregister(a, b, c)


def test_builtin_missing_json_named_before_training(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(
        FileNotFoundError,
        match=r"'lvis_v1_val': annotation file %s" % (tmp_path / "datasets/lvis/lvis_v1_val.json"),
    ):
        check_dataset_files(datasets_cfg(["lvis_v1_train"], ["lvis_v1_val"]))


@pytest.mark.parametrize("how", ["lt", "d2"])
def test_class_lists_checked_for_every_registration_path(tmp_path, how):
    train, perm, three = (str(tmp_path / n) for n in ("train.json", "perm.json", "three.json"))
    cats = coco_categories()
    coco_json(train, [[1], [3]])
    permuted = [dict(c) for c in cats]
    permuted[4]["name"], permuted[5]["name"] = cats[5]["name"], cats[4]["name"]  # airplane <-> bus
    coco_json(perm, [[1]], categories=permuted)
    coco_json(three, [[1]], categories=cats[:3])
    names = [unique_name("tr"), unique_name("perm"), unique_name("three")]
    for n, p in zip(names, (train, perm, three)):
        if how == "lt":
            register_lt_dataset(n, p, str(tmp_path))
        else:
            register_coco_instances(n, {}, p, str(tmp_path))  # lazy: no class names until checked
    try:
        check_class_lists(datasets_cfg([names[0]], [names[0]]))
        with pytest.raises(
            DatasetFormatError,
            match=r"%r \(80 classes\) and %r \(80 classes\).*index 4: 'airplane' vs 'bus'"
            % (names[0], names[1]),
        ):
            check_class_lists(datasets_cfg([names[0]], [names[1]]))
        with pytest.raises(
            DatasetFormatError,
            match=r"%r \(80 classes\) and %r \(3 classes\).*index 3: 'motorcycle' vs '<none>'"
            % (names[0], names[2]),
        ):
            check_class_lists(datasets_cfg([names[0]], [names[2]]))
    finally:
        unregister(*names)


def test_lvis_synonym_is_the_same_class(tmp_path):
    """The json names category 162 'bull', detectron2's builtin LVIS v1 list 'horned_cow' (its synonym)."""
    from tests._real_formats import lvis_v1_json

    p = str(tmp_path / "l.json")
    lvis_v1_json(p, [[162]])
    name = unique_name("mine")
    register_lt_dataset(name, p, str(tmp_path))
    try:
        assert MetadataCatalog.get(name).thing_classes[161] == "bull"
        assert MetadataCatalog.get("lvis_v1_val").thing_classes[161] == "horned_cow"
        check_class_lists(datasets_cfg([name], ["lvis_v1_val"]))
    finally:
        unregister(name)


def test_missing_and_corrupt_images_are_named(tmp_path):
    from PIL import Image

    cfg = datasets_cfg([])
    cfg.INPUT.MIN_SIZE_TEST = 32
    mapper = LTDatasetMapper(cfg, False)
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "ok.jpg")
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    assert mapper(
        {"file_name": str(tmp_path / "ok.jpg"), "image_id": 1, "height": 16, "width": 16}
    )["image"].shape[1:] == (32, 32)
    with pytest.raises(
        ImageReadError,
        match=r"cannot read image %s \(image id 7\): the file does not exist.*image_root"
        % (tmp_path / "nope.jpg"),
    ):
        mapper({"file_name": str(tmp_path / "nope.jpg"), "image_id": 7, "height": 16, "width": 16})
    with pytest.raises(
        ImageReadError,
        match=r"cannot read image %s \(image id 8\).*corrupt or truncated" % (tmp_path / "bad.jpg"),
    ):
        mapper({"file_name": str(tmp_path / "bad.jpg"), "image_id": 8, "height": 16, "width": 16})


def test_unwritable_cache_names_lt_detectron_cache(tmp_path, monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    monkeypatch.setenv(
        "LT_DETECTRON_CACHE", str(blocker / "cache")
    )  # a folder under a file: fails even as root
    with pytest.raises(
        embedded.CacheDirError, match=r"LT_DETECTRON_CACHE.*export LT_DETECTRON_CACHE="
    ):
        embedded.generate_lt_shapes(embedded.default_cache_root(5), seed=5, **SMALL)
    assert blocker.read_text() == "x"


def test_class_stats_cache_write_failure_is_a_warning_naming_the_variable(
    tmp_path, monkeypatch, caplog
):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    monkeypatch.setenv("LT_DETECTRON_CACHE", str(blocker))
    p = str(tmp_path / "t.json")
    coco_json(p, [[1]])
    name = unique_name("c")
    register_lt_dataset(name, p, str(tmp_path))
    try:
        with caplog.at_level(logging.WARNING, logger="lt_detectron.class_stats"):
            assert build_class_stats(name).source == "counted"
        assert "Set LT_DETECTRON_CACHE to a writable folder" in caplog.text
    finally:
        unregister(name)


def test_stale_temp_folders_are_cleaned(tmp_path):
    root = tmp_path / "lt_shapes_v2_seed0"
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    dead = tmp_path / (".%s.tmp-%d-aaaa" % (root.name, p.pid))
    old_alive = tmp_path / (".%s.tmp-%d-bbbb" % (root.name, os.getpid()))
    fresh_alive = tmp_path / (".%s.tmp-%d-cccc" % (root.name, os.getpid()))
    fresh_dead = tmp_path / (".%s.tmp-%d-dddd" % (root.name, p.pid))
    other = tmp_path / ".something_else.tmp-1-eeee"
    for d in (dead, old_alive, fresh_alive, fresh_dead, other):
        d.mkdir()
        (d / "x.json").write_text("{}")
    past = time.time() - 2 * 3600
    for d in (dead, old_alive, other):
        os.utime(d, (past, past))
    removed = embedded.cleanup_stale_temp(root)
    assert sorted(removed) == sorted([str(dead), str(old_alive)])
    assert fresh_alive.exists() and fresh_dead.exists() and other.exists()
    # the next generation cleans them up too
    os.utime(fresh_dead, (past, past))
    embedded.generate_lt_shapes(root, seed=0, **SMALL)
    assert (
        not fresh_dead.exists()
        and fresh_alive.exists()
        and (root / "lt_shapes_train.json").is_file()
    )
