#!/usr/bin/env python
"""Benchmark fwd+bwd time of the classification losses against F.cross_entropy (same run, same inputs).

Table-driven: ``BENCHMARKS`` maps a row name to ``builder(rows, cols, device, dtype) -> step`` where
``step()`` runs one forward + backward and returns nothing. ``cols`` is the number of logits including
the background column (LVIS: 1204 = 1203 + 1). Add rows by adding builders.

    python tools/benchmark_losses.py --rows 8192 --cols 1204 --repeats 7 [--device cpu] [--only ce,eqlv2]
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lt_detectron.losses import ECMLoss, EQLv2Loss, sigmoid_bce_loss  # noqa: E402


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
        return F.binary_cross_entropy_with_logits(logits[:, :-1], target[:, :-1], reduction="sum") / rows

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
        out = (F.binary_cross_entropy_with_logits(logits, target, reduction="none") * w).sum() / rows
        with torch.no_grad():
            p = torch.sigmoid(logits)
            grad = torch.abs(target * (p - 1) + (1 - target) * p)
            stats[0] += (grad * target * w).sum(0)[:-1]
            stats[1] += (grad * (1 - target) * w).sum(0)[:-1]
        return out

    return _step(logits, loss)


# name -> builder(rows, cols, device, dtype) -> step(); "ce" is the reference row.
BENCHMARKS = {
    "ce": build_ce,
    "sigmoid_bce": build_sigmoid_bce,
    "sigmoid_bce (detectron2 naive)": build_sigmoid_bce_naive,
    "eqlv2": build_eqlv2,
    "eqlv2 (naive reference)": build_eqlv2_naive,
    "ecm": build_ecm,
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


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=8192)
    p.add_argument("--cols", type=int, default=1204, help="logits per row incl. background")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64", "float16", "bfloat16"])
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--only", default=None, help="comma-separated subset of rows (ce is always run)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    names = list(BENCHMARKS)
    if args.only:
        wanted = set(args.only.split(",")) | {"ce"}
        names = [n for n in names if n in wanted]
    steps = {name: BENCHMARKS[name](args.rows, args.cols, args.device, dtype) for name in names}
    results = time_steps(steps, args.repeats, args.warmup, args.device)
    ce = results["ce"]
    print(f"rows={args.rows} cols={args.cols} dtype={args.dtype} device={args.device} "
          f"threads={torch.get_num_threads()} repeats={args.repeats} (median, interleaved)")
    print("| loss | ms fwd+bwd | ratio to CE |")
    print("|---|---:|---:|")
    for name in names:
        print(f"| {name} | {results[name]:.1f} | {results[name] / ce:.2f}x |")
    return results


if __name__ == "__main__":
    main()
