"""tools/audit_dataset.py (issue 25 §5): runs on the embedded lt_shapes set and on a json path,
writes the csv / json / png, and fails with a clear message for a missing file or an unknown name."""

import csv
import json
import os

import numpy as np

from tests._data import write_coco_json
from tools import audit_dataset


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_audit_dataset_on_lt_shapes(tmp_path, capsys):
    from lt_detectron.data.embedded import get_lt_shapes

    get_lt_shapes()
    rc = audit_dataset.main(
        ["--dataset", "lt_shapes_train", "--output", str(tmp_path), "--repeat-thresh", "0.05"]
    )
    out = capsys.readouterr().out
    assert rc == 0
    assert "Long-tail audit of lt_shapes_train" in out and "MODEL.LT.ROI_LOSS ecm" in out
    from detectron2.data import DatasetCatalog, MetadataCatalog

    classes = MetadataCatalog.get("lt_shapes_train").thing_classes
    rows = _rows(tmp_path / "lt_shapes_train_audit.csv")
    assert [r["name"] for r in rows] == list(classes)
    # the instance counts equal a naive count over the registered dicts (crowd excluded)
    naive = np.zeros(len(classes), int)
    for d in DatasetCatalog.get("lt_shapes_train"):
        for a in d["annotations"]:
            naive[a["category_id"]] += not a.get("iscrowd", 0)
    assert [int(r["instance_count"]) for r in rows] == naive.tolist()
    from matplotlib.image import imread

    png = imread(str(tmp_path / "lt_shapes_train_audit.png"))
    assert png.shape[0] > 200 and png.shape[1] > 600 and png[..., :3].std() > 0.05


def test_audit_dataset_on_a_json_path(tmp_path, capsys):
    path = str(tmp_path / "my_train.json")
    counts = [40, 12, 3, 1]
    write_coco_json(path, counts, images_per_class=[20, 12, 3, 1])
    rc = audit_dataset.main(["--json", path, "--output", str(tmp_path / "out"), "--no-plot"])
    assert rc == 0
    assert (
        "Long-tail audit of my_train: 36 images, 4 classes, 56 instances" in capsys.readouterr().out
    )
    rows = _rows(tmp_path / "out" / "my_train_audit.csv")
    assert [int(r["instance_count"]) for r in rows] == counts
    assert [int(r["image_count"]) for r in rows] == [20, 12, 3, 1]
    assert [r["frequency"] for r in rows] == ["c", "c", "r", "r"]
    with open(tmp_path / "out" / "my_train_audit.json") as f:
        assert json.load(f)["num_classes"] == 4
    assert not os.path.exists(tmp_path / "out" / "my_train_audit.png")


def test_audit_dataset_missing_file_and_unknown_name(tmp_path, capsys):
    missing = str(tmp_path / "absent.json")
    assert audit_dataset.main(["--json", missing, "--output", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert missing in err and "does not exist" in err
    assert audit_dataset.main(["--dataset", "no_such_set", "--output", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "'no_such_set' is not registered" in err and "--register-dataset" in err
