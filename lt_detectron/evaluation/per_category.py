"""The per-category side of :class:`~.base.LTDatasetEvaluator`: each evaluated category's name,
frequency band and training counts, and the files written from them (``{protocol}_metrics.json``,
``{protocol}_per_category_{task}.csv``)."""

from __future__ import annotations

import json
import logging
import os
from typing import List, Tuple

import numpy as np
from detectron2.utils import comm

from .common import per_category_ap, write_per_category_csv

# the records keep the name they had before these methods left base.py
logger = logging.getLogger("lt_detectron.evaluation.base")

__all__ = ["PerCategoryOutputs"]


class PerCategoryOutputs:
    """Methods of :class:`~.base.LTDatasetEvaluator` (a base class of it) that read its
    ``_gt_categories``, ``_class_stats``, ``_output_dir``, ``protocol`` and AP settings."""

    def _category_info(
        self, cat_ids: List[int]
    ) -> Tuple[List[str], List[str], np.ndarray, np.ndarray]:
        """Per sorted dataset category id: name, frequency band, train instances, train images (-1: unknown).

        Names and bands from the GT json (the protocol's own), else from the ``ClassStats``; counts
        from the ``ClassStats``, else from the json's ``instance_count``/``image_count``.
        """
        gt_by_id = {c["id"]: c for c in self._gt_categories}
        n = len(cat_ids)
        st = self._class_stats
        pos = {int(d): i for i, d in enumerate(st.dataset_ids)} if st is not None else {}
        st_names = getattr(st, "class_names", None)
        st_freq = getattr(st, "frequency", None)
        names, freq = [], []
        inst = np.full(n, -1, np.int64)
        imgs = np.full(n, -1, np.int64)
        for k, c in enumerate(cat_ids):
            g = gt_by_id.get(c, {})
            i = pos.get(int(c))
            names.append(
                g.get("name")
                or (str(st_names[i]) if i is not None and st_names is not None else str(c))
            )
            freq.append(
                g.get("frequency")
                or (str(st_freq[i]) if i is not None and st_freq is not None else "")
            )
            if st is not None:
                if i is not None:
                    inst[k] = st.instance_counts[i]
                    imgs[k] = st.image_counts[i]
            else:
                inst[k] = g.get("instance_count", -1)
                imgs[k] = g.get("image_count", -1)
        return names, freq, inst, imgs

    def _write_metrics(self, results) -> None:
        """``{protocol}_metrics.json``: ``{task: {metric: AP in %}}``, nan written as null."""
        path = os.path.join(self._output_dir, f"{self.protocol}_metrics.json")
        clean = {
            t: {k: (None if not np.isfinite(v) else float(v)) for k, v in m.items()}
            for t, m in results.items()
        }
        os.makedirs(self._output_dir, exist_ok=True)
        with open(path + ".part", "w") as f:
            json.dump(
                {
                    "dataset": self._dataset_name,
                    "ap_protocol": "fixed" if self._fixed else "standard",
                    "max_dets_per_image": self.eval_max_dets,
                    "topk_per_class": self._topk if self._fixed else None,
                    # "table": training counts not checked against annotations (json absent)
                    "class_stats_source": getattr(self._class_stats, "source", None),
                    "results": clean,
                },
                f,
                indent=1,
            )
        os.replace(path + ".part", path)

    def _write_per_category(self, task, cat_ids, names, freq, inst, imgs, sums):
        """``{protocol}_per_category_{task}.csv`` (main process, when there is an output folder)."""
        if not (self._output_dir and comm.is_main_process()):
            return
        ap_cat = per_category_ap(sums)
        path = os.path.join(self._output_dir, f"{self.protocol}_per_category_{task}.csv")
        write_per_category_csv(
            path,
            (
                {
                    "category_id": c,
                    "name": names[k],
                    "frequency": freq[k],
                    "train_instances": int(inst[k]),
                    "train_images": int(imgs[k]),
                    "AP": 100.0 * ap_cat[k],
                }
                for k, c in enumerate(cat_ids)
            ),
        )
        logger.info(f"Per-category {task} AP written to {path}")
