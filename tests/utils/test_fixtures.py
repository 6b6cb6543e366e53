"""The real-format fixtures (lt_detectron/utils/testing/real_formats.py) parse with the reference APIs and
carry the real category tables."""

import csv
import filecmp
import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

from lt_detectron.utils.testing import fixture_paths, make_fixtures, make_lvis_coco_fixtures

from tests._data import ROOT

TABLE = os.path.join(ROOT, "lt_detectron", "data", "stats", "lvis_v1_train.csv")


@pytest.fixture(scope="module")
def fx(tmp_path_factory):
    return make_fixtures(str(tmp_path_factory.mktemp("fixtures")), seed=0)


def _table():
    with open(TABLE, newline="") as f:
        return list(csv.DictReader(line for line in f if not line.startswith("#")))


def _load(path):
    with open(path) as f:
        return json.load(f)


def test_lvis_parses_and_matches_shipped_table(fx):
    from lvis import LVIS

    from detectron2.data.datasets.lvis_v1_categories import LVIS_CATEGORIES as D2_LVIS_CATEGORIES

    rows = _table()
    assert len(rows) == 1203
    for split in ("lvis_v1_train", "lvis_v1_val"):
        api = LVIS(fx[split])
        cats = api.load_cats(api.get_cat_ids())
        assert [c["id"] for c in cats] == list(range(1, 1204))
        for c, r in zip(cats, rows):
            assert (c["id"], c["name"], c["frequency"], c["image_count"], c["instance_count"]) == (
                int(r["id"]),
                r["name"],
                r["frequency"],
                int(r["image_count"]),
                int(r["instance_count"]),
            )
            assert c["synonyms"] and c["synset"] and c["def"]
        # the other fields are the real ones (detectron2 ships them, without the counts)
        real = {c["id"]: c for c in D2_LVIS_CATEGORIES}
        assert all({k: c[k] for k in real[c["id"]]} == real[c["id"]] for c in cats)
        img_ids = api.get_img_ids()
        assert len(img_ids) > 0
        for img in api.load_imgs(img_ids):
            assert "file_name" not in img  # LVIS v1 names files through coco_url only
            split_folder, name = img["coco_url"].split("/")[-2:]
            assert name == "%012d.jpg" % img["id"]
            assert img["coco_url"] == "http://images.cocodataset.org/%s/%s" % (split_folder, name)
            assert os.path.isfile(os.path.join(fx["lvis_image_root"], split_folder, name))
            for k in (
                "height",
                "width",
                "license",
                "flickr_url",
                "date_captured",
                "neg_category_ids",
                "not_exhaustive_category_ids",
            ):
                assert k in img, k
            assert not set(img["neg_category_ids"]) & {
                a["category_id"] for a in api.img_ann_map[img["id"]]
            }
        for a in api.load_anns():
            img = api.imgs[a["image_id"]]
            x, y, w, h = a["bbox"]
            assert (
                w > 0
                and h > 0
                and x >= 0
                and y >= 0
                and x + w <= img["width"]
                and y + h <= img["height"]
            )
            assert (
                a["area"] > 0
                and isinstance(a["segmentation"], list)
                and len(a["segmentation"][0]) >= 6
            )
    # LVIS v1 val draws from train2017 and val2017; train from train2017 only
    val_folders = {im["coco_url"].split("/")[-2] for im in _load(fx["lvis_v1_val"])["images"]}
    train_folders = {im["coco_url"].split("/")[-2] for im in _load(fx["lvis_v1_train"])["images"]}
    assert val_folders == {"train2017", "val2017"} and train_folders == {"train2017"}
    # rare, common and frequent classes are all annotated in train, with fewer instances than
    # the categories' (full LVIS) counts: the annotations are a subset
    train = _load(fx["lvis_v1_train"])
    freq = {int(r["id"]): r["frequency"] for r in rows}
    used = {a["category_id"] for a in train["annotations"]}
    assert {freq[c] for c in used} == {"r", "c", "f"}
    assert list(train) == ["info", "annotations", "images", "licenses", "categories"]


