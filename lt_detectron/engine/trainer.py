"""``LTTrainer``: Detectron2's ``DefaultTrainer`` for long-tailed data.

- ``build_evaluator`` dispatches on the dataset's ``evaluator_type`` (``lvis`` -> LVIS
  federated protocol with APr/APc/APf and AP by instance group; ``coco_lt``/``coco`` -> COCO
  metrics plus AP by training-instance bins), with training statistics from the registry.
- Startup builds the class statistics (logged), checks the class count of the config against
  the data, and tells the progress module how long an epoch is (BOFL's schedule).
- Checkpoints load under torch >= 2.6 and explain class-count mismatches (``LTCheckpointer``).
- ``MODEL.LT.FREEZE_ALL_BUT_CLS`` freezes everything but the classification layer(s)
  (BAGS' decoupled recipe).
- A non-finite loss stops training with a message that names the iteration, the losses and
  the last checkpoint written (nothing already written is removed).
"""
import itertools
import logging
import os
import random
import weakref

import numpy as np
import torch
from detectron2.data import MetadataCatalog
from detectron2.engine import AMPTrainer, DefaultTrainer, SimpleTrainer, TrainerBase, create_ddp_model
from detectron2.utils.logger import setup_logger
from detectron2.utils import comm

from ..class_stats import check_num_classes, get_class_stats
from .checkpoint import LTCheckpointer
from .progress import iters_per_epoch, set_epoch_length

__all__ = ["LTTrainer", "check_config_against_data", "freeze_all_but_classifier"]

logger = logging.getLogger("lt_detectron")


def check_config_against_data(cfg):
    """Clear errors for config/dataset disagreements, before any model is built."""
    if not cfg.DATASETS.TRAIN:
        return None
    stats = get_class_stats(cfg.DATASETS.TRAIN)
    arch = cfg.MODEL.META_ARCHITECTURE
    key = {"FCOS": "FCOS", "CenterNet": "CENTERNET"}.get(arch, "RETINANET" if "RetinaNet" in arch else None)
    if key is not None:
        check_num_classes(cfg.MODEL[key].NUM_CLASSES, stats, "MODEL.%s.NUM_CLASSES" % key)
    elif arch == "GeneralizedRCNN":
        check_num_classes(cfg.MODEL.ROI_HEADS.NUM_CLASSES, stats, "MODEL.ROI_HEADS.NUM_CLASSES")
    for name in cfg.DATASETS.TEST:
        meta = MetadataCatalog.get(name)
        if "thing_classes" in meta.as_dict() and len(meta.thing_classes) != stats.num_classes:
            raise ValueError(
                "test dataset %r has %d classes but the training data has %d: train and test must share "
                "the category list" % (name, len(meta.thing_classes), stats.num_classes)
            )
    return stats


def freeze_all_but_classifier(model):
    """Freeze every parameter except the box predictors' ``cls_score`` layers; returns their names."""
    trainable = []
    for name, p in model.named_parameters():
        keep = ".cls_score." in name or name.startswith("cls_score.")
        p.requires_grad_(keep)
        if keep:
            trainable.append(name)
    if not trainable:
        raise ValueError("MODEL.LT.FREEZE_ALL_BUT_CLS: the model has no 'cls_score' parameters to train")
    # frozen BatchNorm statistics too: the decoupled phase trains the classifier only
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()
            m.train = lambda mode=True, _m=m: _m  # stays in eval mode
    return trainable


