#!/usr/bin/env python
"""Benchmark: lvis-api 0.5.3 vs lt_detectron's LTLVISEvaluator on generated LVIS-v1-shaped data.

1203 classes with LVIS v1 train frequencies (shipped csv), N images (default 1k and 5k; LVIS v1 val
has 19,809), 300 detections per image, box and mask. Each measurement runs in its own subprocess;
time is wall clock, peak memory the subprocess's max RSS (``resource.getrusage``, including the
benchmark's own input data and imports). The largest |difference| over AP, AP50, AP75, APs/m/l,
APr/c/f and AR@300 between ours and lvis-api is reported. Output: markdown tables; ``--report PATH``
also writes them under the machine header of :mod:`benchmarks.report` (date, command, CPU, load,
versions).

  python -m benchmarks.benchmark_lvis_eval --images 1000 5000 --tasks bbox --repeats 3 --no-json-row \
      --pooled --lvis-api-max-images 1000 --inference-ms 0 10 --report benchmarks/results/lvis_eval.md
  python -m benchmarks.benchmark_lvis_eval --images 1000 5000 --tasks segm --no-json-row
  python -m benchmarks.benchmark_lvis_eval --images 19809 --tasks bbox --skip-lvis-api --protocols standard fixed
  python -m benchmarks.benchmark_lvis_eval --images 5000 --tasks bbox --skip-lvis-api --profile   # cProfile of ours
  python -m benchmarks.benchmark_lvis_eval --images 1000 --tasks segm --skip-lvis-api --boundary   # + Boundary AP

"ours" runs end to end from Detectron2 ``Instances`` (masks: full-image ``pred_masks``), for the row's
task only: ``process()`` of every image (conversion, top-300 cap, mask RLE encoding), ``evaluate()``
(results json, evaluation, per-category csv, metrics json, group table); both parts are printed.
``--no-json-row`` also times ours with ``TEST.LT.SAVE_RESULTS False`` (no results json written).
``--inference-ms MS [MS ...]`` (default 0): ours pauses MS ms before each ``process()`` call, not
timed, standing for the model's forward, during which the results json streams out in a thread
(:mod:`lt_detectron.evaluation.results_stream`); one row per value. 0 is a tight loop (what the
evaluation costs in CPU); 10 ms is 100 images/s, faster than any LVIS Mask R-CNN forward. The
column "evaluate() after the last image" is the wait after inference.
The table gives the ``process()`` part on its own and the speed-up without it: with masks it is the
RLE encoding of the full-image ``pred_masks`` (``lt_detectron.evaluation.common.encode_masks``, equal
to ``mask_util.encode``), work every evaluator does (Detectron2's ``instances_to_coco_json`` calls
``mask_util.encode`` per mask) and lvis-api is spared here.
A segm row also prints the time of one pass over those masks (NumPy ``any``, not part of "ours"):
a floor for any evaluator that starts from full-image masks. Building the ``Instances`` from the
cached data is not timed; the evaluator is built before them, as in training (it is built before
inference), and lvis and the results writer (polars) are imported before the timed part.
"lvis-api" times ``LVIS(gt)``, ``LVISResults`` and ``LVISEval.run()`` on result dicts (their
conversion from ``Instances`` is not timed, which favours lvis-api). "hotcoco" is the raw matching
call ours makes (load, cap, evaluate, accumulate, summarize) on the prepared detection matrix: ours
minus hotcoco is our own overhead.
``--pooled`` (box rows, standard protocol) also times ours with pooled AP (``TEST.LT.POOLED_AP``) and
the authors' procedure on lvis-api (:mod:`benchmarks.lvis_eval_pooled`, up to
``--authors-max-images``), with their peak memory and the largest APpool difference.
``--boundary`` (segm rows) also times Boundary AP (``TEST.LT.BOUNDARY_AP``: faster-coco-eval's
boundary IoU, ``lt_detectron.evaluation.boundary``) on the same prepared matrix and RLEs, the cost
that option adds to an evaluation.
The cache (``--cache``) holds the ground truth (json), detections (npz, loaded with
``allow_pickle=False``) and masks (json); nothing is pickled.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from benchmarks.lvis_eval_tables import boundary_table, main_table, median_run, pooled_table
from benchmarks.lvis_eval_workers import add_inference_ms_argument, make_data, worker
from benchmarks.report import command_line, markdown_table, write_report


def run_worker(
    which, paths, task, protocol, profile=False, save_results=True, pooled=False, inference_ms=0.0
):
    cmd = (
        [
            sys.executable,
            "-m",
            "benchmarks.benchmark_lvis_eval",
            "--worker",
            which,
            "--paths",
            *paths,
            "--tasks",
            task,
            "--protocols",
            protocol,
        ]
        + (["--profile"] if profile else [])
        + ([] if save_results else ["--no-results-json"])
        + (["--pooled"] if pooled else [])
        + ["--inference-ms", str(inference_ms)]
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=root)
    if profile or which == "ours":
        sys.stderr.write(
            "\n".join(
                line
                for line in p.stderr.splitlines()
                if "Warning" not in line and "warnings.warn" not in line
            )
            + "\n"
        )
    for line in p.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    raise RuntimeError(f"worker {which} failed:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")


def main():
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--images", type=int, nargs="+", default=[1000, 5000])
    ap.add_argument("--tasks", nargs="+", default=["bbox", "segm"], choices=["bbox", "segm"])
    ap.add_argument("--protocols", nargs="+", default=["standard"], choices=["standard", "fixed"])
    ap.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "lt_bench_lvis_eval"))
    ap.add_argument(
        "--skip-lvis-api", action="store_true", help="only run ours (and the raw hotcoco call)"
    )
    ap.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="measure each row this many times (lower median; every run is listed)",
    )
    ap.add_argument(
        "--lvis-api-repeats",
        type=int,
        default=1,
        help="lvis-api runs per row (at most --repeats; it takes minutes at 5k images)",
    )
    ap.add_argument(
        "--lvis-api-max-images",
        type=int,
        default=sys.maxsize,
        help="run lvis-api only up to this many images (it needs minutes and 6 GiB at 5,000)",
    )
    ap.add_argument(
        "--no-json-row",
        action="store_true",
        help="also time ours without writing the results json (TEST.LT.SAVE_RESULTS False)",
    )
    ap.add_argument("--profile", action="store_true", help="print a cProfile of ours (stderr)")
    ap.add_argument(
        "--pooled",
        action="store_true",
        help="bbox, standard: also time ours with pooled AP (TEST.LT.POOLED_AP) and the authors' "
        "pooled AP on lvis-api (benchmarks/lvis_eval_pooled.py)",
    )
    ap.add_argument(
        "--authors-max-images",
        type=int,
        default=1000,
        help="--pooled: run the authors' procedure (lvis-api, minutes) up to this many images",
    )
    ap.add_argument(
        "--report",
        metavar="PATH",
        help="also write the tables with the machine (CPU, load, versions, command) to PATH (markdown)",
    )
    ap.add_argument(
        "--boundary",
        action="store_true",
        help="segm rows: also time Boundary AP (faster-coco-eval) on the same detections",
    )
    add_inference_ms_argument(ap)
    ap.add_argument(
        "--no-results-json",
        action="store_true",
        help=argparse.SUPPRESS,  # worker: TEST.LT.SAVE_RESULTS False
    )
    ap.add_argument(
        "--worker",
        choices=["lvis", "ours", "hotcoco", "boundary", "authors"],
        help=argparse.SUPPRESS,
    )
    ap.add_argument("--paths", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        save = not args.no_results_json
        worker(
            args.worker,
            *args.paths,
            args.tasks[0],
            args.protocols[0],
            args.profile,
            save,
            args.pooled,
            args.inference_ms[0],
        )
        return
    os.makedirs(args.cache, exist_ok=True)
    load_at_start = os.getloadavg()
    rows = []
    for n in args.images:
        for task in args.tasks:
            t = time.perf_counter()
            paths = make_data(args.cache, n, task)
            print(f"[data] {n} images {task}: {time.perf_counter() - t:.1f} s", file=sys.stderr)
            for protocol in args.protocols:
                for i, ms in enumerate(args.inference_ms):
                    rows.append(_measure_row(args, n, task, protocol, paths, ms, first=i == 0))
    tables = [main_table(rows, args.repeats), pooled_table(rows), boundary_table(rows)]
    tables = [t for t in tables if t is not None]
    for t in tables:
        print(markdown_table(t.columns, t.rows))
        print("\n".join(f"<!-- {x} -->" for x in t.notes) + "\n")
    if args.report:
        write_report(
            args.report,
            command_line(),
            tables,
            "LVIS evaluation benchmark (benchmarks/benchmark_lvis_eval.py)",
            load_at_start,
        )
        print(f"written to {args.report}", file=sys.stderr)


def _measure_row(args, n, task, protocol, paths, ms=0.0, first=True):
    """Every run of one (images, task, protocol, inference pause) row and the median of each kind;
    lvis-api, pooled and Boundary AP (which do not depend on the pause) in the ``first`` row only."""
    kinds = ("ours", "ours_nojson", "hotcoco", "lvis", "boundary", "ours_pooled", "authors")
    runs = {k: [] for k in kinds}
    pooled = args.pooled and task == "bbox" and protocol == "standard" and first
    for rep in range(args.repeats):
        runs["ours"].append(
            run_worker("ours", paths, task, protocol, args.profile, inference_ms=ms)
        )
        if args.no_json_row:
            runs["ours_nojson"].append(
                run_worker("ours", paths, task, protocol, False, False, inference_ms=ms)
            )
        runs["hotcoco"].append(run_worker("hotcoco", paths, task, protocol))
        if pooled:
            runs["ours_pooled"].append(run_worker("ours", paths, task, protocol, pooled=True))
            if rep < args.lvis_api_repeats and n <= args.authors_max_images:
                runs["authors"].append(run_worker("authors", paths, task, protocol))
        if args.boundary and task == "segm" and protocol == "standard" and first:
            runs["boundary"].append(run_worker("boundary", paths, task, protocol))
        if (
            not args.skip_lvis_api
            and first
            and protocol == "standard"
            and rep < args.lvis_api_repeats
            and n <= args.lvis_api_max_images
        ):
            runs["lvis"].append(run_worker("lvis", paths, task, protocol))
        for k, v in runs.items():
            if len(v) == rep + 1:
                print(
                    f"[{k}] {n} {task} {protocol} {ms:g} ms: {v[-1]['time']:.2f} s "
                    f"{v[-1]['peak_gib']:.2f} GiB",
                    file=sys.stderr,
                )
    return {
        "n": n,
        "task": task,
        "protocol": protocol,
        "inference_ms": ms,
        "med": {k: median_run(v) for k, v in runs.items()},
        "runs": runs,
    }


if __name__ == "__main__":
    main()
