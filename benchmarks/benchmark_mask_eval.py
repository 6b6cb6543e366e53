"""Mask evaluation end to end from the mask head's output: ours against raw hotcoco and lvis-api.

Generated LVIS-v1-shaped data (``lt_detectron.utils.testing``: 1203 classes, 640 x 480 images, polygon
ground-truth masks; 300 detections per image with LVIS-like boxes, sides from 6 to 360 pixels) whose
masks are what a Mask R-CNN head gives: 28 x 28 probabilities per detection (smooth blobs,
``make_roi_masks``) beside boxes in image coordinates, i.e. the ``Instances`` that
``ROIMaskInference`` hands the evaluator during ``LTTrainer.test()``.

- **ours**: ``LTLVISEvaluator(tasks=("segm",))``: ``process()`` of every image (RLEs straight from the
  ROI-level masks, ``encode_roi_masks``), then ``evaluate()`` (results json, matching, per-category
  csv, metrics json, group table). Building each image's ``Instances`` is not timed.
- **raw hotcoco**: the matching call ours makes, alone, on the same RLEs (computed before timing):
  the masks' boxes and areas (``mask_boxes_and_areas``, the compiled ``_coco_rle`` where built), then
  hotcoco's loading, matching and accumulation.
- **lvis-api**: ``LVIS(gt)``, ``LVISResults`` and ``LVISEval.run()`` on ready result dicts with the same
  RLEs: its evaluation alone (the paste and the encoding are not timed for it).

- **old path** (``--pasted``): what evaluation did before: Detectron2 pastes each mask into a
  full-image bitmap (``paste_masks_in_image``, timed), ``process()`` encodes them, ``evaluate()``.
- **ours, direct encoding** (``--direct``): ours with every image encoded within its own
  ``process()`` call, as before the evaluators' ``RoiMaskPipeline``.
- ``--inference-ms MS [MS ...]``: a row each; ours pauses MS ms before each image, standing for the model's forward (not
  timed): with the pipeline an image's kernel runs during the next pause.
- **ours, NumPy encoder** (``--numpy-encoder``): ours as where the compiled kernels
  (``lt_detectron/evaluation/_roi_rle.pyx``, ``_coco_rle.pyx``) are not built: the encoder's NumPy
  path, pycocotools' boxes and areas.

Each measurement runs in its own process; ``--repeats N`` measures ours and raw hotcoco N times,
alternating, and reports the lower median of each (every run is listed). ``--report PATH`` writes
the table under the machine header of :mod:`benchmarks.report`. Usage::

  python -m benchmarks.benchmark_mask_eval --images 1000
  python -m benchmarks.benchmark_mask_eval --images 200 --pasted
  python -m benchmarks.benchmark_mask_eval --images 1000 5000 --lvis-api-max-images 1000 \
      --repeats 3 --numpy-encoder --report benchmarks/results/mask_eval.md
  python -m benchmarks.benchmark_mask_eval --images 1000 --skip-lvis-api --repeats 3 --direct \
      --inference-ms 0 10 --report benchmarks/results/mask_eval_pipeline.md
"""

from __future__ import annotations

import argparse
import logging
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

from benchmarks.lvis_eval_tables import median_run
from benchmarks.lvis_eval_workers import add_inference_ms_argument, forward_pause, save_detections
from benchmarks.report import Table, command_line, markdown_table, write_report

METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf")
IMAGE_HW = (480, 640)
POOL = 20000  # distinct ROI masks; detection j of the data set gets mask j % POOL


def make_data(cache: str, num_images: int, dets_per_image: int = 300, seed: int = 0):
    """Ground truth json and detections npz (boxes XYXY float32, scores, category ids, image ids)."""
    from lt_detectron.utils.testing import make_detections, make_lvis_like_gt

    base = os.path.join(cache, f"mask_eval_{num_images}x{dets_per_image}")
    gt_path, det_path = base + "_gt.json", base + "_dets.npz"
    if os.path.isfile(gt_path) and os.path.isfile(det_path):
        return gt_path, det_path
    os.makedirs(cache, exist_ok=True)
    gt = make_lvis_like_gt(num_images, seed=seed, with_masks=True, image_size=IMAGE_HW)
    dets = make_detections(gt, dets_per_image, seed=seed + 1)
    save_detections(det_path, dets)
    with open(gt_path, "w") as f:
        json.dump(gt, f)
    return gt_path, det_path


