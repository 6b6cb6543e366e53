"""The rows of ``benchmarks/benchmark_losses.py``: ``builder(rows, cols, device, dtype) -> step`` per loss
(``step()`` runs one forward + backward), the ROI table ``BENCHMARKS`` and the dense table
``DENSE_BENCHMARKS`` with their reference rows and goals, and the per-class instance counts the
builders use (:func:`class_counts`). See ``benchmark_losses.py``'s docstring for the shapes."""

import torch
import torch.nn.functional as F

from lt_detectron.losses import (
    BAGSLoss,
    C2AMLoss,
    ECMFocalLoss,
    ECMLoss,
    EQLv2FocalLoss,
    EQLv2Loss,
    EqualizedFocalLoss,
    SeesawLoss,
    bofl_class_weights,
    bofl_dataset_weights,
    bofl_focal_loss,
    sigmoid_bce_loss,
    sigmoid_focal_loss,
)

LVIS_NUM_CLASSES = 1203
EMBEDDED_NUM_CLASSES = 24
_COUNTS_CACHE = {}


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

    return step


def build_ce(rows, cols, device, dtype):
    logits, gt = _inputs(rows, cols, device, dtype)
    return _step(logits, lambda: F.cross_entropy(logits, gt))


def build_sigmoid_bce(rows, cols, device, dtype):
    logits, gt = _inputs(rows, cols, device, dtype)
    return _step(logits, lambda: sigmoid_bce_loss(logits, gt))


def build_sigmoid_bce_naive(rows, cols, device, dtype):
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


def build_eqlv2(rows, cols, device, dtype):
    logits, gt = _inputs(rows, cols, device, dtype)
    m = EQLv2Loss(cols - 1).to(device).train()
    m.pos_neg.uniform_(0.0, 2.0)  # non-trivial weights
    return _step(logits, lambda: m(logits, gt))


def build_ecm(rows, cols, device, dtype):
    logits, gt = _inputs(rows, cols, device, dtype)
    counts = torch.randint(1, 50000, (cols - 1,), generator=torch.Generator().manual_seed(1))
    m = ECMLoss(counts).to(device).train()
    return _step(logits, lambda: m(logits, gt))


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


def build_bofl_bce(rows, cols, device, dtype):
    """BOFL extension on the sigmoid ROI classifier: per-class weights (schedule mid-way, kappa 0.05)."""
    logits, gt = _inputs(rows, cols, device, dtype)
    alpha = bofl_dataset_weights(class_counts(cols - 1))
    w = bofl_class_weights(alpha, lam=0.5, kappa=0.05).reshape(-1).to(device=device, dtype=dtype)
    return _step(logits, lambda: sigmoid_bce_loss(logits, gt, class_weights=w))


def build_bags(rows, cols, device, dtype):
    """BAGS with the group layout of the class counts (LVIS v1: 1203 classes -> 4 groups, 1209 logits)."""
    m = BAGSLoss(class_counts(cols - 1)).to(device).train()
    logits, gt = _inputs(rows, m.num_logits, device, dtype)
    gt = _inputs(rows, cols, device, dtype)[
        1
    ]  # labels in [0, C], C = background, as the other rows
    gen = torch.Generator(device=device).manual_seed(0)
    return _step(logits, lambda: m(logits, gt, generator=gen))


def build_c2am(rows, cols, device, dtype):
    """C2AM on raw cosines in [-1, 1] with classifier weight norms varied over classes."""
    g = torch.Generator().manual_seed(0)
    cos = (
        (torch.rand(rows, cols, generator=g) * 2 - 1)
        .to(device=device, dtype=dtype)
        .requires_grad_(True)
    )
    gt = _inputs(rows, cols, device, dtype)[1]
    norms = (0.5 + 1.5 * torch.rand(cols, generator=g)).to(device=device, dtype=dtype)
    m = C2AMLoss()
    return _step(cos, lambda: m(cos, norms, gt))


