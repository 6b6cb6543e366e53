#!/usr/bin/env python
"""Time and memory of top-k-per-class inference (Fixed AP) on CPU at LVIS scale, against
Detectron2's ``fast_rcnn_inference`` (300 per image) on the same inputs.

Per image: 1000 proposals, 1203 classes, class-specific boxes ``(1000, 1203*4)`` and softmax
probabilities ``(1000, 1204)``. Scores are synthetic: logits ~ N(0, SIGMA) plus +BOOST on one random
class per proposal (a peaked, trained-like classifier), so the number of candidates above the score
floor (``MODEL.ROI_HEADS.SCORE_THRESH_TEST``, 1e-4 as in the LVIS configs) is what drives the cost;
the candidate count per image is reported. ``--boost`` sets how peaked the classifier is: with 1,203
classes, 8 leaves ~830k of the 1.2M (proposal, class) scores above 1e-4 (a worst case), 10 ~230k,
12 a few thousand. The first images run with no per-class threshold (every class has fewer than k
detections); the thresholds then rise. Time per image is reported for the first and the last tenth of
the stream; the time for 19,809 images (LVIS v1 val) is the measured stream plus the remaining images
at the last tenth's rate, an upper bound (the thresholds keep rising). Detectron2's
``fast_rcnn_inference`` (300 per image) is timed on the first ``--baseline-images`` images of the
same stream (it keeps no state, so its cost does not change along the stream).

  python -m benchmarks.benchmark_topk_inference --images 400 --boost 8
"""

import argparse
import resource
import time

import torch


def make_image(g, R, C, sigma, boost):
    xy = torch.rand(R, 1, 2, generator=g) * 600
    wh = 8 + torch.rand(R, 1, 2, generator=g) * 200
    jitter = torch.randn(R, C, 4, generator=g) * 4
    boxes = (torch.cat([xy, xy + wh], dim=2) + jitter).reshape(R, C * 4)
    logits = torch.randn(R, C + 1, generator=g) * sigma
    logits[torch.arange(R), torch.randint(0, C + 1, (R,), generator=g)] += boost
    return boxes, torch.softmax(logits, dim=1)


def main():
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--images", type=int, default=300)
    ap.add_argument("--proposals", type=int, default=1000)
    ap.add_argument("--classes", type=int, default=1203)
    ap.add_argument("--k", type=int, default=10000)
    ap.add_argument("--score-thresh", type=float, default=1e-4)
    ap.add_argument("--nms", type=float, default=0.5)
    ap.add_argument("--sigma", type=float, default=1.0)
    ap.add_argument("--boost", type=float, default=8.0)
    ap.add_argument("--baseline-images", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from detectron2.modeling.roi_heads.fast_rcnn import fast_rcnn_inference

    from lt_detectron.modeling.topk_inference import ClassTopKThresholds

    g = torch.Generator().manual_seed(0)
    shape = [(800, 800)]
    tracker = ClassTopKThresholds(args.classes, args.k)
    times, base_times, kept, cands = [], [], [], []
    t_start = time.perf_counter()
    for i in range(args.images):
        boxes, scores = make_image(g, args.proposals, args.classes, args.sigma, args.boost)
        cands.append(int((scores[:, :-1] > args.score_thresh).sum()))
        t = time.perf_counter()
        (inst,), _ = tracker.inference([boxes], [scores], shape, args.score_thresh, args.nms)
        times.append(time.perf_counter() - t)
        kept.append(len(inst))
        if i < args.baseline_images:
            t = time.perf_counter()
            fast_rcnn_inference([boxes], [scores], shape, args.score_thresh, args.nms, 300)
            base_times.append(time.perf_counter() - t)
        if (i + 1) % max(1, args.images // 20) == 0 or i + 1 == args.images:
            done = time.perf_counter() - t_start
            print(
                f"[topk] {i + 1}/{args.images} images, {done:.0f} s, last {1000 * times[-1]:.0f} ms/img, "
                f"{kept[-1]} kept",
                flush=True,
            )
    tenth = max(1, args.images // 10)
    first, last = sum(times[:tenth]) / tenth, sum(times[-tenth:]) / tenth
    base = sum(base_times) / len(base_times)
    thr = tracker.thresholds
    full = 0 if thr is None else int(torch.isfinite(thr).sum())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    kept_scores = 0 if tracker._scores is None else tracker._scores.numel()
    print(
        f"images {args.images}, {args.proposals} proposals x {args.classes} classes, k={args.k}, "
        f"floor {args.score_thresh}, {args.threads} thread(s)"
    )
    print(f"candidates above the floor per image: mean {sum(cands) / len(cands):.0f}")
    print(
        f"top-k inference: first tenth {1000 * first:.1f} ms/img ({sum(kept[:tenth]) / tenth:.0f} kept/img), "
        f"last tenth {1000 * last:.1f} ms/img ({sum(kept[-tenth:]) / tenth:.0f} kept/img)"
    )
    print(f"Detectron2 fast_rcnn_inference (300/img): {1000 * base:.1f} ms/img")
    print(
        f"classes with a finite threshold: {full}/{args.classes}; scores held by the tracker: {kept_scores} "
        f"({kept_scores * 12 / 2**20:.1f} MiB)"
    )
    total = sum(times) + max(0, 19809 - args.images) * last
    print(
        f"19,809 images: at most {total / 60:.1f} min of selection ({sum(times):.0f} s measured for "
        f"{args.images} images, the rest at the last tenth's rate); Detectron2's: "
        f"{19809 * base / 60:.1f} min; process peak RSS {peak:.2f} GiB"
    )


if __name__ == "__main__":
    main()
