"""A training sampler that resumes where an interrupted run stopped.

Detectron2's ``TrainingSampler`` restarts its index stream from the beginning when a run is
resumed, so a resumed run sees other images than the uninterrupted one. ``ResumableTrainingSampler``
is the same infinite, seeded, rank-sharded stream, started ``start`` global indices in:
``LTTrainer.resume_or_load`` sets ``start = start_iter x SOLVER.IMS_PER_BATCH`` before the
loader's first batch. With a fixed ``SEED``, ``NUM_WORKERS 0`` (augmentation randomness comes
from the restored main-process RNG) and one aspect-ratio bucket, a resumed run sees exactly the
batches of the uninterrupted one.
"""
import itertools

from detectron2.data.samplers import TrainingSampler

__all__ = ["ResumableTrainingSampler"]


class ResumableTrainingSampler(TrainingSampler):
    def __init__(self, size: int, shuffle: bool = True, seed=None):
        super().__init__(size, shuffle=shuffle, seed=seed)
        self.start = 0

    def set_start(self, start: int):
        """Skip the first ``start`` indices of the global stream (call before iterating)."""
        if start < 0:
            raise ValueError("start must be >= 0, got %d" % start)
        self.start = int(start)

    def __iter__(self):
        yield from itertools.islice(self._infinite_indices(), self.start + self._rank, None, self._world_size)
