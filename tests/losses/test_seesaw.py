"""Seesaw loss: parity with an independent transcription of the authors' (mmdetection) computation, over
several iterations of the cumulative counts; hand-computed factors; state, non-finite batches, two ranks;
the protocol (classifier spec, config, inference scores)."""

import math
import os
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

from lt_detectron.losses import SeesawLoss, seesaw_cross_entropy, seesaw_logit_offsets
from lt_detectron.utils.testing import lt_cfg
from tests._data import ROOT

D = torch.float64


# ------------------------------------------------------------------ independent transcription (mmdet layout)
class MMDetSeesawReference:
    """Plain-torch rewrite of the authors' ``SeesawLoss`` in mmdetection's layout and order: logits (N, C+2)
    = [C class logits, objectness (pos, neg)], labels in [0, C] with C = background, ``cum_samples`` of C+1
    entries (background counted too) updated with a per-label loop BEFORE the loss; the class loss on the
    positives and the objectness CE on all samples, both ``reduction='mean'`` with mmdetection's
    ``avg_factor`` = number of samples with a positive label weight (all of them), ``loss_weight`` on both.
    Factors built the authors' way: a (C, C) ratio matrix, ``pow``, 0/1 index masks, ``log`` of the product,
    masked by ``1 - one_hot``."""

    def __init__(self, num_classes, p=0.8, q=2.0, eps=1e-2, loss_weight=1.0):
        self.C, self.p, self.q, self.eps, self.loss_weight = num_classes, p, q, eps, loss_weight
        self.cum_samples = torch.zeros(num_classes + 1, dtype=D)

    def class_loss(self, cls_score, labels, cum_samples):
        onehot = F.one_hot(labels, self.C)
        weights = cls_score.new_ones(onehot.size())
        if self.p > 0:
            ratio = cum_samples[None, :].clamp(min=1) / cum_samples[:, None].clamp(min=1)
            index = (ratio < 1.0).to(cls_score.dtype)
            weights = weights * (ratio.pow(self.p) * index + (1 - index))[labels, :]
        if self.q > 0:
            scores = F.softmax(cls_score.detach(), dim=1)
            self_scores = scores[torch.arange(len(scores)), labels]
            ratio = scores / self_scores[:, None].clamp(min=self.eps)
            index = (ratio > 1.0).to(cls_score.dtype)
            weights = weights * (ratio.pow(self.q) * index + (1 - index))
        cls_score = cls_score + weights.log() * (1 - onehot)
        return F.cross_entropy(cls_score, labels, reduction="none")

    def __call__(self, cls_score, labels):
        for u in labels.unique():
            self.cum_samples[u] += (labels == u).sum()
        avg_factor = max(float(labels.numel()), 1.0)
        pos = labels < self.C
        obj_labels = (labels == self.C).long()
        loss_classes = self.class_loss(
            cls_score[:, :-2][pos], labels[pos], self.cum_samples[: self.C]
        )
        loss_objectness = F.cross_entropy(cls_score[:, -2:], obj_labels, reduction="none")
        return self.loss_weight * (
            loss_classes.sum() / avg_factor + loss_objectness.sum() / avg_factor
        )

    def get_activation(self, cls_score):
        obj = F.softmax(cls_score[..., -2:], dim=-1)
        return torch.cat(
            [F.softmax(cls_score[..., :-2], dim=-1) * obj[..., [0]], obj[..., [1]]], dim=-1
        )


