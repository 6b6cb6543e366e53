"""The long-tail audit (issue 25 §5): counts against a naive count of a json written here, the LVIS
bands and instance groups at their boundaries, repeat factors against Detectron2's sampler, what
each loss reads (asked of the registries), the files, and the error for a missing file."""

import csv
import json
import math
import os

import numpy as np
import pytest
import torch
from detectron2.data.build import filter_images_with_only_crowd_annotations
from detectron2.data.samplers import RepeatFactorTrainingSampler

from lt_detectron.class_stats import audit_dicts, audit_json, write_audit
from lt_detectron.class_stats.audit import image_repeat_factors, stats_read_by_losses
from lt_detectron.class_stats.audit_report import audit_to_dict, repeat_histogram
from lt_detectron.losses import ROI_LOSS_REGISTRY
from lt_detectron.losses.softmax import SoftmaxROILoss


def _random_json(path, seed=0, num_images=40, cat_ids=(3, 7, 8, 20, 41)):
    """A COCO-format json: random boxes of a few classes (non-contiguous ids), some crowd
    annotations, some images without annotations, one image with only a crowd annotation."""
    rng = np.random.default_rng(seed)
    images, anns = [], []
    for i in range(1, num_images + 1):
        images.append(dict(id=i, file_name="%d.jpg" % i, height=64, width=64))
        k = int(rng.integers(0, 5)) if i > 3 else (0 if i < 3 else 1)
        for _ in range(k):
            p = rng.random()
            cat = int(rng.choice(cat_ids, p=[0.5, 0.25, 0.15, 0.07, 0.03]))
            anns.append(
                dict(
                    id=len(anns) + 1,
                    image_id=i,
                    category_id=cat,
                    bbox=[1.0, 2.0, 10.0, 12.0],
                    area=120.0,
                    iscrowd=int(p < 0.1 or i == 3),
                )
            )
    cats = [dict(id=c, name="class_%d" % c) for c in cat_ids]
    with open(path, "w") as f:
        json.dump(dict(images=images, annotations=anns, categories=cats), f)
    return images, anns, cats


def test_counts_equal_a_naive_count_of_the_json(tmp_path):
    path = str(tmp_path / "mini_train.json")
    images, anns, cats = _random_json(path)
    audit = audit_json(path, group_edges=[5, 20])
    s = audit.stats
    assert audit.dataset == "mini_train"
    assert s.class_names == tuple(c["name"] for c in cats)
    assert s.dataset_ids == tuple(c["id"] for c in cats)
    inst = {c["id"]: 0 for c in cats}
    imgs = {c["id"]: set() for c in cats}
    for a in anns:
        if not a["iscrowd"]:
            inst[a["category_id"]] += 1
            imgs[a["category_id"]].add(a["image_id"])
    assert s.instance_counts.tolist() == [inst[c["id"]] for c in cats]
    assert s.image_counts.tolist() == [len(imgs[c["id"]]) for c in cats]
    # images with a non-crowd annotation (the training loader's FILTER_EMPTY_ANNOTATIONS)
    kept = {a["image_id"] for a in anns if not a["iscrowd"]}
    assert (audit.num_images_total, s.num_images) == (len(images), len(kept))
    unfiltered = audit_json(path, filter_empty=False)
    assert unfiltered.stats.num_images == len(images)
    # instance groups [0,5) [5,20) [20,inf), naively
    want = [0 if inst[c["id"]] < 5 else 1 if inst[c["id"]] < 20 else 2 for c in cats]
    assert audit.groups.tolist() == want


def _one_class_per_image(images_per_class, instances_per_image=1):
    dicts = []
    for c, k in enumerate(images_per_class):
        for _ in range(k):
            dicts.append(dict(annotations=[dict(category_id=c, iscrowd=0)] * instances_per_image))
    return dicts


def test_bands_and_groups_at_their_boundaries():
    # image counts 10 | 11 and 100 | 101: r | c and c | f (LVIS: r <= 10, c 11-100, f > 100)
    audit = audit_dicts(_one_class_per_image([10, 11, 100, 101]), ["a", "b", "c", "d"])
    assert audit.stats.frequency.tolist() == ["r", "c", "c", "f"]
    d = audit_to_dict(audit)
    assert d["bands"] == {"r": 1, "c": 2, "f": 1}
    # instance groups [0,10) [10,100) [100,1000) [1000,inf): 9 | 10, 99 | 100, 999 | 1000
    counts = [9, 10, 99, 100, 999, 1000]
    audit = audit_dicts(_one_class_per_image(counts), list("abcdef"))
    assert audit.groups.tolist() == [0, 1, 1, 2, 2, 3]
    assert d["groups"] == {"[0,10)": 0, "[10,100)": 2, "[100,1000)": 2, "[1000,inf)": 0}


def _random_dicts(seed, n=300, C=12):
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, C + 1) ** 1.5
    p /= p.sum()
    dicts = []
    for _ in range(n):
        k = int(rng.integers(0, 4))
        cats = rng.choice(C, size=k, p=p)
        dicts.append(
            dict(
                annotations=[
                    dict(category_id=int(c), iscrowd=int(rng.random() < 0.05)) for c in cats
                ]
            )
        )
    return dicts, C


