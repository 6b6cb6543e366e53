#!/usr/bin/env python
"""Pick the strength of a test-time calibration (NorCal's gamma, logit adjustment's or tau-norm's
tau) for a trained checkpoint: one evaluation per value, a table of AP, APr, APc, APf.

    python tools/calibrate.py --config-file configs/lt_shapes/faster_rcnn_tiny_softmax.yaml \\
        --method norcal --values 0,0.25,0.5,1 MODEL.WEIGHTS output/.../model_final.pth
    python tools/calibrate.py ... --split test --protocols standard,fixed TEST.LT.POOLED_AP True

``--split heldout`` (default) evaluates on ``--heldout-images`` training images drawn with
``--seed`` (lt_detectron/engine/calibration_sweep.py); ``--split test`` on ``DATASETS.TEST[0]``.
Then evaluate with the chosen value: ``tools/train_net.py --eval-only ... TEST.LT.CALIBRATION
norcal TEST.LT.CALIBRATION_GAMMA 0.5``. docs/evaluation.md, section "Post-hoc calibration".
"""

import argparse

from lt_detectron.data import register_from_args
from lt_detectron.data.register_args import add_register_arguments
from lt_detectron.engine import defaults
from lt_detectron.modeling import CALIBRATION_REGISTRY
from lt_detectron.engine.calibration_sweep import (
    calibration_sweep,
    format_sweep_table,
    register_heldout_split,
)


def argument_parser():
    p = add_register_arguments(argparse.ArgumentParser(description=__doc__.split("\n\n")[0]))
    p.add_argument("--config-file", required=True, metavar="FILE")
    p.add_argument(
        "--method",
        required=True,
        choices=["none"] + CALIBRATION_REGISTRY.names(),
        help="the TEST.LT.CALIBRATION to sweep (none: the uncalibrated model)",
    )
    p.add_argument(
        "--values", required=True, help="comma-separated gamma / tau values, e.g. 0,0.5,1"
    )
    p.add_argument("--split", choices=("heldout", "test"), default="heldout")
    p.add_argument("--heldout-images", type=int, default=50, help="images of the held-out split")
    p.add_argument("--seed", type=int, default=0, help="seed of the held-out split")
    p.add_argument(
        "--protocols", default="standard", help="TEST.LT.AP_PROTOCOL values, e.g. standard,fixed"
    )
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    return p


def main(args):
    register_from_args(args)
    cfg = defaults.load_config(args)
    try:
        values = [float(v) for v in args.values.split(",") if v.strip()]
    except ValueError:
        raise SystemExit("--values must be comma-separated numbers, got %r" % args.values)
    if args.split == "heldout":
        dataset = register_heldout_split(cfg, args.heldout_images, args.seed)
    elif cfg.DATASETS.TEST:
        dataset = cfg.DATASETS.TEST[0]
    else:
        raise SystemExit("--split test needs DATASETS.TEST in the config")
    protocols = [p.strip() for p in args.protocols.split(",") if p.strip()]
    rows = calibration_sweep(cfg, args.method, values, dataset, protocols)
    print("%s on %s (%s)" % (args.method, dataset, cfg.MODEL.WEIGHTS))
    print(format_sweep_table(rows, args.method))
    for protocol in protocols:
        mine = [r for r in rows if r["protocol"] == protocol and "AP" in r]
        if mine:
            best = max(mine, key=lambda r: r["AP"])
            print("best %s by AP (%s): %g" % (args.method, protocol, best["value"]))
    return rows


if __name__ == "__main__":
    args = argument_parser().parse_args()
    with defaults.exit_on_user_error("calibrate.py"):
        main(args)
