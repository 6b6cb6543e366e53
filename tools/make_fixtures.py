#!/usr/bin/env python
"""Write the real-format fixtures (LVIS v1, COCO 2017, COCO-LT, ImageNet R-50 .pkl) under a folder
laid out as ``$DETECTRON2_DATASETS`` (see ``lt_detectron/utils/testing/real_formats.py`` for what is real).

    python tools/make_fixtures.py /tmp/lt_fixtures
    DETECTRON2_DATASETS=/tmp/lt_fixtures python tools/train_net.py \
        --config-file configs/lvis_v1/softmax_mask_rcnn_R_50_FPN_1x.yaml \
        MODEL.WEIGHTS /tmp/lt_fixtures/ImageNetPretrained/MSRA/R-50.pkl MODEL.DEVICE cpu ...
"""

import argparse
import json
import sys

from lt_detectron.utils.testing import make_fixtures


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("root", help="output folder (use it as DETECTRON2_DATASETS)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-weights", action="store_true", help="skip the 94 MB random R-50 .pkl")
    args = ap.parse_args(argv)
    paths = make_fixtures(args.root, seed=args.seed, weights=not args.no_weights)
    if args.no_weights:
        paths.pop("r50_pkl")
    print(json.dumps(paths, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
