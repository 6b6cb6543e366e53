"""The measured side of ``benchmark_lvis_eval``: the cached generated data (ground truth json,
detections npz, masks json; nothing pickled) and the workers, each run in its own process by
:func:`benchmarks.benchmark_lvis_eval.run_worker`, which print one ``RESULT {json}`` line: time,
``process()`` time, peak RSS and metrics. See that module's docstring for what each one times."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import sys
import tempfile
import time

import numpy as np

from benchmarks.lvis_eval_tables import METRICS, POOLED_METRICS


# ---------------------------------------------------------------------------- cached data
def add_inference_ms_argument(ap) -> None:
    """``--inference-ms MS [MS ...]`` of the evaluation benchmarks (``benchmark_lvis_eval``,
    ``benchmark_mask_eval``): a row per value, ours pausing that long before each image."""
    ap.add_argument(
        "--inference-ms",
        type=float,
        nargs="+",
        default=[0.0],
        metavar="MS",
        help="ours: pause MS ms (not timed) before each process() call, standing for the model's "
        "forward; one row per value (default 0: a tight loop)",
    )


def forward_pause(inference_ms: float) -> None:
    """The pause of ``--inference-ms`` before an image: the model's forward, not timed."""
    if inference_ms:
        time.sleep(inference_ms / 1000.0)


def _paths(cache, n, task):
    base = os.path.join(cache, f"lvis_like_{n}_{task}")
    return base + "_gt.json", base + "_dets.npz", base + "_masks.json"


def make_data(cache, n, task, seed=0):
    from lt_detectron.utils.testing import make_detections, make_lvis_like_gt

    gt_path, det_path, mask_path = _paths(cache, n, task)
    masks = task == "segm"
    if (
        os.path.isfile(gt_path)
        and os.path.isfile(det_path)
        and (not masks or os.path.isfile(mask_path))
    ):
        return gt_path, det_path, mask_path
    gt = make_lvis_like_gt(n, seed=seed, with_masks=masks)
    dets = make_detections(gt, 300, seed=seed + 1, with_masks=masks)
    with open(gt_path, "w") as f:
        json.dump(gt, f)
    save_detections(det_path, dets)
    if masks:
        with open(mask_path, "w") as f:
            json.dump(
                [
                    {"size": list(m["size"]), "counts": m["counts"].decode("ascii")}
                    for d in dets.values()
                    for m in d["masks"]
                ],
                f,
            )
    return gt_path, det_path, mask_path


def save_detections(det_path, dets):
    """``{image_id: {"boxes", "scores", "category_ids"}}`` (as make_detections) to one ``.npz`` of
    flat arrays with an ``image_ids`` column (masks, if any, are stored elsewhere)."""
    ids = np.concatenate([np.full(len(d["scores"]), k, np.int64) for k, d in dets.items()])
    np.savez(
        det_path,
        image_ids=ids,
        boxes=np.concatenate([d["boxes"] for d in dets.values()]),
        scores=np.concatenate([d["scores"] for d in dets.values()]),
        category_ids=np.concatenate([d["category_ids"] for d in dets.values()]),
    )


def load_dets(det_path, mask_path, masks):
    """Per image ``{"boxes" XYXY, "scores", "category_ids", "masks"}`` (as make_detections)."""
    with np.load(det_path, allow_pickle=False) as z:
        ids, boxes, scores, cats = z["image_ids"], z["boxes"], z["scores"], z["category_ids"]
    rles = None
    if masks:
        with open(mask_path) as f:
            rles = [
                {"size": m["size"], "counts": m["counts"].encode("ascii")} for m in json.load(f)
            ]
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    ends = np.r_[starts[1:], len(ids)]
    return {
        int(ids[s]): {
            "boxes": boxes[s:e],
            "scores": scores[s:e],
            "category_ids": cats[s:e],
            "masks": rles[s:e] if masks else None,
        }
        for s, e in zip(starts, ends)
    }


