#!/usr/bin/env python
"""Benchmark fwd+bwd time of the classification losses against a baseline measured in the same run.

Table-driven (``benchmarks/loss_builders.py``). ROI rows (:func:`roi_benchmarks`): a row name ->
``builder(rows, cols, device, dtype) -> step`` where ``step()`` runs one forward + backward; ``cols`` is
the number of classes including the background column (LVIS: 1204 = 1203 + 1). One row per name of
``ROI_LOSS_REGISTRY``, built with ``build_roi_loss`` on logits as wide as the loss asks for (BAGS:
C + groups + 2, Seesaw: C + 2, C2AM: raw cosines), a BOFL-on-sigmoid variant, and the reference rows
``ce`` (``F.cross_entropy``) and the naive transcriptions ``*_naive``. Dense rows
(:func:`dense_benchmarks`): one per name of ``DENSE_LOSS_REGISTRY`` (``build_dense_loss``), same
builder signature with ``rows`` = locations and ``cols`` = C sigmoid channels (no background); the
reference row is ``sigmoid_focal`` (fvcore-style focal, reduction sum). The losses are built with
the class statistics of C classes: the real LVIS v1 train counts when C = 1203, the embedded dataset's
(``lt_shapes_train``) when C = 24, and a Zipf-like synthetic tail otherwise.

Scales (``--scale``):
  lvis      ROI 8192 x 1204 logits (BAGS: 8192 x 1209 with the LVIS v1 group layout; C2AM: 8192 x 1204
            cosines; Seesaw: 8192 x 1205, C + 2), dense 100k locations x 1203 channels (``--dense-rows``)
  embedded  the demo's scale: ROI 8 images x 64 ROIs = 512 x 25 logits, dense 8 images x 336 FCOS-tiny
            locations = 2688 x 24 channels
  all       both (default)
``--rows/--cols`` replace the scales by one custom ROI shape (dense: ``--dense-rows`` or rows x (cols-1)).

    python -m benchmarks.benchmark_losses                                  # lvis + embedded, CPU
    python -m benchmarks.benchmark_losses --scale lvis --repeats 7 [--device cuda] [--only ce,eqlv2,bags]
    python -m benchmarks.benchmark_losses --rows 64 --cols 11 --repeats 1  # smoke test
"""

import argparse
import os
import statistics
import sys
import time

import torch

from benchmarks.loss_builders import (  # noqa: F401  (re-exported: the rows and tables live there)
    DENSE_GOALS,
    DENSE_REFERENCE,
    EMBEDDED_NUM_CLASSES,
    LVIS_NUM_CLASSES,
    ROI_GOALS,
    ROI_REFERENCE,
    class_counts,
    dense_benchmarks,
    roi_benchmarks,
)

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
    table = roi_benchmarks() if kind == "roi" else dense_benchmarks()
    reference = ROI_REFERENCE if kind == "roi" else DENSE_REFERENCE
    names = list(table)
    if args.only:
        wanted = set(args.only.split(",")) | {reference}
        names = [n for n in names if n in wanted]
    steps = {name: table[name](rows, cols, args.device, dtype) for name in names}
    shapes = {name: "%d x %d" % step.shape for name, step in steps.items()}
    results = time_steps(steps, args.repeats, args.warmup, args.device)
    del steps
    return results, shapes


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
