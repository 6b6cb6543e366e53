"""ROI-level mask probabilities like a Mask R-CNN head's (after the sigmoid), for tests and
benchmarks of :func:`lt_detectron.evaluation.roi_masks.encode_roi_masks`."""

from __future__ import annotations

import numpy as np

__all__ = ["make_roi_masks"]


def make_roi_masks(num: int, size: int = 28, *, seed: int = 0, noise: float = 0.03) -> np.ndarray:
    """``(num, size, size)`` float32 probabilities in [0, 1]: a smooth elliptic blob per mask (centre,
    radii and edge sharpness at random, sometimes cut by the ROI's border) plus a little noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / max(size - 1, 1)
    cx, cy = rng.uniform(0.25, 0.75, (2, num, 1, 1)).astype(np.float32)
    rx, ry = rng.uniform(0.15, 0.6, (2, num, 1, 1)).astype(np.float32)
    sharp = rng.uniform(2.0, 8.0, (num, 1, 1)).astype(np.float32)
    d = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2
    p = 1.0 / (1.0 + np.exp(np.minimum(sharp * (d - 1.0), 50.0)))
    p += rng.normal(0.0, noise, p.shape).astype(np.float32)
    return np.clip(p, 0.0, 1.0).astype(np.float32)
