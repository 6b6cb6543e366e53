#!/usr/bin/env python
"""Startup cost on an LVIS-v1-size training json: lt_detectron's train_net path vs plain detectron2.

    python -m benchmarks.benchmark_startup                   # ~100k images, ~1.27M boxes (LVIS v1 train size)
    python -m benchmarks.benchmark_startup --images 5000     # quicker, same shape

Generates ``lvis/lvis_v1_train.json`` in LVIS v1 format (the 1203 real categories, ~12.7 boxes
per image as in LVIS v1 train, 8-point polygons; empty image files, which lt_detectron's startup
check stats and nobody reads) under a temporary
``$DETECTRON2_DATASETS``, then runs each side in its own fresh process:

- **lt_detectron**: ``tools/train_net.py``'s own code path (``lt_detectron.engine.defaults``'
  ``argument_parser`` and ``load_config``, ``prepare_datasets``, train_net's ``setup`` and
  ``Trainer`` = ``LTTrainer``) on
  ``configs/lvis_v1/rfs_mask_rcnn_R_50_FPN_1x.yaml`` (``RepeatFactorTrainingSampler``, as
  the LVIS recipes use) with the builtin name ``lvis_v1_train``;
- **detectron2**: ``DefaultTrainer`` on the same json registered with
  ``register_lvis_instances`` (LVIS v1 metadata), the same model config with detectron2's
  ``StandardROIHeads`` (lt_detectron is never imported), the same sampler.

Both: ``MODEL.DEVICE cpu``, ``MODEL.WEIGHTS ""``, ``DATALOADER.NUM_WORKERS 0``,
``SOLVER.IMS_PER_BATCH 2``. What is timed: from the start of the child process (before any
import) until the first batch has been drawn from the trainer's data loader
(``next(trainer._trainer._data_loader_iter)``), i.e. imports, config, dataset registration
and parsing, class statistics, model and optimizer construction, sampler (repeat factors)
and the first batch. Images are not read: on both sides detectron2's ``DatasetMapper`` is
replaced by the same stand-in that returns a blank 3 x h x w image of the record's size, so
the first model step is not part of the time. Peak RSS: the child's ``ru_maxrss`` when the
clock stops. Each side runs ``--repeats`` times (fresh processes, alternating); the table
shows medians.
"""

import time

T_START = time.perf_counter()  # noqa: E402  (the clock starts before any heavy import)

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LT_CONFIG = os.path.join(ROOT, "configs", "lvis_v1", "rfs_mask_rcnn_R_50_FPN_1x.yaml")
COMMON_OPTS = [
    "MODEL.DEVICE",
    "cpu",
    "MODEL.WEIGHTS",
    "",
    "DATALOADER.NUM_WORKERS",
    "0",
    "SOLVER.IMS_PER_BATCH",
    "2",
    "DATALOADER.SAMPLER_TRAIN",
    "RepeatFactorTrainingSampler",
    "DATALOADER.REPEAT_THRESHOLD",
    "0.001",
]


