#!/usr/bin/env python
"""Run a trained model on images and draw its detections with class names (detectron2's demo/demo.py).

    # the model trained by a config (OUTPUT_DIR/model_final.pth), four embedded val images
    python tools/demo.py --config-file configs/lt_shapes/faster_rcnn_tiny_softmax.yaml \\
        --input ~/.cache/lt_detectron/lt_shapes_v2_seed0/val/00000[1-4].jpg --output demo/
    # the first 4 images of a registered dataset (e.g. DATASETS.TEST of the config)
    python tools/demo.py --config-file configs/lt_shapes/faster_rcnn_tiny_softmax.yaml --dataset lt_shapes_val \
        --max-images 4 --output demo/
    # any checkpoint, a GPU, another threshold; globs are expanded here too (quote them)
    python tools/demo.py --config-file configs/lvis_v1/eqlv2_mask_rcnn_R_50_FPN_1x.yaml \\
        --input 'photos/*.jpg' --output demo/ --confidence-threshold 0.3 \\
        --opts MODEL.WEIGHTS output/lvis_v1/eqlv2_mask_rcnn_R_50_FPN_1x/model_0089999.pth MODEL.DEVICE cuda

Writes ``<output>/<input name>.png`` per input (same size as the input with ``--scale 1``) and
prints the paths. The model is built from the config (``add_lt_config``; ``import lt_detectron``
registers the heads and datasets) and loaded with ``LTCheckpointer`` (``weights_only`` loading:
nothing but tensors and plain types is unpickled). Weights: ``MODEL.WEIGHTS`` given in ``--opts``,
else ``OUTPUT_DIR/model_final.pth`` of the config, else the config's own ``MODEL.WEIGHTS``.
Inference runs as detectron2's ``DefaultPredictor`` (``INPUT.FORMAT``, the test resize) on
``MODEL.DEVICE``; detections scoring at least ``--confidence-threshold`` are drawn by detectron2's
``Visualizer`` with the class names of ``DATASETS.TEST[0]`` (or ``DATASETS.TRAIN[0]``; without that
data, the names the training run recorded in ``MODEL.LT.CLASS_STATS_FILE``), labels kept inside the
image; an image without such a detection says so in its corner. On small images (the embedded set's
are 128 px) ``--scale 3`` makes the labels readable. A run's own ``OUTPUT_DIR/config.yaml`` is enough
on a machine without the training data. Datasets for ``--dataset`` can be registered with
``--register-dataset NAME JSON IMAGE_ROOT`` (as in train_net.py). An output path that is an input
file is refused: inputs are never overwritten.
"""

import argparse
import glob
import os
import sys

import matplotlib.colors as mplc
import numpy as np
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data import transforms as T
from detectron2.data.detection_utils import read_image
from detectron2.engine import DefaultPredictor
from detectron2.modeling import build_model
from detectron2.utils.visualizer import ColorMode, Visualizer

import lt_detectron  # noqa: F401  (registers heads, meta-architectures and datasets)
from lt_detectron import add_lt_config
from lt_detectron.class_stats import ClassStatsError, get_train_class_stats
from lt_detectron.config import LTConfigError, validate_lt_config
from lt_detectron.data import (
    add_register_arguments,
    ensure_dataset_metadata,
    ensure_embedded_generated,
    register_from_args,
)
from lt_detectron.engine.checkpoint import CheckpointClassMismatch, CheckpointError, LTCheckpointer


class DemoError(Exception):
    """A problem with the command line, the checkpoint or an input, explained for the user."""


