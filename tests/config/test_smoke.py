"""``tools/train_net.py --smoke`` (lt_detectron/config_smoke.py), its use by dev/check_configs.py,
and the error when MODEL.WEIGHTS cannot be had offline."""

import os

import pytest
import torch
from detectron2.solver import build_lr_scheduler

from lt_detectron.engine import defaults
from lt_detectron.engine.checkpoint import WeightsDownloadError
from lt_detectron.utils.testing import lt_cfg

from tests._data import ROOT

MASK_RCNN = os.path.join(ROOT, "configs", "lvis_v1", "eqlv2_mask_rcnn_R_50_FPN_1x.yaml")
BOFL_FCOS = os.path.join(ROOT, "configs", "dense", "bofl_fcos_R_50_FPN_1x_lvis_v1.yaml")
TINY = os.path.join(ROOT, "configs", "lt_shapes", "faster_rcnn_tiny_eqlv2.yaml")


@pytest.fixture(scope="module")
def train_net():
    from tools import train_net

    return train_net


def _plain(path):
    cfg = lt_cfg(path)
    return cfg


def test_smoke_flag_shrinks_any_config_together(train_net):
    """--smoke: iterations, warm-up, batch with the learning rate scaled by the same ratio, input
    size, proposals and detections per image, BOFL's deferral; a key on the command line wins."""
    plain = _plain(MASK_RCNN)
    args = train_net.argument_parser().parse_args(["--config-file", MASK_RCNN, "--smoke"])
    cfg = defaults.load_config(args)
    assert (cfg.SOLVER.MAX_ITER, cfg.SOLVER.WARMUP_ITERS, cfg.SOLVER.IMS_PER_BATCH) == (2, 1, 2)
    assert plain.SOLVER.IMS_PER_BATCH == 16 and plain.SOLVER.BASE_LR == 0.02  # the config's
    assert cfg.SOLVER.BASE_LR == pytest.approx(0.02 * 2 / 16)
    # the learning rate of each iteration: one warm-up iteration, then the scaled rate, no step
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.SOLVER.BASE_LR)
    sched, lrs = build_lr_scheduler(cfg, opt), []
    for _ in range(cfg.SOLVER.MAX_ITER):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    lr = 0.02 * 2 / 16
    assert lrs == pytest.approx([lr * plain.SOLVER.WARMUP_FACTOR, lr])
    assert cfg.TEST.EVAL_PERIOD == 0
    assert cfg.SOLVER.CHECKPOINT_PERIOD > cfg.SOLVER.MAX_ITER
    assert cfg.INPUT.MIN_SIZE_TRAIN == (160,) and cfg.INPUT.MAX_SIZE_TEST == 256
    assert cfg.TEST.DETECTIONS_PER_IMAGE == 10 and cfg.TEST.LT.MAX_DETS == 10
    assert cfg.MODEL.RPN.POST_NMS_TOPK_TEST < plain.MODEL.RPN.POST_NMS_TOPK_TEST
    # untouched: the device, the weights, the model
    for key in (
        "MODEL.DEVICE",
        "MODEL.WEIGHTS",
        "MODEL.ROI_HEADS.NUM_CLASSES",
        "MODEL.LT.ROI_LOSS",
    ):
        node_s, node_p = cfg, plain
        for part in key.split("."):
            node_s, node_p = getattr(node_s, part), getattr(node_p, part)
        assert node_s == node_p, key
    # without --smoke nothing changes
    args = train_net.argument_parser().parse_args(["--config-file", MASK_RCNN])
    assert defaults.load_config(args) == plain

    # BOFL: no deferral (2 iterations are a fraction of one epoch)
    assert _plain(BOFL_FCOS).MODEL.LT.BOFL.DEFERRED_EPOCHS > 0
    args = train_net.argument_parser().parse_args(["--config-file", BOFL_FCOS, "--smoke"])
    assert defaults.load_config(args).MODEL.LT.BOFL.DEFERRED_EPOCHS == 0

    # the user's keys win; the learning rate follows the user's batch
    args = train_net.argument_parser().parse_args(
        [
            "--config-file",
            MASK_RCNN,
            "--smoke",
            "SOLVER.MAX_ITER",
            "20",
            "SOLVER.IMS_PER_BATCH",
            "4",
        ]
    )
    cfg = defaults.load_config(args)
    assert (cfg.SOLVER.MAX_ITER, cfg.SOLVER.IMS_PER_BATCH) == (20, 4)
    assert cfg.SOLVER.BASE_LR == pytest.approx(0.02) and cfg.INPUT.MIN_SIZE_TEST == 160