def generate_json(path, num_images, boxes_per_image=12.68, seed=0):
    """LVIS v1-format train json of ``num_images`` images (no image files)."""
    import numpy as np

    from lt_detectron.utils.testing import lvis_v1_categories

    rng = np.random.default_rng(seed)
    cats = lvis_v1_categories()
    # category of each box ~ the real LVIS v1 instance distribution
    p = np.array([c["instance_count"] for c in cats], dtype=np.float64)
    p /= p.sum()
    n_per_img = rng.poisson(boxes_per_image - 1, size=num_images) + 1
    n_total = int(n_per_img.sum())
    cat_ids = rng.choice(np.arange(1, 1204), size=n_total, p=p)
    wh = rng.integers(480, 641, size=(num_images, 2))
    xy = rng.uniform(0, 0.7, size=(n_total, 2))
    sz = rng.uniform(0.05, 0.3, size=(n_total, 2))
    images, anns = [], []
    k = 0
    t = np.arange(8) * (2 * np.pi / 8)
    for i in range(num_images):
        W, H = int(wh[i, 0]), int(wh[i, 1])
        img_id = i + 1
        images.append(
            {
                "id": img_id,
                "height": H,
                "width": W,
                "license": 1,
                "date_captured": "2013-11-14 11:18:45",
                "flickr_url": "",
                "neg_category_ids": [],
                "not_exhaustive_category_ids": [],
                "coco_url": "http://images.cocodataset.org/train2017/%012d.jpg" % img_id,
            }
        )
        for _ in range(int(n_per_img[i])):
            x, y = xy[k, 0] * W, xy[k, 1] * H
            w, h = sz[k, 0] * W, sz[k, 1] * H
            xs = np.round(x + w / 2 + w / 2 * np.cos(t), 2)
            ys = np.round(y + h / 2 + h / 2 * np.sin(t), 2)
            anns.append(
                {
                    "area": round(float(w * h * 0.7), 2),
                    "id": k + 1,
                    "image_id": img_id,
                    "bbox": [
                        round(float(x), 2),
                        round(float(y), 2),
                        round(float(w), 2),
                        round(float(h), 2),
                    ],
                    "category_id": int(cat_ids[k]),
                    "segmentation": [[float(v) for xy_ in zip(xs, ys) for v in xy_]],
                }
            )
            k += 1
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(
            {
                "info": {"description": "benchmark_startup"},
                "annotations": anns,
                "images": images,
                "licenses": [],
                "categories": cats,
            },
            f,
        )
    return num_images, n_total


def _blank_mapper():
    """Replace DatasetMapper.__call__ by a stand-in that reads no image (same on both sides)."""
    import torch
    from detectron2.data import dataset_mapper

    def call(self, dataset_dict):
        d = dict(dataset_dict)
        d["image"] = torch.zeros(3, d["height"], d["width"], dtype=torch.uint8)
        return d

    dataset_mapper.DatasetMapper.__call__ = call


def child_lt(out_dir):
    from lt_detectron.data import prepare_datasets, register_from_args
    from lt_detectron.engine import defaults
    from tools import train_net

    _blank_mapper()
    args = defaults.argument_parser().parse_args(
        ["--config-file", LT_CONFIG] + COMMON_OPTS + ["OUTPUT_DIR", out_dir, "DATASETS.TEST", "()"]
    )
    register_from_args(args)
    prepare_datasets(defaults.load_config(args))
    cfg = train_net.setup(args)
    trainer = train_net.Trainer(cfg)
    next(trainer._trainer._data_loader_iter)


def child_d2(out_dir, json_file, image_root):
    from detectron2.config import get_cfg
    from detectron2.data.datasets import register_lvis_instances
    from detectron2.data.datasets.lvis import get_lvis_instances_meta
    from detectron2.engine import DefaultTrainer, default_argument_parser, default_setup

    _blank_mapper()
    register_lvis_instances(
        "bench_lvis_v1_train", get_lvis_instances_meta("lvis_v1"), json_file, image_root
    )
    cfg = get_cfg()
    cfg.merge_from_file(os.path.join(ROOT, "configs", "Base-RCNN-FPN.yaml"), allow_unsafe=True)
    cfg.merge_from_list(
        COMMON_OPTS
        + [
            "OUTPUT_DIR",
            out_dir,
            "MODEL.ROI_HEADS.NAME",
            "StandardROIHeads",
            "MODEL.MASK_ON",
            "True",
            "MODEL.RESNETS.DEPTH",
            "50",
            "MODEL.ROI_HEADS.NUM_CLASSES",
            "1203",
            "DATASETS.TRAIN",
            "('bench_lvis_v1_train',)",
            "DATASETS.TEST",
            "()",
        ]
    )
    cfg.freeze()
    default_setup(cfg, default_argument_parser().parse_args([]))
    trainer = DefaultTrainer(cfg)
    next(trainer._trainer._data_loader_iter)


