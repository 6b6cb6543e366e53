"""The rows of ``benchmarks/benchmark_losses.py``: ``builder(rows, cols, device, dtype) -> step`` per row
(``step()`` runs one forward + backward; ``step.shape`` is the logits' shape), the ROI table
(:func:`roi_benchmarks`) and the dense table (:func:`dense_benchmarks`) with their reference rows and
goals, and the per-class instance counts the rows use (:func:`class_counts`, :func:`class_stats`).

The method rows come from the loss registries: one row per name of ``ROI_LOSS_REGISTRY`` /
``DENSE_LOSS_REGISTRY``, built as the heads build it (:func:`build_roi_loss` / :func:`build_dense_loss`
from a config with ``MODEL.LT.ROI_LOSS`` / ``DENSE_LOSS`` = the name, :data:`BENCH_OPTS` and the
:func:`class_stats` of C classes), on random logits of the width the loss asks for
(``classifier_spec().num_logits`` for ROI losses). A newly registered loss gets its row with no edit
here. The reference rows are not registry losses: cross-entropy (``ce``), the fvcore-style sigmoid
focal loss (``sigmoid_focal``) and straightforward transcriptions (``*_naive``) for comparison.
See ``benchmark_losses.py``'s docstring for the shapes."""

import functools

import torch
import torch.nn.functional as F

from lt_detectron.losses import (
    DENSE_LOSS_REGISTRY,
    ROI_LOSS_REGISTRY,
    DenseBatch,
    ROIBatch,
    build_dense_loss,
    build_roi_loss,
    sigmoid_focal_loss,
)
from lt_detectron.losses.build import config_epoch_length_keys
from lt_detectron.modeling.classifiers import build_classifier
from lt_detectron.utils.testing import lt_cfg

LVIS_NUM_CLASSES = 1203
EMBEDDED_NUM_CLASSES = 24
_COUNTS_CACHE = {}

IMAGES = (
    8  # the rows of a batch belong to this many images (per-image weights, BOFL's batch counts)
)
FEATURES = (
    64  # input width of the classification layer built for a loss that reads it (C2AM's norms)
)
EPOCH_LENGTH = 1000.0  # iterations per epoch, for a loss whose schedule is in epochs (BOFL)
ITERATION = 3000  # the training iteration the losses see: epoch 3
# The benchmark's config (on top of Detectron2's and lt_detectron's defaults): BOFL's LVIS intensity
# kappa 0.05 and per-image batch factor eta 0.8, its linear schedule over 5 epochs deferred by 1, so
# that at ITERATION lambda = (3 - 1) / (5 - 1) = 0.5, mid-way.
BENCH_OPTS = (
    "MODEL.LT.BOFL.KAPPA",
    0.05,
    "MODEL.LT.BOFL.ETA",
    0.8,
    "MODEL.LT.BOFL.BATCH_COUNTS",
    "image",
    "MODEL.LT.BOFL.TOTAL_EPOCHS",
    5,
    "MODEL.LT.BOFL.DEFERRED_EPOCHS",
    1,
)
# ROI rows of a registry loss with an option on: row -> (MODEL.LT.ROI_LOSS, config overrides)
ROI_VARIANTS = {
    "sigmoid + bofl": (
        "sigmoid",
        ("MODEL.LT.BOFL.ENABLED", True, "MODEL.LT.BOFL.BATCH_COUNTS", "none"),
    ),
}
ROI_REFERENCE = "ce"
DENSE_REFERENCE = "sigmoid_focal"
# goal: max ratio to the reference, by row name; a row without one (a new loss, the naive
# references) prints "-"
ROI_GOALS = {
    "sigmoid": 1.5,
    "sigmoid + bofl": 1.5,
    "eqlv2": 1.5,
    "ecm": 1.5,
    "bags": 2.0,
    "c2am": 2.0,
    "seesaw": 1.5,
}
DENSE_GOALS = {"bofl": 1.5, "eqlv2": 1.3, "ecm": 1.5, "efl": 1.3}


def class_counts(num_classes):
    """(C,) training instance counts: real LVIS v1 (C=1203), lt_shapes_train (C=24), else a Zipf tail."""
    if num_classes not in _COUNTS_CACHE:
        if num_classes == LVIS_NUM_CLASSES:
            from lt_detectron.data.lvis_stats import load_shipped_stats

            counts = load_shipped_stats("lvis_v1_train")["instance_count"]
        elif num_classes == EMBEDDED_NUM_CLASSES:
            import lt_detectron  # noqa: F401  (registers the embedded dataset; generated on first use)
            from lt_detectron.class_stats import get_class_stats

            counts = get_class_stats("lt_shapes_train").instance_counts
        else:
            counts = [max(1, int(5000 / (i + 1) ** 1.5)) for i in range(num_classes)]
        _COUNTS_CACHE[num_classes] = torch.as_tensor(list(counts), dtype=torch.long)
    return _COUNTS_CACHE[num_classes]


