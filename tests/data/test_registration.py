"""Registration the detectron2 way and the class statistics built from the dataset's own annotations.

Jsons in the exact LVIS v1 (1203 real categories) and COCO (80 real, non-contiguous ids) formats.
"""

import json
import logging
import os

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances, register_lvis_instances

import lt_detectron  # noqa: F401
from lt_detectron.class_stats import build_class_stats, clear_class_stats_cache, get_class_stats
from lt_detectron.data import (
    DatasetFormatError,
    ensure_dataset_metadata,
    load_train_dicts,
    read_json_categories,
    register_lt_dataset,
    train_dataset_dicts,
)
from lt_detectron.data.lvis_stats import load_shipped_stats
from tests._data import datasets_cfg, touch_images, unregister, unique_name
from tests._real_formats import coco_categories, coco_json, lvis_v1_json


pytestmark = pytest.mark.usefixtures("isolated_cache")


def _counts(per_image, ids):
    """Independent reference: instances and images per category id, in id order."""
    inst = [sum(c == i for img in per_image for c in img) for i in ids]
    imgs = [sum(i in img for img in per_image) for i in ids]
    return inst, imgs


def _cfg(train, test=(), sampler="TrainingSampler"):
    cfg = datasets_cfg(train, test)
    cfg.DATALOADER.SAMPLER_TRAIN = sampler
    cfg.DATALOADER.REPEAT_THRESHOLD = 0.5
    cfg.SOLVER.IMS_PER_BATCH = 4
    return cfg


PER_IMAGE_LVIS = [
    [1, 1, 5],
    [5, 162],
    [1203],
    [3, 3, 3, 5],
    [2],
]  # 40 images would do; 5 keep it fast


def test_register_lvis_instances_subset_gets_its_own_counts(tmp_path, caplog):
    """detectron2's register_lvis_instances: no AttributeError, ids 1..1203 (LVIS id c -> class c - 1),
    and a subset keeping the full file's category counts gets the counts of ITS annotations."""
    json_file = str(tmp_path / "lvis_v1_val_subset.json")
    lvis_v1_json(json_file, PER_IMAGE_LVIS)
    name = unique_name(
        "lvis_v1_sub"
    )  # detectron2's loader picks its class list by 'v1' in the name
    register_lvis_instances(name, {}, json_file, str(tmp_path) + "/")
    try:
        with caplog.at_level(logging.WARNING):
            s = build_class_stats(name)
        assert s.num_classes == 1203
        assert s.dataset_ids == tuple(range(1, 1204))
        inst, imgs = _counts(PER_IMAGE_LVIS, range(1, 1204))
        assert s.instance_counts.tolist() == inst and s.image_counts.tolist() == imgs
        assert (
            s.instance_counts[0] == 2 and s.instance_counts[4] == 3 and s.instance_counts[1202] == 1
        )
        assert s.num_images == 5 and s.source == "counted"
        assert "probably a subset" in caplog.text
        meta = MetadataCatalog.get(name)
        assert (
            meta.thing_dataset_id_to_contiguous_id[1] == 0
            and meta.thing_dataset_id_to_contiguous_id[1203] == 1202
        )
        # detectron2's own names (synonyms[0]); the loader then agrees with them
        assert meta.thing_classes[161] == "horned_cow"
        dicts = DatasetCatalog.get(name)
        assert dicts[1]["annotations"][1]["category_id"] == 161
    finally:
        unregister(name)


def test_register_coco_instances_real_ids(tmp_path):
    json_file = str(tmp_path / "instances.json")
    per_image = [[1, 90, 90], [44, 1], [13]]
    coco_json(json_file, per_image)
    name = unique_name("mycoco")
    register_coco_instances(name, {}, json_file, str(tmp_path))
    try:
        s = build_class_stats(name)
        ids = [c["id"] for c in coco_categories()]
        assert len(ids) == 80 and ids[-1] == 90 and 12 not in ids
        assert s.dataset_ids == tuple(ids)
        inst, imgs = _counts(per_image, ids)
        assert s.instance_counts.tolist() == inst and s.image_counts.tolist() == imgs
        assert s.instance_counts[ids.index(90)] == 2 and s.instance_counts[ids.index(44)] == 1
        assert MetadataCatalog.get(name).evaluator_type == "coco"
        # detectron2's loader maps with the same id map it finds in the metadata
        d = DatasetCatalog.get(name)
        assert d[0]["annotations"][1]["category_id"] == ids.index(90) == 79
    finally:
        unregister(name)