class LTPredictor(DefaultPredictor):
    """detectron2's ``DefaultPredictor`` (``__call__``: one BGR image -> the model's outputs) with the
    weights loaded by ``LTCheckpointer`` (safe loading, ``MODEL.LT.REINIT_CLS``)."""

    def __init__(
        self, cfg
    ):  # DefaultPredictor.__init__, with LTCheckpointer instead of DetectionCheckpointer
        self.cfg = cfg.clone()
        self.model = build_model(self.cfg)
        self.model.eval()
        LTCheckpointer(self.model, reinit_cls=cfg.MODEL.LT.REINIT_CLS).load(cfg.MODEL.WEIGHTS)
        self.aug = T.ResizeShortestEdge(
            [cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MIN_SIZE_TEST], cfg.INPUT.MAX_SIZE_TEST
        )
        self.input_format = cfg.INPUT.FORMAT
        if self.input_format not in ("RGB", "BGR"):
            raise DemoError("INPUT.FORMAT must be RGB or BGR, got %r" % (self.input_format,))


class LabelsInsideVisualizer(Visualizer):
    """detectron2's ``Visualizer`` with readable labels: a label that would run over the right or bottom
    edge is moved inside the image, one that would cover an earlier label is moved below it (small
    images: a label is often wider than its box, and two classes may claim one object), and the text
    is a light tint of the box colour."""

    def draw_text(self, text, position, *, color="g", **kwargs):
        color = 0.5 + 0.5 * np.asarray(
            mplc.to_rgb(color)
        )  # light: readable on the dark label background
        out = super().draw_text(text, position, color=color, **kwargs)
        label = out.ax.texts[-1]
        renderer = out.canvas.get_renderer()
        pad = 2.0  # pixels, for the label's dark background
        for _ in range(len(out.ax.texts)):
            box = label.get_window_extent(renderer=renderer)  # display pixels, origin bottom-left
            dx = max(0.0, box.x1 + pad - out.fig.bbox.width)
            dy = max(0.0, pad - box.y0)  # > 0: runs over the bottom edge, move up
            hit = next(
                (
                    o.get_window_extent(renderer=renderer)
                    for o in out.ax.texts[:-1]
                    if o.get_window_extent(renderer=renderer).overlaps(box)
                ),
                None,
            )
            if hit is not None and not dy:
                dy = -(box.y1 - hit.y0 + 2 * pad)  # move below the earlier label
            if not (dx or dy):
                break
            x, y = label.get_position()  # image coordinates: 1 unit = scale pixels, y down
            label.set_position((max(x - dx / out.scale, 0.0), y - dy / out.scale))
            if hit is not None and dy > 0:
                break  # at the bottom edge: keep it inside rather than apart
        return out


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--config-file", required=True, metavar="FILE")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--input", nargs="+", metavar="IMG", help="image files or globs ('photos/*.jpg')"
    )
    src.add_argument(
        "--dataset", metavar="NAME", help="the first --max-images images of a registered dataset"
    )
    p.add_argument(
        "--max-images", type=int, default=4, metavar="N", help="with --dataset (default 4)"
    )
    p.add_argument("--output", required=True, metavar="DIR", help="folder for the drawn images")
    p.add_argument(
        "--confidence-threshold",
        type=float,
        default=0.5,
        help="draw the detections scoring at least this (default 0.5; the model's own test "
        "thresholds, e.g. MODEL.ROI_HEADS.SCORE_THRESH_TEST, apply first)",
    )
    p.add_argument(
        "--scale",
        type=float,
        default=1.0,
        help="Visualizer scale: the output is this many times the input size (default 1)",
    )
    add_register_arguments(p)
    p.add_argument(
        "--opts",
        nargs=argparse.REMAINDER,
        default=[],
        help="config overrides KEY VALUE ..., e.g. MODEL.WEIGHTS path.pth MODEL.DEVICE cuda",
    )
    return p.parse_args(argv)


def expand_inputs(patterns):
    """Files named by ``patterns`` (globs expanded, sorted), or a :class:`DemoError` listing every
    pattern that names nothing readable as a file."""
    files, problems = [], []
    for pat in patterns:
        path = os.path.expanduser(pat)
        if glob.has_magic(path):
            hits = sorted(f for f in glob.glob(path) if os.path.isfile(f))
            if not hits:
                problems.append("--input %r matches no file" % pat)
            files += hits
        elif os.path.isdir(path):
            problems.append(
                "--input %s is a folder: give image files or a glob such as '%s'"
                % (os.path.abspath(path), os.path.join(pat, "*.jpg"))
            )
        elif not os.path.isfile(path):
            problems.append("--input %s does not exist" % os.path.abspath(path))
        else:
            files.append(path)
    if problems:
        raise DemoError("\n".join(problems))
    return files


