"""Every config under configs/ loads (with _BASE_) and builds its model on CPU."""
import glob
import os

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model

import lt_detectron  # noqa: F401
from lt_detectron import add_lt_config
from lt_detectron.data import register_lt_dataset
from tests._data import unique_name, write_coco_json

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "**", "*.yaml"), recursive=True))
# datasets whose statistics need files that tests do not have (COCO): replaced by a fake set
_NEEDS_FILES = ("coco_2017_train", "coco_lt_train")
_FAKES = {}


def _fake_dataset(num_classes, tmp_dir):
    if num_classes not in _FAKES:
        name = unique_name("fake%d" % num_classes)
        path = os.path.join(tmp_dir, name + ".json")
        write_coco_json(path, [max(1, 2000 // (i + 1)) % 997 + 1 for i in range(num_classes)], images_per_class=[1] * num_classes)
        register_lt_dataset(name, path, tmp_dir)
        _FAKES[num_classes] = name
    return _FAKES[num_classes]


def load_cfg(path):
    cfg = get_cfg()
    add_lt_config(cfg)
    cfg.merge_from_file(path)
    return cfg


def test_there_are_configs():
    names = [os.path.relpath(p, ROOT) for p in CONFIGS]
    assert any("lt_shapes" in n for n in names) and any("lvis_v1" in n for n in names)


@pytest.mark.parametrize("path", CONFIGS, ids=[os.path.relpath(p, os.path.join(ROOT, "configs")) for p in CONFIGS])
def test_config_loads_and_builds(path, tmp_path_factory):
    cfg = load_cfg(path)
    if os.path.basename(path).startswith("Base-") and not cfg.DATASETS.TRAIN:
        return
    cfg.MODEL.DEVICE = "cpu"
    arch = cfg.MODEL.META_ARCHITECTURE
    head = {"FCOS": "FCOS", "CenterNet": "CENTERNET", "LongTailRetinaNet": "RETINANET", "RetinaNet": "RETINANET"}
    C = cfg.MODEL[head[arch]].NUM_CLASSES if arch in head else cfg.MODEL.ROI_HEADS.NUM_CLASSES
    if any(n in _NEEDS_FILES for n in cfg.DATASETS.TRAIN):
        cfg.DATASETS.TRAIN = (_fake_dataset(C, str(tmp_path_factory.getbasetemp())),)
    model = build_model(cfg)
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params > 0
    # a forward pass in eval mode on one small random image
    if "lt_shapes" in path:
        model.eval()
        with torch.no_grad():
            out = model([{"image": torch.randint(0, 255, (3, 128, 128), dtype=torch.uint8).float(), "height": 128, "width": 128}])
        assert "instances" in out[0]
