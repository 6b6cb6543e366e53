"""encode_roi_masks against Detectron2's pasted masks on masks built to put pixels on the threshold:
ramps through 0.5 at every slope, noise of 1e-7 to 1e-3 around 0.5, sharp 0/1 steps and values
outside [0, 1], masks of side 7 to 62, boxes from half a pixel to twice the image crossing every
border. Where float32 rounding in grid_sample decides a pixel, the encoders must see it (their bound
on that rounding) and leave the column to grid_sample: a stress run of this kind found the change
past the last region row that both encoders once missed."""

import numpy as np
import pytest
import torch
from detectron2.layers import paste_masks_in_image
from pycocotools import mask as mask_util

from lt_detectron.evaluation import encode_roi_masks
from lt_detectron.evaluation.roi_masks import compiled_encoder
from lt_detectron.utils.testing import make_roi_masks


def _case(seed):
    rng = np.random.default_rng(seed)
    m = int((14, 28, 56, 62, 7)[seed % 5])
    h, w = int(rng.integers(50, 400)), int(rng.integers(50, 400))
    n = 60
    masks = make_roi_masks(n, m, seed=seed, noise=0.02)
    yy, xx = np.mgrid[0:m, 0:m] / (m - 1)
    for j in range(10):  # ramps through the threshold
        a, b = rng.normal(size=2)
        slope = rng.uniform(0.01, 2)
        masks[j] = 0.5 + 0.5 * slope * (a * (xx - 0.5) + b * (yy - 0.5))
    masks[10:20] = np.where(rng.random((10, m, m)) < 0.5, 0.0, 1.0)  # sharp steps
    masks[20:30] = 0.5 + rng.normal(scale=10 ** rng.uniform(-7, -3), size=(10, m, m))
    masks[30:35] = rng.random((5, m, m)) * 3 - 1  # outside [0, 1]
    masks = masks.astype(np.float32)
    x0, y0 = rng.uniform(-20, w - 5, n), rng.uniform(-20, h - 5, n)
    side = np.exp(rng.uniform(np.log(0.5), np.log(2 * max(h, w)), (n, 2)))
    x1, y1 = np.maximum(x0 + side[:, 0], 0.1), np.maximum(y0 + side[:, 1], 0.1)
    return masks, np.stack([x0, y0, x1, y1], 1).astype(np.float32), (h, w)


@pytest.mark.slow
@pytest.mark.parametrize("block", range(4))
def test_roi_rles_byte_equal_pasted_under_stress(block):
    paths = [True, False] if compiled_encoder() else [False]
    mismatches = {p: 0 for p in paths}
    for seed in range(block * 100, block * 100 + 100):
        masks, boxes, hw = _case(seed)
        bit = paste_masks_in_image(torch.from_numpy(masks), torch.from_numpy(boxes), hw, 0.5)
        enc = mask_util.encode(np.asfortranarray(bit.numpy().astype(np.uint8).transpose(1, 2, 0)))
        ref = [r["counts"].decode() for r in enc]
        for p in paths:
            got = [r["counts"] for r in encode_roi_masks(masks, boxes, hw, compiled=p)]
            mismatches[p] += sum(a != b for a, b in zip(got, ref))
    assert not any(mismatches.values()), mismatches
