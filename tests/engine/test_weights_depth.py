"""Issue 22 item 7: the torchvision converter prints the config of the weights it converted (depth,
ResNeXt groups / width) or refuses them, writes nothing partial on a bad output path or a full disk,
and weights for a deeper backbone (R-101 into an R-50) are an error naming the file, the keys and the
fix, while heads' extra keys keep detectron2's warning."""

import errno
import os
import pickle

import numpy as np
import pytest
import torch
import torch.nn as nn
import torchvision
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone import build_resnet_backbone

import lt_detectron  # noqa: F401
from lt_detectron.engine import LTCheckpointer
from lt_detectron.engine.checkpoint import CheckpointBackboneMismatch


def _tool():
    from tools import convert_torchvision_to_detectron2

    return convert_torchvision_to_detectron2


def _meta_state_dict(builder):
    """A torchvision model's state_dict on the meta device: names and shapes, no memory."""
    with torch.device("meta"):
        return builder(weights=None).state_dict()


def _d2_backbone(config_lines, device="meta"):
    cfg = get_cfg()
    for key, value in config_lines:
        cfg.merge_from_list([key, value])
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res5"]
    with torch.device(device):
        return build_resnet_backbone(cfg, ShapeSpec(channels=3))


@pytest.mark.parametrize(
    "name",
    [
        "resnet50",
        "resnet101",
        "resnet152",
        "resnext50_32x4d",
        "resnext101_32x8d",
        "wide_resnet50_2",
    ],
)
def test_converter_config_builds_the_converted_architecture(name):
    """detectron2's backbone built from the printed config has exactly the converted names and
    shapes (checked against torchvision's own constructor, on the meta device)."""
    tool = _tool()
    sd = _meta_state_dict(getattr(torchvision.models, name))
    config = tool.config_for_state_dict(sd)
    backbone = _d2_backbone(config)
    want = {k: tuple(v.shape) for k, v in backbone.state_dict().items()}
    got = {tool._rename(k): tuple(v.shape) for k, v in sd.items() if tool._rename(k)}
    assert got == want


def _tiny_fake_r101():
    """torchvision R-101 names; real shapes only where the converter reads the architecture
    (stem, first bottleneck), one float elsewhere: a few KB instead of 170 MB."""
    sd = _meta_state_dict(torchvision.models.resnet101)
    keep = ("conv1.weight", "layer1.0.conv2.weight", "layer1.0.conv3.weight")
    return {k: torch.zeros(v.shape if k in keep else (1,)) for k, v in sd.items()}


def test_converter_prints_resnet101_config(tmp_path, capsys):
    tool = _tool()
    src, dst = str(tmp_path / "r101.pth"), str(tmp_path / "r101.pkl")
    torch.save(_tiny_fake_r101(), src)
    assert tool.main([src, dst]) == 0
    out = capsys.readouterr().out
    lines = {ln.strip() for ln in out.splitlines()}
    # the values a detectron2 R-101 config with torchvision weights has (configs/*R_101*.yaml)
    assert "MODEL.RESNETS.DEPTH 101" in lines, out
    assert "MODEL.RESNETS.NUM_GROUPS 1" in lines and "MODEL.RESNETS.WIDTH_PER_GROUP 64" in lines
    assert "MODEL.RESNETS.STRIDE_IN_1X1 False" in lines
    with open(dst, "rb") as f:
        assert "res4.22.conv3.weight" in pickle.load(f)["model"]


def test_converter_refuses_unsupported_depth(tmp_path, capsys):
    tool = _tool()
    sd = {k: v for k, v in _tiny_fake_r101().items() if not k.startswith("layer3.1.")}
    sd = {k.replace("layer3.22.", "layer3.1."): v for k, v in sd.items()}  # 22 res4 blocks
    src, dst = str(tmp_path / "odd.pth"), str(tmp_path / "odd.pkl")
    torch.save(sd, src)
    assert tool.main([src, dst]) == 2
    err = capsys.readouterr().err
    assert "odd.pth" in err and "(3, 4, 22, 3)" in err and "R-101: (3, 4, 23, 3)" in err
    assert not os.path.exists(dst)


def test_converter_output_folder_and_full_disk_are_clear_errors(tmp_path, monkeypatch):
    tool = _tool()
    src = str(tmp_path / "r101.pth")
    torch.save(_tiny_fake_r101(), src)
    folder = tmp_path / "weights.pkl"
    folder.mkdir()
    with pytest.raises(tool.ConversionError, match=r"output .*weights\.pkl is a folder"):
        tool.convert_file(src, str(folder))
    assert os.listdir(folder) == []

    dst = tmp_path / "out.pkl"
    dst.write_bytes(b"previous")

    def full_disk(obj, f, protocol=None):
        f.write(b"\0" * 1000)  # part of it went out, then the disk filled up
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(tool.pickle, "dump", full_disk)
    with pytest.raises(
        tool.ConversionError, match=r"cannot write .*out\.pkl \(No space left on device\)"
    ):
        tool.convert_file(src, str(dst))
    assert dst.read_bytes() == b"previous"
    assert sorted(os.listdir(tmp_path)) == ["out.pkl", "r101.pth", "weights.pkl"]  # no temporary