def _load(det_path):
    with np.load(det_path, allow_pickle=False) as z:
        return {k: z[k] for k in ("image_ids", "boxes", "scores", "category_ids")}


def _per_image(d):
    """(image id, start, end) of each image's rows (rows are grouped by image)."""
    ids = d["image_ids"]
    cut = np.flatnonzero(np.diff(ids)) + 1
    starts = np.concatenate([[0], cut])
    ends = np.concatenate([cut, [len(ids)]])
    return [(int(ids[s]), int(s), int(e)) for s, e in zip(starts, ends)]


def _pool():
    from lt_detectron.utils.testing import make_roi_masks

    return make_roi_masks(POOL, 28, seed=0)


def _rows_masks(pool, s, e):
    return pool[np.arange(s, e) % POOL]


def prepared_rles(d, pool):
    """The detection matrix (N, 7) and the RLEs of all detections (what ours computes in process())."""
    from lt_detectron.evaluation import encode_roi_masks

    arr = np.empty((len(d["boxes"]), 7), np.float64)
    arr[:, 0] = d["image_ids"]
    xywh = d["boxes"].copy()
    xywh[:, 2:] -= xywh[:, :2]
    arr[:, 1:5] = xywh
    arr[:, 5] = d["scores"]
    arr[:, 6] = d["category_ids"]
    rles = []
    for _, s, e in _per_image(d):
        rles += encode_roi_masks(_rows_masks(pool, s, e), d["boxes"][s:e], IMAGE_HW)
    return arr, rles


def _metrics(res, scale):
    return {k: (-1.0 if not np.isfinite(res[k]) else float(res[k]) / scale) for k in METRICS}


def worker_ours(gt_path, d, pool, out_dir, pasted=False, direct=False, inference_ms=0.0):
    """``pasted``: the old path instead, for comparison: Detectron2 pastes every mask into a
    full-image bitmap (``paste_masks_in_image``, as ``detector_postprocess`` does at inference, timed
    too) and ``process()`` encodes those. ``direct``: the evaluator encodes each image in its
    ``process()`` call (``encode_roi_masks``) instead of through its ``RoiMaskPipeline``.
    ``inference_ms``: a pause before each image, standing for the model's forward (not timed)."""
    from detectron2.data import MetadataCatalog

    with open(gt_path) as f:
        cats = sorted(c["id"] for c in json.load(f)["categories"])
    name = f"bench_mask_eval_{os.getpid()}"
    to_contig = {c: i for i, c in enumerate(cats)}
    MetadataCatalog.get(name).set(json_file=gt_path, thing_dataset_id_to_contiguous_id=to_contig)
    lut = np.zeros(max(cats) + 1, np.int64)
    lut[cats] = np.arange(len(cats))
    try:
        return _time_ours(name, d, pool, out_dir, lut, pasted, direct, inference_ms)
    finally:
        MetadataCatalog.remove(name)  # another call in this process may evaluate another gt


def _time_ours(name, d, pool, out_dir, lut, pasted, direct, inference_ms):
    import torch
    from detectron2.layers import paste_masks_in_image
    from detectron2.structures import Boxes, Instances, ROIMasks

    from lt_detectron.evaluation import LTLVISEvaluator

    ev = LTLVISEvaluator(name, ("segm",), distributed=False, output_dir=out_dir)
    ev.reset()
    if direct:
        ev._encoder = None  # every image encoded within its own process() call
    timed = 0.0
    for img_id, s, e in _per_image(d):
        forward_pause(inference_ms)
        inst = Instances(IMAGE_HW)
        inst.pred_boxes = Boxes(torch.from_numpy(d["boxes"][s:e]))
        inst.scores = torch.from_numpy(d["scores"][s:e])
        inst.pred_classes = torch.from_numpy(lut[d["category_ids"][s:e]])
        roi = torch.from_numpy(_rows_masks(pool, s, e))
        t = time.perf_counter()
        if pasted:
            inst.pred_masks = paste_masks_in_image(roi, inst.pred_boxes.tensor, IMAGE_HW, 0.5)
        else:
            inst.pred_masks = ROIMasks(roi)
        ev.process([{"image_id": img_id}], [{"instances": inst}])
        timed += time.perf_counter() - t
    process_time = timed
    t = time.perf_counter()
    res = ev.evaluate()
    timed += time.perf_counter() - t
    return timed, _metrics(res["segm"], 100.0), process_time


