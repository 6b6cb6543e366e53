"""Dataset registration and loading: formats and clear errors."""

import json

import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

import lt_detectron  # noqa: F401
from lt_detectron.data import DatasetFormatError, load_lt_json, register_lt_dataset
from lt_detectron.data.prepare import check_dataset_names
from tests._data import unique_name, unregister, write_coco_json


def test_builtin_names_are_registered():
    names = DatasetCatalog.list()
    for n in (
        "lvis_v1_train",
        "lvis_v1_val",
        "lvis_v0.5_train",
        "coco_lt_train",
        "coco_lt_val",
        "lt_shapes_train",
        "lt_shapes_val",
    ):
        assert n in names
    assert MetadataCatalog.get("lvis_v1_val").thing_dataset_id_to_contiguous_id[1] == 0
    assert MetadataCatalog.get("coco_lt_val").evaluator_type == "coco_lt"
    assert MetadataCatalog.get("lt_shapes_val").evaluator_type == "lvis"


def test_load_maps_ids_and_keeps_lvis_fields(tmp_path):
    json_file = str(tmp_path / "d.json")
    data = write_coco_json(json_file, [2, 1], lvis=True)
    name = unique_name("load")
    dicts = load_lt_json(json_file, "/imgs", name)
    try:
        assert len(dicts) == 3
        d0 = dicts[0]
        assert d0["file_name"] == "/imgs/000001.png"
        assert (
            d0["annotations"][0]["category_id"] == 0
            and d0["annotations"][0]["bbox_mode"] == BoxMode.XYWH_ABS
        )
        assert dicts[2]["annotations"][0]["category_id"] == 1  # json id 13 -> contiguous 1
        assert d0["neg_category_ids"] == data["images"][0]["neg_category_ids"]
        meta = MetadataCatalog.get(name)
        assert meta.thing_classes == ["class_0", "class_1"]
        assert meta.thing_dataset_id_to_contiguous_id == {10: 0, 13: 1}
    finally:
        unregister(name)


def test_register_one_call_and_evaluator_type(tmp_path):
    a, b = unique_name("coco"), unique_name("lvis")
    write_coco_json(str(tmp_path / "c.json"), [1, 1])
    write_coco_json(str(tmp_path / "l.json"), [1, 1], lvis=True)
    register_lt_dataset(a, str(tmp_path / "c.json"), str(tmp_path))
    register_lt_dataset(b, str(tmp_path / "l.json"), str(tmp_path))
    try:
        assert MetadataCatalog.get(a).evaluator_type == "coco_lt"
        assert MetadataCatalog.get(b).evaluator_type == "lvis"
        assert len(DatasetCatalog.get(a)) == 2
        with pytest.raises(ValueError, match="already registered"):
            register_lt_dataset(a, str(tmp_path / "c.json"), str(tmp_path))
    finally:
        unregister(a, b)


def test_missing_json_is_a_clear_error(tmp_path):
    with pytest.raises(DatasetFormatError, match="does not exist"):
        load_lt_json(str(tmp_path / "nope.json"), str(tmp_path))


def test_malformed_json_is_a_clear_error(tmp_path):
    p = tmp_path / "bad.json"
    p.write_text('{"images": [1, 2')
    with pytest.raises(DatasetFormatError, match="not valid json"):
        load_lt_json(str(p), str(tmp_path))
    p.write_text(json.dumps({"images": []}))
    with pytest.raises(DatasetFormatError, match="lacks the key\\(s\\) annotations, categories"):
        load_lt_json(str(p), str(tmp_path))
    p.write_text("[1, 2]")
    with pytest.raises(DatasetFormatError, match="json object"):
        load_lt_json(str(p), str(tmp_path))


def test_category_missing_from_categories(tmp_path):
    p = str(tmp_path / "d.json")
    data = write_coco_json(p, [1, 1])
    data["annotations"][1]["category_id"] = 999
    json.dump(data, open(p, "w"))
    with pytest.raises(
        DatasetFormatError, match="category_id 999, which is missing from 'categories'"
    ):
        load_lt_json(p, str(tmp_path))


def test_annotation_of_unknown_image(tmp_path):
    p = str(tmp_path / "d.json")
    data = write_coco_json(p, [1, 1])
    data["annotations"][0]["image_id"] = 12345
    json.dump(data, open(p, "w"))
    with pytest.raises(DatasetFormatError, match="missing from 'images'"):
        load_lt_json(p, str(tmp_path))


def test_unknown_dataset_name_in_config():
    with pytest.raises(KeyError, match="unknown dataset 'lvis_v3_train'.*similar name: lvis_"):
        check_dataset_names(["lvis_v1_train", "lvis_v3_train"])
