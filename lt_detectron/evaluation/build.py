"""``build_lt_evaluator(cfg, dataset_name)``: the evaluator of a dataset from the config, used by
``LTTrainer.build_evaluator`` and ``tools/evaluate_results.py`` (one code path).

``evaluator_type`` of the dataset's metadata picks the protocol: ``"lvis"`` ->
:class:`~.lvis_evaluation.LTLVISEvaluator`, ``"coco"`` / ``"coco_lt"`` ->
:class:`~.coco_lt_evaluation.LTCOCOEvaluator`. Keys read: ``MODEL.MASK_ON`` (tasks),
``MODEL.LT.GROUP_EDGES``, ``TEST.LT.{BACKEND, MAX_DETS, AP_PROTOCOL, TOPK_PER_CLASS, POOLED_AP,
BOUNDARY_AP, BOUNDARY_DILATION, SAVE_RESULTS}``.
"""

from __future__ import annotations

import os
from typing import Optional, Sequence

from detectron2.data import MetadataCatalog

__all__ = ["build_lt_evaluator", "evaluation_kwargs"]


def evaluation_kwargs(cfg) -> dict:
    """The protocol arguments of :class:`~.base.LTDatasetEvaluator` from ``cfg.TEST.LT``."""
    t = cfg.TEST.LT
    return dict(
        ap_protocol=t.AP_PROTOCOL,
        topk_per_class=t.TOPK_PER_CLASS,
        pooled_ap=t.POOLED_AP,
        boundary_dilation=t.BOUNDARY_DILATION,
        save_results=t.SAVE_RESULTS,
    )


def build_lt_evaluator(
    cfg,
    dataset_name: str,
    output_folder: Optional[str] = None,
    class_stats="auto",
    distributed: bool = True,
    tasks: Optional[Sequence[str]] = None,
    **overrides,
):
    """The evaluator of ``dataset_name``.

    Args:
        cfg: a config with lt_detectron's keys (``add_lt_config``).
        dataset_name: a registered dataset with ``evaluator_type`` and ``json_file``.
        output_folder: default ``OUTPUT_DIR/inference/<dataset_name>`` (Detectron2's).
        class_stats: training ``ClassStats`` for the AP by instance group; ``"auto"``: those of
            ``cfg.DATASETS.TRAIN`` (none when it is empty: the GT json's counts are used).
        distributed: gather the predictions of all ranks.
        tasks: default ``("bbox",)``, ``+ ("segm",)`` with ``MODEL.MASK_ON``, ``+ ("boundary",)`` with
            ``TEST.LT.BOUNDARY_AP``.
        overrides: evaluator arguments that replace the config's (e.g. ``save_results=False``).
    """
    from ..config import validate_lt_config
    from .coco_lt_evaluation import LTCOCOEvaluator
    from .lvis_evaluation import LTLVISEvaluator

    validate_lt_config(cfg)
    if output_folder is None:
        output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
    if isinstance(class_stats, str) and class_stats == "auto":
        from ..class_stats import get_train_class_stats

        # the training data, else the statistics the run recorded (MODEL.LT.CLASS_STATS_FILE)
        class_stats = get_train_class_stats(cfg)
    if tasks is None:
        tasks = ("bbox", "segm") if cfg.MODEL.MASK_ON else ("bbox",)
        if cfg.TEST.LT.BOUNDARY_AP:
            if not cfg.MODEL.MASK_ON:
                raise ValueError(
                    "TEST.LT.BOUNDARY_AP needs masks: set MODEL.MASK_ON True or TEST.LT.BOUNDARY_AP False"
                )
            tasks = tasks + ("boundary",)
    evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type", None)
    common = dict(
        tasks=tasks,
        distributed=distributed,
        output_dir=output_folder,
        class_stats=class_stats,
        group_edges=cfg.MODEL.LT.GROUP_EDGES,
        **{**evaluation_kwargs(cfg), **overrides},
    )
    if evaluator_type == "lvis":
        return LTLVISEvaluator(
            dataset_name,
            max_dets_per_image=cfg.TEST.LT.MAX_DETS,
            backend=cfg.TEST.LT.BACKEND,
            **common,
        )
    if evaluator_type in ("coco", "coco_lt"):
        return LTCOCOEvaluator(dataset_name, **common)
    raise NotImplementedError(
        "no evaluator for dataset %r (evaluator_type=%r): lt_detectron evaluates 'lvis', 'coco_lt' "
        "and 'coco' datasets; register yours with lt_detectron.data.register_lt_dataset"
        % (dataset_name, evaluator_type)
    )