def worker_hotcoco(gt_path, d, pool):
    from lt_detectron.evaluation import evaluate_lvis_predictions

    arr, rles = prepared_rles(d, pool)
    t = time.perf_counter()
    m, _, _ = evaluate_lvis_predictions(gt_path, arr, rles, "segm", 300, "hotcoco")
    return time.perf_counter() - t, _metrics(m, 1.0)


def worker_lvis(gt_path, d, pool):
    from lvis import LVIS, LVISEval, LVISResults

    from lt_detectron.compat import ensure_lvis_numpy_compat
    from lt_detectron.evaluation.common import detections_to_dicts

    arr, rles = prepared_rles(d, pool)
    results = detections_to_dicts(arr, rles)
    for r in results:
        r.pop("bbox")  # as Detectron2's LVISEvaluator
    ensure_lvis_numpy_compat()
    t = time.perf_counter()
    gt = LVIS(gt_path)
    E = LVISEval(gt, LVISResults(gt, results, max_dets=300), "segm")
    E.run()
    return time.perf_counter() - t, {k: float(E.results[k]) for k in METRICS}


def run_worker(which, gt_path, det_path, inference_ms=0.0):
    if which != "ours_numpy":
        return _run_worker(which, gt_path, det_path, inference_ms)
    from lt_detectron.evaluation import common, roi_masks

    # meanwhile as without a C compiler: the encoder's NumPy path, pycocotools' boxes and areas
    kernels, roi_masks._roi_rle = roi_masks._roi_rle, None
    geometry, common._coco_rle = common._coco_rle, None
    try:
        return _run_worker("ours", gt_path, det_path, inference_ms)
    finally:
        roi_masks._roi_rle = kernels
        common._coco_rle = geometry


def _run_worker(which, gt_path, det_path, inference_ms=0.0):
    d, pool = _load(det_path), _pool()
    extra = {}
    if which in ("ours", "ours_direct"):
        with tempfile.TemporaryDirectory() as out:
            direct = which == "ours_direct"
            dt, metrics, extra["process"] = worker_ours(
                gt_path, d, pool, out, direct=direct, inference_ms=inference_ms
            )
    elif which == "pasted":
        with tempfile.TemporaryDirectory() as out:
            dt, metrics, extra["process"] = worker_ours(gt_path, d, pool, out, pasted=True)
    elif which == "hotcoco":
        dt, metrics = worker_hotcoco(gt_path, d, pool)
    else:
        dt, metrics = worker_lvis(gt_path, d, pool)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # GiB (Linux: KiB)
    return {"time": dt, "metrics": metrics, "peak_gib": peak, **extra}


