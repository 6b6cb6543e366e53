#!/usr/bin/env python
"""Benchmark fwd+bwd time of the classification losses against a baseline measured in the same run.

Table-driven. ROI rows: ``BENCHMARKS`` maps a row name to ``builder(rows, cols, device, dtype) -> step``
where ``step()`` runs one forward + backward; ``cols`` is the number of logits including the background
column (LVIS: 1204 = 1203 + 1); the reference row is ``ce`` (``F.cross_entropy``). Dense rows:
``DENSE_BENCHMARKS``, same builder signature with ``rows`` = locations and ``cols`` = C sigmoid channels
(no background); the reference row is ``sigmoid_focal`` (fvcore-style focal, reduction sum). Builders
that need per-class instance counts (BAGS, ECM, BOFL) take the real LVIS v1 train counts when C = 1203,
the embedded dataset's (``lt_shapes_train``) when C = 24, and a Zipf-like synthetic tail otherwise.

Scales (``--scale``):
  lvis      ROI 8192 x 1204 logits (BAGS: 8192 x 1209 with the LVIS v1 group layout; C2AM: 8192 x 1204
            cosines; Seesaw: 8192 x 1205, C + 2), dense 100k locations x 1203 channels (``--dense-rows``)
  embedded  the demo's scale: ROI 8 images x 64 ROIs = 512 x 25 logits, dense 8 images x 336 FCOS-tiny
            locations = 2688 x 24 channels
  all       both (default)
``--rows/--cols`` replace the scales by one custom ROI shape (dense: ``--dense-rows`` or rows x (cols-1)).

    python tools/benchmark_losses.py                                  # lvis + embedded, CPU
    python tools/benchmark_losses.py --scale lvis --repeats 7 [--device cuda] [--only ce,eqlv2,bags]
    python tools/benchmark_losses.py --rows 64 --cols 11 --repeats 1  # smoke test
"""

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lt_detectron.losses import (  # noqa: E402
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

# scale -> (roi rows, roi cols incl. background, dense locations, dense channels)
SCALES = {
    "lvis": (8192, LVIS_NUM_CLASSES + 1, 100_000, LVIS_NUM_CLASSES),
    "embedded": (8 * 64, EMBEDDED_NUM_CLASSES + 1, 8 * 336, EMBEDDED_NUM_CLASSES),
}


def _sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_steps(steps, repeats, warmup, device):
    """Median ms per step; rows are interleaved (round-robin) so background load hits all rows alike."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    _sync(device)
    times = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            t0 = time.perf_counter()
            step()
            _sync(device)
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) * 1e3 for name, t in times.items()}


def machine_info():
    cpu = "unknown cpu"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        import platform

        cpu = platform.processor() or cpu
    return "machine: %s, %d logical CPUs, torch threads %d, torch %s" % (
        cpu,
        os.cpu_count() or 0,
        torch.get_num_threads(),
        torch.__version__,
    )


def _shape(builder_name, table, rows, cols):
    if table == "roi" and builder_name == "bags":
        from lt_detectron.losses import BAGSLayout

        return "%d x %d" % (rows, BAGSLayout(class_counts(cols - 1)).num_logits)
    if table == "roi" and builder_name == "seesaw":
        return "%d x %d" % (rows, cols + 1)  # C class logits + 2 objectness logits
    return "%d x %d" % (rows, cols)


def format_table(title, results, shapes, reference, goals):
    """One markdown table: loss | shape | ms | ratio to the reference | goal (met or not)."""
    ref = results[reference]
    lines = [
        title,
        "",
        "| loss | shape | ms fwd+bwd (median) | ratio to %s | goal |" % reference,
        "|---|---|---:|---:|---|",
    ]
    for name, ms in results.items():
        ratio = ms / ref
        goal = goals.get(name)
        if name == reference:
            gtxt = "reference"
        elif goal is None:
            gtxt = "-"
        else:
            gtxt = "<= %gx %s" % (goal, "met" if ratio <= goal else "NOT met")
        lines.append("| %s | %s | %.2f | %.2fx | %s |" % (name, shapes[name], ms, ratio, gtxt))
    return "\n".join(lines)


def run_table(kind, rows, cols, args, dtype):
    """Time one table's rows; returns (results, shapes)."""
    table = BENCHMARKS if kind == "roi" else DENSE_BENCHMARKS
    reference = ROI_REFERENCE if kind == "roi" else DENSE_REFERENCE
    names = list(table)
    if args.only:
        wanted = set(args.only.split(",")) | {reference}
        names = [n for n in names if n in wanted]
    steps = {name: table[name](rows, cols, args.device, dtype) for name in names}
    results = time_steps(steps, args.repeats, args.warmup, args.device)
    del steps
    return results, {n: _shape(n, kind, rows, cols) for n in names}


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--scale", default="all", choices=["lvis", "embedded", "all"])
    p.add_argument("--rows", type=int, default=None, help="custom ROI rows (replaces --scale)")
    p.add_argument(
        "--cols", type=int, default=None, help="custom ROI logits per row incl. background"
    )
    p.add_argument(
        "--dense-rows", type=int, default=None, help="dense locations (lvis default 100000)"
    )
    p.add_argument("--no-dense", action="store_true", help="skip the dense (one-stage) table")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--dtype", default="float32", choices=["float32", "float64", "float16", "bfloat16"]
    )
    p.add_argument(
        "--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)"
    )
    p.add_argument(
        "--only", default=None, help="comma-separated subset of rows (the references always run)"
    )
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    if args.rows is not None or args.cols is not None:
        rows = args.rows or 8192
        cols = args.cols or LVIS_NUM_CLASSES + 1
        scales = {"custom": (rows, cols, args.dense_rows or rows, cols - 1)}
    else:
        names = ["lvis", "embedded"] if args.scale == "all" else [args.scale]
        scales = {n: SCALES[n] for n in names}
        if args.dense_rows and "lvis" in scales:
            scales["lvis"] = scales["lvis"][:2] + (args.dense_rows, scales["lvis"][3])
    print(machine_info())
    print(
        "dtype=%s device=%s repeats=%d warmup=%d (median, rows interleaved round-robin)"
        % (args.dtype, args.device, args.repeats, args.warmup)
    )
    out = {}
    for scale, (rows, cols, drows, dcols) in scales.items():
        res, shapes = run_table("roi", rows, cols, args, dtype)
        out[(scale, "roi")] = res
        print()
        print(
            format_table(
                "### %s scale, ROI losses (ratio to F.cross_entropy)" % scale,
                res,
                shapes,
                ROI_REFERENCE,
                ROI_GOALS,
            )
        )
        if not args.no_dense:
            res, shapes = run_table("dense", drows, dcols, args, dtype)
            out[(scale, "dense")] = res
            print()
            print(
                format_table(
                    "### %s scale, dense losses (ratio to sigmoid focal)" % scale,
                    res,
                    shapes,
                    DENSE_REFERENCE,
                    DENSE_GOALS,
                )
            )
        sys.stdout.flush()
    return out


if __name__ == "__main__":
    main()