@pytest.mark.parametrize("seed,thresh", [(0, 0.001), (1, 0.05), (2, 0.3)])
def test_repeat_factors_equal_detectron2(seed, thresh):
    dicts, C = _random_dicts(seed)
    ref = RepeatFactorTrainingSampler.repeat_factors_from_category_frequency(dicts, thresh)
    got, _ = image_repeat_factors(dicts, C, thresh, sqrt=True)
    torch.testing.assert_close(torch.as_tensor(got, dtype=torch.float32), ref)
    # the audit's factors are those of the training loader's dicts (empty images left out first)
    audit = audit_dicts(dicts, [str(c) for c in range(C)], repeat_thresh=thresh)
    kept = filter_images_with_only_crowd_annotations(dicts)
    ref = RepeatFactorTrainingSampler.repeat_factors_from_category_frequency(kept, thresh)
    torch.testing.assert_close(torch.as_tensor(audit.image_repeat_sqrt, dtype=torch.float32), ref)
    # without the square root: a naive loop over the same definition
    f = {}
    for d in kept:
        for c in {a["category_id"] for a in d["annotations"]}:
            f[c] = f.get(c, 0) + 1
    r_c = {c: max(1.0, thresh / (v / len(kept))) for c, v in f.items()}
    naive = [max([r_c[a["category_id"]] for a in d["annotations"]], default=1.0) for d in kept]
    np.testing.assert_allclose(audit.image_repeat_linear, naive, rtol=1e-12)
    for c in range(C):
        if c in r_c:
            assert audit.repeat_linear[c] == pytest.approx(r_c[c])
            assert audit.repeat_sqrt[c] == pytest.approx(
                max(1.0, math.sqrt(thresh * len(kept) / f[c]))
            )
        else:
            assert math.isnan(audit.repeat_sqrt[c])


def test_repeat_histogram_bins():
    h = repeat_histogram([1.0, 1.0, 1.5, 2.0, 3.9, 4.0, 9.0])
    assert h["not_repeated"] == 2
    assert [(b["lo"], b["hi"], b["images"]) for b in h["bins"]] == [
        (1, 2, 1),
        (2, 4, 2),
        (4, 8, 1),
        (8, 16, 1),
    ]
    assert h["mean"] == pytest.approx(22.4 / 7)


def test_methods_reads_are_asked_of_the_loss_registries():
    audit = audit_dicts(_one_class_per_image([3, 30, 300]), ["a", "b", "c"])
    by_name = {(m["key"], m["name"]): m for m in audit.methods}
    assert {n for k, n in by_name if k == "MODEL.LT.ROI_LOSS"} == set(ROI_LOSS_REGISTRY.names())
    for m in audit.methods:
        assert m["error"] is None, m
        # a loss that declares it needs the statistics reads some of them
        assert bool(m["reads"]) == m["needs_class_stats"], m

    # a newly registered loss is asked too: it reports what its from_config reads
    @ROI_LOSS_REGISTRY.register("audit_probe")
    class Probe(SoftmaxROILoss):
        needs_class_stats = True

        @classmethod
        def from_config(cls, cfg, num_classes, class_stats=None):
            class_stats.image_counts, class_stats.num_images  # noqa: B018
            return super().from_config(cfg, num_classes, class_stats)

    try:
        probe = [m for m in stats_read_by_losses(audit.stats) if m["name"] == "audit_probe"]
    finally:
        del ROI_LOSS_REGISTRY._obj_map["audit_probe"]
    assert probe[0]["reads"] == ["image_counts", "num_images"]


def test_write_audit_csv_and_json(tmp_path):
    dicts, C = _random_dicts(3)
    audit = audit_dicts(dicts, ["c%d" % c for c in range(C)], dataset="toy", repeat_thresh=0.1)
    paths = write_audit(audit, str(tmp_path), plot=False)
    assert set(paths) == {"csv", "json"}
    with open(paths["csv"], newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["instance_count"]) for r in rows] == audit.stats.instance_counts.tolist()
    assert [r["frequency"] for r in rows] == audit.stats.frequency.tolist()
    for r, v in zip(rows, audit.repeat_sqrt):
        assert (
            (r["repeat_factor_sqrt"] == "")
            if math.isnan(v)
            else float(r["repeat_factor_sqrt"]) == pytest.approx(v, rel=1e-5)
        )
    with open(paths["json"]) as f:
        d = json.load(f)
    for kind in ("sqrt", "linear"):
        h = d["repeat_factors"][kind]
        assert h["not_repeated"] + sum(b["images"] for b in h["bins"]) == audit.stats.num_images
    assert d["repeat_factors"]["linear"]["mean"] >= d["repeat_factors"]["sqrt"]["mean"]


def test_missing_json_is_a_clear_error(tmp_path):
    missing = os.path.join(str(tmp_path), "nope", "train.json")
    with pytest.raises(FileNotFoundError, match="does not exist.*--json PATH") as e:
        audit_json(missing)
    assert missing in str(e.value)
