#!/usr/bin/env python
"""Evaluate a saved results file (Detectron2's ``lvis_instances_results.json`` /
``coco_instances_results.json``, or any lvis-api / pycocotools results list) with the evaluator
code path of training: the same protocol, tables and files.

    python tools/evaluate_results.py output/inference/lvis_v1_val/lvis_instances_results.json \\
        --dataset lvis_v1_val --config-file configs/lvis_v1/eqlv2_mask_rcnn_R_50_FPN_1x.yaml
    python tools/evaluate_results.py results.json --gt lvis_v1_val.json --train-json lvis_v1_train.json \\
        --output eval_out TEST.LT.AP_PROTOCOL fixed TEST.LT.POOLED_AP True

The ground truth is a registered dataset (``--dataset``) or a json (``--gt``; LVIS protocol when its
categories carry ``frequency``, else COCO-LT); its boxes must be finite. The training class
statistics (AP by instance group, COCO-LT's AP1-AP4) come from ``--train-json`` /
``--train-dataset``, else from the config's ``DATASETS.TRAIN`` when ``--config-file`` is given,
else from the ground truth's ``instance_count`` fields (LVIS files carry them). The training data
must have the ground truth's classes (names in category-id order). Its counts are those of its
annotations (counted once, then cached); the LVIS table shipped for ``lvis_v1_train`` is used only
when that json is absent, and the output says so. ``TEST.LT.*`` and
``MODEL.LT.GROUP_EDGES`` come from the config file and the trailing ``KEY VALUE`` pairs.
With ``--output DIR`` the per-category csv and ``{lvis,coco}_metrics.json`` are written there.
"""

import argparse
import logging
import os
import sys


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("results", metavar="RESULTS.json", help="the results file to evaluate")
    gt = p.add_mutually_exclusive_group(required=True)
    gt.add_argument("--dataset", help="a registered dataset name (its json is the ground truth)")
    gt.add_argument("--gt", metavar="GT.json", help="a ground-truth json (LVIS or COCO format)")
    tr = p.add_mutually_exclusive_group()
    tr.add_argument(
        "--train-json", metavar="TRAIN.json", help="training annotations, for the class statistics"
    )
    tr.add_argument(
        "--train-dataset",
        metavar="NAME",
        help="a registered training dataset, for the class statistics",
    )
    p.add_argument(
        "--config-file",
        metavar="CFG",
        help="a config (TEST.LT.*, MODEL.LT.GROUP_EDGES, DATASETS.TRAIN)",
    )
    p.add_argument(
        "--output", metavar="DIR", help="write the per-category csv and the metrics json here"
    )
    p.add_argument(
        "--tasks",
        nargs="+",
        choices=["bbox", "segm", "boundary"],
        help="default: bbox, + segm when the results carry masks (+ boundary with TEST.LT.BOUNDARY_AP)",
    )
    p.add_argument(
        "--evaluator-type",
        choices=["lvis", "coco_lt", "coco"],
        help="with --gt: force the protocol",
    )
    from lt_detectron.data.register_args import add_register_arguments

    add_register_arguments(p)
    p.epilog = "Trailing KEY VALUE pairs override the config (e.g. TEST.LT.AP_PROTOCOL fixed)."
    args, opts = p.parse_known_args(argv)
    bad = [o for o in opts if o.startswith("-") and not _is_number(o)]  # "-1" is a value
    if bad:
        p.error(f"unrecognized arguments: {' '.join(bad)}")
    args.opts = opts
    return args


def _fail(msg: str):
    print(f"evaluate_results.py: error: {msg}", file=sys.stderr)
    raise SystemExit(2)


