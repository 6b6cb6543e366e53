"""``LTDatasetEvaluator``: what the LVIS and COCO-LT evaluators share.

A subclass names its protocol and implements two methods:

- ``run_protocol(task, dets, rles)`` -> ``(metrics in [0, 1], precision (T, R, K, A) or its
  per-category (sums, counts), sorted category ids)``: one call of its protocol function
  (:func:`~.lvis_evaluation.evaluate_lvis_predictions`,
  :func:`~.coco_lt_evaluation.evaluate_coco_predictions`);
- ``group_results(task, train_instances, sums)`` -> the AP of its instance-count groups.

The base class collects the predictions (a detection matrix per image, capped at
``max_dets_per_image`` when the protocol caps per image; with ``ap_protocol="fixed"`` uncapped and
pruned to the top-k per class as it grows), gathers them from every rank through per-rank files
(:class:`~.predictions.RankPredictionStore`), writes Detectron2's results json
(``{protocol}_instances_results.json``: while ``process()`` runs, :mod:`.results_stream`, where the
rows are final then; Fixed AP's at ``evaluate()``), runs each task (``bbox``, ``segm``, ``boundary``), takes
per-category training counts from the ``ClassStats`` (or the GT json's
``instance_count``/``image_count``), writes ``{protocol}_per_category_{task}.csv`` and logs the table.
"""

from __future__ import annotations

import copy
import logging
import os
import time
import zlib
from collections import OrderedDict, deque
from typing import Dict, List, Optional, Sequence

import numpy as np
from detectron2.data import MetadataCatalog
from detectron2.evaluation.evaluator import DatasetEvaluator
from detectron2.utils import comm

from ..class_stats import DEFAULT_GROUP_EDGES, check_group_edges
from .common import (
    category_sums,
    format_table,
    instances_to_arrays,
    keep_top_per_group,
    load_gt_json,
    resolve_backend,
)
from .per_category import PerCategoryOutputs
from .predictions import (
    BackgroundWrite,
    RankPredictionStore,
    preload_results_writer,
    results_file_name,
)
from .results_stream import ResultsStream, join_results_parts
from .roi_mask_pipeline import PendingRLEs, RoiMaskPipeline

AP_PROTOCOLS = ("standard", "fixed")
TASKS = ("bbox", "segm", "boundary")

logger = logging.getLogger(__name__)

__all__ = ["LTDatasetEvaluator"]