def test_register_lt_dataset_knows_classes_at_registration(tmp_path, monkeypatch):
    json_file = str(tmp_path / "l.json")
    lvis_v1_json(json_file, PER_IMAGE_LVIS)
    calls = []
    real_get = DatasetCatalog.get
    monkeypatch.setattr(DatasetCatalog, "get", lambda n: calls.append(n) or real_get(n))
    name = unique_name("mine")
    register_lt_dataset(name, json_file, str(tmp_path))
    try:
        meta = MetadataCatalog.get(name)
        assert (
            len(meta.thing_classes) == 1203 and meta.thing_classes[161] == "bull"
        )  # the json's names
        assert meta.thing_dataset_id_to_contiguous_id[162] == 161
        assert meta.evaluator_type == "lvis" and meta.json_format == "lvis"
        assert calls == []  # nothing was loaded to learn them
    finally:
        unregister(name)


def test_lvis_detected_whatever_the_key_order(tmp_path):
    """LVIS keys after the first MiB (annotations first, categories last) are still found."""
    json_file = str(tmp_path / "late.json")
    per_image = [
        [1 + (k % 50)] * 40 for k in range(300)
    ]  # 12,000 annotations, > 1 MiB before the rest
    lvis_v1_json(json_file, per_image, order=("annotations", "licenses", "images", "categories"))
    with open(json_file) as f:
        text = f.read()
    assert text.index('"frequency"') > (1 << 20) and text.index('"neg_category_ids"') > (1 << 20)
    name = unique_name("late")
    register_lt_dataset(name, json_file, str(tmp_path))
    try:
        assert MetadataCatalog.get(name).evaluator_type == "lvis"
    finally:
        unregister(name)
    # a COCO file is not LVIS
    coco_file = str(tmp_path / "c.json")
    coco_json(coco_file, [[1]])
    assert read_json_categories(coco_file).is_lvis is False


def test_read_json_categories_equals_json_load(tmp_path):
    json_file = str(tmp_path / "a.json")
    data = lvis_v1_json(
        json_file, [[1]], order=("categories", "images", "annotations", "info", "licenses")
    )
    got = read_json_categories(json_file)
    assert list(got.categories) == sorted(data["categories"], key=lambda c: c["id"])
    # the string "categories" elsewhere (here a key inside info): falls back to a full parse, same result
    data["info"] = {"categories": "see below", "note": '"categories": []'}
    json.dump(data, open(json_file, "w"))
    got = read_json_categories(json_file)
    assert list(got.categories) == sorted(data["categories"], key=lambda c: c["id"]) and got.is_lvis


def test_given_thing_classes_must_agree(tmp_path):
    json_file = str(tmp_path / "c.json")
    coco_json(json_file, [[1]])
    names = [c["name"] for c in coco_categories()]
    bad = list(names)
    bad[7], bad[8] = bad[8], bad[7]
    with pytest.raises(
        DatasetFormatError,
        match=r"dataset 'x1'.*categories of /.*c\.json .*index 7: 'boat' vs 'truck'",
    ):
        register_lt_dataset("x1", json_file, str(tmp_path), thing_classes=bad)
    assert "x1" not in DatasetCatalog.list()  # a failed registration leaves nothing behind
    name = unique_name("coco_d2")
    register_coco_instances(name, {"thing_classes": bad}, json_file, str(tmp_path))
    try:
        with pytest.raises(
            DatasetFormatError, match=r"disagrees with the categories of .*c\.json.*index 7"
        ):
            ensure_dataset_metadata(name)
    finally:
        unregister(name)


def test_register_lvis_instances_without_builtin_name_is_a_clear_error(tmp_path):
    json_file = str(tmp_path / "l.json")
    lvis_v1_json(json_file, [[1]])
    name = unique_name("mylvis")
    register_lvis_instances(name, {}, json_file, str(tmp_path) + "/")
    try:
        with pytest.raises(DatasetFormatError, match="register_lt_dataset"):
            build_class_stats(name)
    finally:
        unregister(name)


