"""Every config under configs/ loads (with _BASE_) and builds its model on CPU."""

import glob
import os
import re

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model

import lt_detectron  # noqa: F401
from lt_detectron import add_lt_config
from lt_detectron.data import register_lt_dataset
from lt_detectron.utils.testing import lt_cfg
from tests._data import unique_name, write_coco_json

from tests._data import ROOT

CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "**", "*.yaml"), recursive=True))
# datasets whose statistics need files that tests do not have (COCO; LVIS unless present under
# $DETECTRON2_DATASETS): replaced by a fake set
_NEEDS_FILES = ("coco_2017_train", "coco_lt_train")


def _needs_fake(name):
    from detectron2.data import MetadataCatalog

    json_file = MetadataCatalog.get(name).get("json_file", None)
    return name in _NEEDS_FILES or (json_file is not None and not os.path.isfile(json_file))


_FAKES = {}


def _fake_dataset(num_classes, tmp_dir):
    if num_classes not in _FAKES:
        name = unique_name("fake%d" % num_classes)
        path = os.path.join(tmp_dir, name + ".json")
        write_coco_json(
            path,
            [max(1, 2000 // (i + 1)) % 997 + 1 for i in range(num_classes)],
            images_per_class=[1] * num_classes,
        )
        register_lt_dataset(name, path, tmp_dir)
        _FAKES[num_classes] = name
    return _FAKES[num_classes]


def load_cfg(path):
    cfg = lt_cfg(path)
    return cfg


def test_there_are_configs():
    names = [os.path.relpath(p, ROOT) for p in CONFIGS]
    assert any("lt_shapes" in n for n in names) and any("lvis_v1" in n for n in names)


@pytest.mark.parametrize(
    "path", CONFIGS, ids=[os.path.relpath(p, os.path.join(ROOT, "configs")) for p in CONFIGS]
)
def test_config_loads_and_builds(path, tmp_path_factory):
    cfg = load_cfg(path)
    if os.path.basename(path).startswith("Base-") and not cfg.DATASETS.TRAIN:
        return
    cfg.MODEL.DEVICE = "cpu"
    arch = cfg.MODEL.META_ARCHITECTURE
    head = {
        "FCOS": "FCOS",
        "CenterNet": "CENTERNET",
        "LongTailRetinaNet": "RETINANET",
        "RetinaNet": "RETINANET",
    }
    C = cfg.MODEL[head[arch]].NUM_CLASSES if arch in head else cfg.MODEL.ROI_HEADS.NUM_CLASSES
    if any(_needs_fake(n) for n in cfg.DATASETS.TRAIN):
        cfg.DATASETS.TRAIN = (_fake_dataset(C, str(tmp_path_factory.getbasetemp())),)
    model = build_model(cfg)
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params > 0
    # a forward pass in eval mode on one small random image
    if "lt_shapes" in path:
        model.eval()
        with torch.no_grad():
            out = model(
                [
                    {
                        "image": torch.randint(0, 255, (3, 128, 128), dtype=torch.uint8).float(),
                        "height": 128,
                        "width": 128,
                    }
                ]
            )
        assert "instances" in out[0]


# ---------------------------------------------------------------- what a researcher launches
IMAGENET_R50 = "detectron2://ImageNetPretrained/MSRA/R-50.pkl"
R50_FOLDERS = ("lvis_v1", "coco_lt", "dense")


def _rel(path):
    return os.path.relpath(path, os.path.join(ROOT, "configs"))


def test_every_config_has_its_own_output_dir():
    seen = {}
    for path in CONFIGS:
        cfg = load_cfg(path)
        rel = _rel(path)
        folder, name = os.path.split(rel)
        expected = "/".join(x for x in ("output", folder, os.path.splitext(name)[0]) if x)
        assert cfg.OUTPUT_DIR == expected, "%s: OUTPUT_DIR %r, expected %r" % (
            rel,
            cfg.OUTPUT_DIR,
            expected,
        )
        with open(path) as f:
            assert 'OUTPUT_DIR: "%s"' % expected in f.read(), (
                "%s sets no OUTPUT_DIR of its own" % rel
            )
        assert os.path.normpath(cfg.OUTPUT_DIR) != "output"
        assert cfg.OUTPUT_DIR not in seen, "%s and %s share OUTPUT_DIR %s" % (
            rel,
            seen.get(cfg.OUTPUT_DIR),
            cfg.OUTPUT_DIR,
        )
        seen[cfg.OUTPUT_DIR] = rel
    assert len(seen) == len(CONFIGS)


def test_every_dataset_name_is_registered():
    from detectron2.data import DatasetCatalog

    registered = set(DatasetCatalog.list())
    for path in CONFIGS:
        cfg = load_cfg(path)
        for name in tuple(cfg.DATASETS.TRAIN) + tuple(cfg.DATASETS.TEST):
            assert name in registered, (
                "%s: dataset %r is not registered by lt_detectron/detectron2" % (_rel(path), name)
            )


def _r50_configs():
    return [p for p in CONFIGS if _rel(p).split(os.sep)[0] in R50_FOLDERS]


def test_r50_weights_are_imagenet_scratch_or_a_trained_baseline():
    d2 = get_cfg()  # detectron2 v0.6's defaults are the MSRA weights' conventions
    assert (d2.INPUT.FORMAT, list(d2.MODEL.PIXEL_STD)) == ("BGR", [1.0, 1.0, 1.0])
    names = {os.path.splitext(_rel(p))[0] for p in CONFIGS}
    kinds = {"imagenet": 0, "scratch": 0, "baseline": 0}
    for path in _r50_configs():
        cfg = load_cfg(path)
        rel = _rel(path)
        assert cfg.MODEL.RESNETS.DEPTH == 50, rel
        weights = cfg.MODEL.WEIGHTS
        if weights == IMAGENET_R50:
            kinds["imagenet"] += 1
            assert cfg.MODEL.RESNETS.NORM == "FrozenBN" and cfg.MODEL.BACKBONE.FREEZE_AT == 2, rel
            assert cfg.MODEL.RESNETS.STRIDE_IN_1X1 is True, rel
            assert cfg.INPUT.FORMAT == d2.INPUT.FORMAT, rel
            assert list(cfg.MODEL.PIXEL_MEAN) == list(d2.MODEL.PIXEL_MEAN), rel
            assert list(cfg.MODEL.PIXEL_STD) == list(d2.MODEL.PIXEL_STD), rel
            assert cfg.MODEL.FPN.NORM == "", rel
        elif weights == "":
            # a real from-scratch model: GroupNorm everywhere, nothing frozen, "scratch" in the name
            kinds["scratch"] += 1
            assert "scratch" in rel, rel
            assert cfg.MODEL.BACKBONE.FREEZE_AT == 0, rel
            assert cfg.MODEL.RESNETS.NORM == "GN" and cfg.MODEL.RESNETS.STRIDE_IN_1X1 is False, rel
            assert cfg.MODEL.FPN.NORM == "GN", rel
            if cfg.MODEL.META_ARCHITECTURE == "GeneralizedRCNN":
                box = cfg.MODEL.ROI_BOX_HEAD
                assert (box.NAME, box.NUM_CONV, box.NUM_FC, box.NORM) == (
                    "FastRCNNConvFCHead",
                    4,
                    1,
                    "GN",
                ), rel
                assert not cfg.MODEL.MASK_ON or cfg.MODEL.ROI_MASK_HEAD.NORM == "GN", rel
            elif cfg.MODEL.META_ARCHITECTURE == "FCOS":
                assert cfg.MODEL.FCOS.HEAD_NORM == "GN", rel
        else:
            # the decoupled recipes start from the baseline this repository trains
            kinds["baseline"] += 1
            folder = rel.split(os.sep)[0]
            m = re.fullmatch(r"output/%s/([^/]+)/model_final\.pth" % folder, weights)
            assert m and "%s/%s" % (folder, m.group(1)) in names, "%s: MODEL.WEIGHTS %r" % (
                rel,
                weights,
            )
            # BAGS and cRT re-initialise the classifier, LWS only scales it
            assert cfg.MODEL.LT.FREEZE_ALL_BUT_CLS, rel
            assert cfg.MODEL.LT.REINIT_CLS != cfg.MODEL.LT.LWS, rel
    assert kinds["imagenet"] > 30 and kinds["scratch"] >= 9 and kinds["baseline"] == 6, kinds


def test_scratch_variants_per_family():
    rels = [_rel(p) for p in _r50_configs()]
    for folder, arch in (("lvis_v1", "mask_rcnn"), ("coco_lt", "faster_rcnn"), ("dense", "fcos")):
        leaves = [r for r in rels if r.startswith(folder + os.sep) and "scratch" in r and arch in r]
        assert len(leaves) >= 2, (folder, leaves)


def test_global_gradient_clipping_where_the_papers_clip():
    # mmdetection's grad_clip (ECM: max-norm 5, BAGS: 35) is over the whole model
    for path in _r50_configs():
        cfg = load_cfg(path)
        clip = cfg.SOLVER.CLIP_GRADIENTS
        loss = cfg.MODEL.LT.ROI_LOSS if cfg.MODEL.META_ARCHITECTURE == "GeneralizedRCNN" else None
        if loss in ("ecm", "bags"):
            assert clip.ENABLED and clip.CLIP_TYPE == "full_model", _rel(path)
            assert clip.CLIP_VALUE == {"ecm": 5.0, "bags": 35.0}[loss], _rel(path)
        if clip.ENABLED:
            assert clip.CLIP_TYPE == "full_model", (
                "%s: per-parameter clipping is not the papers'" % _rel(path)
            )


def test_model_zoo_configs_are_installed():
    from detectron2 import model_zoo

    path = model_zoo.get_config_file("LVISv1-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml")
    assert os.path.isfile(path)
    cfg = model_zoo.get_config("Misc/scratch_mask_rcnn_R_50_FPN_3x_gn.yaml")
    assert cfg.MODEL.RESNETS.NORM == "GN" and cfg.MODEL.BACKBONE.FREEZE_AT == 0


# ---------------------------------------------------------------- the configs' refactoring (issue 23)
# the last commit before configs/ became bases + thin leaves
REFACTORED_FROM = "65b15c6"
# values changed on purpose since then: {config: [key, value, ...]}, applied to the old configs
CHANGED_SINCE = {
    # issue 25 §3: the authors' normalised mask predictor (ECM-Loss configs: NormedConv2d)
    "lvis_v1/ecm_mask_rcnn_R_50_FPN_1x.yaml": [
        "MODEL.ROI_MASK_HEAD.NAME",
        "NormedMaskRCNNConvUpsampleHead",
    ],
}


def _merged_dumps(configs_dir, changes=None):
    """{path under configs/: merged ``cfg.dump()``} of every yaml below ``configs_dir``, with the
    ``changes`` ({path: [key, value, ...]}) merged in."""
    out = {}
    for path in sorted(glob.glob(os.path.join(configs_dir, "**", "*.yaml"), recursive=True)):
        rel = os.path.relpath(path, configs_dir)
        cfg = load_cfg(path)
        if changes and rel in changes:
            cfg.merge_from_list(changes[rel])
        out[rel] = cfg.dump()
    return out


def test_refactored_configs_merge_to_the_same_values(tmp_path):
    """Every config that existed before the refactoring (leaves and bases, resolved with their
    ``_BASE_`` chains) merges to the same values now: moving dataset, schedule and defaults into
    bases changed no run."""
    import subprocess
    import tarfile

    archive = tmp_path / "configs.tar"
    try:
        with open(archive, "wb") as f:
            subprocess.run(
                ["git", "-C", ROOT, "archive", REFACTORED_FROM, "configs"],
                stdout=f,
                stderr=subprocess.DEVNULL,
                check=True,
            )
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("no git history with commit %s here" % REFACTORED_FROM)
    with tarfile.open(archive) as tar:
        tar.extractall(tmp_path, filter="data")
    before = _merged_dumps(str(tmp_path / "configs"), CHANGED_SINCE)
    after = _merged_dumps(os.path.join(ROOT, "configs"))
    assert before
    missing = sorted(set(before) - set(after))
    assert missing == [], "configs removed: %s" % missing
    changed = sorted(rel for rel in before if before[rel] != after[rel])
    assert changed == [], "configs whose merged values changed: %s" % changed


def _own_keys(node, prefix=""):
    for key, value in node.items():
        if isinstance(value, dict):
            yield from _own_keys(value, prefix + key + ".")
        elif prefix + key != "_BASE_":
            yield prefix + key


def test_leaf_configs_set_only_what_is_their_own():
    """A leaf (every config but the ``Base-*`` files) sets no key to the value its ``_BASE_`` chain
    (or the defaults) already gives it: dataset, schedule and defaults live in the bases."""
    import yaml

    from lt_detectron.config import lookup_key

    restated = []
    for path in CONFIGS:
        if os.path.basename(path).startswith("Base-"):
            continue
        with open(path) as f:
            own = yaml.safe_load(f)
        base = get_cfg()
        add_lt_config(base)
        if "_BASE_" in own:
            base.merge_from_file(os.path.join(os.path.dirname(path), own["_BASE_"]))
        leaf = load_cfg(path)
        for key in _own_keys(own):
            try:
                inherited = lookup_key(base, key)
            except KeyError:
                continue  # a key the base does not have at all is the leaf's own
            if lookup_key(leaf, key) == inherited:
                restated.append("%s: %s" % (_rel(path), key))
    assert restated == [], "keys equal to what the base already gives: %s" % restated