def _batch(seed, R, C, fg_frac=0.4, classes=None, scale=4.0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(R, C + 2, generator=g, dtype=D) * scale - 1.0
    pool = torch.as_tensor(classes if classes is not None else range(C))
    gt = pool[torch.randint(0, len(pool), (R,), generator=g)]
    gt[torch.rand(R, generator=g) > fg_frac] = C
    return z, gt


def _to_d2(z, gt):
    """mmdetection layout -> ours. Both put the C class logits first, then [object, background], and use
    label C for background (mmdetection v2+ and Detectron2 agree), so the map is the identity; kept explicit
    so that the test states it."""
    return z.clone(), gt.clone()


def _sequence(C):
    """Batches with varied labels: tail classes unseen at first, an all-background batch, an empty batch."""
    return [
        _batch(
            1, 40, C, classes=[0, 0, 0, 1]
        ),  # classes 2..C-1 unseen so far (counts clamped to 1)
        _batch(2, 32, C, classes=[0, 1, 2]),
        _batch(3, 24, C, fg_frac=0.0),  # all background
        (torch.zeros(0, C + 2, dtype=D), torch.zeros(0, dtype=torch.long)),  # empty
        _batch(4, 48, C, fg_frac=0.6),  # every class, a first sighting of the tail
        _batch(5, 36, C, fg_frac=0.9, classes=[C - 1, C - 1, 0]),
    ]


@pytest.mark.parametrize(
    "p,q,eps,w",
    [(0.8, 2.0, 1e-2, 1.0), (0.0, 2.0, 1e-2, 1.0), (0.8, 0.0, 1e-2, 0.5), (1.5, 1.0, 0.2, 2.0)],
)
def test_parity_with_the_authors_computation_over_iterations(p, q, eps, w):
    C = 6
    ours = SeesawLoss(C, p=p, q=q, eps=eps, loss_weight=w).train()
    ref = MMDetSeesawReference(C, p, q, eps, w)
    compensated = 0
    for z_mm, gt_mm in _sequence(C):
        z_d2, gt_d2 = _to_d2(z_mm, gt_mm)
        z_mm.requires_grad_(True)
        z_d2.requires_grad_(True)
        expected = ref(z_mm, gt_mm)
        got = ours(z_d2, gt_d2)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-8)
        if z_mm.shape[0]:
            expected.backward()
            got.backward()
            torch.testing.assert_close(z_d2.grad, z_mm.grad, rtol=1e-5, atol=1e-8)
            fg = gt_mm < C
            if fg.any():  # the factors were really exercised (not all 1)
                off = seesaw_logit_offsets(
                    z_mm[fg, :C].detach(), gt_mm[fg], ours.cum_samples, p, q, eps
                )
                compensated += int((off.abs() > 1e-3).sum())
        torch.testing.assert_close(ours.cum_samples, ref.cum_samples[:C], rtol=0, atol=0)
    assert compensated > 0
    assert ours.cum_samples.tolist() == ref.cum_samples[:C].tolist() and ours.cum_samples.sum() > 0


def test_seesaw_cross_entropy_matches_the_fused_loss():
    """The autograd helper and the module's fused function agree (loss and gradient), incl. fp32."""
    C = 5
    z, gt = _batch(7, 30, C, fg_frac=1.0)
    counts = torch.tensor([50.0, 20.0, 5.0, 1.0, 0.0], dtype=D)
    m = SeesawLoss(C).eval()
    m.cum_samples.copy_(counts)
    for dtype, tol in ((D, 1e-12), (torch.float32, 1e-5)):
        a = z.detach().to(dtype).clone().requires_grad_(True)
        b = a.detach().clone().requires_grad_(True)
        (
            seesaw_cross_entropy(a[:, :C], gt, counts) / 30
            + F.cross_entropy(a[:, C:], (gt == C).long())
        ).backward()
        m(b, gt).backward()
        torch.testing.assert_close(b.grad, a.grad, rtol=tol, atol=tol)


def test_gradcheck_of_the_fused_function():
    """With q = 0 the offsets are constants (counts only), so the fused backward is the true gradient. (With
    q > 0 it deliberately ignores the dependence of the compensation on z, as the authors detach the scores:
    the parity test covers that case.)"""
    from lt_detectron.losses.seesaw import _SeesawFunction

    C = 4
    z, gt = _batch(8, 10, C, fg_frac=0.6, scale=2.0)
    counts = torch.tensor([30.0, 3.0, 1.0, 0.0], dtype=D)
    z.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda x: _SeesawFunction.apply(x, gt, counts, 0.8, 0.0, 1e-2), (z,)
    )


