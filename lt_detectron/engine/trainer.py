"""``LTTrainer``: Detectron2's ``DefaultTrainer`` for long-tailed data.

- ``build_evaluator`` is ``build_lt_evaluator`` (the one builder, also used by
  ``tools/evaluate_results.py``): it dispatches on the dataset's ``evaluator_type`` (``lvis`` -> LVIS
  federated protocol with APr/APc/APf and AP by instance group; ``coco_lt``/``coco`` -> COCO
  metrics plus AP by training-instance bins) and reads every ``TEST.LT`` key.
- Startup builds the class statistics (logged), checks the class count of the config against
  the data, and, for a loss on BOFL's linear schedule, fills ``MODEL.LT.BOFL.ITERS_PER_EPOCH`` (its
  epoch length) from the same parse before the model is built; the run's ``config.yaml`` records it.
- ``build_model`` refuses invalid lt_detectron values and warns about non-default ``MODEL.LT`` keys
  the model never reads (:mod:`lt_detectron.config_reads`).
- ``test`` logs one table per dataset and task (the evaluators'), without detectron2's
  ``copypaste:`` lines.
- Checkpoints are plain data, loaded with ``weights_only=True``, written atomically, and resume
  falls back to the newest intact one (``LTCheckpointer``). Every rank's RNG states are saved
  (gathered to rank 0) and each rank resumes its own; the training sampler (``TrainingSampler``,
  ``RepeatFactorTrainingSampler`` or ``ClassAwareSampler``) resumes its position exactly.
- ``MODEL.LT.FREEZE_ALL_BUT_CLS`` freezes everything but the classification layer(s)
  (the decoupled recipes: BAGS, cRT; LWS: only the layer's scales), and ``MODEL.LT.REINIT_CLS``
  re-initialises them when training starts from ``MODEL.WEIGHTS`` (not when resuming).
- A non-finite loss stops training with a message that names the iteration, the losses and
  the last checkpoint written (nothing already written is removed).
"""

import inspect
import itertools
import logging
import os
import weakref

import torch
from detectron2.engine import (
    AMPTrainer,
    DefaultTrainer,
    SimpleTrainer,
    TrainerBase,
    create_ddp_model,
)
from detectron2.utils.logger import setup_logger
from detectron2.utils import comm

from ..class_stats import class_stats_to_dict
from ..data import load_train_dicts, train_dataset_dicts
from .decoupled import freeze_all_but_classifier, reset_classifiers
from .checkpoint import (
    LTCheckpointer,
    gather_rng_states,
    get_rng_state,
    reseed_from,
    rng_state_for_rank,
    set_rng_state,
)
from .logger import setup_lt_logger
from .run_record import record_class_stats
from .solver import build_lt_optimizer
from .training_data import prepare_training_data

__all__ = ["LTTrainer", "record_config"]

logger = logging.getLogger("lt_detectron")


def record_config(cfg, previous=None):
    """Rewrite ``OUTPUT_DIR/config.yaml`` (written by ``default_setup``) with ``cfg`` when it differs from
    ``previous`` (the keys the trainer filled in), on the main process; a missing file is left missing."""
    if (
        not comm.is_main_process()
        or not cfg.OUTPUT_DIR
        or (previous is not None and previous.dump() == cfg.dump())
    ):
        return
    path = os.path.join(cfg.OUTPUT_DIR, "config.yaml")
    if os.path.isfile(path):
        with open(path, "w") as f:
            f.write(cfg.dump())
        logger.info("config with the values filled from the training data written to %s", path)