def dataset_images(name: str, n: int):
    """The image files of the first ``n`` records of the registered dataset ``name``."""
    return [d["file_name"] for d in DatasetCatalog.get(name)[: max(n, 0)]]


def setup_cfg(args):
    cfg = get_cfg()
    add_lt_config(cfg)
    if not os.path.isfile(args.config_file):
        raise DemoError("--config-file %s does not exist" % os.path.abspath(args.config_file))
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    validate_lt_config(cfg, args.config_file)
    given = [
        args.opts[i + 1] for i in range(0, len(args.opts) - 1, 2) if args.opts[i] == "MODEL.WEIGHTS"
    ]
    final = os.path.join(cfg.OUTPUT_DIR, "model_final.pth")
    if not given:
        if os.path.isfile(final):
            cfg.MODEL.WEIGHTS = final
        elif cfg.MODEL.WEIGHTS:
            print(
                "tools/demo.py: %s does not exist; using the config's MODEL.WEIGHTS %s (if that only initialises "
                "the backbone, the detections mean nothing)" % (final, cfg.MODEL.WEIGHTS),
                file=sys.stderr,
            )
        else:
            raise DemoError(
                "no trained model: %s does not exist and the config has no MODEL.WEIGHTS. Train the "
                "config first (tools/train_net.py) or give one: --opts MODEL.WEIGHTS path/to/model.pth"
                % os.path.abspath(final)
            )
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        raise DemoError(
            "MODEL.DEVICE is %s but no CUDA device is available: add --opts MODEL.DEVICE cpu"
            % cfg.MODEL.DEVICE
        )
    cfg.freeze()
    return cfg


def ensure_embedded(cfg):
    """Generate the embedded ``lt_shapes_*`` dataset (cached) when the config uses it. Dataset names
    need not be registered here: the class statistics then come from MODEL.LT.CLASS_STATS_FILE."""
    if all(n in DatasetCatalog.list() for n in cfg.DATASETS.TRAIN + cfg.DATASETS.TEST):
        ensure_embedded_generated(cfg)


def class_metadata(cfg):
    """The metadata of ``DATASETS.TEST[0]``, else ``DATASETS.TRAIN[0]``, with ``thing_classes`` (read
    from the dataset's json when lt_detectron registered it); else the class names the training run
    recorded (``MODEL.LT.CLASS_STATS_FILE``); empty metadata (class ids) otherwise."""
    for name in list(cfg.DATASETS.TEST[:1]) + list(cfg.DATASETS.TRAIN[:1]):
        if name not in DatasetCatalog.list():
            continue
        ensure_dataset_metadata(name, missing_ok=True)
        meta = MetadataCatalog.get(name)
        if meta.get("thing_classes", None):
            return meta
    try:
        stats = get_train_class_stats(cfg)
    except ClassStatsError:
        stats = None
    if stats is not None:
        meta = MetadataCatalog.get("__lt_demo_classes_%s" % stats.fingerprint()[:12])
        if not meta.get("thing_classes", None):
            meta.thing_classes = list(stats.class_names)
        return meta
    print(
        "tools/demo.py: DATASETS.TEST/TRAIN give no class names: labels are class ids",
        file=sys.stderr,
    )
    return MetadataCatalog.get("__lt_demo_unnamed")


def output_paths(files, out_dir):
    """``<out_dir>/<input name>.png`` per input; repeated names get ``_2``, ``_3``, ..."""
    seen, out = {}, []
    for f in files:
        stem = os.path.splitext(os.path.basename(f))[0]
        seen[stem] = seen.get(stem, 0) + 1
        out.append(
            os.path.join(out_dir, stem + ("_%d" % seen[stem] if seen[stem] > 1 else "") + ".png")
        )
    return out