def main(argv=None):
    args = parse_args(argv)
    from detectron2.config import get_cfg
    from detectron2.data import DatasetCatalog, MetadataCatalog

    import lt_detectron  # noqa: F401  (registers the builtin datasets)
    from lt_detectron import add_lt_config, get_class_stats
    from lt_detectron.config import LTConfigError, validate_lt_config
    from lt_detectron.data import check_same_class_lists, register_from_args, register_lt_dataset
    from lt_detectron.data.validation import check_json_boxes
    from lt_detectron.engine.logger import setup_lt_logger
    from lt_detectron.evaluation import build_lt_evaluator, load_results_json
    from lt_detectron.evaluation.common import load_gt_json

    register_from_args(args)  # --register-dataset / --register-lvis / --register-coco
    setup_lt_logger(None)
    logging.getLogger("lt_detectron").setLevel(logging.INFO)
    cfg = get_cfg()
    add_lt_config(cfg)
    if args.config_file:
        if not os.path.isfile(args.config_file):
            _fail(f"config file not found: {args.config_file}")
        cfg.merge_from_file(args.config_file)
    if args.opts:
        if len(args.opts) % 2:
            _fail(f"config overrides come in KEY VALUE pairs, got {args.opts}")
        cfg.merge_from_list(args.opts)
    try:
        validate_lt_config(cfg, args.config_file or "the command line")
    except LTConfigError as e:
        _fail(str(e))
    if not os.path.isfile(args.results):
        _fail(
            f"results file not found: {args.results} (evaluating with an output folder writes "
            "inference/<dataset>/lvis_instances_results.json or coco_instances_results.json)"
        )

    if args.gt:
        if not os.path.isfile(args.gt):
            _fail(f"ground-truth json not found: {args.gt}")
        name = "evaluate_results_gt"
        register_lt_dataset(
            name,
            os.path.abspath(args.gt),
            os.path.dirname(os.path.abspath(args.gt)),
            evaluator_type=args.evaluator_type,
        )
    else:
        name = args.dataset
        if name not in DatasetCatalog.list():
            _fail(f"dataset {name!r} is not registered; pass its json with --gt GT.json instead")
    meta = MetadataCatalog.get(name)
    if not meta.get("json_file", None) or not os.path.isfile(meta.json_file):
        _fail(
            f"dataset {name!r} has no ground-truth json on disk ({meta.get('json_file', None)}); pass --gt GT.json"
        )

    gt = load_gt_json(meta.json_file, name)
    check_json_boxes(meta.json_file, gt)  # a NaN box: an error naming the file and the annotation

    train = ()
    if args.train_json:
        if not os.path.isfile(args.train_json):
            _fail(f"training json not found: {args.train_json}")
        train = ("evaluate_results_train",)
        register_lt_dataset(
            train[0],
            os.path.abspath(args.train_json),
            os.path.dirname(os.path.abspath(args.train_json)),
        )
    elif args.train_dataset:
        train = (args.train_dataset,)
    elif args.config_file and cfg.DATASETS.TRAIN:
        train = tuple(cfg.DATASETS.TRAIN)
    stats = None
    if train:
        # counts are matched to the ground truth by category id: the classes must be the same
        check_same_class_lists(train + (name,))
        stats = get_class_stats(train, verify_distributed=False)

    dets, rles = load_results_json(
        args.results,
        category_ids=[c["id"] for c in gt["categories"]],
        image_ids=[im["id"] for im in gt["images"]],
        need_masks=any(t != "bbox" for t in args.tasks or ()),
    )
    del gt
    tasks = args.tasks
    if tasks is None:
        tasks = ("bbox", "segm") if rles is not None else ("bbox",)
        if rles is not None and cfg.TEST.LT.BOUNDARY_AP:
            tasks = tasks + ("boundary",)
    evaluator = build_lt_evaluator(
        cfg,
        name,
        output_folder=args.output or "",
        class_stats=stats,
        distributed=False,
        tasks=tuple(tasks),
        save_results=False,
    )
    results = evaluator.evaluate_arrays(dets, rles)  # logs its table, one per task
    if stats is not None and "table" in stats.source.split("+"):
        print(
            f"WARNING: the training counts of {', '.join(train)} (AP by instance group) come from "
            "the shipped table, not from annotations: the training json is absent (see the log)."
        )
    return results


if __name__ == "__main__":
    try:
        main()
    except (FileNotFoundError, ValueError) as e:
        _fail(str(e))
