"""RoiMaskPipeline: image after image, the RLEs of encode_roi_masks, with the kernel of one image in
a worker thread; errors reach the caller."""

import numpy as np
import pytest
import torch

from lt_detectron.evaluation import encode_roi_masks, roi_mask_pipeline, roi_masks
from lt_detectron.evaluation.roi_mask_pipeline import RoiMaskPipeline
from lt_detectron.evaluation.roi_masks import compiled_encoder
from lt_detectron.utils.testing import make_roi_masks


def _images(n_images=4, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n_images):
        n = int(rng.integers(0, 200))
        h, w = int(rng.integers(20, 120)), int(rng.integers(20, 120))
        x0, y0 = rng.uniform(-10, w, n), rng.uniform(-10, h, n)
        side = np.exp(rng.uniform(0, np.log(2 * max(h, w)), (n, 2)))
        boxes = np.stack([x0, y0, x0 + side[:, 0], y0 + side[:, 1]], 1).astype(np.float32)
        boxes[:, 2:] = np.maximum(boxes[:, 2:], 0.5)  # each box overlaps the image
        out.append((make_roi_masks(n, 28, seed=seed + k), boxes, (h, w)))
    return out


@pytest.mark.parametrize(
    "kernels",
    [
        pytest.param(True, marks=pytest.mark.skipif(not compiled_encoder(), reason="not built")),
        False,
    ],
)
def test_pipeline_gives_the_rles_of_encode_roi_masks(kernels, monkeypatch):
    if not kernels:
        monkeypatch.setattr(roi_masks, "_roi_rle", None)
    images = _images()
    pipe = RoiMaskPipeline()
    pending = [pipe.submit(torch.from_numpy(m), b, hw) for m, b, hw in images]
    # results asked for in any order, twice: the same lists
    for k in (2, 0, 3, 1, 2):
        m, b, hw = images[k]
        assert pending[k].result() == encode_roi_masks(m, b, hw)
    pipe.close()
    assert pipe.submit(*images[1]).result() == encode_roi_masks(*images[1])  # a new worker
    pipe.close()


def test_pipeline_errors_reach_the_caller(monkeypatch):
    pipe = RoiMaskPipeline()
    with pytest.raises(ValueError, match=r"\(N, M, M\)"):
        pipe.submit(np.zeros((3, 28, 14)), np.zeros((3, 4)), (10, 10))  # at once, as encode's
    if compiled_encoder():
        real = roi_mask_pipeline.kernel_part

        def broken(*args):  # the worker's part (masks 0:split) fails, the caller's runs
            if args[-2] == 0:
                raise MemoryError("no room for the kernel's buffers")
            return real(*args)

        monkeypatch.setattr(roi_mask_pipeline, "kernel_part", broken)
        pending = pipe.submit(*_images(1, seed=3)[0])
        with pytest.raises(MemoryError, match="no room"):
            pending.result()
    pipe.close()
