"""lt_detectron.data.coco_lt and datasets/prepare_coco_lt.py on a small COCO-format json built here."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from lt_detectron.data import coco_lt as P

from tests._data import ROOT


def _coco(num_cats=8, num_images=400, seed=0, real_ids=False):
    rng = np.random.default_rng(seed)
    cats = [{"id": 3 * i + 1, "name": f"c{i}", "supercategory": "s"} for i in range(num_cats)]
    if real_ids:
        cats = [{"id": i, "name": f"c{i}", "supercategory": "s"} for i in P.COCO_IDS]
        num_cats = len(cats)
    w = np.linspace(1.0, 0.1, num_cats)
    anns, images, aid = [], [], 1
    for im in range(1, num_images + 1):
        images.append({"id": im, "file_name": f"{im}.jpg", "height": 100, "width": 100})
        for c in rng.choice(num_cats, size=rng.integers(1, 4), replace=False, p=w / w.sum()):
            for _ in range(rng.integers(1, 6)):
                anns.append(
                    {
                        "id": aid,
                        "image_id": im,
                        "category_id": cats[c]["id"],
                        "bbox": [1, 1, 5, 5],
                        "area": 25,
                        "iscrowd": int(rng.random() < 0.03),
                    }
                )
                aid += 1
    return {"images": images, "annotations": anns, "categories": cats}


LVIS = [3000, 1200, 900, 500, 300, 200, 120, 80, 60, 40, 30, 25, 20, 12, 8, 5, 3, 2, 1, 1]


def test_targets_follow_aligned_lvis_ranks_and_are_monotone():
    coco_counts = {1: 50, 2: 500, 3: 200, 4: 10}
    t = P.compute_targets(coco_counts, LVIS)
    # COCO ranks: 2 (500), 3 (200), 1 (50), 4 (10); LVIS ranks round(i*19/3) = 0, 6, 13, 19
    assert (
        t[2] == (0, 0, 3000) and t[3] == (1, 6, 120) and t[1] == (2, 13, 12) and t[4] == (3, 19, 1)
    )
    full = P.compute_targets({i: 1000 - i for i in range(80)}, P.load_lvis_counts())
    targets = [v[2] for v in sorted(full.values())]
    assert all(a >= b for a, b in zip(targets, targets[1:]))  # monotone in rank
    assert [v[1] for v in sorted(full.values())][:3] == [0, 16, 31]  # round(i*1229/79)
    assert sum(targets) == 64295  # issue text: 64,295 (paper: 64,504)
    assert len(P.load_lvis_counts()) == 1230


def test_build_meets_targets_deterministic(tmp_path):
    coco = _coco()
    lvis = [400, 300, 150, 90, 60, 40, 25, 12, 8, 6, 4, 3, 2, 1]
    out, report = P.build_coco_lt(coco, lvis, seed=1)
    out2, _ = P.build_coco_lt(coco, lvis, seed=1)
    out3, _ = P.build_coco_lt(coco, lvis, seed=2)
    assert out == out2
    assert out["images"] != out3["images"]
    by_cat = {}
    for a in out["annotations"]:
        assert a["iscrowd"] == 0
        by_cat[a["category_id"]] = by_cat.get(a["category_id"], 0) + 1
    for r in report:
        assert r["achieved"] == min(r["target"], r["available"])  # exact where COCO has enough
        assert by_cat.get(r["id"], 0) == r["achieved"]
    cats = {c["id"]: c for c in out["categories"]}
    assert all(cats[r["id"]]["instance_count"] == r["achieved"] for r in report)
    ranks = sorted(report, key=lambda r: r["coco_rank"])
    assert all(a["target"] >= b["target"] for a, b in zip(ranks, ranks[1:]))
    # every kept image has at least one instance; annotations belong to kept images
    kept = {im["id"] for im in out["images"]}
    assert {a["image_id"] for a in out["annotations"]} == kept


def test_cli_writes_json_and_counts(tmp_path):
    coco = _coco(num_images=120, real_ids=True)
    src = tmp_path / "instances_train2017.json"
    src.write_text(json.dumps(coco))
    dst = tmp_path / "coco_lt_train.json"
    p = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "datasets", "prepare_coco_lt.py"),
            "--coco-json",
            str(src),
            "--output",
            str(dst),
            "--seed",
            "0",
        ],
        capture_output=True,
        text=True,
    )
    assert p.returncode == 0, p.stderr
    assert "achieved" in p.stdout and dst.is_file()
    assert (
        (tmp_path / "coco_lt_train_counts.csv")
        .read_text()
        .startswith("id,name,coco_rank,lvis_rank,target,achieved")
    )


def test_bad_category_is_clear_error():
    coco = _coco(num_images=10)
    coco["annotations"][0]["category_id"] = 999
    with pytest.raises(ValueError, match="999"):
        P.build_coco_lt(coco, LVIS)


def _cli(*args):
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "datasets", "prepare_coco_lt.py"), *args],
        capture_output=True,
        text=True,
    )


def test_cli_rejects_lvis_and_non_coco_input_and_names_missing_files(tmp_path):
    lvis = _coco(num_images=5, real_ids=True)
    lvis["categories"] = [
        dict(c, frequency="f", image_count=1, instance_count=1) for c in lvis["categories"]
    ]
    (tmp_path / "lvis.json").write_text(json.dumps(lvis))
    (tmp_path / "eight.json").write_text(json.dumps(_coco(num_images=5)))
    out = tmp_path / "out.json"
    p = _cli("--coco-json", str(tmp_path / "lvis.json"), "--output", str(out))
    assert p.returncode != 0 and "LVIS-format json" in p.stderr and "Traceback" not in p.stderr
    p = _cli("--coco-json", str(tmp_path / "eight.json"), "--output", str(out))
    assert p.returncode != 0 and "has 8 categories" in p.stderr and "Traceback" not in p.stderr
    p = _cli("--coco-json", "nope/instances_train2017.json", "--output", str(out))
    assert p.returncode != 0 and "Traceback" not in p.stderr
    assert (
        os.path.abspath("nope/instances_train2017.json") in p.stderr
        and "annotations_trainval2017.zip" in p.stderr
    )
    assert not out.exists()
