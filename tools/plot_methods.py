#!/usr/bin/env python
"""Write the plots the papers use to explain the methods, for a trained model or a config.

    # classifier weight norms per class (every box predictor / cascade stage) and, for EQL v2
    # heads, the accumulated positive/negative gradient ratio per class:
    python tools/plot_methods.py --config-file configs/lt_shapes/faster_rcnn_tiny_eqlv2.yaml \\
        --output plots/ MODEL.WEIGHTS output/lt_shapes/faster_rcnn_tiny_eqlv2/model_final.pth

    # BOFL's weight schedule for a config (no weights needed):
    python tools/plot_methods.py --config-file configs/dense/bofl_fcos_R_50_FPN_1x_coco_lt.yaml \\
        --bofl-schedule --output plots/

Classes are sorted by training instance count from the class-statistics registry of
``DATASETS.TRAIN`` (LVIS statistics ship with the package; other datasets are counted from
their json). The same plots are written during training with ``LT_HOOKS.PLOT_PERIOD N``.
"""
import argparse
import os
import sys

from detectron2.config import get_cfg

import lt_detectron  # noqa: F401  (registers heads, meta-architectures and datasets)
from lt_detectron import add_lt_config, get_class_stats
from lt_detectron.data import prepare_datasets
from lt_detectron.engine import LTCheckpointer
from lt_detectron.engine.hooks import bofl_settings, write_bofl_schedule, write_model_plots


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True, metavar="FILE")
    p.add_argument("--output", default="plots", metavar="DIR", help="folder for the PNGs (default: plots)")
    p.add_argument("--bofl-schedule", action="store_true",
                   help="only plot BOFL's weight schedule of the config (no model, no weights)")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides, e.g. MODEL.WEIGHTS path.pth")
    return p.parse_args(argv)


def setup(args):
    cfg = get_cfg()
    add_lt_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.freeze()
    return cfg


def main(argv=None):
    args = parse_args(argv)
    cfg = setup(args)
    if not cfg.DATASETS.TRAIN:
        raise SystemExit("DATASETS.TRAIN is empty: the plots sort classes by their training instance counts")
    prepare_datasets(cfg=cfg)
    stats = get_class_stats(cfg.DATASETS.TRAIN)
    os.makedirs(args.output, exist_ok=True)
    if args.bofl_schedule:
        bofl = bofl_settings(cfg)
        if bofl is None:
            raise SystemExit("the config does not use BOFL (MODEL.LT.BOFL.ENABLED or MODEL.LT.DENSE_LOSS bofl)")
        paths = [write_bofl_schedule(args.output, stats.instance_counts, bofl, stats.class_names)]
    else:
        if not cfg.MODEL.WEIGHTS:
            raise SystemExit("give the trained model: MODEL.WEIGHTS path/to/model_final.pth "
                             "(or --bofl-schedule for a config-only plot)")
        from detectron2.modeling import build_model

        model = build_model(cfg)
        model.eval()
        LTCheckpointer(model).load(cfg.MODEL.WEIGHTS)
        paths = write_model_plots(model, args.output, stats.instance_counts, stats.class_names,
                                  title_suffix=" (%s)" % os.path.basename(cfg.MODEL.WEIGHTS))
        if not paths:
            raise SystemExit("the model has no Fast R-CNN box predictor and no EQL v2 statistics to plot")
    for p in paths:
        print(p)
    return paths


if __name__ == "__main__":
    main(sys.argv[1:])