def test_builtin_lvis_v1_train_pointing_at_a_subset(tmp_path, monkeypatch, caplog):
    """The builtin lvis_v1_train (relative path datasets/lvis/..., as detectron2 registers it) at a
    40-image subset: the counts come from its annotations, not from the shipped table."""
    os.makedirs(tmp_path / "datasets" / "lvis")
    per_image = [[1 + (k * 7) % 1203, 1 + (k * 13) % 1203] for k in range(40)]
    lvis_v1_json(str(tmp_path / "datasets" / "lvis" / "lvis_v1_train.json"), per_image)
    touch_images(
        str(tmp_path / "datasets" / "lvis" / "lvis_v1_train.json"),
        str(tmp_path / "datasets" / "coco"),
    )
    if os.path.isabs(MetadataCatalog.get("lvis_v1_train").json_file):
        pytest.skip("DETECTRON2_DATASETS is set to an absolute path")
    monkeypatch.chdir(tmp_path)
    cfg = _cfg(["lvis_v1_train"])
    dicts = load_train_dicts(cfg)
    with caplog.at_level(logging.WARNING):
        s = build_class_stats("lvis_v1_train", dataset_dicts=dicts)
    inst, imgs = _counts(per_image, range(1, 1204))
    assert s.source == "counted" and s.num_images == 40
    assert s.instance_counts.tolist() == inst and s.image_counts.tolist() == imgs
    assert "probably a subset" in caplog.text
    # without dicts (e.g. --eval-only) the counts cached by that run are used, not the table
    s2 = build_class_stats("lvis_v1_train")
    assert s2.source == "cache" and s2.instance_counts.tolist() == inst
    # the full-split table agrees with itself (no json at all: the table, as before)
    table = load_shipped_stats("lvis_v1_train")
    assert int(table["instance_count"].sum()) == 1270141


def test_train_json_parsed_once(tmp_path, monkeypatch):
    """The trainer's startup path: one json.load and one DatasetCatalog.get per training json,
    for the statistics, the RFS epoch length, BOFL's settings and the loader's list."""
    from lt_detectron.data import epochs
    from lt_detectron.losses.bofl import bofl_settings

    lt_file, lvis_file = str(tmp_path / "a.json"), str(tmp_path / "b.json")
    lvis_v1_json(lt_file, PER_IMAGE_LVIS)
    lvis_v1_json(lvis_file, PER_IMAGE_LVIS, seed=1)
    touch_images(lt_file, str(tmp_path))  # both: tmp_path/train2017/*.jpg
    a, b = unique_name("a"), unique_name("lvis_v1_b")
    register_lt_dataset(a, lt_file, str(tmp_path))
    register_lvis_instances(b, {}, lvis_file, str(tmp_path) + "/")
    loads, gets = [], []
    real_load, real_get = json.load, DatasetCatalog.get
    monkeypatch.setattr(
        json,
        "load",
        lambda f, *args, **kw: loads.append(getattr(f, "name", f)) or real_load(f, *args, **kw),
    )
    monkeypatch.setattr(DatasetCatalog, "get", lambda n: gets.append(n) or real_get(n))
    try:
        for train in ([a], [b]):
            loads.clear()
            gets.clear()
            clear_class_stats_cache()
            cfg = _cfg(train, sampler="RepeatFactorTrainingSampler")
            cfg.MODEL.LT.BOFL.DEFERRED_EPOCHS = 0
            cfg.MODEL.LT.DENSE_LOSS = (
                "bofl"  # a loss on BOFL's schedule: the epoch length is filled
            )
            cfg.SOLVER.MAX_ITER = 10
            dicts = load_train_dicts(cfg)
            stats = get_class_stats(cfg.DATASETS.TRAIN, dataset_dicts=dicts)
            train_list = train_dataset_dicts(cfg, dicts)
            cfg = epochs.with_iters_per_epoch(
                cfg, train_list
            )  # what the trainer builds the model from
            bofl = bofl_settings(cfg)  # what the losses call with the config only
            assert get_class_stats(cfg.DATASETS.TRAIN) is stats  # the model builder's call
            assert gets == train and len(loads) == 1, (gets, loads)
            assert (
                stats.num_instances == sum(map(len, PER_IMAGE_LVIS)) == 11 and len(train_list) == 5
            )
            from detectron2.data.samplers import RepeatFactorTrainingSampler

            rf = RepeatFactorTrainingSampler.repeat_factors_from_category_frequency(train_list, 0.5)
            assert epochs.iters_per_epoch(cfg) == pytest.approx(float(rf.sum()) / 4)
            assert (
                bofl["iters_per_epoch"]
                == cfg.MODEL.LT.BOFL.ITERS_PER_EPOCH
                == pytest.approx(float(rf.sum()) / 4)
            )
            assert bofl["total_epochs"] == int(np.ceil(10 / (float(rf.sum()) / 4)))
    finally:
        unregister(a, b)
        clear_class_stats_cache()


