"""The class-statistics registry: shipped LVIS figures, counting, groups, cache, errors."""

import os
import time

import numpy as np
import pytest

import lt_detectron  # noqa: F401
from lt_detectron.class_stats import (
    ClassStats,
    ClassStatsError,
    build_class_stats,
    check_num_classes,
    clear_class_stats_cache,
    count_from_dicts,
    get_class_stats,
    group_label,
    instance_bin_index,
    instance_bins,
    lvis_frequency,
)
from lt_detectron.data import register_lt_dataset
from tests._data import unique_name, unregister, write_coco_json


def test_lvis_v1_shipped_statistics():
    s = build_class_stats("lvis_v1_train")
    # no LVIS json here: the shipped table, unchecked (with the json its annotations are counted)
    assert s.source == "table"
    assert s.num_classes == 1203
    assert s.num_instances == 1270141
    assert s.num_images == 100170
    assert [len(s.frequency_ids(b)) for b in "rcf"] == [337, 461, 405]
    assert [len(ids) for _, _, ids in s.instance_groups()] == [200, 412, 334, 257]
    # contiguous id i is LVIS category id i + 1, names from detectron2's LVIS metadata
    assert s.dataset_ids[:3] == (1, 2, 3) and s.class_names[1] == "air_conditioner"
    assert s.instance_counts[1] == 1081 and s.image_counts[1] == 364
    # the frequency field agrees with LVIS' image-count rule
    assert (lvis_frequency(s.image_counts) == s.frequency).all()


def test_lvis_v05_shipped_statistics():
    s = build_class_stats("lvis_v0.5_train")
    assert s.num_classes == 1230 and s.num_images == 57263
    assert s.zero_count_classes().size == 0


def test_lvis_frequency_thresholds():
    assert lvis_frequency(np.array([0, 1, 10, 11, 100, 101])).tolist() == [
        "r",
        "r",
        "r",
        "c",
        "c",
        "f",
    ]


def _naive_counts(dicts, C):
    inst = [0] * C
    img = [0] * C
    for d in dicts:
        seen = set()
        for a in d["annotations"]:
            if a.get("iscrowd", 0):
                continue
            inst[a["category_id"]] += 1
            seen.add(a["category_id"])
        for c in seen:
            img[c] += 1
    return np.array(inst), np.array(img)


def test_count_from_dicts_equals_naive_count():
    rng = np.random.default_rng(0)
    C = 37
    dicts = []
    for _ in range(500):
        n = rng.integers(0, 12)
        dicts.append(
            {
                "annotations": [
                    {"category_id": int(rng.zipf(1.5) % C), "iscrowd": int(rng.random() < 0.05)}
                    for _ in range(n)
                ]
            }
        )
    inst, img, n = count_from_dicts(dicts, C)
    ref_inst, ref_img = _naive_counts(dicts, C)
    assert n == 500
    np.testing.assert_array_equal(inst, ref_inst)
    np.testing.assert_array_equal(img, ref_img)


def test_count_from_dicts_rejects_out_of_range_ids():
    with pytest.raises(ClassStatsError, match="outside 0..2"):
        count_from_dicts([{"annotations": [{"category_id": 3}]}], 3)


def _stats(counts, images=None):
    C = len(counts)
    images = counts if images is None else images
    return ClassStats(
        ("x",),
        tuple("c%d" % i for i in range(C)),
        tuple(range(C)),
        counts,
        images,
        100,
        lvis_frequency(np.array(images)),
    )


def test_group_edges_and_empty_group_dropping():
    s = _stats([0, 5, 9, 10, 99, 100, 5000])
    groups = s.instance_groups()
    assert [(lo, hi) for lo, hi, _ in groups] == [
        (0, 10),
        (10, 100),
        (100, 1000),
        (1000, float("inf")),
    ]
    # empty [100, 1000) is kept with drop_empty=False only
    s2 = _stats([1, 2, 50, 5000])
    assert [ids.tolist() for _, _, ids in s2.instance_groups()] == [[0, 1], [2], [3]]
    assert len(s2.instance_groups(drop_empty=False)) == 4
    assert s2.group_index().tolist() == [0, 0, 1, 2]
    # custom edges
    assert [ids.tolist() for _, _, ids in s.instance_groups(edges=(6, 100))] == [
        [0, 1],
        [2, 3, 4],
        [5, 6],
    ]
    with pytest.raises(ValueError, match="strictly increasing"):
        s.instance_groups(edges=(100, 10))


