"""What ``tools/train_net.py`` runs, as Detectron2 keeps its own in ``detectron2.engine.defaults``:
the command-line parser, the config loading and setup, one training or evaluation run, and the
launcher that holds ``OUTPUT_DIR`` and starts the processes.

``tools/train_net.py`` keeps only the extension points a user copies into a project of their own
(PointRend's template): its ``Trainer`` class, ``setup`` and ``main``.

One run at a time per ``OUTPUT_DIR``: the launcher (machine 0) locks it before anything is written
there, and a training run refuses to resume from, or overwrite, a checkpoint trained with another
config unless ``--allow-config-change`` is given (:mod:`lt_detectron.engine.run_guard`).
"""

import contextlib

from detectron2.config import get_cfg
from detectron2.engine import default_argument_parser
from detectron2.engine import default_setup as d2_default_setup
from detectron2.evaluation import verify_results
from detectron2.utils import comm

from ..config import LTConfigError, add_lt_config, validate_lt_config
from ..config_smoke import apply_smoke_overrides
from ..data import add_register_arguments, prepare_datasets, register_from_args
from .checkpoint import LTCheckpointer
from .launch import launch_on_device
from .logger import setup_lt_logger
from .run_guard import OutputDirBusy, ResumeConfigMismatch, guard_output_dir
from .trainer import LTTrainer
from .training_data import prepare_training_data

__all__ = [
    "argument_parser",
    "load_config",
    "setup",
    "train_or_evaluate",
    "launch_from_args",
    "output_dir_guard",
    "exit_on_user_error",
]

# errors of the user's making: the command stops with the message, without a traceback
USER_ERRORS = (LTConfigError, OutputDirBusy, ResumeConfigMismatch)


def argument_parser():
    """Detectron2's ``default_argument_parser`` with ``--register-dataset``, ``--smoke`` and
    ``--allow-config-change``."""
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
    """The frozen config, after Detectron2's ``default_setup`` (output folder, logging, seed)."""
    cfg = load_config(args)
    cfg.freeze()
    d2_default_setup(cfg, args)
    # default_setup gives handlers to the "detectron2" and "fvcore" loggers only
    setup_lt_logger(cfg.OUTPUT_DIR)
    return cfg


def train_or_evaluate(cfg, args, trainer_cls=LTTrainer):
    """Train (``--resume`` continues) or, with ``--eval-only``, evaluate ``MODEL.WEIGHTS``; returns
    the last evaluation's results, checked against ``TEST.EXPECTED_RESULTS``."""
    if args.eval_only:
        # checks; statistics and BOFL's epoch length (MODEL.LT.BOFL.ITERS_PER_EPOCH) from one parse
        cfg = prepare_training_data(cfg, check_images=False)[0]  # reads no training image
        model = trainer_cls.build_model(cfg)
        LTCheckpointer(
            model, save_dir=cfg.OUTPUT_DIR, reinit_cls=cfg.MODEL.LT.REINIT_CLS
        ).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        res = trainer_cls.test(cfg, model)
    else:
        trainer = trainer_cls(cfg)
        trainer.resume_or_load(resume=args.resume)
        trainer.train()
        # DefaultTrainer.train() returns results only when TEST.EXPECTED_RESULTS is set
        res = getattr(trainer, "_last_eval_results", None)
    if comm.is_main_process() and res:
        # the evaluators have logged their tables (one per dataset and task)
        verify_results(cfg, res)
    return res


def launch_from_args(args, main):
    """Register, prepare the datasets once, then start ``main(args)`` in the processes for the merged
    config's device: gloo CPU processes for ``MODEL.DEVICE cpu`` (from the YAML or the opts), else
    Detectron2's launch."""
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
    recorded in OUTPUT_DIR's checkpoint (--resume / --allow-config-change). See run_guard.py."""
    if args.machine_rank != 0:  # machine 0's launcher holds it for all machines
        return contextlib.nullcontext()
    return guard_output_dir(
        cfg,
        train=not args.eval_only,
        resume=args.resume,
        allow_config_change=getattr(args, "allow_config_change", False),
        world_size=args.num_gpus * args.num_machines,
    )


@contextlib.contextmanager
def exit_on_user_error(prog="train_net.py"):
    """A command's errors of the user's making (an invalid config value, an OUTPUT_DIR held by
    another run, a refused resume) stop it with ``PROG: error: ...``, without a traceback."""
    try:
        yield
    except USER_ERRORS as e:
        raise SystemExit("%s: error: %s" % (prog, e)) from None
