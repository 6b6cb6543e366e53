#!/usr/bin/env python
"""Reusing lt_detectron's losses and box head inside your own meta-architecture.

``LTExampleBoxClassifier`` is a deliberately small detector that classifies boxes: at
training time the jittered ground-truth boxes (foreground) and random boxes away from them
(background); at test time the boxes given in ``batched_inputs[i]["proposals"]`` or a
sliding-window grid. It has no RPN, so it only illustrates the plumbing:

* ``MODEL.LT_EXAMPLE.HEAD "loss"``: our own classifier and an lt_detectron **loss** on its logits.
  The loss is built from the config exactly as lt_detectron's heads build theirs,
  ``cls_loss = build_roi_loss(with_iters_per_epoch(cfg, None), num_classes, class_stats)`` (any
  ``MODEL.LT.ROI_LOSS``, with its ``MODEL.LT.<METHOD>.*`` keys), and then asked:
  ``build_classifier(cls_loss.classifier_spec(), D)`` is the layer it needs,
  ``cls_loss(logits, gt_classes, ROIBatch(...))`` the loss (tensors in, scalar out; background
  last, label ``C``) and ``cls_loss.predict_probs(logits)`` the test scores;
* ``MODEL.LT_EXAMPLE.HEAD "predictor"``: lt_detectron's **box head**
  ``LongTailFastRCNNOutputLayers`` built from keyword arguments (``cls_loss=`` the same loss); its
  ``losses()`` / ``inference()`` take Detectron2 ``Instances``.

The per-class training instance counts come from the class-statistics registry,
``get_class_stats(cfg.DATASETS.TRAIN)``, so no frequency file is needed. The class is
registered in Detectron2's ``META_ARCH_REGISTRY`` on import; ``example_cfg()`` builds a tiny
config in code. Train it for a few iterations on the embedded dataset (CPU)::

    python examples/custom_meta_arch.py --iters 100 --loss eqlv2 --head loss

The losses also work without any config: ``EQLv2Loss(C)(logits (R, C+1), gt_classes (R,))``.
"""

import argparse
import logging
import os

import torch
import torch.nn as nn
from detectron2.config import CfgNode as CN
from detectron2.config import configurable, get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone, detector_postprocess
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.poolers import ROIPooler
from detectron2.modeling.roi_heads.fast_rcnn import fast_rcnn_inference
from detectron2.structures import Boxes, ImageList, Instances, pairwise_iou

import lt_detectron  # noqa: F401  (registers the tiny backbone and the datasets)
from lt_detectron import add_lt_config, get_class_stats
from lt_detectron.data.epochs import with_iters_per_epoch
from lt_detectron.losses import (
    ROIBatch,
    ROILoss,
    build_roi_loss,
    check_logit_columns,
    train_class_stats,
)
from lt_detectron.modeling import LongTailFastRCNNOutputLayers, build_classifier

__all__ = ["LTExampleBoxClassifier", "add_example_config", "example_cfg"]


def add_example_config(cfg):
    """The example's own keys (a meta-architecture may add its own sub-node, as here)."""
    if "LT_EXAMPLE" not in cfg.MODEL:
        cfg.MODEL.LT_EXAMPLE = CN()
        cfg.MODEL.LT_EXAMPLE.HEAD = (
            "loss"  # loss: own classifier + lt loss | predictor: LongTailFastRCNNOutputLayers
        )
        cfg.MODEL.LT_EXAMPLE.IN_FEATURE = "t3"  # backbone feature the boxes are pooled from
        cfg.MODEL.LT_EXAMPLE.HIDDEN_DIM = 128  # width of the box head's FC layer
        cfg.MODEL.LT_EXAMPLE.BG_BOXES_PER_IMAGE = 16  # random background boxes per training image
    return cfg


