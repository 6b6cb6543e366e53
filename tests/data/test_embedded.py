"""Tests of the shipped LVIS statistics and the embedded ``lt_shapes`` dataset."""

import hashlib
import json
import os
from collections import Counter, defaultdict

import numpy as np
import pytest

from lt_detectron.data import embedded
from lt_detectron.data.embedded import (
    band_summary,
    generate_lt_shapes,
    get_lt_shapes,
    lt_shapes_paths,
    lt_shapes_summary,
    plan_lt_shapes,
)
from lt_detectron.data.lvis_stats import load_shipped_stats

# a small variant, fast to render (the default is 1000 + 200 images)
SMALL = dict(
    num_train_images=60, num_val_images=40, image_size=96, val_instances_per_class=8, max_size=32
)


def _band(n):
    return "r" if n <= 10 else ("c" if n <= 100 else "f")


def _naive_counts(d):
    inst = Counter()
    imgs = defaultdict(set)
    for a in d["annotations"]:
        inst[a["category_id"]] += 1
        imgs[a["category_id"]].add(a["image_id"])
    return inst, {k: len(v) for k, v in imgs.items()}


def _digest(root, n_images=5):
    h = hashlib.sha256()
    p = lt_shapes_paths(root)
    for key in ("train_json", "val_json"):
        h.update(open(p[key], "rb").read())
    for split in ("train", "val"):
        files = sorted(os.listdir(p[f"{split}_images"]))
        assert files
        for f in files[:n_images] + files[-1:]:
            h.update(open(os.path.join(p[f"{split}_images"], f), "rb").read())
    return h.hexdigest()


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    root = tmp_path_factory.mktemp("lts") / "small_seed0"
    generate_lt_shapes(root, seed=0, **SMALL)
    return root


@pytest.fixture(scope="module")
def default_plan():
    return plan_lt_shapes(seed=0)


# ----------------------------------------------------------------------------- shipped csv
def test_shipped_lvis_stats():
    st = load_shipped_stats()
    assert len(st["id"]) == 1203
    assert list(st["id"]) == list(range(1, 1204))
    assert int(st["instance_count"].sum()) == 1_270_141
    assert [int((st["frequency"] == b).sum()) for b in "rcf"] == [337, 461, 405]
    assert st["name"][0] == "aerosol_can"
    # LVIS bands are defined by train image counts
    bands = np.array([_band(n) for n in st["image_count"]])
    assert (bands == st["frequency"]).mean() > 0.99


# ----------------------------------------------------------------------------- default plan
def test_default_plan_statistics(default_plan):
    tr, va = default_plan["train"], default_plan["val"]
    assert default_plan["dropped"] == 0
    inst, imgs = _naive_counts(tr)
    cats = tr["categories"]
    assert [c["id"] for c in cats] == list(range(1, 25))
    for c in cats:
        assert c["image_count"] == imgs.get(c["id"], 0)
        assert c["instance_count"] == inst.get(c["id"], 0)
        assert c["frequency"] == _band(c["image_count"])
        assert c["image_count"] >= 1
    freq = Counter(c["frequency"] for c in cats)
    assert all(6 <= freq[b] <= 10 for b in "rcf"), freq  # roughly one third per band
    # long tail follows the LVIS instance-count order (monotone map)
    by_rank = sorted(cats, key=lambda c: c["lvis_source"]["rank"])
    counts = [c["image_count"] for c in by_rank]
    assert counts[0] == max(counts) and counts[-1] == 1
    assert all(a >= b - 5 for a, b in zip(counts, counts[1:]))  # monotone up to layout noise
    # val: every class present, near-balanced, with enough instances for AP
    vinst, _ = _naive_counts(va)
    assert set(vinst) == {c["id"] for c in cats}
    assert min(vinst.values()) >= 8 and max(vinst.values()) <= 2 * min(vinst.values())
    assert va["categories"] == cats  # train counts written in val as LVIS does
    # image sizes / objects per image
    per_img = Counter(a["image_id"] for a in tr["annotations"])
    assert 1 <= min(per_img.values()) and max(per_img.values()) <= 6
    assert len(tr["images"]) >= 900 and len(va["images"]) >= 180