def class_stats(num_classes):
    """The :class:`~lt_detectron.ClassStats` the losses are built with: :func:`class_counts` as the
    instance counts (and, for want of better, as the image counts and their LVIS frequency bands)."""
    from lt_detectron import ClassStats
    from lt_detectron.class_stats.groups import lvis_frequency

    counts = class_counts(num_classes).numpy()
    return ClassStats(
        ("benchmark_%d_classes" % num_classes,),
        tuple("class%d" % i for i in range(num_classes)),
        tuple(range(1, num_classes + 1)),
        counts,
        counts,
        int(counts.max()),
        lvis_frequency(counts),
    )


def bench_cfg(key, name, opts=()):
    """The config a row's loss is built from: :data:`BENCH_OPTS`, ``key`` = ``name``, then ``opts``;
    an epoch-length key the loss reads (:func:`config_epoch_length_keys`) gets :data:`EPOCH_LENGTH`."""
    cfg = lt_cfg(None, *BENCH_OPTS, key, name, *opts)
    for k in config_epoch_length_keys(cfg):
        cfg.merge_from_list([k, EPOCH_LENGTH])
    return cfg


def _inputs(rows, cols, device, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(rows, cols, generator=g) * 2.0 - 4.0).to(device=device, dtype=dtype)
    logits.requires_grad_(True)
    # ~25% foreground like the Detectron2 ROI sampler, rest background (= cols - 1)
    gt = torch.randint(0, cols - 1, (rows,), generator=g)
    gt[torch.rand(rows, generator=g) > 0.25] = cols - 1
    return logits, gt.to(device)


def _step(logits, loss_fn):
    def step():
        loss = loss_fn()
        loss.backward()
        logits.grad = None

    step.shape = tuple(logits.shape)
    step.loss_fn = loss_fn
    return step


def _image_sizes(rows):
    return [len(r) for r in torch.arange(rows).tensor_split(IMAGES)]


# --------------------------------------------------------------------------------------- ROI rows
def _roi_logits(rows, spec, device, dtype, seed=0):
    """(R, K) logits for the layer of ``spec`` (raw cosines in [-1, 1] for a cosine layer without
    scale, else N(-4, 2^2)) and (K,) classifier row norms in [0.5, 2] (as after long-tailed training)."""
    g = torch.Generator().manual_seed(seed)
    K = spec.num_logits
    if spec.kind == "cosine" and spec.scale is None:
        z = torch.rand(rows, K, generator=g) * 2 - 1
    else:
        z = torch.randn(rows, K, generator=g) * 2.0 - 4.0
    norms = 0.5 + 1.5 * torch.rand(K, generator=g)
    return z.to(device=device, dtype=dtype).requires_grad_(True), norms


def build_roi_row(name, opts, rows, cols, device, dtype):
    """The registry ROI loss ``name`` (config overrides ``opts``) for C = cols - 1 classes, on
    (rows, K) logits, K = its ``classifier_spec().num_logits``, labels in [0, C] (C = background).
    Its state (EQL v2's statistics, Seesaw's counts) is that after one training step on the batch."""
    C = cols - 1
    loss = build_roi_loss(bench_cfg("MODEL.LT.ROI_LOSS", name, opts), C, class_stats(C))
    loss = loss.to(device).train()
    spec = loss.classifier_spec()
    logits, norms = _roi_logits(rows, spec, device, dtype)
    gt = _inputs(rows, cols, device, dtype)[1]
    classifier = build_classifier(spec, FEATURES).to(device=device, dtype=dtype)
    with torch.no_grad():
        w = classifier.weight
        w.mul_(norms.to(w)[:, None] / w.norm(dim=1, keepdim=True))
    per_image = gt.split(_image_sizes(rows))
    batch = ROIBatch(
        rois_per_image=_image_sizes(rows),
        gt_classes_per_image=[torch.unique(g[g < C]) for g in per_image],
        classifier=classifier,
        iteration=ITERATION,
    )
    step = _step(logits, lambda: loss(logits, gt, batch))
    step.loss = loss
    step()
    return step


def build_ce(rows, cols, device, dtype):
    logits, gt = _inputs(rows, cols, device, dtype)
    return _step(logits, lambda: F.cross_entropy(logits, gt))


