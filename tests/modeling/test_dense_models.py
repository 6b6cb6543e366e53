"""Dense meta-architectures (LongTailRetinaNet, FCOS, CenterNet) x every registered dense loss:
configs load, models build and train/infer on random CPU images, BOFL lambda=0 equals focal, BOFL epoch
boundaries, resume, and hypothesis property tests."""

import glob
import math
import os

import numpy as np
import pytest
import torch
from detectron2.modeling import META_ARCH_REGISTRY, build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage
from hypothesis import given, settings, strategies as st

from lt_detectron.losses import DENSE_LOSS_REGISTRY, DenseBatch, DenseLoss, build_dense_loss
from lt_detectron.modeling.dense.centernet import CenterNet
from lt_detectron.modeling.dense.fcos import FCOS
from lt_detectron.modeling.dense.retinanet import LongTailRetinaNet
from lt_detectron.utils.testing import (
    TINY_DENSE_COUNTS,
    TINY_DENSE_DATASET,
    build_tiny_dense,
    tiny_dense_cfg,
    tiny_dense_inputs,
)
from lt_detectron.utils.testing import lt_cfg

from tests._data import ROOT

DATASET = TINY_DENSE_DATASET
COUNTS = TINY_DENSE_COUNTS  # class 4 has no training instance
C = len(COUNTS)
ARCHS = ["LongTailRetinaNet", "FCOS", "CenterNet"]
LOSSES = DENSE_LOSS_REGISTRY.names()  # every registered method, at collection time


def _train_losses(model, inputs, iteration=0):
    model.train()
    with EventStorage(iteration) as storage:
        losses = model(inputs)
    return losses, storage


# ------------------------------------------------------------------ configs
CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "dense", "*.yaml")))


def test_dense_configs_exist():
    names = {os.path.basename(p) for p in CONFIGS}
    for base in ("Base-LT-RetinaNet.yaml", "Base-FCOS.yaml", "Base-CenterNet.yaml"):
        assert base in names
    for ds in ("coco", "coco_lt", "lvis_v1"):
        for arch in ("fcos_R_50_FPN_1x", "centernet_R_50_FPN_140e"):
            assert "bofl_%s_%s.yaml" % (arch, ds) in names
            assert "focal_%s_%s.yaml" % (arch, ds) in names


@pytest.mark.parametrize("path", CONFIGS, ids=[os.path.basename(p) for p in CONFIGS])
def test_dense_config_loads(path):
    cfg = lt_cfg(path)
    arch = cfg.MODEL.META_ARCHITECTURE
    assert arch in META_ARCH_REGISTRY
    name = os.path.basename(path)
    if name.startswith("Base-"):
        return
    key = {"LongTailRetinaNet": "RETINANET", "FCOS": "FCOS", "CenterNet": "CENTERNET"}[arch]
    num_classes = cfg.MODEL[key].NUM_CLASSES
    loss = name.split("_")[0]
    assert cfg.MODEL.LT.DENSE_LOSS == loss
    if name.endswith("_lvis_v1.yaml"):
        assert num_classes == 1203 and cfg.DATASETS.TRAIN == ("lvis_v1_train",)
        assert cfg.DATASETS.TEST == ("lvis_v1_val",) and cfg.TEST.DETECTIONS_PER_IMAGE == 300
    elif name.endswith("_coco_lt.yaml"):
        assert (
            num_classes == 80
            and cfg.DATASETS.TRAIN == ("coco_lt_train",)
            and cfg.DATASETS.TEST == ("coco_lt_val",)
        )
    else:
        assert num_classes == 80 and cfg.DATASETS.TRAIN == ("coco_2017_train",)
    if loss == "bofl":
        b = cfg.MODEL.LT.BOFL
        assert cfg.SOLVER.LR_SCHEDULER_NAME == "WarmupCosineLR"
        assert b.KAPPA == (1.0 if name.endswith("_coco.yaml") else 0.05)
        if arch == "CenterNet":
            assert (b.ETA, b.BATCH_COUNTS, b.DEFERRED_EPOCHS) == (0.8, "image", 5)
        else:
            assert (b.ETA, b.BATCH_COUNTS, b.DEFERRED_EPOCHS) == (0.999, "batch", 3)
        if name.endswith("_coco.yaml"):
            assert b.TOTAL_EPOCHS == (140 if arch == "CenterNet" else 12)