def run_child(side, root, json_file):
    out_dir = tempfile.mkdtemp(prefix="bench_startup_%s_" % side, dir=root)
    env = dict(
        os.environ, DETECTRON2_DATASETS=root, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1")
    )
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.benchmark_startup",
        "--child",
        side,
        "--json",
        json_file,
        "--out-dir",
        out_dir,
    ]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
    if p.returncode != 0:
        raise RuntimeError(
            "%s child failed (rc %d):\n%s"
            % (side, p.returncode, p.stdout[-3000:] + p.stderr[-6000:])
        )
    line = [ln for ln in p.stdout.splitlines() if ln.startswith("BENCH ")][-1]
    return json.loads(line[len("BENCH ") :])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--images",
        type=int,
        default=100170,
        help="images in the generated json (LVIS v1 train: 100170)",
    )
    ap.add_argument("--repeats", type=int, default=1, help="fresh processes per side")
    ap.add_argument("--root", help="folder for the generated json (default: temporary)")
    ap.add_argument("--child", choices=("lt", "d2"), help=argparse.SUPPRESS)
    ap.add_argument("--json", help=argparse.SUPPRESS)
    ap.add_argument("--out-dir", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.child:
        if args.child == "lt":
            child_lt(args.out_dir)
        else:
            child_d2(
                args.out_dir,
                args.json,
                os.path.join(os.path.dirname(os.path.dirname(args.json)), "coco"),
            )
        t = time.perf_counter() - T_START
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB -> MiB
        print("BENCH " + json.dumps({"seconds": t, "peak_rss_mib": rss}), flush=True)
        return 0

    root = os.path.abspath(args.root or tempfile.mkdtemp(prefix="lt_bench_startup_"))
    json_file = os.path.join(root, "lvis", "lvis_v1_train.json")
    t0 = time.perf_counter()
    n_img, n_box = generate_json(json_file, args.images)
    image_dir = os.path.join(root, "coco", "train2017")
    os.makedirs(image_dir, exist_ok=True)
    for i in range(1, n_img + 1):  # empty files: lt_detectron checks they exist, nobody reads them
        open(os.path.join(image_dir, "%012d.jpg" % i), "wb").close()
    print(
        "generated %s: %d images, %d boxes, %.0f MiB in %.1f s"
        % (json_file, n_img, n_box, os.path.getsize(json_file) / 2**20, time.perf_counter() - t0),
        flush=True,
    )
    res = {"d2": [], "lt": []}
    for _ in range(args.repeats):
        for side in ("d2", "lt"):
            r = run_child(side, root, json_file)
            res[side].append(r)
            print("  %s: %.1f s, %.0f MiB" % (side, r["seconds"], r["peak_rss_mib"]), flush=True)
    med = {
        s: {k: statistics.median(r[k] for r in res[s]) for k in ("seconds", "peak_rss_mib")}
        for s in res
    }
    print()
    print("| %d images, %d boxes | time to first batch (s) | peak RSS (MiB) |" % (n_img, n_box))
    print("|---|---:|---:|")
    print(
        "| detectron2 DefaultTrainer + register_lvis_instances | %.1f | %.0f |"
        % (med["d2"]["seconds"], med["d2"]["peak_rss_mib"])
    )
    print(
        "| lt_detectron train_net (LTTrainer) | %.1f | %.0f |"
        % (med["lt"]["seconds"], med["lt"]["peak_rss_mib"])
    )
    rt = med["lt"]["seconds"] / med["d2"]["seconds"]
    rm = med["lt"]["peak_rss_mib"] / med["d2"]["peak_rss_mib"]
    print("| ratio lt / detectron2 (goal <= 1.1) | %.2f | %.2f |" % (rt, rm))
    print(
        "\ncommand: python -m benchmarks.benchmark_startup "
        + " ".join(argv if argv is not None else sys.argv[1:])
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