# ---------------------------------------------------------------------------- workers
def _metrics_of(res, scale, extra=()):
    return {
        k: (-1.0 if not np.isfinite(res.get(k, np.nan)) else res[k] / scale)
        for k in METRICS + tuple(extra)
        if k in res
    }


def worker_lvis(gt_path, dets, task):
    import logging

    from lvis import LVIS, LVISEval, LVISResults

    from lt_detectron.compat import ensure_lvis_numpy_compat
    from lt_detectron.utils.testing import detections_to_results

    results = detections_to_results(dets, task == "segm")
    if task == "segm":
        for r in results:
            r.pop("bbox")  # as Detectron2's LVISEvaluator
    del dets
    ensure_lvis_numpy_compat()
    logging.disable(logging.WARNING)
    t = time.perf_counter()
    gt = LVIS(gt_path)
    E = LVISEval(gt, LVISResults(gt, results, max_dets=300), task)
    E.run()
    return time.perf_counter() - t, {k: float(E.results[k]) for k in METRICS}


def worker_hotcoco(gt_path, dets, task, protocol):
    import logging

    from lt_detectron.evaluation import evaluate_lvis_predictions
    from lt_detectron.evaluation.common import keep_top_per_group

    logging.disable(logging.WARNING)
    arr, rles = _detection_matrix(dets)
    del dets
    t = time.perf_counter()
    if protocol == "fixed":
        arr, rles = keep_top_per_group(arr, rles, 6, 10000)
    m, _, _ = evaluate_lvis_predictions(
        gt_path, arr, rles, task, 300 if protocol == "standard" else -1, "hotcoco"
    )
    return time.perf_counter() - t, _metrics_of(m, 1.0)


def _detection_matrix(dets):
    """``(N, 7)`` rows ``[image_id, x, y, w, h, score, category_id]`` and the RLEs (or None)."""
    rows, rles = [], []
    for k, d in dets.items():
        a = np.empty((len(d["scores"]), 7))
        a[:, 0] = k
        a[:, 1:5] = d["boxes"]
        a[:, 3:5] -= a[:, 1:3]
        a[:, 5] = d["scores"]
        a[:, 6] = d["category_ids"]
        rows.append(a)
        if d["masks"] is not None:
            rles.extend(d["masks"])
    return np.concatenate(rows), (rles or None)


def worker_boundary(gt_path, dets):
    import logging

    from lt_detectron.evaluation.boundary import evaluate_boundary_predictions

    logging.disable(logging.WARNING)
    arr, rles = _detection_matrix(dets)
    del dets
    t = time.perf_counter()
    m, _, _ = evaluate_boundary_predictions(gt_path, arr, rles, 300, lvis_style=True)
    dt = time.perf_counter() - t
    return dt, {k: float(v) for k, v in m.items() if k in ("AP", "APr", "APc", "APf")}