@META_ARCH_REGISTRY.register()
class LTExampleBoxClassifier(nn.Module):
    """Box classifier: backbone -> ROIAlign -> FC -> classifier, trained with an lt_detectron loss."""

    @configurable
    def __init__(
        self,
        *,
        backbone,
        in_feature,
        cls_loss: ROILoss,
        head="loss",
        hidden_dim=128,
        bg_boxes_per_image=16,
        pixel_mean,
        pixel_std,
        test_score_thresh=0.05,
        test_nms_thresh=0.5,
        test_topk_per_image=100,
    ):
        super().__init__()
        self.backbone = backbone
        self.in_feature = in_feature
        self.num_classes = C = cls_loss.num_classes
        self.head = head
        self.bg_boxes_per_image = int(bg_boxes_per_image)
        self.test_args = (test_score_thresh, test_nms_thresh, test_topk_per_image)
        shape = backbone.output_shape()[in_feature]
        self.pooler = ROIPooler(
            (7, 7), scales=(1.0 / shape.stride,), sampling_ratio=0, pooler_type="ROIAlignV2"
        )
        self.box_head = nn.Sequential(
            nn.Flatten(), nn.Linear(shape.channels * 49, hidden_dim), nn.ReLU(inplace=True)
        )
        if head == "loss":
            # 1) an lt_detectron LOSS on our own logits: the classifier it asks for, (R, K) logits, (R,) labels
            self.cls_loss = (
                cls_loss  # a submodule: its state (e.g. EQL v2's statistics) is checkpointed
            )
            self.cls_score = build_classifier(cls_loss.classifier_spec(), hidden_dim)
            # a classifier whose columns mean fixed classes (e.g. rows from class-name embeddings)
            # sets ``logit_columns``; this raises when they are not the loss's layout (BAGS' groups)
            check_logit_columns(cls_loss, self.cls_score, "LTExampleBoxClassifier.cls_score")
        elif head == "predictor":
            # 2) lt_detectron's box HEAD, built from keyword arguments (no config object)
            self.predictor = LongTailFastRCNNOutputLayers(
                ShapeSpec(channels=hidden_dim),
                box2box_transform=Box2BoxTransform(weights=(10.0, 10.0, 5.0, 5.0)),
                num_classes=C,
                cls_loss=cls_loss,
                test_score_thresh=test_score_thresh,
                test_nms_thresh=test_nms_thresh,
                test_topk_per_image=test_topk_per_image,
            )
        else:
            raise ValueError("MODEL.LT_EXAMPLE.HEAD must be 'loss' or 'predictor', got %r" % head)
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)

    @classmethod
    def from_config(cls, cfg):
        C = cfg.MODEL.ROI_HEADS.NUM_CLASSES
        stats = train_class_stats(
            cfg, C, "MODEL.ROI_HEADS.NUM_CLASSES"
        )  # the class-statistics registry
        ex = cfg.MODEL.LT_EXAMPLE
        return dict(
            backbone=build_backbone(cfg),
            in_feature=ex.IN_FEATURE,
            # MODEL.LT.ROI_LOSS and its keys, as the heads do (with the epoch length a loss on a
            # schedule in epochs reads, filled from DATASETS.TRAIN when the config leaves it at 0)
            cls_loss=build_roi_loss(with_iters_per_epoch(cfg, None), C, stats),
            head=ex.HEAD,
            hidden_dim=ex.HIDDEN_DIM,
            bg_boxes_per_image=ex.BG_BOXES_PER_IMAGE,
            pixel_mean=cfg.MODEL.PIXEL_MEAN,
            pixel_std=cfg.MODEL.PIXEL_STD,
            test_score_thresh=cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST,
            test_nms_thresh=cfg.MODEL.ROI_HEADS.NMS_THRESH_TEST,
            test_topk_per_image=cfg.TEST.DETECTIONS_PER_IMAGE,
        )

    @property
    def device(self):
        return self.pixel_mean.device

    # ------------------------------------------------------------------ boxes to classify
    def _training_boxes(self, inst: Instances) -> Instances:
        """Jittered GT boxes (label = GT class) + random boxes with IoU < 0.3 to every GT (label C)."""
        h, w = inst.image_size
        gt = inst.gt_boxes.tensor
        wh = (gt[:, 2:] - gt[:, :2]).repeat(1, 2)
        fg = gt + 0.1 * wh * (torch.rand_like(gt) * 2 - 1)
        n = 4 * self.bg_boxes_per_image
        xy = torch.rand(n, 2, device=gt.device) * torch.tensor([w, h], device=gt.device)
        size = (0.1 + 0.4 * torch.rand(n, 2, device=gt.device)) * min(h, w)
        cand = Boxes(torch.cat([xy, xy + size], dim=1))
        cand.clip((h, w))
        cand = cand[cand.nonempty(threshold=2.0)]
        if len(gt):
            cand = cand[pairwise_iou(cand, inst.gt_boxes).max(dim=1).values < 0.3]
        bg = cand.tensor[: self.bg_boxes_per_image]
        out = Instances((h, w))
        boxes = Boxes(torch.cat([fg, bg]))
        boxes.clip((h, w))
        out.proposal_boxes = boxes
        out.gt_boxes = Boxes(torch.cat([gt, bg]))  # background rows are ignored by the box loss
        out.gt_classes = torch.cat(
            [inst.gt_classes, torch.full((len(bg),), self.num_classes, device=gt.device)]
        )
        return out

    @staticmethod
    def _grid_boxes(image_size, sizes=(16, 32, 64), stride=16) -> Instances:
        """Test-time boxes when none are given: square windows of ``sizes`` every ``stride`` px."""
        h, w = image_size
        rows = []
        for s in sizes:
            ys, xs = torch.meshgrid(
                torch.arange(0, max(h - s, 0) + 1, stride),
                torch.arange(0, max(w - s, 0) + 1, stride),
                indexing="ij",
            )
            xy = torch.stack([xs.flatten(), ys.flatten()], dim=1).float()
            rows.append(torch.cat([xy, xy + s], dim=1))
        out = Instances((h, w))
        out.proposal_boxes = Boxes(torch.cat(rows))
        return out

    # ------------------------------------------------------------------ forward
    def forward(self, batched_inputs):
        images = [
            (x["image"].to(self.device).float() - self.pixel_mean) / self.pixel_std
            for x in batched_inputs
        ]
        images = ImageList.from_tensors(images, max(self.backbone.size_divisibility, 32))
        feature = self.backbone(images.tensor)[self.in_feature]
        if self.training:
            boxes = [self._training_boxes(x["instances"].to(self.device)) for x in batched_inputs]
        else:
            boxes = [
                x["proposals"].to(self.device)
                if "proposals" in x
                else self._grid_boxes(s).to(self.device)
                for x, s in zip(batched_inputs, images.image_sizes)
            ]
        x = self.box_head(self.pooler([feature], [b.proposal_boxes for b in boxes]))
        if self.training:
            gt_per_image = [
                x["instances"].gt_classes.to(self.device) for x in batched_inputs
            ]  # GT objects
            if self.head == "predictor":
                return self.predictor.losses(
                    self.predictor(x), boxes, gt_classes_per_image=gt_per_image
                )
            gt_classes = torch.cat([b.gt_classes for b in boxes])
            batch = ROIBatch(
                rois_per_image=[len(b) for b in boxes],
                gt_classes_per_image=gt_per_image,
                classifier=self.cls_score,
            )
            return {
                "loss_cls": self.cls_loss(self.cls_score(x), gt_classes, batch)
            }  # tensors in, scalar out
        if self.head == "predictor":
            results, _ = self.predictor.inference(self.predictor(x), boxes)
        else:
            probs = self.cls_loss.predict_probs(self.cls_score(x))  # (R, C+1), background last
            results, _ = fast_rcnn_inference(
                [b.proposal_boxes.tensor for b in boxes],
                probs.split([len(b) for b in boxes]),
                [b.image_size for b in boxes],
                *self.test_args,
            )
        return [
            {"instances": detector_postprocess(r, x.get("height", s[0]), x.get("width", s[1]))}
            for r, x, s in zip(results, batched_inputs, images.image_sizes)
        ]