def build_seesaw(rows, cols, device, dtype):
    """Seesaw (training mode: counts updated, then the loss) on C + 2 logits, counts seeded with the class
    counts so that the mitigation factors are not all 1."""
    m = SeesawLoss(cols - 1).to(device).train()
    m.cum_samples.copy_(class_counts(cols - 1).to(m.cum_samples))
    logits, gt = _inputs(rows, cols + 1, device, dtype)
    gt = _inputs(rows, cols, device, dtype)[
        1
    ]  # labels in [0, C], C = background, as the other rows
    return _step(logits, lambda: m(logits, gt))


# name -> builder(rows, cols, device, dtype) -> step(); "ce" is the reference row.
BENCHMARKS = {
    "ce": build_ce,
    "sigmoid_bce": build_sigmoid_bce,
    "sigmoid_bce (detectron2 naive)": build_sigmoid_bce_naive,
    "sigmoid_bce + bofl weights": build_bofl_bce,
    "eqlv2": build_eqlv2,
    "eqlv2 (naive reference)": build_eqlv2_naive,
    "ecm": build_ecm,
    "bags": build_bags,
    "c2am": build_c2am,
    "seesaw": build_seesaw,
}
ROI_REFERENCE = "ce"
# goal: max ratio to the reference (None: no goal, e.g. naive reference implementations)
ROI_GOALS = {
    "sigmoid_bce": 1.5,
    "sigmoid_bce + bofl weights": 1.5,
    "eqlv2": 1.5,
    "ecm": 1.5,
    "bags": 2.0,
    "c2am": 3.0,
    "seesaw": 1.5,
}


# ------------------------------------------------------------------------------------------- dense rows
def _dense_inputs(rows, cols, device, dtype, seed=0, images=8):
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


def build_dense_bofl(rows, cols, device, dtype, images=8):
    """BOFL focal with per-image weights (CenterNet style: eta 0.8 per image, kappa 0.05, lambda 0.5)."""
    logits, targets, gt, image_index = _dense_inputs(rows, cols, device, dtype, images=images)
    alpha = bofl_dataset_weights(class_counts(cols)).to(device)
    counts = torch.stack(
        [torch.bincount(gt[image_index == k], minlength=cols + 1)[:cols] for k in range(images)]
    )
    w = bofl_class_weights(alpha, lam=0.5, kappa=0.05, eta=0.8, batch_counts=counts).to(dtype)
    return _step(logits, lambda: bofl_focal_loss(logits, targets, w, image_index))


def build_dense_eqlv2(rows, cols, device, dtype):
    logits, _, gt, _ = _dense_inputs(rows, cols, device, dtype)
    m = EQLv2FocalLoss(cols).to(device).train()
    m.pos_neg.uniform_(0.0, 2.0)
    return _step(logits, lambda: m(logits, gt))


def build_dense_ecm(rows, cols, device, dtype):
    logits, targets, _, _ = _dense_inputs(rows, cols, device, dtype)
    m = ECMFocalLoss(class_counts(cols)).to(device)
    return _step(logits, lambda: m(logits, targets))


def build_dense_efl(rows, cols, device, dtype):
    """EFL (training mode: the backward pass also updates the all-reduced statistics), g_j in [0, 1]."""
    logits, _, gt, _ = _dense_inputs(rows, cols, device, dtype)
    m = EqualizedFocalLoss(cols).to(device).train()
    m.stats.pos_neg.uniform_(0.0, 1.0, generator=torch.Generator(device=device).manual_seed(1))
    return _step(logits, lambda: m(logits, gt))


DENSE_BENCHMARKS = {
    "sigmoid_focal": build_dense_focal,
    "bofl_focal": build_dense_bofl,
    "eqlv2_focal": build_dense_eqlv2,
    "ecm_focal": build_dense_ecm,
    "efl": build_dense_efl,
}
DENSE_REFERENCE = "sigmoid_focal"
DENSE_GOALS = {"bofl_focal": 1.5, "eqlv2_focal": 1.5, "ecm_focal": 1.5, "efl": 1.3}
