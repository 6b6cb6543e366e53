"""cRT and LWS (docs/methods.md#crt-and-lws): what trains in the decoupled phase, and the
classifier re-initialisation of MODEL.LT.REINIT_CLS."""

import os

import pytest
import torch
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

import lt_detectron  # noqa: F401
from lt_detectron.engine import LTTrainer
from lt_detectron.engine.decoupled import reset_classifiers
from lt_detectron.modeling.classifiers import LWSLinear
from lt_detectron.utils.testing import lt_cfg

from tests._data import ROOT

BASE = os.path.join(ROOT, "configs", "lt_shapes", "Base-FasterRCNN-Tiny.yaml")
CLS = "roi_heads.box_predictor.cls_score."


def _model(*opts):
    # no training datasets: the softmax head needs no class statistics
    cfg = lt_cfg(BASE, "DATASETS.TRAIN", "()", "MODEL.LT.FREEZE_ALL_BUT_CLS", True, *opts)
    return cfg, LTTrainer.build_model(cfg)


def _batch(size=96):
    g = torch.Generator().manual_seed(0)
    out = []
    for c in (3, 17):
        inst = Instances((size, size))
        inst.gt_boxes = Boxes(torch.tensor([[10.0, 10.0, 40.0, 45.0], [50.0, 20.0, 80.0, 70.0]]))
        inst.gt_classes = torch.tensor([c, 23])
        img = torch.randint(0, 255, (3, size, size), generator=g, dtype=torch.uint8)
        out.append({"image": img, "instances": inst})
    return out


def _step(cfg, model):
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    opt = LTTrainer.build_optimizer(cfg, model)
    model.train()
    with EventStorage(0):
        loss = sum(model(_batch()).values())
    opt.zero_grad()
    loss.backward()
    opt.step()
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    return changed


def test_lws_only_the_scales_train():
    cfg, model = _model("MODEL.LT.LWS", True, "SOLVER.BASE_LR", 0.5)
    head = model.roi_heads.box_predictor.cls_score
    assert isinstance(head, LWSLinear)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable == [CLS + "weight_scale"]
    changed = _step(cfg, model)
    assert changed == {CLS + "weight_scale"}  # weight, bias, box head, backbone, BN stats unchanged


def test_lws_layer_scales_the_weight_rows_not_the_bias():
    lin = torch.nn.Linear(4, 3)
    lws = LWSLinear.from_linear(lin)
    x = torch.randn(5, 4)
    torch.testing.assert_close(lws(x), lin(x))  # scales start at 1
    with torch.no_grad():
        lws.weight_scale.copy_(torch.tensor([2.0, 0.5, 0.0]))
    expected = (x @ lin.weight.T) * torch.tensor([2.0, 0.5, 0.0]) + lin.bias
    torch.testing.assert_close(lws(x), expected)
    # a linear checkpoint loads into it (only the scale is missing)
    missing = lws.load_state_dict(lin.state_dict(), strict=False).missing_keys
    assert missing == ["weight_scale"]


def test_lws_needs_a_linear_classifier():
    with pytest.raises(ValueError, match="MODEL.LT.LWS"):
        _model("MODEL.LT.LWS", True, "MODEL.LT.CLASSIFIER", "cosine")


def test_crt_classifier_reinitialised_and_only_it_trains():
    cfg, model = _model("MODEL.LT.REINIT_CLS", True, "SOLVER.BASE_LR", 0.5)
    head = model.roi_heads.box_predictor.cls_score
    trainable = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    assert trainable == [CLS + "bias", CLS + "weight"]
    opt = LTTrainer.build_optimizer(cfg, model)
    ids = {id(p) for g in opt.param_groups for p in g["params"]}
    # a "trained" classifier, as loaded from MODEL.WEIGHTS
    with torch.no_grad():
        head.weight.fill_(3.0)
        head.bias.fill_(1.0)
    assert reset_classifiers(model) == 1
    # Detectron2's Fast R-CNN init: normal(0, 0.01) weights, zero bias (the softmax loss' spec)
    assert head.bias.abs().max() == 0
    assert abs(head.weight.std().item() - 0.01) < 0.001  # 25 x 128 samples: sd of the sd ~ 0.0001
    assert {id(p) for p in (head.weight, head.bias)} <= ids  # the optimizer still holds them
    changed = _step(cfg, model)
    assert changed == {CLS + "weight", CLS + "bias"}


def test_reset_classifier_keeps_lws_scales_fresh():
    cfg, model = _model("MODEL.LT.LWS", True)
    head = model.roi_heads.box_predictor.cls_score
    with torch.no_grad():
        head.weight_scale.fill_(7.0)
    reset_classifiers(model)
    assert torch.equal(head.weight_scale, torch.ones_like(head.weight_scale))


