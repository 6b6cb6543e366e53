"""The loss protocol's contract, checked for EVERY registered loss (parametrized over the registries at
collection time: a new method registered in lt_detectron/losses is covered with no edit here).

Each loss is built the way the heads build it, ``build_roi_loss`` / ``build_dense_loss`` from
``get_cfg() + add_lt_config`` and a synthetic ``ClassStats`` (one class with no training instance), and
is then only asked through the protocol: ``classifier_spec``, ``forward(logits, labels, batch)``,
``heatmap``, ``predict_probs``, ``accuracy_logits``. Checked:

* shapes: the classifier of the spec gives ``num_logits`` columns; ROI ``predict_probs`` is (R, C+1) and
  Detectron2's ``fast_rcnn_inference`` takes it (background last, dropped there); dense ``predict_probs``
  keeps the logits' shape; all probabilities in [0, 1];
* columns line up: a small descent step on the loss raises the predicted probability of the GT class of
  foreground rows and lowers the foreground probabilities of background rows;
* finite loss and gradients for R = 0, all-background rows, and logits of +-1e4;
* ``torch.autograd.gradcheck`` in float64 on a tiny case, in eval mode (statistics frozen: EQL v2 / EFL /
  ECM measurement) and with the global RNG re-seeded before every call (BAGS' "others" sampling, the
  federated subset): the gradient of the loss as a function of the logits at fixed state. Skipped for
  a loss that declares ``exact_gradient = False`` (it detaches logit-dependent terms by design);
* buffers survive a state_dict round trip (train 3 steps, save, load into a fresh build: equal buffers
  and the same next loss);
* two gloo ranks fed different data keep identical state (``all_reduce_sum`` where the method says).
"""

import os

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

import lt_detectron  # noqa: F401  (registers every loss)
from lt_detectron.class_stats import ClassStats
from lt_detectron.losses import (
    DENSE_LOSS_REGISTRY,
    ROI_LOSS_REGISTRY,
    DenseBatch,
    ROIBatch,
    build_dense_loss,
    build_roi_loss,
)
from lt_detectron.modeling.classifiers import build_classifier
from lt_detectron.utils.testing import lt_cfg

COUNTS = [200, 30, 5, 0]  # class 3 has no training instance
C = len(COUNTS)
D = 6  # feature width of the classifier built from the spec
ITER = 12  # iteration given to the losses: BOFL's lambda = (floor(12 / 5) - 1) / 3 = 1/3 > 0
STATS = ClassStats(
    ("contract",),
    tuple("c%d" % i for i in range(C)),
    tuple(range(C)),
    COUNTS,
    [90, 20, 4, 0],
    100,
    np.array(["f", "c", "r", "r"]),
)
BOFL_OPTS = (
    "MODEL.LT.BOFL.ENABLED",
    True,
    "MODEL.LT.BOFL.BATCH_COUNTS",
    "image",
    "MODEL.LT.BOFL.ETA",
    0.8,
)
ROI_CASES = [(n, ()) for n in ROI_LOSS_REGISTRY.names()]
if "sigmoid" in ROI_LOSS_REGISTRY.names():
    ROI_CASES.append(("sigmoid", BOFL_OPTS))  # the BOFL-on-ROI extension
ROI_IDS = [n + ("+bofl" if opts else "") for n, opts in ROI_CASES]
DENSE_CASES = DENSE_LOSS_REGISTRY.names()


def _cfg(opts=()):
    cfg = lt_cfg()
    b = cfg.MODEL.LT.BOFL
    b.ITERS_PER_EPOCH, b.TOTAL_EPOCHS, b.DEFERRED_EPOCHS, b.KAPPA = 5.0, 4, 1, 0.5
    cfg.MODEL.LT.ECM.MEASURE_ITERS = 2  # ECM's measured bg:fg ratio is state too
    cfg.merge_from_list(list(opts))
    return cfg


def build_roi(case):
    name, opts = case
    cfg = _cfg(opts)
    cfg.MODEL.LT.ROI_LOSS = name
    return build_roi_loss(cfg, C, STATS)


def build_dense(name):
    cfg = _cfg()
    cfg.MODEL.LT.DENSE_LOSS = name
    return build_dense_loss(cfg, C, STATS, focal_alpha=0.25, focal_gamma=2.0)


def _seeded(fn, seed=0):
    """fn with the global RNG re-seeded on every call (sampling losses become a function of the logits)."""

    def call(*args):
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            return fn(*args)

    return call