def test_coco_parses_with_real_ids(fx):
    from pycocotools.coco import COCO

    from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES

    real = [(c["id"], c["name"]) for c in COCO_CATEGORIES if c["isthing"]]
    for key, folder in (
        ("coco_train", "train2017"),
        ("coco_val", "val2017"),
        ("coco_lt_train", "train2017"),
    ):
        api = COCO(fx[key])
        cats = api.loadCats(api.getCatIds())
        assert [(c["id"], c["name"]) for c in cats] == real
        assert max(c["id"] for c in cats) == 90 and len(cats) == 80
        assert {c["supercategory"] for c in cats} >= {
            "person",
            "vehicle",
            "animal",
            "food",
            "indoor",
        }
        assert next(c for c in cats if c["id"] == 90)["name"] == "toothbrush"
        assert next(c for c in cats if c["id"] == 1)["supercategory"] == "person"
        for img in api.loadImgs(api.getImgIds()):
            assert img["file_name"] == "%012d.jpg" % img["id"]
            assert os.path.isfile(os.path.join(fx["root"], "coco", folder, img["file_name"]))
        anns = api.loadAnns(api.getAnnIds())
        assert all("iscrowd" in a and a["area"] > 0 for a in anns)
        crowd = [a for a in anns if a["iscrowd"]]
        if key == "coco_lt_train":
            assert not crowd  # the COCO-LT builder drops crowd annotations
        else:
            assert len(crowd) == 1 and isinstance(crowd[0]["segmentation"]["counts"], list)
            m = api.annToMask(crowd[0])
            assert m.sum() == pytest.approx(crowd[0]["area"])
    lt = _load(fx["coco_lt_train"])
    assert all("instance_count" in c and "image_count" in c for c in lt["categories"])
    counted = {}
    for a in lt["annotations"]:
        counted[a["category_id"]] = counted.get(a["category_id"], 0) + 1
    assert {
        c["id"]: c["instance_count"] for c in lt["categories"] if c["instance_count"]
    } == counted


def test_fixtures_are_deterministic(tmp_path):
    a = make_lvis_coco_fixtures(str(tmp_path / "a"), seed=0)
    b = make_lvis_coco_fixtures(str(tmp_path / "b"), seed=0)
    c = make_lvis_coco_fixtures(str(tmp_path / "c"), seed=1)
    for k in ("lvis_v1_train", "lvis_v1_val", "coco_train", "coco_val"):
        assert filecmp.cmp(a[k], b[k], shallow=False), k
        assert not filecmp.cmp(a[k], c[k], shallow=False), k
    names = sorted(os.listdir(a["coco_train_images"]))
    assert names == sorted(os.listdir(b["coco_train_images"]))
    assert all(
        filecmp.cmp(
            os.path.join(a["coco_train_images"], n),
            os.path.join(b["coco_train_images"], n),
            shallow=False,
        )
        for n in names
    )


def test_r50_pkl_loads_into_detectron2_backbone(fx):
    import torch
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.config import get_cfg
    from detectron2.modeling import build_backbone

    with open(fx["r50_pkl"], "rb") as f:
        blobs = pickle.load(f, encoding="latin1")
    assert (
        "model" not in blobs and "conv1_w" in blobs and "res5_2_branch2c_bn_s" in blobs
    )  # MSRA blob names
    assert all(isinstance(v, np.ndarray) and v.dtype == np.float32 for v in blobs.values())

    cfg = get_cfg()
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.RESNETS.DEPTH = 50
    cfg.MODEL.BACKBONE.NAME = "build_resnet_fpn_backbone"
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.FPN.IN_FEATURES = ["res2", "res3", "res4", "res5"]
    model = torch.nn.Module()  # the backbone under the name GeneralizedRCNN gives it
    model.backbone = build_backbone(cfg)
    DetectionCheckpointer(model).load(fx["r50_pkl"])
    bottom_up = {k: v for k, v in model.backbone.bottom_up.state_dict().items()}
    # every conv weight and every folded BN scale/shift of the backbone comes from the file
    expected = {
        "stem.conv1.weight": "conv1_w",
        "stem.conv1.norm.weight": "res_conv1_bn_s",
        "stem.conv1.norm.bias": "res_conv1_bn_b",
    }
    for k in bottom_up:
        if k.startswith("stem.") or k.endswith(("running_mean", "running_var")):
            continue
        stage, block, conv, rest = k.split(".", 3)
        branch = {
            "shortcut": "branch1",
            "conv1": "branch2a",
            "conv2": "branch2b",
            "conv3": "branch2c",
        }[conv]
        expected[k] = "%s_%s_%s_%s" % (
            stage,
            block,
            branch,
            {"weight": "w", "norm.weight": "bn_s", "norm.bias": "bn_b"}[rest],
        )
    assert (
        len(expected) == len(blobs) == 3 * (1 + 16 * 3 + 4)
    )  # 53 convs of R-50, each w, bn_s, bn_b
    for k, blob in expected.items():
        assert torch.equal(bottom_up[k], torch.from_numpy(blobs[blob])), k
    # folded statistics keep activations finite and of moderate scale under FrozenBN
    with torch.no_grad():
        feats = model.backbone.bottom_up(torch.randn(1, 3, 64, 64) * 50)
    assert all(torch.isfinite(v).all() and v.abs().max() < 1e4 for v in feats.values())


@pytest.mark.slow
def test_make_fixtures_cli(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "tools", "make_fixtures.py"),
            str(tmp_path),
            "--no-weights",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    paths = json.loads(out.stdout)
    assert paths == {k: v for k, v in fixture_paths(str(tmp_path)).items() if k != "r50_pkl"}
    assert all(os.path.exists(v) for v in paths.values())
    assert not os.path.exists(fixture_paths(str(tmp_path))["r50_pkl"])
