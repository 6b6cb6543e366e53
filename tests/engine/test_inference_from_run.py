"""Inference from a trained run alone: a run records its class statistics (OUTPUT_DIR/class_stats.json,
its checkpoints, MODEL.LT.CLASS_STATS_FILE in config.yaml), so tools/demo.py and detectron2's
DefaultPredictor work from config.yaml + model_final.pth on a machine without the training data."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

import lt_detectron  # noqa: F401
from lt_detectron.class_stats import (
    ClassStats,
    ClassStatsError,
    class_stats_to_dict,
    get_class_stats,
    read_class_stats_file,
    write_class_stats_file,
)
from lt_detectron.utils.testing import lt_cfg
from lt_detectron.data.embedded import get_lt_shapes, lt_shapes_paths
from tests._data import unique_name

from tests._data import ROOT

# the families whose heads need the statistics; BOFL's 2 iterations are far shorter than its
# deferred epochs: no deferral
FAMILIES = {
    "faster_rcnn_tiny_bags": [],
    "retinanet_tiny_ecm": [],
    "fcos_tiny_bofl": ["MODEL.LT.BOFL.DEFERRED_EPOCHS", "0"],
}
STATS = ClassStats(
    ("mine_train",),
    ("cat", "dog", "eel"),
    (3, 7, 9),
    [120, 14, 0],
    [101, 11, 0],
    150,
    np.array(["f", "c", "r"]),
)


def _same(a: ClassStats, b: ClassStats):
    assert a.dataset_names == b.dataset_names and a.class_names == b.class_names
    assert a.dataset_ids == b.dataset_ids and a.num_images == b.num_images
    np.testing.assert_array_equal(a.instance_counts, b.instance_counts)
    np.testing.assert_array_equal(a.image_counts, b.image_counts)
    np.testing.assert_array_equal(a.frequency, b.frequency)


def test_class_stats_file_and_checkpoint_round_trip(tmp_path):
    path = write_class_stats_file(STATS, str(tmp_path / "run" / "class_stats.json"))
    with open(path) as f:
        assert json.load(f)["instance_counts"] == [120, 14, 0]  # a plain json
    back = read_class_stats_file(path)
    _same(back, STATS)
    assert back.source == "file"
    # a checkpoint holds them as plain data (weights_only loading), in the trainer's state
    ckpt = tmp_path / "model_final.pth"
    torch.save({"model": {}, "trainer": {"class_stats": class_stats_to_dict(STATS)}}, str(ckpt))
    _same(read_class_stats_file(str(ckpt)), STATS)


def test_missing_training_data_error_names_the_data_the_file_and_the_fix(tmp_path):
    name = unique_name("absent_train")
    with pytest.raises(ClassStatsError) as e:
        get_class_stats((name,), stats_file="")
    msg = str(e.value)
    assert name in msg and "not registered" in msg
    assert "MODEL.LT.CLASS_STATS_FILE" in msg and "--register-dataset" in msg
    missing = str(tmp_path / "nowhere" / "class_stats.json")
    with pytest.raises(
        ClassStatsError, match="MODEL.LT.CLASS_STATS_FILE %s does not exist" % missing
    ):
        get_class_stats((name,), stats_file=missing)
    # the file of another run is refused
    other = write_class_stats_file(STATS, str(tmp_path / "class_stats.json"))
    with pytest.raises(ClassStatsError, match="holds the statistics of \\['mine_train'\\]"):
        get_class_stats((name,), stats_file=other)


# ------------------------------------------------------------------------------ end to end (slow)
INFER = r"""
import json, os, sys
import numpy as np, torch
torch.set_num_threads(1)
import lt_detectron  # noqa: F401
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog
from detectron2.data.detection_utils import read_image
from detectron2.engine import DefaultPredictor
from lt_detectron import add_lt_config

runs, images, out = json.loads(sys.argv[1])
from tools import demo, plot_methods as plots
res = {}
for run in runs:
    assert not any(n.startswith("copy_") for n in DatasetCatalog.list())
    np.random.seed(0)  # the Visualizer's random colours
    demo.main(["--config-file", os.path.join(run, "config.yaml"), "--input", *images,
               "--output", os.path.join(out, os.path.basename(run)), "--confidence-threshold", "0.05"])
    cfg = get_cfg()
    add_lt_config(cfg)
    cfg.merge_from_file(os.path.join(run, "config.yaml"))
    cfg.MODEL.WEIGHTS = os.path.join(run, "model_final.pth")
    p = DefaultPredictor(cfg)
    res[run] = [p(read_image(f, format="BGR"))["instances"].get_fields() for f in images]
    res[run] = [{k: (v.tensor if hasattr(v, "tensor") else v).tolist() for k, v in r.items()}
                for r in res[run]]