# ------------------------------------------------------------------------------------------ ROI inputs
def roi_inputs(loss, R, seed=0, scale=2.0, dtype=torch.float32, labels=None):
    """(logits (R, K), gt (R,), ROIBatch) for two images; raw-cosine classifiers get logits in [-0.9, 0.9]."""
    spec = loss.classifier_spec()
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(R, spec.num_logits, generator=g, dtype=torch.float64) * scale
    if spec.kind == "cosine" and spec.scale is None:
        z = torch.tanh(z) * 0.9
    gt = torch.randint(0, C + 1, (R,), generator=g) if labels is None else labels
    r0 = R // 2
    per_image = [gt[:r0], gt[r0:]]
    gt_objects = [torch.unique(x[x < C]) for x in per_image]
    torch.manual_seed(seed)
    classifier = build_classifier(spec, D).to(dtype)
    batch = ROIBatch(
        rois_per_image=[r0, R - r0],
        gt_classes_per_image=gt_objects,
        classifier=classifier,
        iteration=ITER,
    )
    return z.to(dtype), gt, batch


@pytest.mark.parametrize("case", ROI_CASES, ids=ROI_IDS)
def test_roi_shapes_and_probabilities(case):
    from detectron2.modeling.roi_heads.fast_rcnn import fast_rcnn_inference

    loss = build_roi(case)
    spec = loss.classifier_spec()
    assert loss.num_classes == C and spec.num_logits >= C + 1
    assert build_classifier(spec, D)(torch.randn(5, D)).shape == (5, spec.num_logits)
    z, gt, batch = roi_inputs(loss, 10)
    value = loss(z, gt, batch)
    assert value.dim() == 0 and torch.isfinite(value)
    p = loss.predict_probs(z)
    assert p.shape == (10, C + 1) and torch.isfinite(p).all() and (p >= 0).all() and (p <= 1).all()
    assert loss.accuracy_logits(z).shape == (10, C + 1)
    boxes = torch.tensor([[2.0, 2.0, 20.0, 20.0]]).repeat(10, 1) + torch.arange(10.0)[:, None] * 30
    (inst,), _ = fast_rcnn_inference([boxes], [p], [(400, 400)], 0.0, 0.5, 100)
    assert len(inst) > 0 and int(inst.pred_classes.max()) < C  # the last column was the background


@pytest.mark.parametrize("case", ROI_CASES, ids=ROI_IDS)
def test_roi_descent_raises_the_gt_probability(case):
    loss = build_roi(case).eval()
    labels = torch.tensor([0, 1, 2, 3, C, C, 0, 2, C, 1])
    z, gt, batch = roi_inputs(loss, 10, scale=0.5, dtype=torch.float64, labels=labels)
    z.requires_grad_(True)
    _seeded(lambda x: loss(x, gt, batch))(z).backward()
    step = z.detach() - 1e-2 * z.grad / z.grad.abs().max()
    before, after = loss.predict_probs(z.detach()), loss.predict_probs(step)
    fg = gt < C
    rows = torch.nonzero(fg).squeeze(1)
    assert after[rows, gt[fg]].mean() > before[rows, gt[fg]].mean()
    assert after[~fg, :C].sum(1).mean() < before[~fg, :C].sum(1).mean()


@pytest.mark.parametrize("case", ROI_CASES, ids=ROI_IDS)
def test_roi_finite_on_edge_cases(case):
    loss = build_roi(case).train()
    for R, scale, labels in (
        (0, 1.0, None),
        (6, 2.0, torch.full((6,), C)),
        (8, 1e4, None),
        (8, -1e4, None),
    ):
        z, gt, batch = roi_inputs(loss, R, seed=R, labels=labels)
        if abs(scale) > 100:
            z = torch.sign(torch.randn(z.shape, generator=torch.Generator().manual_seed(1))) * scale
        z.requires_grad_(True)
        value = loss(z, gt, batch)
        assert value.dim() == 0 and torch.isfinite(value), (R, scale)
        value.backward()
        assert z.grad is not None and z.grad.shape == z.shape and torch.isfinite(z.grad).all(), (
            R,
            scale,
        )
        assert torch.isfinite(loss.predict_probs(z.detach())).all()
    for name, buf in loss.named_buffers():
        assert torch.isfinite(buf.float()).all(), name


