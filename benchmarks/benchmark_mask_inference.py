#!/usr/bin/env python
"""Mask-head inference on CPU at LVIS scale: Detectron2's all-class path (``mask_rcnn_inference``
over the predictor's C output channels) against lt_detectron's class-selected path
(``class_selected_mask_inference``: only the predicted classes' predictor rows).

Two stages, each variant in a fresh subprocess (so its peak memory is its own):

* ``head``: the LVIS config's mask head (4 convs, deconv, 1x1 predictor to ``--classes`` channels,
  random weights) on ``--detections`` random 256-channel 14x14 ROI features of random classes;
  seconds per image (median of ``--repeats``) and memory;
* ``model``: a whole Mask R-CNN forward (``--config``, random weights scaled as in
  ``lt_detectron.utils.testing.random_mask_rcnn``, one ``--size`` px image, score threshold 0 and
  ``--detections`` per image, RPN ``--proposals`` per image; the config's own class count, which
  must match its training set's) with the ROI heads' mask branch in each mode; seconds per image
  (median of ``--model-repeats``). ``--model-repeats 0`` skips it.

Time is wall-clock and process CPU time (``time.process_time``; with one thread it is less
sensitive to other processes on a shared machine). Memory is the process's peak resident set size
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``) after the runs, and its growth over the peak
before the first run (model built, inputs made). The masks of the two variants are saved and
compared (max absolute difference of probabilities).

  python -m benchmarks.benchmark_mask_inference
  python -m benchmarks.benchmark_mask_inference --threads 4
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import torch

CONFIG = "configs/lvis_v1/softmax_mask_rcnn_R_50_FPN_1x.yaml"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VARIANTS = ("all", "selected")  # Detectron2's all-class path, the class-selected path


def _maxrss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _timed(fn, repeats):
    """Wall-clock and process CPU seconds of each of ``repeats`` calls, and the last output."""
    times, cpu = [], []
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        out = fn()
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return times, cpu, out


def _head_child(args):
    from detectron2.layers import ShapeSpec
    from detectron2.modeling.roi_heads import build_mask_head
    from detectron2.structures import Boxes, Instances

    from lt_detectron.modeling.class_selected_masks import class_selected_mask_inference
    from lt_detectron.utils.testing import lt_cfg

    cfg = lt_cfg(os.path.join(ROOT, args.config), "MODEL.ROI_HEADS.NUM_CLASSES", args.classes)
    res = cfg.MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION
    torch.manual_seed(0)
    head = build_mask_head(cfg, ShapeSpec(channels=256, height=res, width=res)).eval()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(args.detections, 256, res, res, generator=g)
    classes = torch.randint(0, args.classes, (args.detections,), generator=g)

    def run():
        inst = Instances((800, 800), pred_boxes=Boxes(torch.zeros(len(classes), 4)))
        inst.pred_classes = classes
        if args.variant == "all":
            return head(x, [inst])[0].pred_masks
        return class_selected_mask_inference(head, x, [inst])[0].pred_masks

    return run, args.repeats


def _model_child(args):
    import types

    from detectron2.modeling.roi_heads import StandardROIHeads

    from lt_detectron.utils.testing import random_images, random_mask_rcnn

    opts = ["MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.0, "TEST.DETECTIONS_PER_IMAGE", args.detections]
    opts += ["INPUT.MIN_SIZE_TEST", args.size, "INPUT.MAX_SIZE_TEST", args.size]
    opts += ["MODEL.RPN.POST_NMS_TOPK_TEST", args.proposals]
    model = random_mask_rcnn(os.path.join(ROOT, args.config), *opts)
    if args.variant == "all":  # this model's mask branch: Detectron2's, all classes
        model.roi_heads._forward_mask = types.MethodType(
            StandardROIHeads._forward_mask, model.roi_heads
        )
    (inp,) = random_images(1, args.size, args.size)
    return (lambda: model([inp])[0]["instances"].pred_masks), args.model_repeats


def child(args):
    torch.set_num_threads(args.threads)
    run, repeats = (_head_child if args.stage == "head" else _model_child)(args)
    before = _maxrss_mib()  # model built, inputs made
    with torch.no_grad():
        times, cpu, masks = _timed(run, repeats)
    torch.save(masks.contiguous(), args.save)
    print(
        json.dumps(
            {
                "times": times,
                "cpu_times": cpu,
                "n": int(masks.shape[0]),
                "peak_mib": _maxrss_mib(),
                "start_mib": before,
            }
        )
    )


def _run_child(args, stage, variant, save):
    cmd = [sys.executable, "-m", "benchmarks.benchmark_mask_inference", "--child", stage]
    cmd += ["--variant", variant, "--save", save]
    for flag in ("config", "classes", "detections", "threads", "repeats", "model_repeats", "size"):
        cmd += ["--" + flag.replace("_", "-"), str(getattr(args, flag))]
    cmd += ["--proposals", str(args.proposals)]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), PYTHONWARNINGS="ignore")
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise RuntimeError("%s %s failed:\n%s" % (stage, variant, out.stderr[-3000:]))
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--config", default=CONFIG, help="a Mask R-CNN config, relative to the repo")
    ap.add_argument("--classes", type=int, default=1203, help="mask-head stage's classes")
    ap.add_argument("--detections", type=int, default=300)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3, help="mask-head runs per variant")
    ap.add_argument("--model-repeats", type=int, default=1, help="whole-model runs; 0 skips")
    ap.add_argument("--size", type=int, default=160, help="whole-model input size (px)")
    ap.add_argument("--proposals", type=int, default=100, help="RPN proposals per image")
    ap.add_argument("--child", choices=("head", "model"), help=argparse.SUPPRESS)
    ap.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    ap.add_argument("--save", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        args.stage = args.child
        return child(args)

    stages = ["head"] + (["model"] if args.model_repeats > 0 else [])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for stage in stages:
            res, masks = {}, {}
            for variant in VARIANTS:
                save = os.path.join(tmp, "%s_%s.pt" % (stage, variant))
                res[variant] = _run_child(args, stage, variant, save)
                masks[variant] = torch.load(save, weights_only=True)
            diff = (masks["all"].float() - masks["selected"].float()).abs().max().item()
            for variant in VARIANTS:
                r = res[variant]
                rows.append(
                    (
                        stage,
                        variant,
                        r["n"],
                        statistics.median(r["times"]),
                        statistics.median(r["cpu_times"]),
                        len(r["times"]),
                        r["peak_mib"],
                        r["peak_mib"] - r["start_mib"],
                        diff,
                    )
                )
    print(
        "config %s, %d classes, %d detections, %d thread(s), torch %s"
        % (args.config, args.classes, args.detections, args.threads, torch.__version__)
    )
    print(
        "| stage | masks | detections | s/image (median) | CPU s/image (median) | runs "
        "| peak RSS (MiB) | RSS growth (MiB) | max |p diff| |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for stage, variant, n, med, cpu, runs, peak, growth, diff in rows:
        label = "all classes (Detectron2)" if variant == "all" else "class-selected"
        print(
            "| %s | %s | %d | %.3f | %.3f | %d | %.0f | %.0f | %.1e |"
            % (stage, label, n, med, cpu, runs, peak, growth, diff)
        )
    return rows


if __name__ == "__main__":
    main()
