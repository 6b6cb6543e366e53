#!/usr/bin/env python
"""Registry timings: LVIS v1 statistics at startup, and counting from dataset dicts.

.venv/bin/python -m benchmarks.benchmark_class_stats [--annotations 1270141]
"""

import argparse
import time

import numpy as np


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--annotations", type=int, default=1270141)
    ap.add_argument("--classes", type=int, default=1203)
    args = ap.parse_args()
    t0 = time.perf_counter()
    import lt_detectron  # noqa: F401
    from lt_detectron.class_stats import build_class_stats, count_from_dicts

    t1 = time.perf_counter()
    s = build_class_stats("lvis_v1_train")
    t2 = time.perf_counter()
    print("| what | time |\n|---|---|")
    print("| import lt_detectron (registers everything) | %.2f s |" % (t1 - t0))
    print(
        "| LVIS v1 train ClassStats from the shipped table (%d classes, %d instances) | %.1f ms |"
        % (s.num_classes, s.num_instances, 1e3 * (t2 - t1))
    )
    rng = np.random.default_rng(0)
    per_image = 12
    n_img = args.annotations // per_image
    cats = rng.integers(0, args.classes, size=n_img * per_image).tolist()
    dicts = [
        {
            "annotations": [
                {"category_id": c, "iscrowd": 0} for c in cats[i * per_image : (i + 1) * per_image]
            ]
        }
        for i in range(n_img)
    ]
    t3 = time.perf_counter()
    inst, img, n = count_from_dicts(dicts, args.classes)
    t4 = time.perf_counter()
    print(
        "| counting %d annotations in %d dataset dicts | %.2f s (%.2fM annotations/s) |"
        % (inst.sum(), n, t4 - t3, inst.sum() / (t4 - t3) / 1e6)
    )


if __name__ == "__main__":
    main()