@pytest.mark.parametrize("case", ROI_CASES, ids=ROI_IDS)
def test_roi_gradcheck(case):
    """Numerical gradient in float64 at frozen state (eval mode) and fixed RNG (see the module docstring)."""
    loss = build_roi(case).double().eval()
    if not loss.exact_gradient:
        pytest.skip(
            "%s detaches logit-dependent terms (exact_gradient = False): no numerical check"
            % case[0]
        )
    z, gt, batch = roi_inputs(loss, 5, seed=3, scale=1.0, dtype=torch.float64)
    z.requires_grad_(True)
    assert torch.autograd.gradcheck(
        _seeded(lambda x: loss(x, gt, batch)), (z,), eps=1e-6, atol=1e-5, rtol=1e-4
    )


def _train_roi(loss, steps, seed=0):
    for it in range(steps):
        z, gt, batch = roi_inputs(loss, 12, seed=seed + it)
        _seeded(lambda x: loss(x, gt, batch), seed + it)(z)


@pytest.mark.parametrize("case", ROI_CASES, ids=ROI_IDS)
def test_roi_state_dict_round_trip(case):
    a = build_roi(case).train()
    _train_roi(a, 3)
    b = build_roi(case).train()
    b.load_state_dict(a.state_dict())
    bufs_b = dict(b.named_buffers())
    for name, buf in a.named_buffers():
        assert torch.equal(buf, bufs_b[name]), name
    z, gt, batch = roi_inputs(a, 12, seed=99)
    assert torch.equal(_seeded(lambda x: a(x, gt, batch))(z), _seeded(lambda x: b(x, gt, batch))(z))
    for name, buf in a.named_buffers():
        assert torch.equal(buf, bufs_b[name]), name