# ------------------------------------------------------------------ build, train, infer
def _check_finite_step(model, inputs):
    losses, _ = _train_losses(model, inputs)
    assert losses and all(torch.isfinite(v).all() for v in losses.values()), losses
    model.zero_grad()
    sum(losses.values()).backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    return losses


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("arch", ARCHS)
def test_dense_model_trains_and_infers(arch, loss):
    model = build_tiny_dense(arch, loss)
    assert isinstance(
        model, {"LongTailRetinaNet": LongTailRetinaNet, "FCOS": FCOS, "CenterNet": CenterNet}[arch]
    )
    assert isinstance(model.cls_loss, DenseLoss) and type(
        model.cls_loss
    ) is DENSE_LOSS_REGISTRY.get(loss)
    with_boxes = _check_finite_step(model, tiny_dense_inputs(with_boxes=True))
    assert (
        with_boxes[
            {"LongTailRetinaNet": "loss_cls", "FCOS": "loss_fcos_cls", "CenterNet": "loss_hm"}[arch]
        ]
        > 0
    )
    _check_finite_step(model, tiny_dense_inputs(with_boxes=False))
    model.eval()
    with torch.no_grad():
        out = model(tiny_dense_inputs(n=2, h=64, w=64, out_hw=(128, 96)))
    assert len(out) == 2
    for o in out:
        inst = o["instances"]
        assert inst.image_size == (128, 96)  # detector_postprocess to the requested size
        for f in ("pred_boxes", "scores", "pred_classes"):
            assert inst.has(f)
        if len(inst):
            b = inst.pred_boxes.tensor
            assert (b[:, 0] >= 0).all() and (b[:, 2] <= 96).all() and (b[:, 3] <= 128).all()
            assert ((inst.pred_classes >= 0) & (inst.pred_classes < C)).all()


def test_centernet_outputs_detections_at_stride():
    model = build_tiny_dense("CenterNet", "focal")
    model.eval()
    with torch.no_grad():
        out = model(tiny_dense_inputs(n=1))
    # CenterNet keeps the top-K local maxima (score > 0) with no threshold by default
    inst = out[0]["instances"]
    assert 0 < len(inst) <= min(model.test_topk, model.max_detections_per_image)
    assert (inst.scores > 0).all() and (inst.scores[:-1] >= inst.scores[1:]).all()
    assert model.stride == 4