class LTDatasetEvaluator(PerCategoryOutputs, DatasetEvaluator):
    """Box/mask evaluation of a COCO/LVIS-format dataset with AP by training-instance group and a
    per-category AP csv (base class; see the module docstring).

    Args:
        dataset_name: a registered dataset whose metadata has ``json_file`` and
            ``thing_dataset_id_to_contiguous_id``.
        tasks: ``("bbox",)``, ``("bbox", "segm")``, optionally ``"boundary"`` (Boundary AP of the masks,
            :mod:`.boundary`).
        distributed: evaluate the predictions of all ranks (each rank writes a file; rank 0 reads).
        output_dir: the results json, the per-category csv and (transiently) the per-rank files go here.
        max_dets_per_image: the protocol's detections per image (default :attr:`default_max_dets`).
        class_stats: training ``ClassStats`` (instance/image counts, class names, bands); ``None``
            uses the GT json's category ``instance_count``/``image_count`` fields.
        backend: ``"auto"`` (hotcoco, else the reference), ``"hotcoco"`` or :attr:`reference_backend`.
        group_edges: instance-count group edges (``MODEL.LT.GROUP_EDGES``), see
            :mod:`lt_detectron.class_stats.groups`.
        ap_protocol: ``"standard"`` or ``"fixed"`` (Fixed AP: no per-image cap, the
            ``topk_per_class`` highest-scoring detections of each class over the dataset; protocols
            that support it only, :attr:`supports_fixed_ap`).
        topk_per_class: ``"fixed"``: detections kept per class (``TEST.LT.TOPK_PER_CLASS``).
        pooled_ap: also report pooled AP (:attr:`supports_pooled_ap`).
        boundary_dilation: Boundary IoU's dilation ratio (task ``"boundary"``).
        save_results: write ``{protocol}_instances_results.json`` into ``output_dir``.
    """

    protocol = ""  # "lvis" / "coco": file names and log lines
    reference_backend = ""  # the reference implementation of the protocol
    default_max_dets = 100  # the protocol's detections per image
    caps_per_image = True  # keep only the max_dets_per_image highest-scoring detections per image
    nan_means = "no GT"  # what a nan in the log table means
    supports_fixed_ap = False
    supports_pooled_ap = False
    # process() takes ROI-level pred_masks (lt_detectron.modeling.roi_mask_inference) as well as
    # full-image ones: LTTrainer.test() then skips Detectron2's pasting of every mask
    accepts_roi_masks = True

    def __init__(
        self,
        dataset_name: str,
        tasks: Sequence[str] = ("bbox",),
        distributed: bool = True,
        output_dir: Optional[str] = None,
        max_dets_per_image: Optional[int] = None,
        class_stats=None,
        backend: str = "auto",
        group_edges: Sequence[float] = DEFAULT_GROUP_EDGES,
        *,
        ap_protocol: str = "standard",
        topk_per_class: int = 10000,
        pooled_ap: bool = False,
        boundary_dilation: float = 0.02,
        save_results: bool = True,
    ):
        self._dataset_name = dataset_name
        tasks = tuple(tasks)
        bad = [t for t in tasks if t not in TASKS]
        if bad or not tasks:
            raise ValueError(f"tasks must be a non-empty subset of {TASKS}, got {tasks}")
        self._tasks = tasks
        self._with_masks = "segm" in tasks or "boundary" in tasks
        if ap_protocol not in AP_PROTOCOLS:
            raise ValueError(
                f"ap_protocol (TEST.LT.AP_PROTOCOL) must be one of {AP_PROTOCOLS}, got {ap_protocol!r}"
            )
        if ap_protocol == "fixed" and not self.supports_fixed_ap:
            raise ValueError(
                f"Fixed AP (TEST.LT.AP_PROTOCOL fixed) is defined for LVIS datasets; {dataset_name!r} "
                f"uses the {self.protocol.upper()} protocol: set TEST.LT.AP_PROTOCOL standard"
            )
        if pooled_ap and not self.supports_pooled_ap:
            raise ValueError(
                f"Pooled AP (TEST.LT.POOLED_AP) pools LVIS frequency bands; {dataset_name!r} uses the "
                f"{self.protocol.upper()} protocol: set TEST.LT.POOLED_AP False"
            )
        if ap_protocol == "fixed" and int(topk_per_class) <= 0:
            raise ValueError(
                f"topk_per_class (TEST.LT.TOPK_PER_CLASS) must be > 0, got {topk_per_class}"
            )
        self._fixed = ap_protocol == "fixed"
        self._topk = int(topk_per_class)
        self._pooled = bool(pooled_ap)
        self._boundary_dilation = float(boundary_dilation)
        self._save_results = bool(save_results)
        self._distributed = distributed
        self._output_dir = output_dir
        self._max_dets = int(
            self.default_max_dets if max_dets_per_image is None else max_dets_per_image
        )
        self._class_stats = class_stats
        self._backend = resolve_backend(backend, self.reference_backend)
        self._group_edges = check_group_edges(group_edges, "group_edges (MODEL.LT.GROUP_EDGES)")
        self._metadata = MetadataCatalog.get(dataset_name)
        self._json_file = getattr(self._metadata, "json_file", None)
        # validate early: a missing/malformed json is a clear error at construction
        self._gt_categories = load_gt_json(self._json_file, dataset_name)["categories"]
        id_map = getattr(self._metadata, "thing_dataset_id_to_contiguous_id", None)
        if id_map is None:
            ids = sorted(c["id"] for c in self._gt_categories)
            id_map = {d: i for i, d in enumerate(ids)}
        inv = np.zeros(len(id_map), np.int64)
        for d, c in id_map.items():
            inv[c] = d
        self._contiguous_to_dataset = inv
        # same on every rank (str hash() is randomized per process)
        self._prefix = f"lt_{self.protocol}_{zlib.crc32(dataset_name.encode()):08x}"
        if output_dir and self._save_results:
            preload_results_writer()  # every rank streams its rows (distributed)
        self.reset()

    # ------------------------------------------------------------------ the protocol (subclasses)
    def run_protocol(self, task: str, dets: np.ndarray, rles: Optional[List[dict]]):
        """``(metrics in [0, 1] with nan for undefined, precision (T, R, K, A) or its per-category
        ``(sums, counts)``, sorted category ids)``."""
        raise NotImplementedError

    def group_results(self, task: str, train_instances: np.ndarray, sums) -> Dict[str, float]:
        """AP (in %) of the instance-count groups; ``train_instances`` per sorted category (-1: unknown),
        ``sums`` the per-category ``(sums, counts)`` of :func:`~.common.category_sums`."""
        raise NotImplementedError

    # ------------------------------------------------------------------ collecting predictions
    @property
    def eval_max_dets(self) -> int:
        """Detections per image the protocol evaluates (``-1``: no cap, Fixed AP)."""
        return -1 if self._fixed else self._max_dets

    def reset(self):
        if getattr(self, "_stream", None) is not None:
            self._stream.abort()  # a partial results json goes; an older complete one stays
        if getattr(self, "_encoder", None) is not None:
            self._encoder.close()  # its pending images are dropped with the rows below
        self._encoder = RoiMaskPipeline() if self._with_masks else None
        self._pending: deque = deque()  # (dets, PendingRLEs) of images still being encoded
        self._stream: Optional[ResultsStream] = None
        self._streamed = False  # the results json holds the rows since reset() (evaluated once)
        self._from_arrays = False  # evaluate_arrays(): written at evaluate(), not streamed
        self._chunks: List[np.ndarray] = []
        self._rles: Optional[List[dict]] = [] if self._with_masks else None
        self._num_rows = 0
        # Fixed AP keeps at most C x k rows: prune to that when twice as many have arrived (memory <=
        # 2 C k rows, 1.3 GB on LVIS; a prune is a sort, so never before C x k rows)
        self._prune_at = 2 * len(self._contiguous_to_dataset) * self._topk

    def process(self, inputs, outputs):
        cap = self._max_dets if (self.caps_per_image and not self._fixed) else None
        for inp, out in zip(inputs, outputs):
            if "instances" not in out:
                continue
            dets, rles = instances_to_arrays(
                out["instances"],
                int(inp["image_id"]),
                self._contiguous_to_dataset,
                max_dets=cap,
                with_masks=self._with_masks,
                encoder=self._encoder,
            )
            self._pending.append((dets, rles))
            # the images before this one: finished while this image's masks are in the kernel
            self._add_rows(keep=1)

    def _add_rows(self, keep: int = 0):
        """Collect (and stream) the rows of the images processed, in order, all but the last
        ``keep`` (their masks may still be in the encoder's kernel)."""
        while len(self._pending) > keep:
            dets, rles = self._pending.popleft()
            if isinstance(rles, PendingRLEs):
                rles = rles.result()
            self._chunks.append(dets)
            self._num_rows += len(dets)
            if self._rles is not None:
                self._rles.extend(rles)
            stream = self._results_stream()
            if stream is not None:
                stream.add(dets, rles)
        if self._fixed and self._num_rows >= self._prune_at:
            # keep the top-k per class so far (exact: a dropped detection is outranked by k kept ones)
            dets, self._rles = keep_top_per_group(*self._local(), 6, self._topk)
            self._chunks, self._num_rows = [dets], len(dets)
            self._prune_at = max(2 * len(dets), self._prune_at)

    def _results_path(self) -> str:
        return os.path.join(self._output_dir, results_file_name(self.protocol))

    def _gathers(self) -> bool:
        return bool(self._distributed and comm.get_world_size() > 1)

    def _results_stream(self) -> Optional[ResultsStream]:
        """The stream of the results json (created by the first call), ``None`` where it is not
        streamed: not saved, Fixed AP (rows pruned at the end), :meth:`evaluate_arrays`, a rank
        that writes nothing (not gathering, not rank 0), or already written."""
        if self._stream is None:
            if not (self._output_dir and self._save_results) or self._fixed or self._streamed:
                return None
            if self._from_arrays or not (self._gathers() or comm.is_main_process()):
                return None
            path = self._results_path()
            if self._gathers():  # each rank its own part, joined by rank 0
                store = RankPredictionStore(self._pred_dir(), self._prefix)
                path = store.results_part(comm.get_rank())
            self._stream = ResultsStream(path, target=self._results_path())
        return self._stream

    def _pred_dir(self) -> Optional[str]:
        return os.path.join(self._output_dir, "lt_predictions") if self._output_dir else None

    def _local(self):
        dets = np.concatenate(self._chunks, 0) if self._chunks else np.zeros((0, 7), np.float64)
        return dets, self._rles

    def evaluate(self):
        t0 = time.perf_counter()
        self._add_rows()  # the images still in the mask encoder
        if self._encoder is not None:
            self._encoder.close()
        world = comm.get_world_size()
        stream, self._stream = self._results_stream(), None  # (an empty one: nothing processed)
        if stream is not None:
            stream.finish()  # the tail, off the critical path from here
            self._streamed = True
        if self._gathers():
            store = RankPredictionStore(self._pred_dir(), self._prefix)
            store.write(*self._local())
            failed = None
            if stream is not None and not comm.is_main_process():
                try:  # its part is complete before rank 0 joins the parts
                    stream.wait()
                except Exception as e:  # raised after the barriers (rank 0 names the part)
                    failed = e
            comm.synchronize()
            if not comm.is_main_process():
                comm.synchronize()  # wait until rank 0 has read the files
                if failed is not None:
                    raise failed
                return {}
            dets, rles = store.read_all(world, self._with_masks)
            comm.synchronize()
            store.cleanup(world)
            if stream is not None:  # the parts in rank order, as the rows just read
                parts = [store.results_part(r) for r in range(world)]
                stream.then(join_results_parts, parts, self._results_path())
        else:
            dets, rles = self._local()
        if self._fixed:
            dets, rles = self._select_fixed(dets, rles)
        if len(dets) == 0:
            logger.warning(f"[{type(self).__name__}] no predictions for {self._dataset_name}.")
        writer = stream
        main = comm.is_main_process()
        if stream is None and self._output_dir and self._save_results and main:
            if not self._streamed:  # else the file holds these rows already
                writer = BackgroundWrite(self._results_path(), dets, rles)
        results = OrderedDict()
        for task in self._tasks:
            results[task] = self._evaluate_task(task, dets, rles if task != "bbox" else None)
        if self._output_dir and main:
            self._write_metrics(results)
        if writer is not None:
            writer.wait()
            logger.info(f"Results ({len(dets)} detections) written to {self._results_path()}")
        logger.info(
            f"{self.protocol.upper()} evaluation of {self._dataset_name} ({self._backend}, "
            f"{'Fixed AP' if self._fixed else 'standard'}) took {time.perf_counter() - t0:.2f} s"
        )
        return copy.deepcopy(results)

    def _select_fixed(self, dets, rles):
        """Fixed AP: the top-k detections of every class over the dataset (authors' tie order)."""
        dets, rles = keep_top_per_group(dets, rles, 6, self._topk)
        _, counts = np.unique(dets[:, 6], return_counts=True)
        num_classes = len(self._contiguous_to_dataset)
        short = num_classes - int((counts >= self._topk).sum())
        if short:
            logger.warning(
                f"Fixed AP: {short} of {num_classes} classes have fewer than {self._topk} detections; their AP is "
                "lower than the model could reach. Evaluate with TEST.LT.AP_PROTOCOL fixed at inference too (the "
                "ROI box predictor then keeps the top-k per class) and a low MODEL.ROI_HEADS.SCORE_THRESH_TEST."
            )
        return dets, rles

    def evaluate_arrays(self, dets: np.ndarray, rles: Optional[List[dict]] = None):
        """Evaluate a detection matrix ``(N, 7)`` (+ RLEs) as if it had come from :meth:`process` of every
        image (``tools/evaluate_results.py``): the same protocol, tables and files."""
        if self._with_masks and rles is None:
            raise ValueError(
                f"tasks {self._tasks} need masks; the results carry none (evaluate 'bbox' only)"
            )
        self.reset()
        self._from_arrays = True
        dets = np.ascontiguousarray(dets, dtype=np.float64).reshape(-1, 7)
        if self.caps_per_image and not self._fixed:
            dets, rles = keep_top_per_group(
                dets, rles if self._with_masks else None, 0, self._max_dets
            )
        self._chunks, self._num_rows = [dets], len(dets)
        self._rles = list(rles) if self._with_masks else None
        distributed, self._distributed = self._distributed, False
        try:
            return self.evaluate()
        finally:
            self._distributed = distributed

    # ------------------------------------------------------------------ one task
    def _evaluate_task(self, task, dets, rles):
        if task == "boundary":
            from .boundary import evaluate_boundary_predictions

            metrics, precision, cat_ids = evaluate_boundary_predictions(
                self._json_file,
                dets,
                rles,
                self.eval_max_dets,
                self.protocol == "lvis",
                self._boundary_dilation,
            )
        else:
            metrics, precision, cat_ids = self.run_protocol(task, dets, rles)
        results = OrderedDict((k, 100.0 * v) for k, v in metrics.items())
        names, freq, inst, imgs = self._category_info(cat_ids)
        sums = category_sums(precision)  # (sums, counts) per category: cheap group / category AP
        results.update(self.group_results(task, inst, sums))
        self._write_per_category(task, cat_ids, names, freq, inst, imgs, sums)
        logger.info(
            format_table(
                results,
                f"{self.protocol.upper()} {task} results of {self._dataset_name} (AP in %, nan = {self.nan_means}):",
            )
        )
        return results