# ------------------------------------------------------------------------------------------ dense inputs
def dense_inputs(M, seed=0, scale=2.0, dtype=torch.float32, labels=None):
    """(logits (M, C), labels (M,), DenseBatch) for two images."""
    g = torch.Generator().manual_seed(seed)
    z = (torch.randn(M, C, generator=g, dtype=torch.float64) * scale).to(dtype)
    labels = torch.randint(0, C + 1, (M,), generator=g) if labels is None else labels
    image_index = (torch.arange(M) >= M // 2).long()
    gts = [torch.unique(labels[(image_index == i) & (labels < C)]) for i in range(2)]
    return z, labels, DenseBatch(image_index=image_index, gt_classes_per_image=gts, iteration=ITER)


def heat_inputs(seed=0, scale=2.0, dtype=torch.float32, peaks=True):
    """(logits (2, C, 5, 5), heat maps with a few exact peaks, DenseBatch with the peaks' classes)."""
    g = torch.Generator().manual_seed(seed)
    z = (torch.randn(2, C, 5, 5, generator=g, dtype=torch.float64) * scale).to(dtype)
    heat = torch.rand(2, C, 5, 5, generator=g, dtype=torch.float64).to(dtype) * 0.9
    gts = [torch.tensor([], dtype=torch.long), torch.tensor([], dtype=torch.long)]
    if peaks:
        heat[0, 0, 1, 1] = heat[0, 2, 3, 3] = heat[1, 1, 2, 2] = 1.0
        gts = [torch.tensor([0, 2]), torch.tensor([1])]
    return z, heat, DenseBatch(gt_classes_per_image=gts, iteration=ITER)


@pytest.mark.parametrize("case", ROI_CASES, ids=ROI_IDS)
def test_every_loss_declares_its_logit_columns(case):
    """``logit_columns()`` has one entry per classifier column, every class and the background
    exactly once, and it is the layout ``predict_probs`` reads: a logit raised in the column
    declared for class c (all others equal) makes c the most probable class."""
    loss = build_roi(case).eval()
    spec = loss.classifier_spec()
    cols = loss.logit_columns()
    assert cols.dtype == torch.long and cols.shape == (spec.num_logits,)
    for c in range(C + 1):
        assert int((cols == c).sum()) == 1, c
    assert int((cols >= 0).sum()) == C + 1 and int(cols.max()) == C  # the rest: auxiliary (< 0)
    high = 0.9 if spec.kind == "cosine" and spec.scale is None else 8.0
    for c in range(C):
        z = torch.zeros(1, spec.num_logits)
        z[0, int(torch.nonzero(cols == c))] = high
        assert int(loss.predict_probs(z)[0, :C].argmax()) == c, c


@pytest.mark.parametrize("name", DENSE_CASES)
def test_dense_losses_declare_their_channels(name):
    loss = build_dense(name)
    cols = loss.logit_columns()
    assert cols.shape == (C,) and sorted(cols.tolist()) == list(range(C))
    for c in range(C):
        z = torch.zeros(1, C)
        z[0, int(torch.nonzero(cols == c))] = 8.0
        assert int(loss.predict_probs(z)[0].argmax()) == c


class _ClassOrderedClassifier(torch.nn.Linear):
    """Detic-style: its output column k is fixed by construction (rows from class-name embeddings)
    and declared in ``logit_columns``."""

    def __init__(self, columns):
        super().__init__(D, len(columns))
        self.logit_columns = torch.as_tensor(columns)


def test_bags_rejects_a_classifier_with_class_ordered_columns():
    """A classifier laid out class 0..C-1, then BAGS' extra columns, then the background, trained
    with BAGS would have its classes silently in the wrong groups: an error names the column."""
    from lt_detectron.losses import check_logit_columns

    cfg = _cfg()
    cfg.MODEL.LT.ROI_LOSS = "bags"
    bags = build_roi_loss(cfg, C, STATS)
    K = bags.classifier_spec().num_logits
    naive = list(range(C)) + [-1] * (K - C - 1) + [C]  # what a class-ordered classifier has
    with pytest.raises(ValueError, match="logit column 0.*BAGSLoss bags reads that column as"):
        check_logit_columns(bags, _ClassOrderedClassifier(naive))
    with pytest.raises(ValueError, match="has 5 logit columns but BAGSLoss bags expects %d" % K):
        check_logit_columns(bags, _ClassOrderedClassifier(list(range(C + 1))))
    # built in the loss's order it passes; so does the class order with a loss that uses it
    check_logit_columns(bags, _ClassOrderedClassifier(bags.logit_columns()))
    cfg.MODEL.LT.ROI_LOSS = "softmax"
    check_logit_columns(build_roi_loss(cfg, C, STATS), _ClassOrderedClassifier(range(C + 1)))
    check_logit_columns(bags, torch.nn.Linear(D, K))  # a plain layer declares nothing


@pytest.mark.parametrize("name", DENSE_CASES)
def test_dense_shapes_and_probabilities(name):
    loss = build_dense(name)
    assert loss.num_classes == C
    z, labels, batch = dense_inputs(12)
    value = loss(z, labels, batch)
    assert value.dim() == 0 and torch.isfinite(value) and value > 0
    p = loss.predict_probs(z)
    assert p.shape == z.shape and torch.isfinite(p).all() and (p >= 0).all() and (p <= 1).all()
    hz, heat, hb = heat_inputs()
    value = loss.heatmap(hz, heat, hb, 2.0, 4.0)
    assert value.dim() == 0 and torch.isfinite(value) and value > 0
    assert loss.predict_probs(hz).shape == hz.shape


@pytest.mark.parametrize("name", DENSE_CASES)
def test_dense_descent_raises_the_gt_probability(name):
    loss = build_dense(name).double().eval()
    labels = torch.tensor([0, 1, 2, 3, C, C, 0, 2, C, 1, C, 3])
    z, labels, batch = dense_inputs(12, scale=0.5, dtype=torch.float64, labels=labels)
    z.requires_grad_(True)
    loss(z, labels, batch).backward()
    step = z.detach() - 1e-2 * z.grad / z.grad.abs().max()
    before, after = loss.predict_probs(z.detach()), loss.predict_probs(step)
    fg = labels < C
    rows = torch.nonzero(fg).squeeze(1)
    assert after[rows, labels[fg]].mean() > before[rows, labels[fg]].mean()
    assert after[~fg].sum(1).mean() < before[~fg].sum(1).mean()


@pytest.mark.parametrize("name", DENSE_CASES)
def test_dense_finite_on_edge_cases(name):
    loss = build_dense(name).train()
    for M, scale, labels in (
        (0, 1.0, None),
        (6, 2.0, torch.full((6,), C)),
        (8, 1e4, None),
        (8, -1e4, None),
    ):
        z, labels, batch = dense_inputs(M, seed=M, scale=scale, labels=labels)
        z.requires_grad_(True)
        value = loss(z, labels, batch)
        assert value.dim() == 0 and torch.isfinite(value), (M, scale)
        value.backward()
        assert torch.isfinite(z.grad).all(), (M, scale)
    for scale, peaks in ((2.0, False), (1e4, True), (-1e4, True)):
        z, heat, batch = heat_inputs(scale=scale, peaks=peaks)
        z.requires_grad_(True)
        value = loss.heatmap(z, heat, batch)
        assert value.dim() == 0 and torch.isfinite(value), (scale, peaks)
        value.backward()
        assert torch.isfinite(z.grad).all(), (scale, peaks)
    for buf_name, buf in loss.named_buffers():
        assert torch.isfinite(buf.float()).all(), buf_name


@pytest.mark.parametrize("name", DENSE_CASES)
def test_dense_gradcheck(name):
    """Focal and heat-map forms, float64, frozen state (eval mode), fixed RNG."""
    loss = build_dense(name).double().eval()
    if not loss.exact_gradient:
        pytest.skip(
            "%s detaches logit-dependent terms (exact_gradient = False): no numerical check" % name
        )
    z, labels, batch = dense_inputs(6, seed=4, scale=1.0, dtype=torch.float64)
    z.requires_grad_(True)
    assert torch.autograd.gradcheck(
        _seeded(lambda x: loss(x, labels, batch)), (z,), eps=1e-6, atol=1e-5, rtol=1e-4
    )
    hz, heat, hb = heat_inputs(seed=5, scale=1.0, dtype=torch.float64)
    hz = hz[:, :, :3, :3].contiguous().requires_grad_(True)
    heat = heat[:, :, :3, :3].contiguous()
    heat[0, 0, 1, 1] = 1.0
    assert torch.autograd.gradcheck(
        _seeded(lambda x: loss.heatmap(x, heat, hb)), (hz,), eps=1e-6, atol=1e-5, rtol=1e-4
    )


def _train_dense(loss, steps, seed=0):
    for it in range(steps):
        z, labels, batch = dense_inputs(16, seed=seed + it)
        _seeded(lambda x: loss(x, labels, batch), seed + it)(z)
        hz, heat, hb = heat_inputs(seed=seed + it)
        _seeded(lambda x: loss.heatmap(x, heat, hb), seed + it)(hz)


@pytest.mark.parametrize("name", DENSE_CASES)
def test_dense_state_dict_round_trip(name):
    a = build_dense(name).train()
    _train_dense(a, 3)
    b = build_dense(name).train()
    b.load_state_dict(a.state_dict())
    bufs_b = dict(b.named_buffers())
    for buf_name, buf in a.named_buffers():
        assert torch.equal(buf, bufs_b[buf_name]), buf_name
    z, labels, batch = dense_inputs(16, seed=99)
    assert torch.equal(
        _seeded(lambda x: a(x, labels, batch))(z), _seeded(lambda x: b(x, labels, batch))(z)
    )
    for buf_name, buf in a.named_buffers():
        assert torch.equal(buf, bufs_b[buf_name]), buf_name


# ------------------------------------------------------------------------------------------ two ranks
def _dist_worker(rank, init_file, out_dir):
    import torch.distributed as dist

    # file:// rendezvous (the project's way): no TCP port another test could grab in between
    dist.init_process_group("gloo", init_method="file://" + init_file, rank=rank, world_size=2)
    torch.set_num_threads(1)
    try:
        out = {}
        for case, tag in zip(
            ROI_CASES, ROI_IDS
        ):  # same order on both ranks: the collectives pair up
            loss = build_roi(case).train()
            _train_roi(loss, 3, seed=100 * rank)  # different data per rank
            out["roi:" + tag] = {k: v.clone() for k, v in loss.named_buffers()}
        for name in DENSE_CASES:
            loss = build_dense(name).train()
            _train_dense(loss, 3, seed=100 * rank)
            out["dense:" + name] = {k: v.clone() for k, v in loss.named_buffers()}
        torch.save(out, os.path.join(out_dir, "rank%d.pt" % rank))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_keep_identical_state(tmp_path):
    mp.spawn(_dist_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / ("rank%d.pt" % r)) for r in (0, 1))
    assert set(r0) == set(r1) == {"roi:" + t for t in ROI_IDS} | {"dense:" + n for n in DENSE_CASES}
    for key, bufs in r0.items():
        assert set(bufs) == set(r1[key]), key
        for name, buf in bufs.items():
            assert torch.equal(buf, r1[key][name]), (key, name)
    # the statistics were accumulated over both ranks' data, not one rank's alone
    single = build_roi(("eqlv2", ())).train()
    _train_roi(single, 3, seed=0)
    assert not torch.equal(single.pos_grad, r0["roi:eqlv2"]["pos_grad"])