def test_tiny_retinanet_head_has_groupnorm():
    """Base-RetinaNet-Tiny.yaml's GN head builds: detectron2 0.6 probed the norm with
    get_norm("GN", 1), i.e. GroupNorm(32, 1), which raises; the installer patches it."""
    cfg = lt_cfg(os.path.join(ROOT, "configs", "lt_shapes", "retinanet_tiny_focal.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    model = build_model(cfg)
    assert cfg.MODEL.RETINANET.NORM == "GN"
    for subnet in (model.head.cls_subnet, model.head.bbox_subnet):
        gns = [m for m in subnet if isinstance(m, torch.nn.GroupNorm)]
        assert len(gns) == cfg.MODEL.RETINANET.NUM_CONVS
        assert all(g.num_groups == 32 and g.num_channels == cfg.MODEL.FPN.OUT_CHANNELS for g in gns)


@pytest.mark.parametrize("arch", ARCHS)
def test_heads_give_predict_probs_classes_on_dim_1(arch):
    """The contract of ``DenseLoss.predict_probs``: every head passes logits with the classes on dim 1
    (a loss with per-class test scores, ECM's ``DENSE_TEST_SCORE trained``, relies on it), and the
    scores it returns are the ones the detections carry."""
    model = build_tiny_dense(arch, "ecm")
    seen = []

    def spy(logits):
        seen.append(tuple(logits.shape))
        return 0.25 + 0.5 * torch.sigmoid(logits)  # in [0.25, 0.75]: visibly not the head's sigmoid

    model.cls_loss.predict_probs = spy
    model.eval()
    with torch.no_grad():
        inst = model(tiny_dense_inputs(n=1))[0]["instances"]
    assert seen and all(len(sh) >= 2 and sh[1] == C for sh in seen), seen
    assert len(inst) and float(inst.scores.max()) <= 0.75 + 1e-6
    model.cls_loss.test_score = "trained"
    del model.cls_loss.predict_probs  # back to the class's method
    with torch.no_grad():
        model(tiny_dense_inputs(n=1))  # runs with sigma(2z + delta) on every head's layout


def _cls_bias(model):
    return {
        "LongTailRetinaNet": lambda m: m.head.cls_score.bias,
        "FCOS": lambda m: m.head.cls_logits.bias,
        "CenterNet": lambda m: m.head.heat[-1].bias,
    }[type(model).__name__](model)


@pytest.mark.parametrize("arch", ARCHS)
def test_prior_bias_comes_from_the_loss(arch):
    """Every head's classification bias is the loss's prior_logits: logit(PRIOR_PROB) for focal (the
    value Detectron2's and our heads set themselves) and for ECM with DENSE_PRIOR z; with ECM's default
    DENSE_PRIOR trained the bias b_c with sigma(2 b_c + delta_c) = PRIOR_PROB (hand formula); a bad
    value names the key."""
    prior = {"LongTailRetinaNet": 0.01, "FCOS": 0.01, "CenterNet": 0.1}[arch]
    focal = _cls_bias(build_tiny_dense(arch, "focal"))
    assert torch.equal(focal, torch.full_like(focal, -math.log((1 - prior) / prior)))
    cfg = tiny_dense_cfg(arch, "ecm")
    assert cfg.MODEL.LT.ECM.DENSE_PRIOR == "trained"  # the default
    model = build_model(cfg)
    cfg.MODEL.LT.ECM.DENSE_PRIOR = "z"
    plain = _cls_bias(build_model(cfg))
    assert torch.equal(plain, focal)  # DENSE_PRIOR z: the usual init
    b, delta = _cls_bias(model).double(), model.cls_loss.margins.double()
    A = b.numel() // C
    assert A * C == b.numel()
    torch.testing.assert_close(
        torch.sigmoid(2 * b + delta.repeat(A)), torch.full_like(b, prior), rtol=1e-6, atol=1e-7
    )
    assert (
        b.view(A, C)[:, 0] < b.view(A, C)[:, -1]
    ).all()  # class 0 has the most instances: the lowest bias
    cfg.MODEL.LT.ECM.DENSE_PRIOR = "sigma"
    with pytest.raises(ValueError, match="DENSE_PRIOR"):
        build_model(cfg)


# ------------------------------------------------------------------ BOFL: lambda = 0 equals focal
def _stats():
    from lt_detectron import get_class_stats

    return get_class_stats((DATASET,))


def _swap_loss(model, cfg_arch, loss):
    model.cls_loss = build_dense_loss(tiny_dense_cfg(cfg_arch, loss), C, _stats())


@pytest.mark.parametrize("arch", ARCHS)
def test_bofl_lambda0_equals_focal_exactly(arch):
    # 10 iterations per epoch (tiny_dense_cfg): 1 deferred epoch = iterations 0..19
    model = build_tiny_dense(arch, "focal")
    inputs = tiny_dense_inputs()

    def run(it):
        if hasattr(model, "loss_normalizer"):
            del model.loss_normalizer  # RetinaNet's EMA normaliser: same starting state
        return _train_losses(model, inputs, it)

    base = run(5)[0]
    _swap_loss(model, arch, "bofl")
    assert model.cls_loss.current_lambda(19) == 0.0
    same, storage = run(19)
    assert storage.latest()["bofl/lambda"][0] == 0.0
    for k in base:
        assert torch.equal(base[k], same[k]), (k, base[k], same[k])
    # lambda > 0 changes the classification loss (the test can fail)
    later, storage = run(30)
    assert storage.latest()["bofl/lambda"][0] == pytest.approx(2 / 3)
    cls_key = [k for k in base if "cls" in k or "hm" in k][0]
    assert not torch.equal(base[cls_key], later[cls_key])


def test_bofl_weights_change_only_at_epoch_boundaries():
    model = build_tiny_dense("FCOS", "bofl")
    loss = model.cls_loss
    gt = [torch.tensor([0, 1, 1]), torch.tensor([3])]
    # T = 4, d = 1: lambda(e) = clip((floor(e) - 1) / 3, 0, 1)
    expected = {
        0: 0.0,
        9: 0.0,
        19: 0.0,
        20: 1 / 3,
        29: 1 / 3,
        30: 2 / 3,
        39: 2 / 3,
        40: 1.0,
        500: 1.0,
    }
    for it, lam in expected.items():
        assert loss.current_lambda(it) == pytest.approx(lam), it
    w = {it: loss.class_weights(gt, it)[0] for it in (19, 20, 25, 29, 30)}
    assert torch.equal(w[20], w[25]) and torch.equal(w[20], w[29])
    assert not torch.equal(w[19], w[20]) and not torch.equal(w[29], w[30])
    # independent value at lambda = 1/3: (1 + kappa lam (alpha - 1)) * (1 + lam (eta - 1)) ** n (batch counts)
    n = np.array(COUNTS, dtype=np.float64)
    alpha = np.where(n > 0, n.sum() / (len(n) * np.maximum(n, 1)), 1.0)
    counts = np.array([1, 2, 0, 1, 0])
    lam = 1 / 3
    ref = (1 + lam * (alpha - 1)) * (1 + lam * (0.8 - 1)) ** counts
    np.testing.assert_allclose(w[20].reshape(-1).numpy(), ref, rtol=1e-6)
    # the per-iteration ablation changes within an epoch
    cfg = tiny_dense_cfg("FCOS", "bofl")
    cfg.MODEL.LT.BOFL.PER_ITERATION = True
    per_it = build_dense_loss(cfg, C, _stats())
    assert per_it.current_lambda(25) == pytest.approx((2.5 - 1) / 3)
    assert per_it.current_lambda(21) != per_it.current_lambda(22)


def test_centernet_bofl_weights_are_per_image():
    model = build_tiny_dense("CenterNet", "bofl")
    w, lam = model.cls_loss.class_weights(
        [torch.tensor([0, 0]), torch.tensor([], dtype=torch.long)], 100
    )
    assert lam == 1.0 and w.shape == (2, C)
    assert torch.allclose(
        w[0, 0] / w[1, 0], torch.tensor(0.8**2)
    )  # eta^{n_{i,k}} with k = one image
    assert torch.allclose(w[0, 1:], w[1, 1:])


# ------------------------------------------------------------------ resume
def test_resume_restores_eqlv2_buffers_and_bofl_lambda():
    model = build_tiny_dense("FCOS", "eqlv2")
    for it in range(2):
        losses, _ = _train_losses(model, tiny_dense_inputs(seed=it), it)
        sum(losses.values()).backward()
    sd = model.state_dict()
    for b in ("pos_grad", "neg_grad", "pos_neg"):
        assert "cls_loss.%s" % b in sd
    assert sd["cls_loss.pos_grad"].abs().sum() > 0
    fresh = build_tiny_dense("FCOS", "eqlv2", seed=1)
    assert not torch.equal(fresh.state_dict()["cls_loss.pos_neg"], sd["cls_loss.pos_neg"])
    fresh.load_state_dict(sd)
    for b in ("pos_grad", "neg_grad", "pos_neg"):
        assert torch.equal(getattr(fresh.cls_loss, b), getattr(model.cls_loss, b))
    a, _ = _train_losses(model, tiny_dense_inputs(seed=7), 2)
    b, _ = _train_losses(fresh, tiny_dense_inputs(seed=7), 2)
    for k in a:
        assert torch.equal(a[k], b[k])
    # BOFL: lambda is a pure function of the iteration, identical for a resumed model
    m1, m2 = build_tiny_dense("CenterNet", "bofl"), build_tiny_dense("CenterNet", "bofl", seed=3)
    for it in (0, 15, 27, 38, 1000):
        assert m1.cls_loss.current_lambda(it) == m2.cls_loss.current_lambda(it)
        with EventStorage(it):  # default iteration comes from the event storage
            assert m2.cls_loss.current_lambda() == m1.cls_loss.current_lambda(it)


# ------------------------------------------------------------------ property tests
_MODELS = {}


def _cached(arch, loss):
    if (arch, loss) not in _MODELS:
        _MODELS[(arch, loss)] = build_tiny_dense(arch, loss)
    return _MODELS[(arch, loss)]


@settings(max_examples=20, deadline=None)
@given(
    loss=st.sampled_from(LOSSES),
    scale=st.floats(0.0, 80.0),
    n_pos=st.integers(0, 6),
    seed=st.integers(0, 2**16),
    zero_class=st.booleans(),
)
def test_property_fcos_losses_finite(loss, scale, n_pos, seed, zero_class):
    """FCOS.losses: logits in [-80, 80], any number of positives (0 included), labels of the class with
    zero training instances -> finite losses and gradients."""
    model = _cached("FCOS", loss)
    model.train()
    g = torch.Generator().manual_seed(seed)
    N, L = 2, 40
    logits = ((torch.rand(N, L, C, generator=g) * 2 - 1) * scale).requires_grad_()
    regs = (torch.rand(N, L, 4, generator=g) * 30).requires_grad_()
    ctrs = ((torch.rand(N, L, 1, generator=g) * 2 - 1) * scale).requires_grad_()
    labels = torch.full((N, L), C, dtype=torch.long)
    idx = torch.randperm(N * L, generator=g)[:n_pos]
    labels.view(-1)[idx] = 4 if zero_class else torch.randint(0, C, (n_pos,), generator=g)
    reg_t = torch.rand(N, L, 4, generator=g) * 30 + 0.5
    gt = [labels[i][labels[i] < C] for i in range(N)]
    anchors = [
        Boxes(torch.zeros(L, 4))
    ]  # points at the origin: the matched boxes are at the ltrb reg_t
    matched = [Boxes(torch.cat([-reg_t[i, :, :2], reg_t[i, :, 2:]], dim=1)) for i in range(N)]
    with EventStorage(0):
        out = model.losses(anchors, [logits], list(labels), [regs], matched, [ctrs], gt)
    total = sum(out.values())
    assert torch.isfinite(total)
    total.backward()
    for t in (logits, regs, ctrs):
        assert torch.isfinite(t.grad).all()


@settings(max_examples=20, deadline=None)
@given(
    loss=st.sampled_from(LOSSES),
    scale=st.floats(0.0, 80.0),
    n_boxes=st.integers(0, 3),
    seed=st.integers(0, 2**16),
)
def test_property_centernet_heatmap_loss_finite(loss, scale, n_boxes, seed):
    """CenterNet heat-map loss of every method: logits in [-80, 80], 0..3 objects (incl. the zero-count
    class) -> finite loss and gradient."""
    from lt_detectron.modeling.dense.centernet import centernet_targets

    model = _cached("CenterNet", loss)
    model.train()
    g = torch.Generator().manual_seed(seed)
    insts = []
    for _ in range(2):
        inst = Instances((64, 64))
        xy = torch.rand(n_boxes, 2, generator=g) * 40
        wh = torch.rand(n_boxes, 2, generator=g) * 20 + 2
        inst.gt_boxes = Boxes(torch.cat([xy, xy + wh], 1))
        inst.gt_classes = torch.randint(0, C, (n_boxes,), generator=g)
        insts.append(inst)
    heat = centernet_targets(insts, C, (16, 16), 4)[0]
    logits = ((torch.rand(2, C, 16, 16, generator=g) * 2 - 1) * scale).requires_grad_()
    with EventStorage(0):
        val = model.cls_loss.heatmap(
            logits, heat, DenseBatch(gt_classes_per_image=[i.gt_classes for i in insts])
        )
    assert torch.isfinite(val)
    val.backward()
    assert torch.isfinite(logits.grad).all()