def worker_ours(
    gt_path, dets, task, protocol, profile=False, save_results=True, pooled=False, inference_ms=0.0
):
    import logging

    import torch
    from detectron2.data import MetadataCatalog
    from detectron2.structures import Boxes, Instances
    from pycocotools import mask as mask_util

    from lt_detectron.evaluation import LTLVISEvaluator

    logging.disable(logging.WARNING)
    with open(gt_path) as f:
        gt = json.load(f)
    cats = sorted(c["id"] for c in gt["categories"])
    H, W = gt["images"][0]["height"], gt["images"][0]["width"]
    del gt
    name = "lt_bench_lvis_like"
    MetadataCatalog.get(name).set(
        json_file=gt_path,
        evaluator_type="lvis",
        thing_dataset_id_to_contiguous_id={c: i for i, c in enumerate(cats)},
    )
    lut = np.zeros(max(cats) + 1, np.int64)
    lut[cats] = np.arange(len(cats))

    def instances(d):
        inst = Instances((H, W))
        inst.pred_boxes = Boxes(torch.from_numpy(d["boxes"]))
        inst.scores = torch.from_numpy(d["scores"])
        inst.pred_classes = torch.from_numpy(lut[d["category_ids"]])
        if d["masks"] is not None:
            inst.pred_masks = torch.from_numpy(
                mask_util.decode(d["masks"]).transpose(2, 0, 1).astype(bool)
            )
        return inst

    tmp = tempfile.TemporaryDirectory(prefix="lt_bench_")  # removed when the worker returns
    out_dir = tmp.name
    # built before the model's outputs exist, as in training (build_evaluator, then inference, during
    # which it loads the results writer in the background); imports are not timed, for lvis-api either
    with contextlib.suppress(ImportError):
        import polars  # noqa: F401
    ev = LTLVISEvaluator(
        name,
        (task,),
        distributed=False,
        output_dir=out_dir,
        ap_protocol=protocol,
        save_results=save_results,
        pooled_ap=pooled,
    )
    masks = task == "segm"
    batches = (
        None
        if masks
        else [([{"image_id": k}], [{"instances": instances(d)}]) for k, d in dets.items()]
    )
    prof = None
    if profile:
        import cProfile

        prof = cProfile.Profile()
    timed = 0.0
    read_masks = (
        0.0  # one pass over the full-image pred_masks (NumPy any): a floor for encoding them
    )
    ev.reset()
    items = list(dets.items())
    del dets
    for i, (k, d) in enumerate(items):
        inp, outp = (
            batches[i]
            if batches is not None
            else ([{"image_id": k}], [{"instances": instances(d)}])
        )
        if masks:
            t = time.perf_counter()
            outp[0]["instances"].pred_masks.numpy().any(axis=1)
            read_masks += time.perf_counter() - t
        forward_pause(inference_ms)
        t = time.perf_counter()
        if prof:
            prof.enable()
        ev.process(inp, outp)
        if prof:
            prof.disable()
        timed += time.perf_counter() - t
        if batches is not None:
            batches[i] = None
    del items, batches
    t = time.perf_counter()
    if prof:
        prof.enable()
    res = ev.evaluate()
    if prof:
        prof.disable()
        import pstats

        pstats.Stats(prof, stream=sys.stderr).sort_stats("cumulative").print_stats(25)
    evaluate_time = time.perf_counter() - t
    process_time = timed
    timed += evaluate_time
    sizes = {f: os.path.getsize(os.path.join(out_dir, f)) for f in os.listdir(out_dir)}
    print(
        f"[ours] process() {process_time:.2f} s, evaluate() {evaluate_time:.2f} s; files {sizes}",
        file=sys.stderr,
    )
    tmp.cleanup()
    return timed, _metrics_of(res[task], 100.0, POOLED_METRICS), process_time, read_masks


def worker(
    which,
    gt_path,
    det_path,
    mask_path,
    task,
    protocol,
    profile,
    save_results=True,
    pooled=False,
    inference_ms=0.0,
):
    dets = load_dets(det_path, mask_path, task == "segm")
    process_time = read_masks = 0.0
    if which == "lvis":
        dt, metrics = worker_lvis(gt_path, dets, task)
    elif which == "hotcoco":
        dt, metrics = worker_hotcoco(gt_path, dets, task, protocol)
    elif which == "boundary":
        dt, metrics = worker_boundary(gt_path, dets)
    elif which == "authors":
        from benchmarks.lvis_eval_pooled import worker_authors_pooled

        dt, metrics = worker_authors_pooled(gt_path, dets)
    else:
        dt, metrics, process_time, read_masks = worker_ours(
            gt_path, dets, task, protocol, profile, save_results, pooled, inference_ms
        )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    result = {
        "time": dt,
        "process": process_time,
        "read_masks": read_masks,
        "peak_gib": peak,
        "metrics": metrics,
    }
    print("RESULT " + json.dumps(result))