def test_check_configs_shrinks_with_the_smoke_flag(tmp_path):
    """dev/check_configs.py runs `train_net.py --smoke` (one implementation of the shrinking),
    adding only the CPU device, its iteration count and its OUTPUT_DIR."""
    from dev import check_configs as cc
    from tools import train_net as tn

    cfg = cc.load_cfg(BOFL_FCOS)
    argv, _ = cc.build_command(BOFL_FCOS, cfg, str(tmp_path), "builtin", "out", iters=3)
    i = argv.index("--smoke")
    assert argv[i - 2 : i] == ["--config-file", os.path.join(ROOT, BOFL_FCOS)]
    opts = argv[i + 1 :]
    assert set(opts[0::2]) - {"MODEL.WEIGHTS"} == {"MODEL.DEVICE", "SOLVER.MAX_ITER", "OUTPUT_DIR"}
    assert opts[opts.index("SOLVER.MAX_ITER") + 1] == "3"
    merged = defaults.load_config(tn.argument_parser().parse_args(argv[2:]))
    assert merged.SOLVER.MAX_ITER == 3 and merged.MODEL.LT.BOFL.DEFERRED_EPOCHS == 0
    assert merged.INPUT.MIN_SIZE_TRAIN == (160,) and merged.MODEL.DEVICE == "cpu"


def _fails_before_training(train_net, tmp_path, weights):
    out = tmp_path / ("out_%d" % len(os.listdir(tmp_path)))
    args = train_net.argument_parser().parse_args(
        [
            "--config-file",
            TINY,
            "MODEL.WEIGHTS",
            weights,
            "DATALOADER.NUM_WORKERS",
            "0",
            "DATASETS.TEST",
            "()",
            "OUTPUT_DIR",
            str(out),
        ]
    )
    with pytest.raises((WeightsDownloadError, FileNotFoundError)) as e:
        train_net.main(args)
    metrics = out / "metrics.json"  # the trainer's writer creates it empty
    assert not metrics.exists() or metrics.read_text() == ""  # not one iteration ran
    return str(e.value)


def test_offline_weights_error_names_converter_and_gn_scratch_configs(
    train_net, tmp_path, monkeypatch
):
    """MODEL.WEIGHTS that cannot be had (a URL without network, a missing file): train_net stops
    before training and names the real alternatives, which exist: the torchvision converter and the
    *_gn_scratch_* configs (MODEL.WEIGHTS "" there); not emptying MODEL.WEIGHTS of a FrozenBN config."""
    monkeypatch.setenv("FVCORE_CACHE", str(tmp_path / "cache"))
    # a URL nothing listens on: refused at once, as offline (no download is attempted elsewhere)
    url = "http://127.0.0.1:9/ImageNetPretrained/MSRA/R-50.pkl"
    missing = str(tmp_path / "weights" / "R-50.pkl")
    for weights in (url, missing):
        msg = _fails_before_training(train_net, tmp_path, weights)
        assert "tools/convert_torchvision_to_detectron2.py" in msg, msg
        assert "*_gn_scratch_*" in msg, msg
        assert os.path.isfile(os.path.join(ROOT, "tools", "convert_torchvision_to_detectron2.py"))
        named = [w for w in msg.split() if w.startswith("configs/") and "gn_scratch" in w]
        assert named, msg
        scratch = _plain(os.path.join(ROOT, named[0].rstrip(".,")))
        assert scratch.MODEL.WEIGHTS == "" and scratch.MODEL.RESNETS.NORM == "GN"
        assert 'MODEL.WEIGHTS "")' not in msg and "from-scratch config (MODEL.WEIGHTS" not in msg
    assert url in _fails_before_training(train_net, tmp_path, url)
    assert missing in _fails_before_training(train_net, tmp_path, missing)