class LTTrainer(DefaultTrainer):
    def __init__(self, cfg):
        # Same construction order as DefaultTrainer.__init__, plus our startup checks, a DDP
        # wrapper that also works for CPU processes (gloo, no device_ids) and our checkpointer.
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        # stdout, as DefaultTrainer; OUTPUT_DIR/log.txt is default_setup's (train_net's setup), so a
        # process that builds several trainers does not write one run's lines into another's log
        setup_lt_logger()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        given = cfg
        cfg, self.class_stats, train_dicts = prepare_training_data(cfg)
        cfg = record_class_stats(cfg, self.class_stats)
        record_config(
            cfg, given
        )  # MODEL.LT.BOFL.ITERS_PER_EPOCH, so config.yaml rebuilds the same model
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        if "dataset" in inspect.signature(self.build_train_loader).parameters:
            data_loader = self.build_train_loader(cfg, dataset=train_dicts)
        else:  # a subclass with detectron2's signature: it reads the training json itself
            logger.info(
                "%s.build_train_loader(cfg) loads the training data again", type(self).__name__
            )
            data_loader = self.build_train_loader(cfg)
        del train_dicts
        if comm.get_world_size() > 1:
            device_ids = None if cfg.MODEL.DEVICE == "cpu" else [comm.get_local_rank()]
            # CenterNet reads one FPN level: the other levels' output convs get no gradient
            find_unused = cfg.MODEL.META_ARCHITECTURE == "CenterNet"
            model = create_ddp_model(
                model,
                broadcast_buffers=False,
                device_ids=device_ids,
                find_unused_parameters=find_unused,
            )
        self._trainer = (AMPTrainer if cfg.SOLVER.AMP.ENABLED else SimpleTrainer)(
            model, data_loader, optimizer
        )
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        # safe loading, atomic saving, resume fallback, class-count checks, BAGS classifier re-initialisation
        self.checkpointer = LTCheckpointer(
            model,
            cfg.OUTPUT_DIR,
            reinit_cls=cfg.MODEL.LT.REINIT_CLS,
            config_dump=cfg.dump(),  # recorded in every checkpoint (resume check, engine/run_guard.py)
            trainer=weakref.proxy(self),
        )
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    @classmethod
    def build_model(cls, cfg):
        """Detectron2's model, built from a copy of ``cfg`` that records the keys read: a non-default
        ``MODEL.LT`` key the build never reads gets a warning (``config_reads``). Invalid values are
        refused first (``validate_lt_config``)."""
        from ..config import validate_lt_config
        from ..config_reads import record_reads, warn_unused_lt_keys

        validate_lt_config(cfg)
        recording, reads = record_reads(cfg)
        model = super().build_model(recording)
        if recording.MODEL.LT.FREEZE_ALL_BUT_CLS:
            names = freeze_all_but_classifier(model)
            logger.info("MODEL.LT.FREEZE_ALL_BUT_CLS: training only %s", ", ".join(names))
        # GROUP_EDGES (evaluation, statistics table) and REINIT_CLS (checkpointer) are read at startup
        warn_unused_lt_keys(cfg, reads | {"MODEL.LT.GROUP_EDGES", "MODEL.LT.REINIT_CLS"})
        return model

    @classmethod
    def build_optimizer(cls, cfg, model):
        """detectron2's optimizer, plus ``SOLVER.CLIP_GRADIENTS.CLIP_TYPE full_model``."""
        return build_lt_optimizer(cfg, model)

    @classmethod
    def build_train_loader(cls, cfg, dataset=None):
        """Detectron2's loader with ``LTDatasetMapper`` (unreadable images are named); with
        ``TrainingSampler``, ``RepeatFactorTrainingSampler`` or ``ClassAwareSampler`` a resumable
        sampler (``data.samplers.build_train_sampler``). ``dataset``: the training dicts already loaded (what
        ``get_detection_dataset_dicts`` returns); loaded once here when not given."""
        from detectron2.data import build_detection_train_loader

        from ..data import LTDatasetMapper
        from ..data.samplers import build_train_sampler

        if dataset is None:
            dataset = train_dataset_dicts(cfg, load_train_dicts(cfg))
        mapper = LTDatasetMapper(cfg, True)
        name = cfg.DATALOADER.SAMPLER_TRAIN
        sampler = build_train_sampler(cfg, dataset)
        if sampler is None:
            return build_detection_train_loader(cfg, dataset=dataset, mapper=mapper)
        logger.info("Using training sampler %s (resumable)", name)
        loader = build_detection_train_loader(cfg, dataset=dataset, sampler=sampler, mapper=mapper)
        loader.lt_sampler = sampler  # resume_or_load moves its start
        return loader

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        """Detectron2's test loader with ``LTDatasetMapper`` (unreadable images are named)."""
        from detectron2.data import build_detection_test_loader

        from ..data import LTDatasetMapper

        return build_detection_test_loader(cfg, dataset_name, mapper=LTDatasetMapper(cfg, False))

    def resume_or_load(self, resume=True):
        """detectron2's, plus: a corrupt/missing last checkpoint falls back to the newest intact one
        (``LTCheckpointer``), and the training sampler continues where the checkpoint stopped."""
        resumed = resume and self.checkpointer.has_checkpoint()
        super().resume_or_load(resume=resume)
        if self.cfg.MODEL.LT.REINIT_CLS and not resumed:
            reset_classifiers(self.model)
        sampler = getattr(self._trainer.data_loader, "lt_sampler", None)
        if sampler is not None:
            sampler.set_start(self.start_iter * self.cfg.SOLVER.IMS_PER_BATCH)
            if self.start_iter > 0:
                # a loader without aspect-ratio grouping may have started its iterator (and
                # workers) already: start it again so that it sees the new position and seed
                self._trainer._data_loader_iter = iter(self._trainer.data_loader)

    def state_dict(self):
        """Trainer state, the optimizer (momentum, current LR), the sampler's seed and every
        rank's RNG states (plain tensors / ints, see ``checkpoint.rng_state_to_plain``).

        detectron2 v0.6's DefaultTrainer checkpoints neither the optimizer nor the RNG: a resumed
        run restarted SGD momentum from zero and ran its first iteration at the warm-up LR.
        Checkpoints are written by rank 0 only, so with several processes the RNG states are
        gathered from all ranks in ``run_step`` of an iteration that ends with a checkpoint.
        """
        ret = super().state_dict()
        ret["_trainer"] = self._trainer.state_dict()
        sampler = getattr(self._trainer.data_loader, "lt_sampler", None)
        if sampler is not None:
            ret["sampler"] = sampler.state_dict()
        gathered = getattr(self, "_gathered_rng", None)
        if comm.get_world_size() == 1:
            per_rank = [get_rng_state()]
        elif gathered is not None and gathered[0] == self.iter:
            per_rank = gathered[1]
        else:
            logger.warning(
                "Checkpoint at iteration %d outside the periodic schedule: only rank %d's RNG state is "
                "saved (the other ranks will be re-seeded when resuming from it)",
                self.iter,
                comm.get_rank(),
            )
            per_rank = [get_rng_state()]
        ret["rng"] = {"per_rank": per_rank}
        if self.class_stats is not None:  # inference without the training data (plain data)
            ret["class_stats"] = class_stats_to_dict(self.class_stats)
        return ret

    def load_state_dict(self, state_dict):
        state_dict.pop("class_stats", None)  # read by the registry (MODEL.LT.CLASS_STATS_FILE)
        rng = state_dict.pop("rng", None)
        inner = state_dict.pop("_trainer", None)
        sampler_state = state_dict.pop("sampler", None)
        super().load_state_dict(state_dict)
        if inner is not None:
            self._trainer.load_state_dict(inner)
        sampler = getattr(self._trainer.data_loader, "lt_sampler", None)
        if sampler is not None and sampler_state is not None:
            sampler.load_state_dict(sampler_state)
        per_rank = rng.get("per_rank") if isinstance(rng, dict) else None
        if not per_rank:
            logger.warning(
                "The checkpoint holds no RNG states: random augmentation does not resume exactly"
            )
            return
        rank = comm.get_rank()
        state, note = rng_state_for_rank(per_rank, rank, comm.get_world_size())
        if note:
            logger.warning(note)
        if state is None:
            seed = reseed_from(per_rank[0], rank)
            logger.warning("rank %d re-seeded with %d", rank, seed)
            return
        # numpy / python: the data pipeline's augmentations draw from them while loading
        set_rng_state(state, torch_too=False)
        # torch: restored after the first batch is loaded, because creating the data
        # loader's iterator draws a seed from it (the uninterrupted run drew it at iter 0)
        self._torch_rng_to_restore = state["torch"]

    def _checkpoint_due(self):
        """Whether detectron2's PeriodicCheckpointer writes a checkpoint after this iteration."""
        period = self.cfg.SOLVER.CHECKPOINT_PERIOD
        return (period > 0 and (self.iter + 1) % period == 0) or self.iter >= self.max_iter - 1

    def build_hooks(self):
        from .hooks import build_lt_hooks, insert_before_writers

        # before detectron2's PeriodicWriter, so that the plot images reach TensorBoard
        return insert_before_writers(super().build_hooks(), build_lt_hooks(self.cfg, self))

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        """:func:`lt_detectron.evaluation.build_lt_evaluator` (every ``TEST.LT`` key honoured)."""
        from ..evaluation import build_lt_evaluator

        return build_lt_evaluator(cfg, dataset_name, output_folder=output_folder)

    @staticmethod
    def inference_model(model, evaluator):
        """The module ``test()`` runs for ``evaluator``: a Mask R-CNN keeps its masks at ROI level
        (:class:`~lt_detectron.modeling.roi_mask_inference.ROIMaskInference`) for evaluators that
        encode those themselves (``accepts_roi_masks``), which spares pasting every mask into a
        full-image bitmap; otherwise ``model`` itself."""
        from detectron2.evaluation import DatasetEvaluators

        from ..modeling.roi_mask_inference import roi_mask_model

        parts = evaluator._evaluators if isinstance(evaluator, DatasetEvaluators) else [evaluator]
        if parts and all(getattr(e, "accepts_roi_masks", False) for e in parts):
            return roi_mask_model(model)
        return model

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        """``DefaultTrainer.test`` without detectron2's ``copypaste:`` csv lines after lt_detectron's
        evaluators, which log their own table (one per task); other evaluators keep them."""
        from collections import OrderedDict

        from detectron2.evaluation import DatasetEvaluator, inference_on_dataset, print_csv_format

        from ..evaluation import LTDatasetEvaluator

        if isinstance(evaluators, DatasetEvaluator):
            evaluators = [evaluators]
        if evaluators is not None and len(evaluators) != len(cfg.DATASETS.TEST):
            raise ValueError(
                "%d evaluators for the %d datasets of DATASETS.TEST"
                % (len(evaluators), len(cfg.DATASETS.TEST))
            )
        results = OrderedDict()
        for idx, dataset_name in enumerate(cfg.DATASETS.TEST):
            data_loader = cls.build_test_loader(cfg, dataset_name)
            if evaluators is not None:
                evaluator = evaluators[idx]
            else:
                try:
                    evaluator = cls.build_evaluator(cfg, dataset_name)
                except NotImplementedError as e:
                    logger.warning("%s: not evaluated (%s)", dataset_name, e)
                    results[dataset_name] = {}
                    continue
            results[dataset_name] = inference_on_dataset(
                cls.inference_model(model, evaluator), data_loader, evaluator
            )
            if comm.is_main_process() and not isinstance(evaluator, LTDatasetEvaluator):
                print_csv_format(results[dataset_name])
        if len(results) == 1:
            results = list(results.values())[0]
        return results

    def run_step(self):
        rng = getattr(self, "_torch_rng_to_restore", None)
        if rng is not None:
            self._torch_rng_to_restore = None
            first = next(self._trainer._data_loader_iter)
            torch.set_rng_state(rng)
            self._trainer._data_loader_iter = itertools.chain(
                [first], self._trainer._data_loader_iter
            )
        try:
            super().run_step()
            if comm.get_world_size() > 1 and self._checkpoint_due():
                # every rank's RNG states, for the checkpoint rank 0 writes after this step (a
                # collective: all ranks run it; the checkpoint hook itself runs on rank 0 only)
                self._gathered_rng = (self.iter, gather_rng_states())
        except FloatingPointError as e:
            last = self.checkpointer.get_checkpoint_file() if comm.is_main_process() else None
            raise FloatingPointError(
                "%s\nTraining stopped at iteration %d because a loss is not finite. Checkpoints already "
                "written are kept%s. Usual fixes: lower SOLVER.BASE_LR, enable SOLVER.CLIP_GRADIENTS, "
                "lengthen SOLVER.WARMUP_ITERS, or check the annotations for degenerate boxes."
                % (e, self.iter, (" (last: %s)" % last) if last else "")
            ) from None