def check_not_inputs(files, outs):
    """A :class:`DemoError` when an output path is an input file (the same path in another spelling,
    through a symlink, or a hard link): the demo never overwrites its inputs."""
    real = {os.path.realpath(f): f for f in files}
    for out in outs:
        src = real.get(os.path.realpath(out))
        if src is None and os.path.exists(out):
            src = next((f for f in files if os.path.samefile(f, out)), None)
        if src is not None:
            raise DemoError(
                "the output %s would overwrite the input %s: give another --output folder (the "
                "drawn images are <output>/<input name>.png)" % (os.path.abspath(out), src)
            )


def draw(predictor, image_bgr, metadata, threshold: float, scale: float = 1.0):
    """Predict on one BGR image; returns (VisImage, number of detections drawn). An image without a
    detection scoring ``threshold`` or more says so in its top-left corner."""
    instances = predictor(image_bgr)["instances"].to("cpu")
    instances = instances[instances.scores >= threshold]
    vis = LabelsInsideVisualizer(
        image_bgr[:, :, ::-1], metadata, scale=scale, instance_mode=ColorMode.IMAGE
    )
    out = vis.draw_instance_predictions(instances)
    if not len(instances):
        text = "no detection\nwith score >= %g" % threshold
        width = image_bgr.shape[1]  # font sizes are in input pixels; fit the longest line
        size = min(vis._default_font_size, 0.9 * width / (0.6 * max(map(len, text.split("\n")))))
        vis.draw_text(text, (3, 3), color="w", horizontal_alignment="left", font_size=size)
    return out, len(instances)


def run(args):
    register_from_args(args)
    files = expand_inputs(args.input) if args.input else None
    if files is not None:  # before the model is built
        check_not_inputs(files, output_paths(files, args.output))
    if args.dataset and args.dataset not in DatasetCatalog.list():
        raise DemoError(
            "--dataset %s is not registered: give a dataset of the config (DATASETS.TEST / TRAIN), e.g. "
            "lt_shapes_val" % args.dataset
        )
    if os.path.exists(args.output) and not os.path.isdir(args.output):
        raise DemoError("--output %s is a file: give a folder" % os.path.abspath(args.output))
    cfg = setup_cfg(args)
    ensure_embedded(cfg)  # lt_shapes_*: the class statistics and names come from its json
    try:
        predictor = LTPredictor(cfg)
    except (FileNotFoundError, CheckpointError, CheckpointClassMismatch) as e:
        raise DemoError("cannot load MODEL.WEIGHTS %s: %s" % (cfg.MODEL.WEIGHTS, e)) from None
    except ClassStatsError as e:  # the heads' statistics: neither the data nor the file is here
        raise DemoError(str(e)) from None
    metadata = class_metadata(cfg)
    if files is None:
        files = dataset_images(args.dataset, args.max_images)
    outs = output_paths(files, args.output)
    check_not_inputs(files, outs)
    os.makedirs(args.output, exist_ok=True)
    written, unreadable = [], []
    for f, out in zip(files, outs):
        try:
            image = read_image(f, format="BGR")
        except Exception as e:  # PIL: UnidentifiedImageError, truncated files, ...
            unreadable.append(
                "cannot read image %s (%s: %s)" % (os.path.abspath(f), type(e).__name__, e)
            )
            continue
        vis, n = draw(predictor, image, metadata, args.confidence_threshold, args.scale)
        vis.save(out)
        print(
            "tools/demo.py: %s: %d detections >= %g" % (f, n, args.confidence_threshold),
            file=sys.stderr,
        )
        print(out, flush=True)
        written.append(out)
    if unreadable:
        raise DemoError("\n".join(unreadable))
    return written


def main(argv=None):
    args = parse_args(argv)
    try:
        return run(args)
    except (DemoError, LTConfigError) as e:
        sys.exit("tools/demo.py: error: %s" % e)


if __name__ == "__main__":
    main(sys.argv[1:])
