#!/usr/bin/env python
"""Write the plots the papers use to explain the methods, for a trained model or a config.

    # classifier weight norms per class (every box predictor / cascade stage) and, for the losses
    # with per-class gradient statistics (EQL v2, EFL), the accumulated positive/negative ratio:
    python tools/plot_methods.py --config-file configs/lt_shapes/faster_rcnn_tiny_eqlv2.yaml \\
        --output plots/ MODEL.WEIGHTS output/lt_shapes/faster_rcnn_tiny_eqlv2/model_final.pth

    # BOFL's weight schedule for a config (no weights needed):
    python tools/plot_methods.py --config-file configs/dense/bofl_fcos_R_50_FPN_1x_coco_lt.yaml \\
        --bofl-schedule --output plots/

    # an evaluation's per-category AP: AP vs training instances and per-category bars
    python tools/plot_methods.py --output plots/ \\
        --results output/lt_shapes/faster_rcnn_tiny_eqlv2/inference/lt_shapes_val/lvis_per_category_bbox.csv

Classes are sorted by training instance count from the class-statistics registry of
``DATASETS.TRAIN`` (LVIS statistics ship with the package; other datasets are counted from
their json, given with ``--register-dataset NAME JSON IMAGE_ROOT`` as in train_net.py; without the
data, from ``MODEL.LT.CLASS_STATS_FILE``, which a run's config.yaml sets). The same plots are
written during training with ``LT_HOOKS.PLOT_PERIOD N`` (and into TensorBoard).
"""

import argparse
import os
import sys

from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog

import lt_detectron  # noqa: F401  (registers heads, meta-architectures and datasets)
from lt_detectron import add_lt_config
from lt_detectron.class_stats import ClassStatsError, get_train_class_stats
from lt_detectron.config import validate_lt_config
from lt_detectron.data import add_register_arguments, ensure_embedded_generated, register_from_args
from lt_detectron.engine import LTCheckpointer
from lt_detectron.engine.hooks import bofl_settings, write_bofl_schedule, write_model_plots


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--config-file", metavar="FILE", help="required unless only --results is given")
    p.add_argument(
        "--output", default="plots", metavar="DIR", help="folder for the PNGs (default: plots)"
    )
    p.add_argument(
        "--bofl-schedule",
        action="store_true",
        help="only plot BOFL's weight schedule of the config (no model, no weights)",
    )
    p.add_argument(
        "--results",
        action="append",
        metavar="CSV",
        default=[],
        help="a per-category AP csv written by an evaluator ({lvis,coco}_per_category_{task}.csv); "
        "repeatable",
    )
    add_register_arguments(p)
    p.add_argument(
        "opts", nargs=argparse.REMAINDER, help="config overrides, e.g. MODEL.WEIGHTS path.pth"
    )
    return p.parse_args(argv)


def setup(args):
    cfg = get_cfg()
    add_lt_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    validate_lt_config(cfg, args.config_file)
    cfg.freeze()
    return cfg


def write_results(csvs, out_dir):
    from lt_detectron.visualization.result_plots import write_result_plots

    paths = []
    for c in csvs:
        if not os.path.isfile(c):
            raise SystemExit("--results %s does not exist" % os.path.abspath(c))
        run = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(c)), "..", ".."))
        paths += write_result_plots(
            c, out_dir, os.path.basename(run), os.path.basename(os.path.dirname(c))
        )
    return paths


def main(argv=None):
    args = parse_args(argv)
    register_from_args(args)
    if args.results and not args.config_file:
        paths = write_results(args.results, args.output)
        for p in paths:
            print(p)
        return paths
    if not args.config_file:
        raise SystemExit("--config-file is required (or --results CSV for the result plots alone)")
    cfg = setup(args)
    if not cfg.DATASETS.TRAIN:
        raise SystemExit(
            "DATASETS.TRAIN is empty: the plots sort classes by their training instance counts"
        )
    if all(n in DatasetCatalog.list() for n in cfg.DATASETS.TRAIN + cfg.DATASETS.TEST):
        ensure_embedded_generated(cfg)  # lt_shapes_*: generated once, cached
    try:  # the training data, else the statistics the run recorded (MODEL.LT.CLASS_STATS_FILE)
        stats = get_train_class_stats(cfg)
    except ClassStatsError as e:
        raise SystemExit("tools/plot_methods.py: error: %s" % e) from None
    os.makedirs(args.output, exist_ok=True)
    if args.bofl_schedule:
        bofl = bofl_settings(cfg)
        if bofl is None:
            raise SystemExit(
                "the config does not use BOFL (MODEL.LT.BOFL.ENABLED or MODEL.LT.DENSE_LOSS bofl)"
            )
        paths = [write_bofl_schedule(args.output, stats.instance_counts, bofl, stats.class_names)]
    else:
        if not cfg.MODEL.WEIGHTS:
            raise SystemExit(
                "give the trained model: MODEL.WEIGHTS path/to/model_final.pth "
                "(or --bofl-schedule for a config-only plot)"
            )
        from detectron2.modeling import build_model

        model = build_model(cfg)
        model.eval()
        LTCheckpointer(model).load(cfg.MODEL.WEIGHTS)
        paths = write_model_plots(
            model,
            args.output,
            stats.instance_counts,
            stats.class_names,
            title_suffix=" (%s)" % os.path.basename(cfg.MODEL.WEIGHTS),
        )
        if not paths:
            raise SystemExit(
                "the model has no Fast R-CNN box predictor and no loss with per-class statistics "
                "(plot_data: EQL v2, EFL) to plot"
            )
    paths += write_results(args.results, args.output)
    for p in paths:
        print(p)
    return paths


if __name__ == "__main__":
    main(sys.argv[1:])