def test_hand_computed_factors_on_three_classes():
    """N = (100, 10, 1), class logits (0, 1, 2), p = 0.8, q = 2: for an ROI of class 0,
    M_01 = 0.1^0.8, M_02 = 0.01^0.8, C_01 = (e^1)^2, C_02 = (e^2)^2, so
    L_cls = log(1 + 0.1^0.8 e^2 e^1 + 0.01^0.8 e^4 e^2); for an ROI of the rarest class 2 both factors are 1
    (no rarer class, the largest score) and L_cls = plain CE."""
    m = SeesawLoss(3).train()
    m.cum_samples.copy_(
        torch.tensor([99.0, 10.0, 1.0], dtype=D)
    )  # + this batch's class-0 ROI = 100
    z = torch.tensor([[0.0, 1.0, 2.0, 0.5, -0.5]], dtype=D, requires_grad=True)
    loss = m(z, torch.tensor([0]))
    assert m.cum_samples.tolist() == [100.0, 10.0, 1.0]  # counted BEFORE the loss, as the authors
    l_cls = math.log(1 + 0.1**0.8 * math.e**3 + 0.01**0.8 * math.e**6)
    l_obj = math.log(1 + math.exp(-0.5 - 0.5))
    assert abs(loss.item() - (l_cls + l_obj)) < 1e-12
    off = seesaw_logit_offsets(z[:, :3], torch.tensor([0]), m.cum_samples)
    expected = [0.0, 2.0 - 0.8 * math.log(10), 4.0 - 1.6 * math.log(10)]
    assert max(abs(a - b) for a, b in zip(off[0].tolist(), expected)) < 1e-12
    # gradient: softmax of the adjusted logits minus one-hot (offsets are constants), objectness softmax
    zp = torch.tensor(expected, dtype=D) + torch.tensor([0.0, 1.0, 2.0], dtype=D)
    g_cls = torch.softmax(zp, 0) - torch.tensor([1.0, 0, 0], dtype=D)
    g_obj = torch.softmax(torch.tensor([0.5, -0.5], dtype=D), 0) - torch.tensor([1.0, 0], dtype=D)
    loss.backward()
    torch.testing.assert_close(z.grad[0], torch.cat([g_cls, g_obj]), rtol=0, atol=1e-12)

    m.eval()
    tail = m(torch.tensor([[0.0, 1.0, 2.0, 0.0, 0.0]], dtype=D), torch.tensor([2]))
    assert abs(tail.item() - ((math.log(1 + math.e + math.e**2) - 2.0) + math.log(2))) < 1e-12
    # eps: the label's score is clamped at eps: class 0 with sigma_0 = 1e-6 < eps = 0.01
    z0 = torch.tensor([[0.0, math.log(1e6 - 1.0), -50.0]], dtype=D)  # sigma ~ (1e-6, 1 - 1e-6, ~0)
    off = seesaw_logit_offsets(
        z0, torch.tensor([0]), torch.tensor([1.0, 1.0, 1.0]), p=0.8, q=2.0, eps=0.01
    )
    assert (
        abs(off[0, 1].item() - 2.0 * math.log((1 - 1e-6) / 0.01)) < 1e-9 and off[0, 2].item() == 0.0
    )


def test_counts_in_state_dict_and_resume():
    C = 5
    batches = _sequence(C)
    m = SeesawLoss(C).train()
    for z, gt in batches[:3]:
        m(z, gt)
    sd = m.state_dict()
    assert (
        set(sd) == {"cum_samples"} and sd["cum_samples"].dtype == D and sd["cum_samples"].sum() > 0
    )
    resumed = SeesawLoss(C).train()
    resumed.load_state_dict(sd)
    assert torch.equal(resumed.cum_samples, m.cum_samples)
    for z, gt in batches[3:]:
        assert torch.equal(resumed(z, gt), m(z, gt))
    assert torch.equal(resumed.cum_samples, m.cum_samples)
    # an mmdetection-style float32 buffer loads too (copied into the float64 buffer)
    resumed.load_state_dict({"cum_samples": m.cum_samples.float()})
    assert resumed.cum_samples.dtype == D and torch.equal(resumed.cum_samples, m.cum_samples)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_nonfinite_batch_leaves_counts_unchanged(bad, logger_warnings):
    C = 4
    good, nxt = _batch(30, 32, C), _batch(31, 32, C)
    m, ref = SeesawLoss(C).train(), SeesawLoss(C).train()
    m(*good)
    ref(*good)
    z, gt = _batch(32, 32, C, fg_frac=1.0)
    z[5, 7 % (C + 2)] = bad
    with logger_warnings("lt_detectron.losses.seesaw") as rec:
        m(z, gt)
    assert torch.equal(m.cum_samples, ref.cum_samples)
    assert m.num_nonfinite_skips == 1 and len(rec.records) == 1
    assert "SeesawLoss" in rec.records[0] and "cum_samples" in rec.records[0]
    assert torch.equal(m(*nxt), ref(*nxt)) and torch.equal(m.cum_samples, ref.cum_samples)


def test_eval_mode_freezes_counts_and_empty_batch():
    C = 3
    m = SeesawLoss(C).eval()
    z, gt = _batch(40, 16, C)
    m(z, gt)
    assert m.cum_samples.eq(0).all()
    m.train()
    e = torch.zeros(0, C + 2, requires_grad=True)
    loss = m(e, torch.zeros(0, dtype=torch.long))
    loss.backward()
    assert loss.item() == 0.0 and e.grad.shape == (0, C + 2) and m.cum_samples.eq(0).all()
    assert m.num_nonfinite_skips == 0