# ---------------------------------------------------------------------------------------------
# loading weights of another depth
# ---------------------------------------------------------------------------------------------


def _tiny_r50():
    """detectron2's R-50 (res2-res4, 6 res4 blocks) with narrow channels: 40K parameters."""
    torch.manual_seed(0)
    cfg = get_cfg()
    cfg.MODEL.RESNETS.DEPTH = 50
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res4"]
    cfg.MODEL.RESNETS.STEM_OUT_CHANNELS = 8
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 16
    cfg.MODEL.RESNETS.WIDTH_PER_GROUP = 4
    return build_resnet_backbone(cfg, ShapeSpec(channels=3))


def _r101_shaped(sd):
    """``sd`` of an R-50 plus the res4 blocks 6..22 of an R-101 (shapes of res4.5)."""
    out = dict(sd)
    for b in range(6, 23):
        for k, v in sd.items():
            if k.startswith("res4.5."):
                out["res4.%d.%s" % (b, k[len("res4.5.") :])] = v.clone()
    return out


class _Detector(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = _tiny_r50()
        self.box_predictor = nn.Linear(4, 3)


def test_r101_backbone_weights_into_r50_fail_naming_the_keys(tmp_path):
    model = _tiny_r50()
    sd = _r101_shaped(model.state_dict())
    extra = len(sd) - len(model.state_dict())
    pkl = str(tmp_path / "R-101-tv.pkl")
    with open(pkl, "wb") as f:
        model_np = {k: v.numpy() for k, v in sd.items()}
        pickle.dump(
            {"model": model_np, "__author__": "torchvision", "matching_heuristics": True}, f
        )
    with pytest.raises(CheckpointBackboneMismatch) as e:
        LTCheckpointer(_tiny_r50()).load(pkl)
    msg = str(e.value)
    assert pkl in msg and "res4.6.conv1.weight" in msg and "has %d backbone weights" % extra in msg
    assert "res4 has 23 blocks" in msg and "MODEL.RESNETS.DEPTH 101" in msg

    # a full-model .pth (no name heuristics): backbone.res4.6.* on a detector
    det = _Detector()
    full = {"backbone." + k: v for k, v in sd.items()}
    full.update({"box_predictor." + k: v for k, v in det.box_predictor.state_dict().items()})
    pth = str(tmp_path / "r101_model_final.pth")
    torch.save({"model": full}, pth)
    with pytest.raises(
        CheckpointBackboneMismatch, match=r"r101_model_final\.pth.*backbone\.res4\.6"
    ):
        LTCheckpointer(_Detector()).load(pth)


def test_heads_unexpected_keys_keep_detectron2_warning(tmp_path):
    """Unexpected keys outside the backbone (another head, ImageNet's classifier) are loaded around,
    as detectron2 does; the backbone weights do load."""
    det = _Detector()
    full = {"backbone." + k: v + 1 for k, v in det.backbone.state_dict().items()}
    full["box_predictor.weight"] = torch.ones(3, 4)
    full["box_predictor.bias"] = torch.ones(3)
    full["mask_head.predictor.weight"] = torch.ones(2, 2)  # a head this model does not have
    pth = str(tmp_path / "coco.pth")
    torch.save({"model": full}, pth)
    fresh = _Detector()
    LTCheckpointer(fresh).load(pth)
    assert torch.equal(fresh.box_predictor.weight, torch.ones(3, 4))
    k = "res4.5.conv3.weight"
    assert torch.equal(fresh.backbone.state_dict()[k], full["backbone." + k])

    model = _tiny_r50()
    blobs = {k: v.numpy() + 1 for k, v in model.state_dict().items()}
    blobs["fc1000_w"] = np.ones((10, 4), np.float32)  # ImageNet classifier of an MSRA .pkl
    with open(tmp_path / "imagenet.pkl", "wb") as f:
        pickle.dump({"model": blobs, "__author__": "MSRA", "matching_heuristics": True}, f)
    fresh = _tiny_r50()
    LTCheckpointer(fresh).load(str(tmp_path / "imagenet.pkl"))
    np.testing.assert_array_equal(fresh.state_dict()[k].numpy(), blobs[k])