class LTTrainer(DefaultTrainer):
    def __init__(self, cfg):
        # Same construction order as DefaultTrainer.__init__, plus our startup checks, a DDP
        # wrapper that also works for CPU processes (gloo, no device_ids) and our checkpointer.
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        self.class_stats = check_config_against_data(cfg)
        if self.class_stats is not None:
            set_epoch_length(iters_per_epoch(cfg))
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        if comm.get_world_size() > 1:
            device_ids = None if cfg.MODEL.DEVICE == "cpu" else [comm.get_local_rank()]
            # CenterNet reads one FPN level: the other levels' output convs get no gradient
            find_unused = cfg.MODEL.META_ARCHITECTURE == "CenterNet"
            model = create_ddp_model(
                model, broadcast_buffers=False, device_ids=device_ids, find_unused_parameters=find_unused
            )
        self._trainer = (AMPTrainer if cfg.SOLVER.AMP.ENABLED else SimpleTrainer)(model, data_loader, optimizer)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        # torch >= 2.6 safe loading, class-count checks, BAGS classifier re-initialisation
        self.checkpointer = LTCheckpointer(
            model, cfg.OUTPUT_DIR, reinit_cls=cfg.MODEL.LT.REINIT_CLS, trainer=weakref.proxy(self)
        )
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    @classmethod
    def build_model(cls, cfg):
        model = super().build_model(cfg)
        if cfg.MODEL.LT.FREEZE_ALL_BUT_CLS:
            names = freeze_all_but_classifier(model)
            logger.info("MODEL.LT.FREEZE_ALL_BUT_CLS: training only %s", ", ".join(names))
        return model

    @classmethod
    def build_train_loader(cls, cfg):
        """Detectron2's loader; with ``TrainingSampler`` a resumable one (see data/samplers.py)."""
        if cfg.DATALOADER.SAMPLER_TRAIN != "TrainingSampler":
            return super().build_train_loader(cfg)
        from detectron2.data import build_detection_train_loader, get_detection_dataset_dicts

        from ..data.samplers import ResumableTrainingSampler

        dataset = get_detection_dataset_dicts(
            cfg.DATASETS.TRAIN,
            filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS,
            min_keypoints=cfg.MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE if cfg.MODEL.KEYPOINT_ON else 0,
            proposal_files=cfg.DATASETS.PROPOSAL_FILES_TRAIN if cfg.MODEL.LOAD_PROPOSALS else None,
        )
        seed = cfg.SEED if cfg.SEED >= 0 else None
        sampler = ResumableTrainingSampler(len(dataset), seed=seed)
        loader = build_detection_train_loader(cfg, dataset=dataset, sampler=sampler)
        loader.lt_sampler = sampler  # resume_or_load moves its start
        return loader

    def resume_or_load(self, resume=True):
        super().resume_or_load(resume=resume)
        sampler = getattr(self._trainer.data_loader, "lt_sampler", None)
        if sampler is not None:
            sampler.set_start(self.start_iter * self.cfg.SOLVER.IMS_PER_BATCH)

    def state_dict(self):
        """Trainer state, the optimizer (momentum, current LR) and the RNG states.

        detectron2 v0.6's DefaultTrainer checkpoints neither the optimizer nor the RNG: a resumed
        run restarted SGD momentum from zero and ran its first iteration at the warm-up LR.
        """
        ret = super().state_dict()
        ret["_trainer"] = self._trainer.state_dict()
        ret["rng"] = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
        return ret

    def load_state_dict(self, state_dict):
        rng = state_dict.pop("rng", None)
        inner = state_dict.pop("_trainer", None)
        super().load_state_dict(state_dict)
        if inner is not None:
            self._trainer.load_state_dict(inner)
        if rng is not None:
            # numpy / python: the data pipeline's augmentations draw from them while loading
            np.random.set_state(rng["numpy"])
            random.setstate(rng["python"])
            # torch: restored after the first batch is loaded, because creating the data
            # loader's iterator draws a seed from it (the uninterrupted run drew it at iter 0)
            self._torch_rng_to_restore = rng["torch"]

    def build_hooks(self):
        from .hooks import build_lt_hooks

        return super().build_hooks() + build_lt_hooks(self.cfg, self)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        from ..evaluation import LTCOCOEvaluator, LTLVISEvaluator

        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        meta = MetadataCatalog.get(dataset_name)
        evaluator_type = meta.get("evaluator_type", None)
        stats = get_class_stats(cfg.DATASETS.TRAIN) if cfg.DATASETS.TRAIN else None
        tasks = ("bbox", "segm") if cfg.MODEL.MASK_ON else ("bbox",)
        if evaluator_type == "lvis":
            return LTLVISEvaluator(
                dataset_name,
                tasks=tasks,
                distributed=True,
                output_dir=output_folder,
                max_dets_per_image=cfg.TEST.LT.MAX_DETS,
                class_stats=stats,
                backend=cfg.TEST.LT.BACKEND,
            )
        if evaluator_type in ("coco", "coco_lt"):
            return LTCOCOEvaluator(
                dataset_name, tasks=tasks, distributed=True, output_dir=output_folder, class_stats=stats
            )
        raise NotImplementedError(
            "no evaluator for dataset %r (evaluator_type=%r): lt_detectron evaluates 'lvis', 'coco_lt' "
            "and 'coco' datasets; register yours with lt_detectron.data.register_lt_dataset"
            % (dataset_name, evaluator_type)
        )

    def run_step(self):
        rng = getattr(self, "_torch_rng_to_restore", None)
        if rng is not None:
            self._torch_rng_to_restore = None
            first = next(self._trainer._data_loader_iter)
            torch.set_rng_state(rng)
            self._trainer._data_loader_iter = itertools.chain([first], self._trainer._data_loader_iter)
        try:
            super().run_step()
        except FloatingPointError as e:
            last = self.checkpointer.get_checkpoint_file() if comm.is_main_process() else None
            raise FloatingPointError(
                "%s\nTraining stopped at iteration %d because a loss is not finite. Checkpoints already "
                "written are kept%s. Usual fixes: lower SOLVER.BASE_LR, enable SOLVER.CLIP_GRADIENTS, "
                "lengthen SOLVER.WARMUP_ITERS, or check the annotations for degenerate boxes."
                % (e, self.iter, (" (last: %s)" % last) if last else "")
            ) from None