def test_half_precision_logits():
    C = 6
    z, gt = _batch(41, 24, C)
    m = SeesawLoss(C).train()
    zh = z.half().requires_grad_(True)
    loss = m(zh, gt)
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss) and zh.grad.dtype == torch.float16
    ref = SeesawLoss(C).train()
    torch.testing.assert_close(loss.double(), ref(z.half().double(), gt), rtol=1e-4, atol=1e-5)


def test_retain_graph_backward_twice():
    C = 4
    z, gt = _batch(42, 20, C)
    z.requires_grad_(True)
    loss = SeesawLoss(C).train()(z, gt)
    loss.backward(retain_graph=True)
    g1 = z.grad.clone()
    loss.backward()
    torch.testing.assert_close(z.grad, 2 * g1)


# ------------------------------------------------------------------------------------ protocol
def test_predict_probs_and_accuracy_logits():
    C = 7
    z, gt = _batch(50, 64, C)
    m = SeesawLoss(C)
    probs = m.predict_probs(z)
    assert probs.shape == (64, C + 1)
    torch.testing.assert_close(probs, MMDetSeesawReference(C).get_activation(z))
    torch.testing.assert_close(probs.sum(1), torch.ones(64, dtype=D))
    torch.testing.assert_close(probs[:, -1], torch.softmax(z[:, C:], 1)[:, 1])  # background last
    acc = m.accuracy_logits(z)
    assert acc.shape == (64, C + 1) and torch.equal(acc.argmax(1), probs.argmax(1))
    torch.testing.assert_close(acc.exp().double(), probs, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match=r"SeesawLoss expects logits \(R, 9\)"):
        m.predict_probs(z[:, :-1])
    with pytest.raises(ValueError, match="gt_classes"):
        m(z, gt[:-1])


def test_classifier_spec():
    m = SeesawLoss(10)
    spec = m.classifier_spec()
    assert (spec.num_logits, spec.kind, spec.bias, spec.init_std, spec.prior_prob) == (
        12,
        "linear",
        True,
        0.01,
        0.0,
    )
    assert (
        m.exact_gradient is False
    )  # the surrogate gradient (detached scores): no numerical check applies
    spec = SeesawLoss(10, classifier="cosine", cosine_scale=20.0).classifier_spec()
    assert (spec.num_logits, spec.kind, spec.scale, spec.bias) == (12, "cosine", 20.0, True)


def test_built_from_config_and_bad_values():
    from lt_detectron.losses import ROI_LOSS_REGISTRY, build_roi_loss

    cfg = lt_cfg()
    assert (
        cfg.MODEL.LT.SEESAW.P,
        cfg.MODEL.LT.SEESAW.Q,
        cfg.MODEL.LT.SEESAW.EPS,
        cfg.MODEL.LT.SEESAW.LOSS_WEIGHT,
    ) == (0.8, 2.0, 0.01, 1.0)
    cfg.MODEL.LT.ROI_LOSS = "seesaw"
    cfg.MODEL.LT.SEESAW.P = 0.5
    cfg.MODEL.LT.CLASSIFIER = "cosine"
    loss = build_roi_loss(cfg, 11)
    assert isinstance(loss, SeesawLoss) and ROI_LOSS_REGISTRY.get("Seesaw") is SeesawLoss
    assert (loss.num_classes, loss.p, loss.q, loss.eps, loss.loss_weight) == (
        11,
        0.5,
        2.0,
        0.01,
        1.0,
    )
    assert loss.classifier_spec().kind == "cosine"
    for key, value in (("P", -0.1), ("Q", float("nan")), ("EPS", 0.0), ("LOSS_WEIGHT", -1.0)):
        with pytest.raises(ValueError, match=r"MODEL\.LT\.SEESAW\.%s" % key):
            SeesawLoss(3, **{key.lower(): value})


