#!/usr/bin/env python
"""Benchmark: lvis-api 0.5.3 vs lt_detectron's LTLVISEvaluator on generated LVIS-v1-shaped data.

1203 classes with LVIS v1 train frequencies (shipped csv), N images (default 1k and 5k),
300 detections per image, box and mask. Each measurement runs in its own subprocess;
time is wall clock of the evaluation, peak memory is the subprocess's max RSS
(``resource.getrusage``). The largest |difference| over AP, AP50, AP75, APs/m/l,
APr/c/f and AR@300 is reported. Output: a markdown table.

  python tools/benchmark_lvis_eval.py --images 1000 5000 --tasks bbox segm

"ours" for bbox runs end to end from Detectron2 ``Instances``: ``process()`` (conversion,
top-300 cap), per-rank file, ``evaluate()`` (evaluation, per-category csv, group table).
For segm it starts from the same RLE results as lvis-api (mask RLE encoding costs the
same for every evaluator and happens during inference in Detectron2).
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf", "AR@300")


def _data_paths(cache, n, task):
    base = os.path.join(cache, f"lvis_like_{n}_{task}")
    return base + "_gt.json", base + "_dets.pkl"


def make_data(cache, n, task, seed=0):
    from lt_detectron.evaluation.synthetic import make_detections, make_lvis_like_gt

    gt_path, det_path = _data_paths(cache, n, task)
    if os.path.isfile(gt_path) and os.path.isfile(det_path):
        return gt_path, det_path
    masks = task == "segm"
    gt = make_lvis_like_gt(n, seed=seed, with_masks=masks)
    dets = make_detections(gt, 300, seed=seed + 1, with_masks=masks)
    with open(gt_path, "w") as f:
        json.dump(gt, f)
    with open(det_path, "wb") as f:
        pickle.dump(dets, f, protocol=pickle.HIGHEST_PROTOCOL)
    return gt_path, det_path


def worker(which, gt_path, det_path, task):
    with open(det_path, "rb") as f:
        dets = pickle.load(f)
    masks = task == "segm"
    if which == "lvis":
        import logging

        from lt_detectron.evaluation.synthetic import detections_to_results

        results = detections_to_results(dets, masks)
        del dets
        if not masks:
            pass
        t = time.perf_counter()
        from lvis import LVIS, LVISEval, LVISResults

        from lt_detectron.compat import ensure_lvis_numpy_compat

        ensure_lvis_numpy_compat()
        logging.disable(logging.WARNING)
        gt = LVIS(gt_path)
        E = LVISEval(gt, LVISResults(gt, results, max_dets=300), task)
        E.run()
        metrics = {k: float(E.results[k]) for k in METRICS}
        dt = time.perf_counter() - t
    else:
        import logging

        logging.disable(logging.WARNING)
        if masks:
            from lt_detectron.evaluation.lvis_evaluation import evaluate_lvis_predictions
            from lt_detectron.evaluation.common import per_category_ap

            arr = []
            rles = []
            for img_id, d in dets.items():
                b = d["boxes"].copy()
                b[:, 2:] -= b[:, :2]
                a = np.empty((len(b), 7))
                a[:, 0] = img_id
                a[:, 1:5] = b
                a[:, 5] = d["scores"]
                a[:, 6] = d["category_ids"]
                arr.append(a)
                rles.extend(d["masks"])
            arr = np.concatenate(arr)
            del dets
            t = time.perf_counter()
            m, precision, _ = evaluate_lvis_predictions(gt_path, arr, rles, "segm", 300, "hotcoco")
            per_category_ap(precision)
            metrics = {k: (-1.0 if not np.isfinite(v) else v) for k, v in m.items()}
            dt = time.perf_counter() - t
        else:
            import torch
            from detectron2.data import MetadataCatalog
            from detectron2.structures import Boxes, Instances

            from lt_detectron.evaluation import LTLVISEvaluator

            with open(gt_path) as f:
                cats = sorted(c["id"] for c in json.load(f)["categories"])
            name = "lt_bench_lvis_like"
            MetadataCatalog.get(name).set(json_file=gt_path, thing_dataset_id_to_contiguous_id={c: i for i, c in enumerate(cats)},
                                          evaluator_type="lvis")
            to_contig = {c: i for i, c in enumerate(cats)}
            lut = np.zeros(max(cats) + 1, np.int64)
            for c, i in to_contig.items():
                lut[c] = i
            batches = []
            for img_id, d in dets.items():
                inst = Instances((480, 640))
                inst.pred_boxes = Boxes(torch.from_numpy(d["boxes"]))
                inst.scores = torch.from_numpy(d["scores"])
                inst.pred_classes = torch.from_numpy(lut[d["category_ids"]])
                batches.append(([{"image_id": img_id}], [{"instances": inst}]))
            del dets
            out_dir = tempfile.mkdtemp(prefix="lt_bench_")
            t = time.perf_counter()
            ev = LTLVISEvaluator(name, ("bbox",), distributed=False, output_dir=out_dir)
            ev.reset()
            for inp, outp in batches:
                ev.process(inp, outp)
            res = ev.evaluate()["bbox"]
            dt = time.perf_counter() - t
            metrics = {k: (-1.0 if not np.isfinite(res[k]) else res[k] / 100.0) for k in METRICS}
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    print("RESULT " + json.dumps({"time": dt, "peak_gib": peak, "metrics": metrics}))


def run_worker(which, gt_path, det_path, task):
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", which, "--gt", gt_path, "--dets", det_path, "--tasks", task]
    p = subprocess.run(cmd, capture_output=True, text=True)
    for line in p.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"worker {which} failed:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, nargs="+", default=[1000, 5000])
    ap.add_argument("--tasks", nargs="+", default=["bbox", "segm"], choices=["bbox", "segm"])
    ap.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "lt_bench_lvis_eval"))
    ap.add_argument("--skip-lvis-api", action="store_true", help="only run ours")
    ap.add_argument("--worker", choices=["lvis", "ours"], help=argparse.SUPPRESS)
    ap.add_argument("--gt", help=argparse.SUPPRESS)
    ap.add_argument("--dets", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, args.gt, args.dets, args.tasks[0])
        return
    os.makedirs(args.cache, exist_ok=True)
    rows = []
    for n in args.images:
        for task in args.tasks:
            t = time.perf_counter()
            gt_path, det_path = make_data(args.cache, n, task)
            print(f"[data] {n} images {task}: {time.perf_counter() - t:.1f} s", file=sys.stderr)
            ours = run_worker("ours", gt_path, det_path, task)
            print(f"[ours] {n} {task}: {ours['time']:.2f} s {ours['peak_gib']:.2f} GiB", file=sys.stderr)
            ref = None if args.skip_lvis_api else run_worker("lvis", gt_path, det_path, task)
            if ref:
                print(f"[lvis-api] {n} {task}: {ref['time']:.2f} s {ref['peak_gib']:.2f} GiB", file=sys.stderr)
            diff = max(abs(ours["metrics"][k] - ref["metrics"][k]) for k in METRICS) if ref else float("nan")
            rows.append((n, task, ref, ours, diff))
    print("| images x 300 dets | task | lvis-api time | lvis-api peak RSS | ours time | ours peak RSS | speed-up | max abs metric diff |")
    print("|---|---|---|---|---|---|---|---|")
    for n, task, ref, ours, diff in rows:
        rt = f"{ref['time']:.1f} s" if ref else "-"
        rm = f"{ref['peak_gib']:.2f} GiB" if ref else "-"
        sp = f"{ref['time'] / ours['time']:.0f}x" if ref else "-"
        print(f"| {n} | {task} | {rt} | {rm} | {ours['time']:.2f} s | {ours['peak_gib']:.2f} GiB | {sp} | {diff:.1e} |")


if __name__ == "__main__":
    main()