def _naive_bins(counts, edges, lo0):
    """Independent reference: bin b holds the classes with bounds[b] <= n < bounds[b + 1]."""
    bounds = [lo0] + list(edges) + [float("inf")]
    return [
        [i for i, n in enumerate(counts) if lo <= n < hi] for lo, hi in zip(bounds[:-1], bounds[1:])
    ]


@pytest.mark.parametrize("edges", [(10, 100, 1000), (6, 100), (1.5,), ()])
def test_one_binning_rule_equals_naive_bins(edges):
    rng = np.random.default_rng(1)
    counts = np.concatenate(
        [[0, 1, 5, 6, 9, 10, 99, 100, 999, 1000, 5000, -1], rng.integers(0, 3000, 200)]
    )
    for lo0 in (0, 1):
        got = instance_bins(counts, edges, min_count=lo0)
        assert [ids.tolist() for _, _, ids in got] == _naive_bins(
            counts, edges, lo0
        )  # -1 (unknown) in no bin
        assert [lo for lo, _, _ in got] == [float(lo0)] + [float(e) for e in edges]
    idx = instance_bin_index(counts[counts >= 0], edges)
    ref = [sum(e <= n for e in edges) for n in counts[counts >= 0]]
    assert idx.tolist() == ref
    assert group_label(0, 10) == "[0,10)" and group_label(1000.0, float("inf")) == "[1000,inf)"


def test_binning_rejects_bad_edges_naming_them():
    for bad in ((100, 10), (0, 10), (10, 10), (float("nan"),), ("x",)):
        with pytest.raises(ValueError, match="bin_edges"):
            instance_bin_index([1, 2], bad, name="bin_edges")
    with pytest.raises(ValueError, match="min_count"):
        instance_bins([1, 2], (10,), min_count=10)


def test_lvis_frequency_of_a_scalar():
    assert [str(lvis_frequency(n)) for n in (0, 10, 11, 100, 101)] == ["r", "r", "c", "c", "f"]


def test_get_class_stats_checks_group_edges_and_logs_their_groups(caplog):
    import logging

    clear_class_stats_cache()
    with pytest.raises(ValueError, match=r"MODEL.LT.GROUP_EDGES"):
        get_class_stats("lvis_v1_train", group_edges=[100, 10])
    with caplog.at_level(logging.INFO, logger="lt_detectron.class_stats"):
        get_class_stats("lvis_v1_train", group_edges=[50])
    assert "[0,50): " in caplog.text and "[50,inf): " in caplog.text
    clear_class_stats_cache()


def test_stats_are_immutable():
    s = _stats([1, 2, 3])
    with pytest.raises(ValueError):
        s.instance_counts[0] = 5
    with pytest.raises(Exception):
        s.num_images = 3


def test_counted_from_registered_json_and_cache_invalidation(tmp_path, monkeypatch):
    monkeypatch.setenv("LT_DETECTRON_CACHE", str(tmp_path / "cache"))
    name = unique_name("cnt")
    json_file = str(tmp_path / "a.json")
    write_coco_json(json_file, [5, 1, 0, 3], images_per_class=[2, 1, None, 3])
    register_lt_dataset(name, json_file, str(tmp_path))
    try:
        s = build_class_stats(name)
        assert s.source == "counted"
        assert s.instance_counts.tolist() == [5, 1, 0, 3]
        assert s.image_counts.tolist() == [2, 1, 0, 3]
        assert s.dataset_ids == (10, 13, 16, 19)  # non-contiguous json ids mapped in order
        assert s.num_images == 6
        assert build_class_stats(name).source == "cache"
        # rewriting the file (new size/mtime) invalidates the cache
        time.sleep(0.01)
        write_coco_json(json_file, [7, 1, 2, 3])
        os.utime(json_file, ns=(time.time_ns(), time.time_ns() + 10**9))
        s2 = build_class_stats(name)
        assert s2.source == "counted" and s2.instance_counts.tolist() == [7, 1, 2, 3]
    finally:
        unregister(name)


