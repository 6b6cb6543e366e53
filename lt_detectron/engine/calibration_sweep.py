"""Choose the strength of a test-time calibration (``TEST.LT.CALIBRATION``): evaluate one trained
checkpoint once per value on a split and tabulate AP, APr, APc, APf (``tools/calibrate.py``).

* :func:`register_heldout_split`: a seeded subset of the training images of ``DATASETS.TRAIN[0]``
  (its json restricted to them, all categories kept) registered as a dataset, the split the NorCal
  authors advise to pick gamma on.
* :func:`calibration_sweep`: one evaluation per (protocol, value), each with a model built from the
  config (the calibration is read when the box predictor is built) and ``MODEL.WEIGHTS`` loaded;
  rows of the evaluator's bbox metrics (pooled AP too with ``TEST.LT.POOLED_AP``).
* :func:`format_sweep_table`: the rows as a text table.
"""

from __future__ import annotations

import json
import os
from typing import Dict, List, Optional, Sequence

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog

__all__ = ["register_heldout_split", "calibration_sweep", "format_sweep_table", "SWEEP_METRICS"]

SWEEP_METRICS = ("AP", "APr", "APc", "APf", "APpool", "APpool-r", "APpool-c", "APpool-f")


def register_heldout_split(cfg, num_images: int, seed: int = 0, output_dir: Optional[str] = None):
    """Register ``<train>_heldout<num_images>_seed<seed>``: ``num_images`` images of the training
    dataset ``cfg.DATASETS.TRAIN[0]`` drawn without replacement by ``numpy.random.default_rng(seed)``
    from its image ids in increasing order, with their annotations; the json is written to
    ``output_dir`` (default ``OUTPUT_DIR/calibration``). Returns the dataset name."""
    from ..data.datasets import register_lt_dataset
    from ..evaluation.common import load_gt_json

    if not cfg.DATASETS.TRAIN:
        raise ValueError(
            "a held-out split is drawn from DATASETS.TRAIN, which is empty: set DATASETS.TRAIN to "
            "the model's training dataset, or evaluate on DATASETS.TEST (--split test)"
        )
    train = cfg.DATASETS.TRAIN[0]
    meta = MetadataCatalog.get(train)
    gt = load_gt_json(meta.get("json_file", None), train)
    ids = sorted(int(im["id"]) for im in gt["images"])
    if not 0 < int(num_images) <= len(ids):
        raise ValueError(
            "the held-out split needs 1 to %d images (the images of %s), got %d: choose "
            "--heldout-images in that range" % (len(ids), train, num_images)
        )
    name = "%s_heldout%d_seed%d" % (train, num_images, seed)
    if name in DatasetCatalog.list():
        return name
    keep = set(
        np.random.default_rng(seed).choice(ids, size=int(num_images), replace=False).tolist()
    )
    subset = dict(gt)
    subset["images"] = [im for im in gt["images"] if int(im["id"]) in keep]
    subset["annotations"] = [a for a in gt["annotations"] if int(a["image_id"]) in keep]
    out = output_dir or os.path.join(cfg.OUTPUT_DIR, "calibration")
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, name + ".json")
    with open(path, "w") as f:
        json.dump(subset, f)
    register_lt_dataset(
        name, path, meta.image_root, evaluator_type=meta.get("evaluator_type", None)
    )
    return name


def calibration_sweep(
    cfg,
    method: str,
    values: Sequence[float],
    dataset_name: str,
    protocols: Sequence[str] = ("standard",),
    trainer_cls=None,
) -> List[Dict[str, object]]:
    """Evaluate ``cfg.MODEL.WEIGHTS`` on ``dataset_name`` with ``TEST.LT.CALIBRATION method`` at each
    of ``values`` (its gamma or tau), under each ``TEST.LT.AP_PROTOCOL`` of ``protocols``.

    Returns one dict per (protocol, value): ``protocol``, ``value`` and the bbox metrics of
    :data:`SWEEP_METRICS` that the evaluator reported. ``trainer_cls`` (default
    :class:`~lt_detectron.engine.LTTrainer`) builds the model and runs the test.
    """
    from ..config import validate_lt_config
    from ..modeling.calibration import CALIBRATION_REGISTRY
    from .checkpoint import LTCheckpointer
    from .trainer import LTTrainer
    from .training_data import prepare_training_data

    trainer_cls = trainer_cls or LTTrainer
    method = str(method).lower()
    param = None if method == "none" else CALIBRATION_REGISTRY.get(method).param_key.split(".")[-1]
    if not values:
        raise ValueError("give at least one value to sweep")
    base = cfg.clone()
    base.defrost()
    base.DATASETS.TEST = (dataset_name,)
    # the statistics (and BOFL's epoch length) from one parse of the training json
    base = prepare_training_data(base, check_images=False)[0]
    rows = []
    for protocol in protocols:
        for value in values:
            c = base.clone()
            c.TEST.LT.AP_PROTOCOL = protocol
            c.TEST.LT.SAVE_RESULTS = False
            c.TEST.LT.CALIBRATION = method
            if param is not None:
                c.TEST.LT[param] = float(value)
            c.OUTPUT_DIR = os.path.join(
                cfg.OUTPUT_DIR, "calibration", "%s_%g_%s" % (method, value, protocol)
            )
            validate_lt_config(c, "the calibration sweep")
            model = trainer_cls.build_model(c)
            # as tools/train_net.py --eval-only loads it (lt_detectron.engine.defaults)
            LTCheckpointer(
                model, save_dir=c.OUTPUT_DIR, reinit_cls=c.MODEL.LT.REINIT_CLS
            ).resume_or_load(c.MODEL.WEIGHTS, resume=False)
            res = trainer_cls.test(c, model)
            bbox = res.get("bbox", {}) if isinstance(res, dict) else {}
            row = {"protocol": protocol, "value": float(value)}
            row.update({k: float(bbox[k]) for k in SWEEP_METRICS if k in bbox})
            rows.append(row)
    return rows


def format_sweep_table(rows: Sequence[Dict[str, object]], method: str) -> str:
    """One line per row: protocol, the value, then each metric present (``nan`` where missing)."""
    metrics = [k for k in SWEEP_METRICS if any(k in r for r in rows)]
    head = ["protocol", method] + metrics
    lines = ["  ".join("%10s" % h for h in head)]
    for r in rows:
        cells = [str(r["protocol"]), "%g" % r["value"]]
        cells += ["%.2f" % r[k] if k in r else "nan" for k in metrics]
        lines.append("  ".join("%10s" % x for x in cells))
    return "\n".join(lines)