# ------------------------------------------------------------------------------------------ two ranks
def _dist_worker(rank, world, init_file, out_dir, C, batches, bad_step):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        m = SeesawLoss(C).train()
        losses = []
        for step, (z, gt) in enumerate(batches):
            half = z.shape[0] // world
            zr, gtr = (
                z[rank * half : (rank + 1) * half].clone(),
                gt[rank * half : (rank + 1) * half],
            )
            if step == bad_step and rank == 1:  # only rank 1 sees the non-finite logit
                zr[0, 0] = float("nan")
            if step == 2 and rank == 0:  # rank 0 gets no ROI at all this step
                zr, gtr = zr[:0], gtr[:0]
            losses.append(m(zr, gtr).detach())
        torch.save(
            {
                "counts": m.cum_samples,
                "skips": m.num_nonfinite_skips,
                "losses": torch.stack(losses),
            },
            os.path.join(out_dir, f"rank{rank}.pt"),
        )
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_sum_the_counts(tmp_path):
    """Counts are SUM-all-reduced before the loss: both ranks hold the global counts, equal to one process
    counting both halves; rank 1's NaN makes both ranks skip that step; rank 0's empty step still syncs."""
    C = 5
    batches = [_batch(60 + i, 32, C, fg_frac=0.7) for i in range(4)]
    mp.spawn(
        _dist_worker,
        args=(2, str(tmp_path / "init"), str(tmp_path), C, batches, 1),
        nprocs=2,
        join=True,
    )
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert torch.equal(r0["counts"], r1["counts"]) and r0["skips"] == r1["skips"] == 1
    expected = torch.zeros(C, dtype=D)
    for step, (z, gt) in enumerate(batches):
        if step == 1:
            continue
        counted = gt[16:] if step == 2 else gt
        expected += torch.bincount(counted[counted < C], minlength=C).to(D)
    assert torch.equal(r0["counts"], expected)
    # the loss of rank 0's first step uses the global counts after that step (all-reduced, then the loss)
    single = SeesawLoss(C).eval()
    single.cum_samples.copy_(torch.bincount(batches[0][1][batches[0][1] < C], minlength=C).to(D))
    torch.testing.assert_close(r0["losses"][0], single(batches[0][0][:16], batches[0][1][:16]))


# ------------------------------------------------------------------------------------------ end to end
@pytest.mark.parametrize("classifier", ["linear", "cosine"])
def test_tiny_faster_rcnn_trains_two_iterations_on_the_embedded_set(tmp_path, classifier):
    """configs/lt_shapes/faster_rcnn_tiny_seesaw.yaml: C + 2 logits (normal(0, 0.01) weight, zero bias),
    2 training iterations on lt_shapes_train (counts accumulated, in the checkpoint, terms logged), then
    inference with (R, C+1) scores."""

    import lt_detectron  # noqa: F401  (registers the embedded set)
    from lt_detectron.engine import LTTrainer

    cfg = lt_cfg()
    root = Path(ROOT)
    cfg.merge_from_file(str(root / "configs" / "lt_shapes" / "faster_rcnn_tiny_seesaw.yaml"))
    cfg.merge_from_list(
        [
            "SOLVER.MAX_ITER",
            "2",
            "SOLVER.IMS_PER_BATCH",
            "2",
            "SOLVER.CHECKPOINT_PERIOD",
            "100",
            "DATALOADER.NUM_WORKERS",
            "0",
            "DATASETS.TEST",
            "()",
            "OUTPUT_DIR",
            str(tmp_path),
            "SOLVER.WARMUP_ITERS",
            "1",
            "MODEL.LT.CLASSIFIER",
            classifier,
        ]
    )
    torch.manual_seed(0)
    trainer = LTTrainer(cfg)
    trainer.resume_or_load(resume=False)
    predictor = trainer.model.roi_heads.box_predictor
    assert isinstance(predictor.cls_loss, SeesawLoss) and predictor.cls_score.out_features == 24 + 2
    w = predictor.cls_score.weight.detach()
    assert abs(w.std().item() - 0.01) < 0.002 and predictor.cls_score.bias.detach().eq(0).all()
    assert (type(predictor.cls_score).__name__ == "CosineClassifier") == (classifier == "cosine")
    trainer.train()
    counts = predictor.cls_loss.cum_samples
    assert counts.sum() > 0 and torch.equal(counts, counts.round())
    history = trainer.storage.histories()
    assert "seesaw/loss_cls_classes" in history and "seesaw/loss_cls_objectness" in history
    assert all(math.isfinite(v) for v, _ in history["loss_cls"].values())
    saved = torch.load(tmp_path / "model_final.pth", weights_only=False)["model"]
    assert torch.equal(saved["roi_heads.box_predictor.cls_loss.cum_samples"], counts)
    model = trainer.model.eval()
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
    inst = out[0]["instances"]
    assert torch.equal(predictor.cls_loss.cum_samples, counts)  # eval: frozen
    assert len(inst) == 0 or (inst.pred_classes.max() < 24 and (inst.scores <= 1).all())