def build_sigmoid_naive(rows, cols, device, dtype):
    """Detectron2's own implementation (one-hot target + F.binary_cross_entropy_with_logits)."""
    logits, gt = _inputs(rows, cols, device, dtype)

    def loss():
        target = logits.new_zeros(rows, cols)
        target[torch.arange(rows, device=logits.device), gt] = 1
        return (
            F.binary_cross_entropy_with_logits(logits[:, :-1], target[:, :-1], reduction="sum")
            / rows
        )

    return _step(logits, loss)


def build_eqlv2_naive(rows, cols, device, dtype):
    """Straightforward EQL v2 (authors' code structure: one-hot, F.bce_with_logits, analytic stats)."""
    logits, gt = _inputs(rows, cols, device, dtype)
    C = cols - 1
    pos_neg = torch.rand(C, device=device) * 2
    stats = [torch.zeros(C, device=device), torch.zeros(C, device=device)]

    def loss():
        target = logits.new_zeros(rows, cols)
        target[torch.arange(rows, device=logits.device), gt] = 1
        neg_w = torch.cat([torch.sigmoid(12 * (pos_neg - 0.8)), pos_neg.new_ones(1)])
        pos_w = 1 + 4 * (1 - neg_w)
        w = pos_w * target + neg_w * (1 - target)
        out = (
            F.binary_cross_entropy_with_logits(logits, target, reduction="none") * w
        ).sum() / rows
        with torch.no_grad():
            p = torch.sigmoid(logits)
            grad = torch.abs(target * (p - 1) + (1 - target) * p)
            stats[0] += (grad * target * w).sum(0)[:-1]
            stats[1] += (grad * (1 - target) * w).sum(0)[:-1]
        return out

    return _step(logits, loss)


def roi_benchmarks():
    """ROI row name -> builder: ``ce``, every ``ROI_LOSS_REGISTRY`` name, :data:`ROI_VARIANTS`, the
    naive references. ``cols`` counts the background column."""
    table = {ROI_REFERENCE: build_ce}
    for name in ROI_LOSS_REGISTRY.names():
        table[name] = functools.partial(build_roi_row, name, ())
    for row, (name, opts) in ROI_VARIANTS.items():
        if name in ROI_LOSS_REGISTRY.names():
            table[row] = functools.partial(build_roi_row, name, opts)
    table["sigmoid_naive"] = build_sigmoid_naive
    table["eqlv2_naive"] = build_eqlv2_naive
    return table


# ------------------------------------------------------------------------------------- dense rows
def _dense_inputs(rows, cols, device, dtype, seed=0, images=IMAGES):
    """(M, C) logits, one-hot targets, labels in [0, C] (C = background) and image index; ~1% positives."""
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(rows, cols, generator=g) * 2.0 - 4.0).to(device=device, dtype=dtype)
    logits.requires_grad_(True)
    gt = torch.randint(0, cols, (rows,), generator=g)
    gt[torch.rand(rows, generator=g) > 0.01] = cols
    targets = torch.zeros(rows, cols + 1, dtype=dtype)
    targets[torch.arange(rows), gt] = 1
    image_index = torch.arange(rows) * images // max(rows, 1)
    return logits, targets[:, :cols].to(device), gt.to(device), image_index.to(device)


def build_dense_focal(rows, cols, device, dtype):
    logits, targets, _, _ = _dense_inputs(rows, cols, device, dtype)
    return _step(logits, lambda: sigmoid_focal_loss(logits, targets, reduction="sum"))


def build_dense_row(name, rows, cols, device, dtype):
    """The registry dense loss ``name`` for C = cols channels (focal alpha 0.25, gamma 2) on (rows, C)
    logits of IMAGES images; the positive locations stand for the GT objects of their image. Its
    state (EQL v2's, EFL's statistics) is that after one training step on the batch."""
    loss = build_dense_loss(bench_cfg("MODEL.LT.DENSE_LOSS", name), cols, class_stats(cols))
    loss = loss.to(device).train()
    logits, _, gt, image_index = _dense_inputs(rows, cols, device, dtype)
    gts = [gt[(image_index == k) & (gt < cols)] for k in range(IMAGES)]
    batch = DenseBatch(image_index=image_index, gt_classes_per_image=gts, iteration=ITERATION)
    step = _step(logits, lambda: loss(logits, gt, batch))
    step.loss = loss
    step()
    return step


def dense_benchmarks():
    """Dense row name -> builder: ``sigmoid_focal``, then every ``DENSE_LOSS_REGISTRY`` name;
    ``cols`` = C channels (no background)."""
    table = {DENSE_REFERENCE: build_dense_focal}
    for name in DENSE_LOSS_REGISTRY.names():
        table[name] = functools.partial(build_dense_row, name)
    return table
