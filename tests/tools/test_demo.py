"""tools/demo.py: a checkpoint saved by the project's checkpointer is loaded safely, run on embedded
images and its detections drawn (input size, boxes drawn where the model put them, nothing else
changed); missing inputs, unreadable images, missing and crafted checkpoints are clear errors."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from detectron2.data.detection_utils import read_image
from detectron2.modeling import build_model
from PIL import Image

import lt_detectron  # noqa: F401
from lt_detectron.data.embedded import get_lt_shapes, lt_shapes_paths
from lt_detectron.engine.checkpoint import LTCheckpointer
from lt_detectron.utils.testing import lt_cfg

from tests._data import ROOT

CFG = os.path.join(ROOT, "configs", "lt_shapes", "faster_rcnn_tiny_softmax.yaml")
OPTS = ["MODEL.DEVICE", "cpu", "TEST.DETECTIONS_PER_IMAGE", "3"]


def _load_tool():
    from tools import demo

    return demo


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """An OUTPUT_DIR holding a model_final.pth of the tiny softmax Faster R-CNN (untrained weights,
    saved by LTCheckpointer), and the embedded val images."""
    out = tmp_path_factory.mktemp("demo_run")
    cfg = lt_cfg(CFG)
    torch.manual_seed(0)
    model = build_model(cfg)
    LTCheckpointer(model, save_dir=str(out)).save("model_final")
    assert os.path.isfile(out / "model_final.pth")
    return str(out), lt_shapes_paths(get_lt_shapes())["val_images"]


def _png(path):
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB")).astype(np.int64)


@pytest.mark.slow
def test_demo_draws_the_models_boxes(run_dir, tmp_path):
    out_dir, val = run_dir
    tool = _load_tool()
    images = [
        os.path.join(val, "000001.jpg"),
        os.path.join(val, "00000[2].jpg"),
    ]  # a file and a glob
    cmd = [
        sys.executable,
        os.path.join(ROOT, "tools", "demo.py"),
        "--config-file",
        CFG,
        "--input",
        *images,
        "--output",
        str(tmp_path / "vis"),
        "--confidence-threshold",
        "0",
        "--opts",
        "OUTPUT_DIR",
        out_dir,
        *OPTS,
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-3000:]
    written = [str(tmp_path / "vis" / "000001.png"), str(tmp_path / "vis" / "000002.png")]
    assert res.stdout.split() == written  # stdout: the paths, one per line

    # the same predictions in this process, from the same checkpoint (default: OUTPUT_DIR/model_final.pth)
    cfg = tool.setup_cfg(
        tool.parse_args(
            [
                "--config-file",
                CFG,
                "--input",
                "x",
                "--output",
                "y",
                "--opts",
                "OUTPUT_DIR",
                out_dir,
                *OPTS,
            ]
        )
    )
    assert cfg.MODEL.WEIGHTS == os.path.join(out_dir, "model_final.pth")
    predictor = tool.LTPredictor(cfg)
    for src, dst in zip(
        [os.path.join(val, "000001.jpg"), os.path.join(val, "000002.jpg")], written
    ):
        rgb = read_image(src, format="RGB").astype(np.int64)
        vis = _png(dst)
        assert vis.shape == rgb.shape  # the input size
        boxes = predictor(rgb[:, :, ::-1].astype(np.uint8))["instances"].pred_boxes.tensor.numpy()
        assert len(boxes) == 3
        changed = (
            np.abs(vis - rgb).max(axis=2) > 0
        )  # nothing drawn leaves the input exact (next test)
        H, W = changed.shape
        for x0, y0, x1, y1 in boxes:  # each box outline is drawn: most pixels on its edges changed
            xs = np.clip(np.arange(int(np.ceil(x0)), int(x1)), 0, W - 1)
            ys = np.clip(np.arange(int(np.ceil(y0)), int(y1)), 0, H - 1)
            ring = [
                changed[max(int(y0) - 1, 0) : int(y0) + 2, xs].any(axis=0),
                changed[max(int(y1) - 1, 0) : int(y1) + 2, xs].any(axis=0)
                if y1 < H - 1
                else np.ones(1, bool),
                changed[ys, max(int(x0) - 1, 0) : int(x0) + 2].any(axis=1),
                changed[ys, max(int(x1) - 1, 0) : int(x1) + 2].any(axis=1)
                if x1 < W - 1
                else np.ones(1, bool),
            ]
            assert np.concatenate(ring).mean() > 0.8, (src, (x0, y0, x1, y1))


def test_nothing_drawn_is_the_input_and_scale(run_dir, tmp_path):
    out_dir, val = run_dir
    tool = _load_tool()
    src = os.path.join(val, "000003.jpg")
    [path] = tool.main(
        [
            "--config-file",
            CFG,
            "--input",
            src,
            "--output",
            str(tmp_path),
            "--confidence-threshold",
            "1.01",
            "--opts",
            "OUTPUT_DIR",
            out_dir,
            *OPTS,
        ]
    )
    # PNG: lossless; nothing drawn but the "no detection" note in the top-left corner
    changed = np.abs(_png(path) - read_image(src, format="RGB")).max(axis=2) > 0
    rows, cols = np.nonzero(changed)
    assert rows.max() < 64 and cols.min() < 8  # the note, at the top-left
    assert not changed[64:].any()
    [path] = tool.main(
        [
            "--config-file",
            CFG,
            "--input",
            src,
            "--output",
            str(tmp_path / "x2"),
            "--scale",
            "2",
            "--confidence-threshold",
            "0",
            "--opts",
            "OUTPUT_DIR",
            out_dir,
            *OPTS,
        ]
    )
    assert _png(path).shape == (256, 256, 3)
    # the first images of a registered dataset, with its class names
    paths = tool.main(
        [
            "--config-file",
            CFG,
            "--dataset",
            "lt_shapes_val",
            "--max-images",
            "2",
            "--output",
            str(tmp_path / "ds"),
            "--opts",
            "OUTPUT_DIR",
            out_dir,
            *OPTS,
        ]
    )
    assert [os.path.basename(p) for p in paths] == ["000001.png", "000002.png"]
    meta = tool.class_metadata(
        tool.setup_cfg(
            tool.parse_args(
                [
                    "--config-file",
                    CFG,
                    "--input",
                    "x",
                    "--output",
                    "y",
                    "--opts",
                    "OUTPUT_DIR",
                    out_dir,
                ]
            )
        )
    )
    assert len(meta.thing_classes) == 24 and meta.thing_classes[0] != "0"


def test_demo_image_without_detection_says_so(run_dir, tmp_path):
    """An image with no detection at the threshold carries a note that says so (not a bare copy of
    the input, which reads as 'the demo did nothing'); an image with detections carries none."""
    out_dir, val = run_dir
    tool = _load_tool()
    src = os.path.join(val, "000003.jpg")
    argv = ["--config-file", CFG, "--input", src, "--output", "o", "--opts", "OUTPUT_DIR", out_dir]
    predictor = tool.LTPredictor(tool.setup_cfg(tool.parse_args(argv + OPTS)))
    meta = tool.class_metadata(predictor.cfg)
    image = read_image(src, format="BGR")
    vis, n = tool.draw(predictor, image, meta, 1.01)
    texts = [t.get_text() for t in vis.ax.texts]
    assert n == 0 and texts == ["no detection\nwith score >= 1.01"]
    drawn = vis.get_image()  # RGB
    assert drawn.shape == image.shape and (drawn != image[:, :, ::-1]).any()
    vis, n = tool.draw(predictor, image, meta, 0.0)  # 3 detections (OPTS): class labels only
    assert n == 3 and not any(t.get_text().startswith("no detection") for t in vis.ax.texts)


def test_demo_never_overwrites_an_input(run_dir, tmp_path):
    """--output the inputs' folder (any spelling, or a symlink to it) would write <stem>.png over an
    input .png: refused before anything is written, naming the file and the fix."""
    out_dir, val = run_dir
    tool = _load_tool()
    folder = tmp_path / "photos"
    folder.mkdir()
    img = folder / "a.png"
    Image.open(os.path.join(val, "000001.jpg")).save(img)
    before = img.read_bytes()
    (tmp_path / "link").symlink_to(folder)
    (tmp_path / "hl").mkdir()
    os.link(img, tmp_path / "hl" / "a.png")  # a hard link to the input, in another folder
    spellings = [
        str(folder),
        str(folder) + "/./",
        str(tmp_path / "photos" / ".." / "photos"),
        str(tmp_path / "link"),
        os.path.relpath(str(folder)),
    ]
    for output in spellings:
        msg = _error(
            tool,
            ["--config-file", CFG, "--input", str(img), "--output", output]
            + ["--opts", "OUTPUT_DIR", out_dir, *OPTS],
        )
        assert "would overwrite the input %s" % img in msg and "--output" in msg, (output, msg)
    msg = _error(
        tool,
        ["--config-file", CFG, "--input", str(img), "--output", str(tmp_path / "hl")]
        + ["--opts", "OUTPUT_DIR", out_dir, *OPTS],
    )
    assert "would overwrite the input" in msg
    assert img.read_bytes() == before and sorted(os.listdir(folder)) == ["a.png"]
    # another folder is fine
    [path] = tool.main(
        ["--config-file", CFG, "--input", str(img), "--output", str(tmp_path / "vis")]
        + ["--opts", "OUTPUT_DIR", out_dir, *OPTS]
    )
    assert os.path.isfile(path) and img.read_bytes() == before


def _error(tool, argv):
    with pytest.raises(SystemExit) as e:
        tool.main(argv)
    return str(e.value.code)


def test_clear_errors(run_dir, tmp_path):
    out_dir, val = run_dir
    tool = _load_tool()
    good = os.path.join(val, "000001.jpg")
    base = ["--config-file", CFG, "--output", str(tmp_path / "out")]
    # missing inputs: every one named, before any model is built
    msg = _error(
        tool,
        base
        + [
            "--input",
            good,
            str(tmp_path / "nope.jpg"),
            str(tmp_path / "*.png"),
            "--opts",
            "OUTPUT_DIR",
            out_dir,
        ],
    )
    assert (
        str(tmp_path / "nope.jpg") in msg and "does not exist" in msg and "matches no file" in msg
    )
    assert "is a folder" in _error(tool, base + ["--input", val, "--opts", "OUTPUT_DIR", out_dir])
    # an unreadable image is named; the readable ones are still drawn
    bad = tmp_path / "corrupt.jpg"
    bad.write_bytes(b"not an image at all")
    msg = _error(tool, base + ["--input", str(bad), good, "--opts", "OUTPUT_DIR", out_dir, *OPTS])
    assert "cannot read image %s" % bad in msg
    assert os.path.isfile(tmp_path / "out" / "000001.png")
    # no trained model: OUTPUT_DIR/model_final.pth missing and no MODEL.WEIGHTS
    msg = _error(
        tool, base + ["--input", good, "--opts", "OUTPUT_DIR", str(tmp_path / "empty_run")]
    )
    assert "no trained model" in msg and "MODEL.WEIGHTS" in msg and "model_final.pth" in msg
    # a MODEL.WEIGHTS that does not exist
    msg = _error(
        tool, base + ["--input", good, "--opts", "MODEL.WEIGHTS", str(tmp_path / "missing.pth")]
    )
    assert "cannot load MODEL.WEIGHTS" in msg and str(tmp_path / "missing.pth") in msg
    # a crafted checkpoint is refused and nothing in it runs
    marker = tmp_path / "marker"
    crafted = tmp_path / "crafted.pth"
    torch.save({"model": {"w": torch.ones(2)}, "x": _Evil(str(marker))}, str(crafted))
    msg = _error(tool, base + ["--input", good, "--opts", "MODEL.WEIGHTS", str(crafted)])
    assert "cannot load MODEL.WEIGHTS" in msg and str(crafted) in msg
    assert not marker.exists()
    # an unregistered --dataset
    assert "not registered" in _error(
        tool, base + ["--dataset", "no_such_set", "--opts", "OUTPUT_DIR", out_dir]
    )


class _Evil:
    """Unpickling this runs ``touch <marker>``."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, ("touch %s" % self.marker,))
