"""tools/convert_torchvision_to_detectron2.py on a randomly initialised torchvision ResNet-50."""

import os
import pickle

import numpy as np
import pytest
import torch
import torchvision
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone import build_resnet_backbone


def _tool():
    from tools import convert_torchvision_to_detectron2

    return convert_torchvision_to_detectron2


@pytest.fixture(scope="module")
def resnet50():
    torch.manual_seed(0)
    net = torchvision.models.resnet50(weights=None).eval()
    # random BatchNorm parameters and statistics, so that a wrong norm mapping shows
    g = torch.Generator().manual_seed(1)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.weight.data = torch.rand(n, generator=g) * 0.5 + 0.25
            m.bias.data = torch.randn(n, generator=g) * 0.1
            m.running_mean = torch.randn(n, generator=g) * 0.1
            m.running_var = torch.rand(n, generator=g) + 0.5
    return net


def test_converted_weights_give_torchvisions_features(resnet50, tmp_path):
    tool = _tool()
    src, dst = str(tmp_path / "r50.pth"), str(tmp_path / "r50.pkl")
    torch.save(resnet50.state_dict(), src)
    n = tool.convert_file(src, dst)

    with open(dst, "rb") as f:
        data = pickle.load(f)
    assert data["__author__"] == "torchvision" and data["matching_heuristics"] is True
    assert all(isinstance(v, np.ndarray) for v in data["model"].values())
    assert not any(k.startswith("fc") or "num_batches_tracked" in k for k in data["model"])
    assert n == len(data["model"])

    # detectron2's R50 with the documented settings
    cfg = get_cfg()
    for key, value in tool.CONFIG_FOR_TORCHVISION_WEIGHTS:
        cfg.merge_from_list([key, value])
    cfg.MODEL.RESNETS.DEPTH = 50
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res5"]
    backbone = build_resnet_backbone(cfg, ShapeSpec(channels=3)).eval()
    DetectionCheckpointer(backbone).load(dst)
    # every backbone parameter/buffer came from the file, unchanged
    state = backbone.state_dict()
    assert set(data["model"]) == set(state)
    for k, v in data["model"].items():
        np.testing.assert_array_equal(state[k].numpy(), v, err_msg=k)

    # the same RGB uint8 image: torchvision's ToTensor + Normalize vs detectron2's PIXEL_MEAN/STD
    img = torch.randint(
        0, 256, (2, 3, 96, 128), dtype=torch.uint8, generator=torch.Generator().manual_seed(2)
    )
    tv_in = (
        img.float() / 255.0 - torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    ) / torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    assert cfg.INPUT.FORMAT == "RGB"
    mean = torch.tensor(cfg.MODEL.PIXEL_MEAN)[:, None, None]
    std = torch.tensor(cfg.MODEL.PIXEL_STD)[:, None, None]
    d2_in = (img.float() - mean) / std
    torch.testing.assert_close(d2_in, tv_in, atol=1e-5, rtol=0)

    with torch.no_grad():
        x = resnet50.maxpool(resnet50.relu(resnet50.bn1(resnet50.conv1(tv_in))))
        expected = resnet50.layer4(resnet50.layer3(resnet50.layer2(resnet50.layer1(x))))
        got = backbone(d2_in)["res5"]
    assert got.shape == expected.shape == (2, 2048, 3, 4)
    assert expected.abs().max() > 0.1  # not a degenerate all-zero output
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)

    # the wrong stride placement (detectron2's MSRA default) does not reproduce it
    cfg.MODEL.RESNETS.STRIDE_IN_1X1 = True
    wrong = build_resnet_backbone(cfg, ShapeSpec(channels=3)).eval()
    DetectionCheckpointer(wrong).load(dst)
    with torch.no_grad():
        assert not torch.allclose(wrong(d2_in)["res5"], expected, atol=1e-2)


def test_bad_inputs_are_named_and_keep_the_output(tmp_path):
    tool = _tool()
    dst = tmp_path / "out.pkl"
    dst.write_bytes(b"previous")
    missing = str(tmp_path / "nope.pth")
    with pytest.raises(tool.ConversionError, match="nope.pth: no such file"):
        tool.convert_file(missing, str(dst))
    not_resnet = str(tmp_path / "mlp.pth")
    torch.save(torch.nn.Linear(2, 2).state_dict(), not_resnet)
    with pytest.raises(tool.ConversionError, match=r"mlp\.pth: no 'conv1.weight'"):
        tool.convert_file(not_resnet, str(dst))

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    evil = str(tmp_path / "evil.pth")
    torch.save({"conv1.weight": Evil()}, evil)
    with pytest.raises(tool.ConversionError, match="not a tensors-only torch file"):
        tool.convert_file(evil, str(dst))
    assert dst.read_bytes() == b"previous"  # nothing was overwritten
    assert sorted(os.listdir(tmp_path)) == ["evil.pth", "mlp.pth", "out.pkl"]  # no temporary left
    with pytest.raises(tool.ConversionError, match=r"must end with \.pkl"):
        tool.convert_file(not_resnet, str(tmp_path / "out.pth"))


def test_key_mapping():
    tool = _tool()
    assert tool._rename("conv1.weight") == "stem.conv1.weight"
    assert tool._rename("bn1.running_var") == "stem.conv1.norm.running_var"
    assert tool._rename("layer1.0.downsample.0.weight") == "res2.0.shortcut.weight"
    assert tool._rename("layer3.5.bn2.bias") == "res4.5.conv2.norm.bias"
    assert tool._rename("layer4.2.downsample.1.running_mean") == "res5.2.shortcut.norm.running_mean"
    assert (
        tool._rename("fc.weight") is None
        and tool._rename("layer1.0.bn1.num_batches_tracked") is None
    )
    with pytest.raises(tool.ConversionError, match="unexpected key 'layer1.0.se.weight'"):
        tool._rename("layer1.0.se.weight")
