"""The mask encoder image after image: one image's kernel in a worker thread while the caller
finishes the image before it.

:func:`~.roi_masks.encode_roi_masks` runs in two stages on its compiled path: the kernel
(:func:`~.roi_masks.kernel_part`: the class changes and the strings, which hold no GIL and take most
of the time) and the finish (:func:`~.roi_masks.finish_stage`: the columns ``grid_sample`` settles,
the strings of their masks again, the dicts; Python, holding the GIL). An evaluator encodes every
image of a data set one after the other, so :class:`RoiMaskPipeline` overlaps the two:
:meth:`~RoiMaskPipeline.submit` hands an image's kernel to its one worker thread and returns at
once; :meth:`PendingRLEs.result` waits for that kernel and finishes the image in the calling thread.
The evaluator asks for image ``k - 1``'s RLEs after submitting image ``k``: the kernel of image ``k``
runs while the caller finishes image ``k - 1`` and, at inference, while the model runs the next
forward pass. The RLEs are those of :func:`~.roi_masks.encode_roi_masks`.

Without the compiled kernels (or for masks larger than they take) :meth:`~RoiMaskPipeline.submit`
encodes at once, with the NumPy path.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import List, Optional


from .roi_mask_sampling import roi_mask_regions
from .roi_masks import encode_numpy_dicts, finish_stage, kernel_part, prepare

__all__ = ["RoiMaskPipeline", "PendingRLEs"]

# the caller's share of an image's kernel, run in result() before it waits for the worker's part: in
# a tight loop the worker's kernel (one thread) takes longer than the caller's finishing of the
# image before, so the caller takes some of it
CALLER_SHARE = 0.15


class PendingRLEs:
    """The RLEs of one submitted image: :meth:`result` gives them (finished once, in the caller)."""

    def __init__(
        self, rles: Optional[List[dict]] = None, kernel: Optional[Future] = None, job=None
    ):
        self._rles = rles
        self._kernel = kernel  # the worker's part of the kernel
        self._job = job  # (masks, boxes, regions, heights, widths, threshold, split)

    def result(self) -> List[dict]:
        if self._rles is None:
            m32, b, regions, heights, widths, threshold, split = self._job
            mine = kernel_part(m32, b, regions, heights, widths, threshold, split, len(m32))
            theirs = self._kernel.result()  # a kernel error is raised here
            bounds = [0, split, len(m32)]
            self._rles = finish_stage(
                m32, b, regions, heights, widths, threshold, [theirs, mine], bounds
            )
            self._kernel = self._job = None
        return self._rles


class RoiMaskPipeline:
    """Encodes ROI-level masks image after image (see the module's docstring); :meth:`close` ends its
    worker thread (a later :meth:`submit` starts another)."""

    def __init__(self, threshold: float = 0.5, caller_share: float = CALLER_SHARE):
        self.threshold = float(threshold)
        self.caller_share = float(caller_share)
        self._worker: Optional[ThreadPoolExecutor] = None

    def submit(self, masks, boxes, image_size) -> PendingRLEs:
        """The RLEs of :func:`~.roi_masks.encode_roi_masks` ``(masks, boxes, image_size)``, to come;
        bad input raises here, as it does there."""
        m32, b, heights, widths, kernels = prepare(masks, boxes, image_size)
        if not kernels:
            return PendingRLEs(rles=encode_numpy_dicts(m32, b, heights, widths, self.threshold))
        if self._worker is None:
            self._worker = ThreadPoolExecutor(1, thread_name_prefix="lt_mask_encoder")
        # the caller's own memory (CPU tensors) may change meanwhile: the kernel reads copies
        m32 = m32.copy() if m32.base is not None else m32
        b = b.copy() if b.base is not None else b
        # the regions (NumPy, holding the GIL) here, so that the worker hardly needs the GIL
        regions = roi_mask_regions(b, heights, widths)
        split = len(m32) - int(self.caller_share * len(m32))
        args = (m32, b, regions, heights, widths, self.threshold, 0, split)
        job = (m32, b, regions, heights, widths, self.threshold, split)
        return PendingRLEs(kernel=self._worker.submit(kernel_part, *args), job=job)

    def close(self) -> None:
        """Wait for the kernels submitted (their :class:`PendingRLEs` stay valid) and end the worker."""
        if self._worker is not None:
            self._worker.shutdown(wait=True)
            self._worker = None
