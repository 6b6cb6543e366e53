#!/usr/bin/env python
"""Train and evaluate long-tailed detectors (Detectron2's train_net, PointRend's template).

    python tools/train_net.py --config-file configs/lt_shapes/faster_rcnn_tiny_softmax.yaml
    python tools/train_net.py --config-file configs/lvis_v1/eqlv2_mask_rcnn_R_50_FPN_1x.yaml --num-gpus 8
    python tools/train_net.py --config-file ... --eval-only MODEL.WEIGHTS output/model_final.pth
    python tools/train_net.py --config-file ... --resume          # continue from last_checkpoint
    python tools/train_net.py --config-file ... --resume --allow-config-change  # with another config
    python tools/train_net.py --config-file ... --register-dataset mine_train train.json images/ \
        --register-dataset mine_val val.json images/ DATASETS.TRAIN "('mine_train',)" \
        DATASETS.TEST "('mine_val',)" MODEL.ROI_HEADS.NUM_CLASSES 3

With ``MODEL.DEVICE cpu`` (in the config file or on the command line) ``--num-gpus N`` starts N CPU
processes per machine with the gloo backend; ``--num-machines/--machine-rank/--dist-url`` work as with
GPUs (run the same command on every machine with its own ``--machine-rank``).

One run at a time per ``OUTPUT_DIR``: the launcher (machine 0) locks it before anything is written
there, and a training run refuses to resume from, or overwrite, a checkpoint trained with another
config unless ``--allow-config-change`` is given (lt_detectron/engine/run_guard.py).
"""

import contextlib

from detectron2.config import get_cfg
from detectron2.engine import default_argument_parser, default_setup
from detectron2.evaluation import verify_results
from detectron2.utils import comm

import lt_detectron  # noqa: F401  (registers heads, meta-architectures and datasets)
from lt_detectron import add_lt_config
from lt_detectron.config import LTConfigError, validate_lt_config
from lt_detectron.config_smoke import apply_smoke_overrides
from lt_detectron.data import add_register_arguments, prepare_datasets, register_from_args
from lt_detectron.engine import LTTrainer, LTCheckpointer, prepare_training_data
from lt_detectron.engine.launch import launch_on_device
from lt_detectron.engine.logger import setup_lt_logger
from lt_detectron.engine.run_guard import OutputDirBusy, ResumeConfigMismatch, guard_output_dir

Trainer = LTTrainer


def load_config(args):
    """The merged config: ``--config-file`` (with its ``_BASE_`` chain), then the command-line opts."""
    cfg = get_cfg()
    add_lt_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    if getattr(args, "smoke", False):
        apply_smoke_overrides(cfg, args.opts)  # a few iterations, small inputs; opts win
    # invalid lt_detectron values stop here, before any dataset or model is touched
    return validate_lt_config(cfg, "%s and the command line" % args.config_file)


def setup(args):
    cfg = load_config(args)
    cfg.freeze()
    default_setup(cfg, args)
    # default_setup gives handlers to the "detectron2" and "fvcore" loggers only
    setup_lt_logger(cfg.OUTPUT_DIR)
    return cfg


def main(args):
    register_from_args(args)  # in every worker process too
    cfg = setup(args)
    if args.eval_only:
        # checks; statistics and BOFL's epoch length (MODEL.LT.BOFL.ITERS_PER_EPOCH) from one parse
        cfg = prepare_training_data(cfg, check_images=False)[0]  # reads no training image
        model = Trainer.build_model(cfg)
        LTCheckpointer(
            model, save_dir=cfg.OUTPUT_DIR, reinit_cls=cfg.MODEL.LT.REINIT_CLS
        ).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        res = Trainer.test(cfg, model)
    else:
        trainer = Trainer(cfg)
        trainer.resume_or_load(resume=args.resume)
        trainer.train()
        # DefaultTrainer.train() returns results only when TEST.EXPECTED_RESULTS is set
        res = getattr(trainer, "_last_eval_results", None)
    if comm.is_main_process() and res:
        # the evaluators have logged their tables (one per dataset and task)
        verify_results(cfg, res)
    return res


def argument_parser():
    parser = add_register_arguments(default_argument_parser())
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="smoke test: 2 iterations at 160 px, 2 images per batch, scaled learning rate, 10 "
        "detections per image, no BOFL deferral (lt_detectron/config_smoke.py); add MODEL.DEVICE cpu",
    )
    parser.add_argument(
        "--allow-config-change",
        action="store_true",
        help="train although OUTPUT_DIR's checkpoint was trained with another config: --resume from it "
        "anyway, or (without --resume) overwrite it; refused otherwise, naming the keys",
    )
    return parser


def launch_from_args(args):
    """Register, prepare the datasets once, then start the processes for the merged config's device:
    gloo CPU processes for ``MODEL.DEVICE cpu`` (from the YAML or the opts), else Detectron2's launch."""
    register_from_args(args)
    cfg = load_config(args)
    with output_dir_guard(cfg, args):
        # generate / validate datasets once, before worker processes start
        prepare_datasets(cfg=cfg)
        return launch_on_device(
            cfg.MODEL.DEVICE,
            main,
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            args=(args,),
        )


def output_dir_guard(cfg, args):
    """OUTPUT_DIR held by this launcher (machine 0) for the whole run, before default_setup writes
    config.yaml: a second run there is refused, naming the first; a training run checks the config
    recorded in OUTPUT_DIR's checkpoint (--resume / --allow-config-change). See engine/run_guard.py."""
    if args.machine_rank != 0:  # machine 0's launcher holds it for all machines
        return contextlib.nullcontext()
    return guard_output_dir(
        cfg,
        train=not args.eval_only,
        resume=args.resume,
        allow_config_change=getattr(args, "allow_config_change", False),
        world_size=args.num_gpus * args.num_machines,
    )


if __name__ == "__main__":
    args = argument_parser().parse_args()
    print("Command Line Args:", args)
    try:
        launch_from_args(args)
    except (LTConfigError, OutputDirBusy, ResumeConfigMismatch) as e:
        raise SystemExit("train_net.py: error: %s" % e) from None