# ---------------------------------------------------------------- the lt_shapes configs (slow)
def _tiny(config, out, *opts):
    from detectron2.utils.env import seed_all_rng

    seed_all_rng(0)
    cfg = lt_cfg(os.path.join(ROOT, "configs", "lt_shapes", config))
    cfg.merge_from_list(
        ["SOLVER.MAX_ITER", 3, "SOLVER.IMS_PER_BATCH", 2, "SOLVER.WARMUP_ITERS", 1]
        + ["SOLVER.STEPS", "(2,)", "DATALOADER.NUM_WORKERS", 0, "DATASETS.TEST", "()"]
        + ["TEST.EVAL_PERIOD", 0, "OUTPUT_DIR", str(out)]
        + list(opts)
    )
    return cfg


@pytest.fixture(scope="module")
def softmax_weights(tmp_path_factory):
    out = tmp_path_factory.mktemp("softmax")
    t = LTTrainer(_tiny("faster_rcnn_tiny_softmax.yaml", out))
    t.resume_or_load(resume=False)
    t.train()
    path = str(out / "model_final.pth")
    return path, torch.load(path, weights_only=True)["model"]


def _train(config, out, weights):
    t = LTTrainer(_tiny(config, out, "MODEL.WEIGHTS", weights))
    t.resume_or_load(resume=False)
    start = {k: v.detach().clone() for k, v in t.model.state_dict().items()}
    t.train()
    return t, start


@pytest.mark.slow
def test_lt_shapes_crt_config_runs(tmp_path, softmax_weights):
    from lt_detectron.data.samplers import ResumableClassAwareSampler

    path, ckpt = softmax_weights
    t, start = _train("faster_rcnn_tiny_crt_decoupled.yaml", tmp_path, path)
    assert isinstance(t.data_loader.lt_sampler, ResumableClassAwareSampler)
    # the run started from the softmax weights with a fresh classifier ...
    assert not torch.equal(start[CLS + "weight"], ckpt[CLS + "weight"])
    end = t.model.state_dict()
    for k, v in ckpt.items():
        if k in end and not k.startswith(CLS):
            assert torch.equal(end[k], v), k  # ... and trained nothing else
    assert not torch.equal(end[CLS + "weight"], start[CLS + "weight"])
    # --resume of the finished run keeps its trained classifier
    trained = end[CLS + "weight"].clone()
    t2 = LTTrainer(_tiny("faster_rcnn_tiny_crt_decoupled.yaml", tmp_path, "MODEL.WEIGHTS", path))
    t2.resume_or_load(resume=True)
    assert torch.equal(t2.model.state_dict()[CLS + "weight"], trained)


@pytest.mark.slow
def test_lt_shapes_lws_config_runs(tmp_path, softmax_weights):
    path, ckpt = softmax_weights
    t, start = _train("faster_rcnn_tiny_lws_decoupled.yaml", tmp_path, path)
    end = t.model.state_dict()
    for k, v in ckpt.items():
        if k in end:
            assert torch.equal(end[k], v), k  # weight and bias too: only the scales train
    assert torch.equal(start[CLS + "weight_scale"], torch.ones(25))
    assert not torch.equal(end[CLS + "weight_scale"], start[CLS + "weight_scale"])


@pytest.mark.slow
def test_lt_shapes_eqlv1_config_runs(tmp_path):
    from lt_detectron.losses import EQLv1Loss

    t = LTTrainer(_tiny("faster_rcnn_tiny_eqlv1.yaml", tmp_path))
    t.resume_or_load(resume=False)
    t.train()
    loss = t.model.roi_heads.box_predictor.cls_loss
    assert isinstance(loss, EQLv1Loss) and 0 < int(loss.tail.sum()) < 24
    assert os.path.isfile(tmp_path / "model_final.pth")


def _reset_worker(rank, world, init_file, out_dir):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.manual_seed(100 + rank)  # ranks whose global RNGs differ
        _, model = _model("MODEL.LT.REINIT_CLS", True)
        reset_classifiers(model)
        w = model.roi_heads.box_predictor.cls_score.weight.detach()
        torch.save({"w": w, "next": torch.rand(1)}, os.path.join(out_dir, "rank%d.pt" % rank))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_crt_reinit_is_identical_on_every_rank(tmp_path):
    """DDP broadcast the parameters when it wrapped the model, before the re-initialisation: every
    rank must draw the same fresh classifier (and keep its own RNG stream)."""
    import torch.multiprocessing as mp

    mp.spawn(_reset_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / ("rank%d.pt" % r)) for r in (0, 1))
    assert torch.equal(r0["w"], r1["w"])
    assert not torch.equal(r0["next"], r1["next"])  # the global RNGs were left alone
