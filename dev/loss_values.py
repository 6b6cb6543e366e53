"""Loss values of every tiny lt_shapes config on one fixed batch: a behaviour check across commits.

    python -m dev.loss_values > after.txt
    # in a checkout of the older commit (with its own lt_detectron on PYTHONPATH):
    PYTHONPATH=$PWD python /path/to/dev/loss_values.py > before.txt && diff before.txt after.txt

Every leaf config of configs/lt_shapes is built with the same seed and run once in training mode
on the same two training images (no flip), one line per config with each loss to 9 digits.
"""

import glob
import os
import random

import numpy as np
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, DatasetMapper
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

import lt_detectron  # noqa: F401  (registers the heads, meta-architectures and datasets)
from lt_detectron import add_lt_config
from lt_detectron.data.embedded import get_lt_shapes


def main():
    get_lt_shapes()
    torch.set_num_threads(1)
    dicts = DatasetCatalog.get("lt_shapes_train")[:2]
    for path in sorted(glob.glob(os.path.join("configs", "lt_shapes", "*.yaml"))):
        name = os.path.basename(path)
        if name.startswith("Base-"):
            continue
        cfg = get_cfg()
        add_lt_config(cfg)
        cfg.merge_from_file(path)
        cfg.MODEL.DEVICE = "cpu"
        cfg.INPUT.RANDOM_FLIP = "none"
        torch.manual_seed(0)
        np.random.seed(0)
        random.seed(0)
        model = build_model(cfg)
        model.train()
        mapper = DatasetMapper(cfg, is_train=True)
        batch = [mapper(dict(d)) for d in dicts]
        with EventStorage(0):
            losses = model(batch)
        values = " ".join("%s=%.9g" % (k, float(v)) for k, v in sorted(losses.items()))
        print(name, values, flush=True)


if __name__ == "__main__":
    main()