def test_bofl_schedule_too_short_names_the_keys():
    from lt_detectron.losses.bofl import bofl_settings

    cfg = _cfg(["lvis_v1_train"])
    cfg.MODEL.LT.BOFL.TOTAL_EPOCHS = 2
    cfg.MODEL.LT.BOFL.DEFERRED_EPOCHS = 3
    with pytest.raises(
        ValueError, match=r"MODEL.LT.BOFL.TOTAL_EPOCHS = 2.*MODEL.LT.BOFL.DEFERRED_EPOCHS = 3"
    ):
        bofl_settings(cfg)


def test_category_scan_across_chunk_boundaries(tmp_path, monkeypatch):
    """The byte scan finds keys that straddle its read chunks (tiny chunks here)."""
    import lt_detectron.data.json_categories as D

    json_file = str(tmp_path / "a.json")
    data = lvis_v1_json(json_file, [[1, 2], [3]], order=("annotations", "images", "categories"))
    for chunk in (18, 19, 23, 29, 64):  # >= the longest key, as the real 16 MiB chunks are
        monkeypatch.setattr(D, "_SCAN_CHUNK", chunk)
        positions = D._scan(json_file)
        text = open(json_file, "rb").read()
        assert positions == [text.index(b'"categories"')]
    got = D._read_json_categories.__wrapped__(json_file, 0, 0)
    assert [c["id"] for c in got.categories] == [c["id"] for c in data["categories"]]


@pytest.mark.parametrize("tool", ["train_net", "demo", "plot_methods", "evaluate_results"])
def test_every_tool_takes_the_register_flags(tool, tmp_path):
    """The same --register-dataset / --register-lvis / --register-coco NAME JSON IMAGE_ROOT flags
    (repeatable) in every tool, registered by the library's register_from_args."""
    import importlib

    from tests._data import unregister, write_coco_json

    from lt_detectron.data import register_from_args

    mod = importlib.import_module("tools." + tool)
    parse = mod.argument_parser().parse_args if tool == "train_net" else mod.parse_args
    required = {
        "train_net": [],
        "demo": ["--config-file", "c.yaml", "--input", "x.jpg", "--output", "o"],
        "plot_methods": ["--config-file", "c.yaml"],
        "evaluate_results": ["results.json", "--gt", "gt.json"],
    }[tool]
    jsons = []
    for i in range(2):
        jsons.append(str(tmp_path / ("d%d.json" % i)))
        write_coco_json(jsons[-1], [3, 1 + i])
    names = [unique_name("flag_%s" % tool) for _ in range(3)]
    args = parse(
        required
        + ["--register-dataset", names[0], jsons[0], str(tmp_path)]
        + ["--register-dataset", names[1], jsons[1], str(tmp_path)]
        + ["--register-coco", names[2], jsons[1], str(tmp_path)]
    )
    assert args.register_dataset == [
        [names[0], jsons[0], str(tmp_path)],
        [names[1], jsons[1], str(tmp_path)],
    ]
    assert args.register_coco == [[names[2], jsons[1], str(tmp_path)]] and not args.register_lvis
    try:
        register_from_args(args)
        for n, j in zip(names, [jsons[0], jsons[1], jsons[1]]):
            assert MetadataCatalog.get(n).json_file == j
        # the counts are those of each dataset's own json
        inst = [
            list(get_class_stats((n,), verify_distributed=False).instance_counts) for n in names
        ]
        assert inst == [[3, 1], [3, 2], [3, 2]]
    finally:
        unregister(*names)
