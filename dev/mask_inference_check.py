"""Class-selected mask inference against Detectron2's all-class path on one device, AMP off and on.

The LVIS v1 Mask R-CNN mask head (1203 classes, random weights, its predictor redrawn so the
probabilities spread over (0, 1)) on random ROI features whose classes repeat; the masks of
``class_selected_mask_inference`` must equal those of Detectron2's ``mask_head(x, instances)``:
probabilities within a tolerance (float32: 1e-5, TF32 off; autocast: 5e-3 for float16, 2e-2 for
bfloat16) and identical 0.5-thresholded bitmaps away from the threshold. Run by dev/gpu_check.sh;
without CUDA a ``--device cuda`` run prints that it is skipped and exits 0.

  python -m dev.mask_inference_check --device cuda
  python -m dev.mask_inference_check --device cpu --amp off
"""

import argparse
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "lvis_v1", "softmax_mask_rcnn_R_50_FPN_1x.yaml")
TOL = {torch.float32: 1e-5, torch.float16: 5e-3, torch.bfloat16: 2e-2}


def check(device="cpu", amp=False, detections=64, cls_agnostic=False):
    """Compare both paths on ``device``; return ``(max |p diff|, bitmap mismatches, tolerance)``.
    Raises ``AssertionError`` if the masks differ beyond the tolerance."""
    from detectron2.layers import ShapeSpec
    from detectron2.modeling.roi_heads import build_mask_head
    from detectron2.structures import Boxes, Instances

    from lt_detectron.modeling import class_selected_mask_inference
    from lt_detectron.utils.testing import lt_cfg

    cfg = lt_cfg(CONFIG, "MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK", cls_agnostic)
    res = cfg.MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    head = build_mask_head(cfg, ShapeSpec(channels=256, height=res, width=res)).eval()
    with torch.no_grad():
        head.predictor.weight.normal_(0, 0.05, generator=g)
        head.predictor.bias.normal_(0, 1, generator=g)
    head.to(device)
    x = torch.randn(detections, 256, res, res, generator=g).to(device)
    classes = torch.randint(0, 5, (detections,), generator=g)  # repeated classes
    classes[::2] = torch.randint(
        0, cfg.MODEL.ROI_HEADS.NUM_CLASSES, (len(classes[::2]),), generator=g
    )
    masks = []
    amp_dtype = torch.float16 if device.startswith("cuda") else torch.bfloat16
    tf32 = torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cudnn.allow_tf32 = False
        for path in ("all", "selected"):
            inst = Instances(
                (800, 800), pred_boxes=Boxes(torch.zeros(detections, 4, device=device))
            )
            inst.pred_classes = classes.to(device)
            with torch.no_grad(), torch.autocast(device.split(":")[0], amp_dtype, enabled=amp):
                if path == "all":
                    out = head(x, [inst])
                else:
                    out = class_selected_mask_inference(head, x, [inst])
            masks.append(out[0].pred_masks.float().cpu())
    finally:
        torch.backends.cudnn.allow_tf32 = tf32
    ref, new = masks
    tol = TOL[amp_dtype if amp else torch.float32]
    diff = (ref - new).abs().max().item()
    clear = (ref - 0.5).abs() > tol  # pixels whose bitmap cannot flip within the tolerance
    mismatches = int(((ref > 0.5) != (new > 0.5))[clear].sum())
    assert ref.shape == (detections, 1, res * 2, res * 2), ref.shape
    assert diff <= tol, "max |p diff| %.3g > %.3g" % (diff, tol)
    assert mismatches == 0, "%d bitmap pixels differ" % mismatches
    return diff, mismatches, tol


def main(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--amp", default="off on", help='"off", "on" or "off on"')
    args = ap.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("mask_inference_check: skipped, torch.cuda.is_available() is False")
        return 0
    failed = 0
    for amp in args.amp.split():
        for agnostic in (False, True):
            name = "mask inference %s AMP %s%s" % (
                args.device,
                amp,
                ", class-agnostic" if agnostic else "",
            )
            try:
                diff, _, tol = check(args.device, amp == "on", cls_agnostic=agnostic)
                print(
                    "%s: ok, class-selected == all-class (max |p diff| %.2g <= %.0e)"
                    % (name, diff, tol)
                )
            except AssertionError as e:
                failed = 1
                print("%s: FAILED, %s" % (name, e), file=sys.stderr)
    return failed


if __name__ == "__main__":
    sys.exit(main())