res["plots"] = plots.main(["--config-file", os.path.join(runs[0], "config.yaml"), "--output",
                           os.path.join(out, "plots"), "MODEL.WEIGHTS",
                           os.path.join(runs[0], "model_final.pth")])
json.dump(res, open(os.path.join(out, "predictions.json"), "w"))
"""


def _predict_here(run, images, out):
    """demo.py and DefaultPredictor in this process, where the training data is registered."""
    from detectron2.data.detection_utils import read_image
    from detectron2.engine import DefaultPredictor

    from tools import demo

    np.random.seed(0)  # the Visualizer's random colours
    demo.main(
        ["--config-file", os.path.join(run, "config.yaml"), "--input", *images]
        + ["--output", os.path.join(out, os.path.basename(run)), "--confidence-threshold", "0.05"]
    )
    cfg = lt_cfg(os.path.join(run, "config.yaml"))
    cfg.MODEL.WEIGHTS = os.path.join(run, "model_final.pth")
    p = DefaultPredictor(cfg)
    res = []
    for f in images:
        fields = p(read_image(f, format="BGR"))["instances"].get_fields()
        res.append(
            {k: (v.tensor if hasattr(v, "tensor") else v).tolist() for k, v in fields.items()}
        )
    return res


@pytest.fixture(scope="module")
def trained_runs(tmp_path_factory):
    """One 2-iteration training per family that needs statistics, on a copy of the embedded training
    json registered as ``copy_*`` with ``--register-dataset`` (tools/train_net.py, in this process)."""
    from lt_detectron.engine.defaults import launch_from_args
    from tools import train_net

    root = tmp_path_factory.mktemp("inference_runs")
    paths = lt_shapes_paths(get_lt_shapes())
    train_json = str(root / "copy_train.json")
    shutil.copyfile(paths["train_json"], train_json)
    name = unique_name("copy_train")
    runs = []
    for family, opts in FAMILIES.items():
        out = str(root / family)
        args = train_net.argument_parser().parse_args(
            ["--config-file", os.path.join(ROOT, "configs", "lt_shapes", family + ".yaml")]
            + ["--register-dataset", name, train_json, paths["train_images"]]
            + ["DATASETS.TRAIN", "('%s',)" % name, "DATASETS.TEST", "()", "OUTPUT_DIR", out]
            + ["SOLVER.MAX_ITER", "2", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.WARMUP_ITERS", "1"]
            + ["DATALOADER.NUM_WORKERS", "0", "TEST.EVAL_PERIOD", "0", "MODEL.DEVICE", "cpu"]
            + opts
        )
        launch_from_args(args, train_net.main)
        runs.append(out)
    images = [os.path.join(paths["val_images"], "000001.jpg")]
    before = {run: _predict_here(run, images, str(root / "before")) for run in runs}
    os.remove(train_json)  # the training data is gone
    return runs, images, before, root


@pytest.mark.slow
def test_demo_predictor_and_plots_from_a_run_without_its_training_json(trained_runs):
    runs, images, before, root = trained_runs
    for run in runs:  # what the run recorded
        stats_file = os.path.join(run, "class_stats.json")
        assert os.path.isfile(stats_file)
        cfg = lt_cfg(os.path.join(run, "config.yaml"))
        assert cfg.MODEL.LT.CLASS_STATS_FILE == stats_file
        ckpt = torch.load(os.path.join(run, "model_final.pth"), weights_only=True)
        with open(stats_file) as f:
            assert ckpt["trainer"]["class_stats"] == json.load(f)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    after_dir = str(root / "after")
    res = subprocess.run(
        [sys.executable, "-c", INFER, json.dumps([runs, images, after_dir])],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
        env=env,
    )
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    with open(os.path.join(after_dir, "predictions.json")) as f:
        after = json.load(f)
    # plot_methods.py too (the BAGS run: its box predictor's classifier norms)
    assert after["plots"] and all(os.path.isfile(p) for p in after["plots"])
    for run in runs:
        for b, a in zip(before[run], after[run]):
            assert len(b["scores"]) > 0 and b["pred_classes"] == a["pred_classes"]
            np.testing.assert_allclose(a["scores"], b["scores"], rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(a["pred_boxes"], b["pred_boxes"], rtol=1e-5, atol=1e-4)
        for img in images:  # the drawn images, class names included, are the same
            png = os.path.splitext(os.path.basename(img))[0] + ".png"
            x = np.asarray(_read_png(os.path.join(root, "before", os.path.basename(run), png)))
            y = np.asarray(_read_png(os.path.join(after_dir, os.path.basename(run), png)))
            np.testing.assert_array_equal(x, y)


def _read_png(path):
    from PIL import Image

    with Image.open(path) as im:
        return im.convert("RGB")