def example_cfg(loss="eqlv2", head="loss", dataset="lt_shapes_train", num_classes=None):
    """A tiny config built in code: the tiny CPU backbone, 128-px images, ``MODEL.LT.ROI_LOSS loss``."""
    cfg = get_cfg()
    add_lt_config(cfg)
    add_example_config(cfg)
    cfg.MODEL.META_ARCHITECTURE = "LTExampleBoxClassifier"
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.BACKBONE.NAME = "build_tiny_backbone"
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    cfg.MODEL.TINY.OUT_FEATURES = ["t3"]
    cfg.MODEL.PIXEL_MEAN = [127.5, 127.5, 127.5]
    cfg.MODEL.PIXEL_STD = [64.0, 64.0, 64.0]
    cfg.MODEL.LT.ROI_LOSS = loss
    cfg.MODEL.LT_EXAMPLE.HEAD = head
    cfg.DATASETS.TRAIN = (dataset,)
    cfg.DATASETS.TEST = ()
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = num_classes or get_class_stats(cfg.DATASETS.TRAIN).num_classes
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.001
    cfg.INPUT.MIN_SIZE_TRAIN = (128,)
    cfg.INPUT.MAX_SIZE_TRAIN = 128
    cfg.INPUT.MIN_SIZE_TEST = 128
    cfg.INPUT.MAX_SIZE_TEST = 128
    cfg.INPUT.FORMAT = "RGB"
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.SOLVER.IMS_PER_BATCH = 8
    cfg.SOLVER.BASE_LR = 0.02
    cfg.SOLVER.WARMUP_ITERS = 10
    cfg.SOLVER.MAX_ITER = 100
    cfg.SOLVER.STEPS = ()
    cfg.SOLVER.CHECKPOINT_PERIOD = 10**9
    cfg.OUTPUT_DIR = os.path.join("output", "example_%s_%s" % (loss, head))
    return cfg


def main(argv=None):
    from detectron2.utils.logger import setup_logger

    from lt_detectron.data import prepare_datasets
    from lt_detectron.engine import LTTrainer
    from lt_detectron.engine.hooks import write_model_plots

    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--loss", default="eqlv2", help="MODEL.LT.ROI_LOSS (any registered ROI loss)")
    p.add_argument("--head", default="loss", choices=("loss", "predictor"))
    p.add_argument("--iters", type=int, default=100)
    p.add_argument(
        "--output", default=None, help="output folder (default output/example_<loss>_<head>)"
    )
    args = p.parse_args(argv)
    setup_logger()
    setup_logger(name="lt_detectron")
    cfg = example_cfg(args.loss, args.head)
    cfg.SOLVER.MAX_ITER = args.iters
    if args.output:
        cfg.OUTPUT_DIR = args.output
    prepare_datasets(cfg=cfg)  # generates the embedded dataset on first use
    os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
    trainer = LTTrainer(cfg)  # any Detectron2 trainer works; ours adds the class-statistics checks
    trainer.resume_or_load(resume=False)
    trainer.train()
    stats = get_class_stats(cfg.DATASETS.TRAIN)
    for path in write_model_plots(
        trainer.model,
        os.path.join(cfg.OUTPUT_DIR, "plots"),
        stats.instance_counts,
        stats.class_names,
    ):
        logging.getLogger("lt_detectron").info("wrote %s", path)


if __name__ == "__main__":
    main()