def test_rank_alignment_and_latin_square():
    specs = embedded.class_specs(24)
    fams = Counter(s["family"] for s in specs)
    assert len(fams) == 8 and set(fams.values()) == {3}
    # each family holds one class per third of the ranks, each texture spans all thirds
    for fam in fams:
        assert sorted(s["rank"] // 8 for s in specs if s["family"] == fam) == [0, 1, 2]
    for tex in {s["texture"] for s in specs}:
        assert {s["rank"] // 8 for s in specs if s["texture"] == tex} == {0, 1, 2}
    assert len({s["name"] for s in specs}) == 24


# ----------------------------------------------------------------------------- generated files
def test_json_valid_lvis_and_coco(small):
    from lvis import LVIS
    from pycocotools.coco import COCO

    p = lt_shapes_paths(small)
    for split in ("train", "val"):
        lv = LVIS(p[f"{split}_json"])
        co = COCO(p[f"{split}_json"])
        assert len(lv.get_img_ids()) == len(co.getImgIds()) > 0
        d = lv.dataset
        ids = {c["id"] for c in d["categories"]}
        for im in d["images"]:
            assert os.path.isfile(os.path.join(p[f"{split}_images"], im["file_name"]))
            present = {a["category_id"] for a in lv.img_ann_map[im["id"]]}
            assert set(im["neg_category_ids"]) == ids - present  # exhaustive annotation
            assert im["not_exhaustive_category_ids"] == []
        for a in d["annotations"]:
            x, y, w, h = a["bbox"]
            im = lv.imgs[a["image_id"]]
            assert (
                0 <= x
                and 0 <= y
                and x + w <= im["width"]
                and y + h <= im["height"]
                and w > 0
                and h > 0
            )
            (poly,) = a["segmentation"]
            xs, ys = np.array(poly[0::2]), np.array(poly[1::2])
            assert xs.min() >= x - 1e-6 and xs.max() <= x + w + 1e-6
            assert ys.min() >= y - 1e-6 and ys.max() <= y + h + 1e-6
            assert 0 < a["area"] <= w * h + 1e-6
        # boxes of one image do not overlap
        for img_id, anns in lv.img_ann_map.items():
            b = [a["bbox"] for a in anns]
            for i in range(len(b)):
                for j in range(i + 1, len(b)):
                    (x0, y0, w0, h0), (x1, y1, w1, h1) = b[i], b[j]
                    assert x0 + w0 < x1 or x1 + w1 < x0 or y0 + h0 < y1 or y1 + h1 < y0
    from PIL import Image

    im = Image.open(os.path.join(p["train_images"], "000001.jpg"))
    assert im.size == (96, 96) and im.mode == "RGB"


def test_small_statistics_match_annotations(small):
    p = lt_shapes_paths(small)
    tr = json.load(open(p["train_json"]))
    va = json.load(open(p["val_json"]))
    inst, imgs = _naive_counts(tr)
    for c in tr["categories"]:
        assert (c["image_count"], c["instance_count"]) == (
            imgs.get(c["id"], 0),
            inst.get(c["id"], 0),
        )
        assert c["frequency"] == _band(c["image_count"])
    assert {a["category_id"] for a in va["annotations"]} == {c["id"] for c in tr["categories"]}
    rows = lt_shapes_summary(small)
    assert len(rows) == 24
    assert sum(r["train_instances"] for r in rows) == len(tr["annotations"])
    total = band_summary(rows)[-1]
    assert total["classes"] == 24 and total["val_instances"] == len(va["annotations"])


def test_deterministic(small, tmp_path):
    again = generate_lt_shapes(tmp_path / "again", seed=0, **SMALL)["root"]
    assert _digest(again) == _digest(small)
    other = generate_lt_shapes(tmp_path / "other", seed=1, **SMALL)["root"]
    assert _digest(other) != _digest(small)


def test_interrupted_generation_leaves_nothing(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = embedded.render._render_image

    def flaky(*args, **kw):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt("simulated interruption")
        return real(*args, **kw)

    monkeypatch.setattr(embedded.render, "_render_image", flaky)
    monkeypatch.setattr(embedded.plan, "DEFAULTS", {**embedded.DEFAULTS, **SMALL})
    monkeypatch.setenv("LT_DETECTRON_CACHE", str(tmp_path / "cache"))
    final = embedded.default_cache_root(3)
    assert final.name == f"lt_shapes_{embedded.VERSION}_seed3"
    with pytest.raises(KeyboardInterrupt):
        get_lt_shapes(seed=3)
    assert not final.exists()
    assert list((tmp_path / "cache").iterdir()) == []  # temp folder removed too
    # next call regenerates
    monkeypatch.setattr(embedded.render, "_render_image", real)
    root = get_lt_shapes(seed=3)
    assert root == str(final) and os.path.isfile(lt_shapes_paths(root)["train_json"])
    mtime = os.path.getmtime(lt_shapes_paths(root)["train_json"])
    assert get_lt_shapes(seed=3) == root  # cached, not regenerated
    assert os.path.getmtime(lt_shapes_paths(root)["train_json"]) == mtime


def test_preview(small, tmp_path):
    from PIL import Image

    out = embedded.render_preview(small, tmp_path / "preview.png", n=4, cols=2)
    assert Image.open(out).size[0] > 0
    out = embedded.render_class_strip(small, tmp_path / "classes.png")
    assert Image.open(out).size[1] >= 24 * 48
