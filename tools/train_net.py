#!/usr/bin/env python
"""Train and evaluate long-tailed detectors (Detectron2's train_net, PointRend's template).

    python tools/train_net.py --config-file configs/lt_shapes/faster_rcnn_tiny_softmax.yaml
    python tools/train_net.py --config-file configs/lvis_v1/eqlv2_mask_rcnn_R_50_FPN_1x.yaml --num-gpus 8
    python tools/train_net.py --config-file ... --eval-only MODEL.WEIGHTS output/model_final.pth
    python tools/train_net.py --config-file ... --resume          # continue from last_checkpoint
    python tools/train_net.py --config-file ... --resume --allow-config-change  # with another config
    python tools/train_net.py --config-file ... --register-dataset mine_train train.json images/ \
        --register-dataset mine_val val.json images/ DATASETS.TRAIN "('mine_train',)" \
        DATASETS.TEST "('mine_val',)" MODEL.ROI_HEADS.NUM_CLASSES 3

With ``MODEL.DEVICE cpu`` ``--num-gpus N`` starts N CPU processes per machine (gloo). The parser,
the config loading, the launcher and its OUTPUT_DIR lock live in lt_detectron/engine/defaults.py;
copy this file to customise the trainer, the setup or main.
"""

from lt_detectron.data import register_from_args
from lt_detectron.engine import LTTrainer, defaults
from lt_detectron.engine.defaults import argument_parser

# Extension point: subclass LTTrainer here (build_evaluator, build_train_loader, ...) to customise.
Trainer = LTTrainer


def setup(args):
    """The frozen config (add your own config keys or overrides here)."""
    return defaults.setup(args)


def main(args):
    register_from_args(args)  # in every worker process too
    return defaults.train_or_evaluate(setup(args), args, Trainer)


if __name__ == "__main__":
    args = argument_parser().parse_args()
    print("Command Line Args:", args)
    with defaults.exit_on_user_error("train_net.py"):
        defaults.launch_from_args(args, main)