def _subprocess(which, gt_path, det_path, inference_ms=0.0):
    cmd = [sys.executable, "-m", "benchmarks.benchmark_mask_eval", "--worker", which]
    cmd += ["--paths", gt_path, det_path, "--inference-ms", str(inference_ms)]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=root)
    for line in p.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    raise RuntimeError(f"worker {which} failed:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, nargs="+", default=[1000])
    ap.add_argument("--dets", type=int, default=300, help="detections per image")
    ap.add_argument("--skip-lvis-api", action="store_true")
    ap.add_argument(
        "--lvis-api-max-images",
        type=int,
        default=None,
        help="run lvis-api (once) only up to this many images (minutes and GiB at 5,000)",
    )
    ap.add_argument(
        "--pasted",
        action="store_true",
        help="also time the old path: full-image masks pasted by Detectron2, then process()",
    )
    ap.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "lt_bench_mask_eval"))
    ap.add_argument(
        "--worker",
        choices=["ours", "ours_numpy", "ours_direct", "pasted", "hotcoco", "lvis"],
        help=argparse.SUPPRESS,
    )
    ap.add_argument("--repeats", type=int, default=1, help="runs of ours and raw hotcoco per row")
    ap.add_argument(
        "--numpy-encoder",
        action="store_true",
        help="also time ours with the encoder's NumPy path (no compiled kernels)",
    )
    ap.add_argument(
        "--direct",
        action="store_true",
        help="also time ours with every image encoded in its own process() call (no pipeline)",
    )
    add_inference_ms_argument(ap)
    ap.add_argument("--report", help="also write the table with the machine to PATH (markdown)")
    ap.add_argument(
        "--profile",
        action="store_true",
        help="instead of the table: a cProfile of ours (one run in this process), by own time",
    )
    ap.add_argument("--paths", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:  # a subprocess of this benchmark: its stdout is the result line only
        logging.disable(logging.WARNING)
        result = run_worker(args.worker, *args.paths, inference_ms=args.inference_ms[0])
        print("RESULT " + json.dumps(result))
        return
    if args.profile:
        import cProfile
        import pstats

        for n in args.images:
            prof = cProfile.Profile()
            prof.runcall(run_worker, "ours", *make_data(args.cache, n, args.dets))
            print(f"cProfile of ours, {n} images x {args.dets} detections:")
            pstats.Stats(prof).sort_stats("tottime").print_stats(20)
        return
    load_at_start = os.getloadavg()
    from lt_detectron.evaluation.roi_masks import compiled_encoder

    columns = [
        "images x dets",
        "ours end to end",
        "ours: process()",
        "ours peak",
        "raw hotcoco",
        "ours / hotcoco",
        "ours, NumPy encoder",
        "NumPy / ours",
        "ours, direct encoding",
        "direct / ours",
        "lvis-api (evaluation alone)",
        "lvis-api / ours",
        "max metric diff",
        "old path: paste + process() + evaluate()",
        "old / ours",
    ]
    rows, notes = [], []
    for n in args.images:
        paths = make_data(args.cache, n, args.dets)
        lvis_api = not args.skip_lvis_api and (
            args.lvis_api_max_images is None or n <= args.lvis_api_max_images
        )
        ref = _subprocess("lvis", *paths) if lvis_api else None  # no forward: once per size
        old = _subprocess("pasted", *paths) if args.pasted else None
        for ms in args.inference_ms:
            label = f"{n} x {args.dets}" + (f", {ms:g} ms forward" if ms else "")
            runs = {"ours": [], "hotcoco": [], "ours_numpy": [], "ours_direct": []}
            for _ in range(args.repeats):
                runs["ours"].append(_subprocess("ours", *paths, ms))
                runs["hotcoco"].append(_subprocess("hotcoco", *paths))
                if args.numpy_encoder:
                    runs["ours_numpy"].append(_subprocess("ours_numpy", *paths, ms))
                if args.direct:
                    runs["ours_direct"].append(_subprocess("ours_direct", *paths, ms))
            ours, hot = median_run(runs["ours"]), median_run(runs["hotcoco"])
            npy = median_run(runs["ours_numpy"])  # None without --numpy-encoder
            drc = median_run(runs["ours_direct"])  # None without --direct
            diffs = [
                abs(ours["metrics"][k] - other["metrics"][k])
                for other in runs["hotcoco"]
                + runs["ours_numpy"]
                + runs["ours_direct"]
                + [x for x in (ref, old) if x]
                for k in METRICS
            ]
            rows.append(
                [
                    label,
                    f"{ours['time']:.2f} s",
                    f"{ours['process']:.2f} s",
                    f"{ours['peak_gib']:.2f} GiB",
                    f"{hot['time']:.2f} s",
                    f"{ours['time'] / hot['time']:.2f}x",
                    f"{npy['time']:.2f} s" if npy else "-",
                    f"{npy['time'] / ours['time']:.1f}x" if npy else "-",
                    f"{drc['time']:.2f} s ({drc['process']:.2f} s process())" if drc else "-",
                    f"{drc['time'] / ours['time']:.2f}x" if drc else "-",
                    f"{ref['time']:.2f} s" if ref else "-",
                    f"{ref['time'] / ours['time']:.1f}x" if ref else "-",
                    f"{max(diffs):.1e}",
                    f"{old['time']:.2f} s ({old['process']:.2f} s paste + process())"
                    if old
                    else "-",
                    f"{old['time'] / ours['time']:.1f}x" if old else "-",
                ]
            )
            every = {k: [round(r["time"], 2) for r in v] for k, v in runs.items() if v}
            notes.append(f"{label}, every run (s): {every}")
            print(markdown_table(columns, rows[-1:]), flush=True)
    encoder = "compiled kernels" if compiled_encoder() else "NumPy path (kernels not built)"
    notes.append(f"ours: the encoder's {encoder}; medians of {args.repeats} run(s)")
    table = Table("Mask evaluation from ROI-level masks", columns, rows, notes)
    print(markdown_table(columns, rows))
    print("\n".join(f"- {x}" for x in notes))
    if args.report:
        write_report(
            args.report,
            command_line(),
            [table],
            "Mask evaluation benchmark (benchmarks/benchmark_mask_eval.py)",
            load_at_start,
        )
        print(f"written to {args.report}", file=sys.stderr)


if __name__ == "__main__":
    main()