def test_lvis_category_records_only_when_they_match_the_annotations(tmp_path, monkeypatch, caplog):
    """Category records that disagree with the annotations (a subset keeps the full file's counts)
    are ignored with a warning; records that agree are reported as the source 'json'."""
    import json

    monkeypatch.setenv("LT_DETECTRON_CACHE", str(tmp_path / "cache"))
    name, ok = unique_name("lvisfmt"), unique_name("lvisok")
    json_file, ok_file = str(tmp_path / "l.json"), str(tmp_path / "ok.json")
    data = write_coco_json(json_file, [3, 2], lvis=True)  # 3 images / 3 instances, 2 / 2
    for c, (ic, nc) in zip(data["categories"], [(2, 30), (150, 200)]):
        c.update(image_count=ic, instance_count=nc, frequency="r" if ic <= 10 else "f")
    json.dump(data, open(json_file, "w"))
    for c, (ic, nc) in zip(data["categories"], [(3, 3), (2, 2)]):
        c.update(image_count=ic, instance_count=nc, frequency="r")
    json.dump(data, open(ok_file, "w"))
    register_lt_dataset(name, json_file, str(tmp_path))
    register_lt_dataset(ok, ok_file, str(tmp_path))
    try:
        with caplog.at_level("WARNING", logger="lt_detectron.class_stats"):
            s = build_class_stats(name)
        assert s.source == "counted"
        assert s.instance_counts.tolist() == [3, 2] and s.image_counts.tolist() == [3, 2]
        assert "probably a subset" in caplog.text and "230 vs 5 instances in all" in caplog.text
        s = build_class_stats(ok)
        assert s.source == "json" and s.instance_counts.tolist() == [3, 2]
    finally:
        unregister(name, ok)


def test_two_datasets_sum_and_mismatch(tmp_path):
    a, b, c = unique_name("a"), unique_name("b"), unique_name("c")
    write_coco_json(str(tmp_path / "a.json"), [2, 1])
    write_coco_json(str(tmp_path / "b.json"), [1, 4])
    write_coco_json(str(tmp_path / "c.json"), [1, 4, 1])
    register_lt_dataset(a, str(tmp_path / "a.json"), str(tmp_path))
    register_lt_dataset(b, str(tmp_path / "b.json"), str(tmp_path))
    register_lt_dataset(c, str(tmp_path / "c.json"), str(tmp_path))
    try:
        s = build_class_stats((a, b))
        assert s.instance_counts.tolist() == [3, 5] and s.num_images == 3 + 5
        with pytest.raises(ClassStatsError, match="different class lists"):
            build_class_stats((a, c))
    finally:
        unregister(a, b, c)


def test_get_class_stats_is_cached():
    clear_class_stats_cache()
    assert get_class_stats("lvis_v1_train") is get_class_stats(("lvis_v1_train",))


def test_unknown_dataset_name_is_a_clear_error():
    with pytest.raises(ClassStatsError, match="not registered.*register_lt_dataset"):
        build_class_stats("lvis_v2_train")


def test_num_classes_mismatch_message():
    s = _stats([1, 2, 3])
    check_num_classes(3, s, "MODEL.ROI_HEADS.NUM_CLASSES")
    with pytest.raises(
        ClassStatsError,
        match=r"MODEL.ROI_HEADS.NUM_CLASSES = 80 but the training data x has 3 classes",
    ):
        check_num_classes(80, s, "MODEL.ROI_HEADS.NUM_CLASSES")
