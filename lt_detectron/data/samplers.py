"""Training samplers that resume where an interrupted run stopped.

Detectron2's ``TrainingSampler`` and ``RepeatFactorTrainingSampler`` restart their index
stream from the beginning when a run is resumed, so a resumed run sees other images than the
uninterrupted one. ``ResumableTrainingSampler`` and ``ResumableRepeatFactorTrainingSampler``
are the same infinite, seeded, rank-sharded streams (detectron2's own ``_infinite_indices``:
for RFS its repeat factors, stochastic rounding and per-epoch permutation, all drawn from the
seeded generator), started ``start`` global indices in: ``LTTrainer.resume_or_load`` sets
``start = start_iter x SOLVER.IMS_PER_BATCH`` before the loader's first batch, and restores the
stream's seed from the checkpoint (``state_dict``), so the data order resumes exactly even with
``SEED -1`` (detectron2 then draws a random seed per run). With ``NUM_WORKERS 0``
(augmentation randomness comes from the restored main-process RNG) and one aspect-ratio bucket,
a resumed run sees exactly the batches of the uninterrupted one.
"""

import itertools

from detectron2.data.samplers import RepeatFactorTrainingSampler, TrainingSampler

__all__ = ["ResumableTrainingSampler", "ResumableRepeatFactorTrainingSampler"]


class _Resumable:
    """``start`` / seed handling shared by the resumable samplers (mixed into detectron2's)."""

    start = 0

    def set_start(self, start: int):
        """Skip the first ``start`` indices of the global stream (call before iterating)."""
        if start < 0:
            raise ValueError("start must be >= 0, got %d" % start)
        self.start = int(start)

    def state_dict(self):
        return {"seed": int(self._seed)}

    def load_state_dict(self, state):
        """Continue the stream of the run that wrote ``state`` (call before iterating)."""
        self._seed = int(state["seed"])

    def __iter__(self):
        yield from itertools.islice(
            self._infinite_indices(), self.start + self._rank, None, self._world_size
        )


class ResumableTrainingSampler(_Resumable, TrainingSampler):
    def __init__(self, size: int, shuffle: bool = True, seed=None):
        super().__init__(size, shuffle=shuffle, seed=seed)
        self.start = 0


class ResumableRepeatFactorTrainingSampler(_Resumable, RepeatFactorTrainingSampler):
    """detectron2's ``RepeatFactorTrainingSampler`` (LVIS' repeat-factor sampling), resumable."""

    def __init__(self, repeat_factors, *, shuffle: bool = True, seed=None):
        super().__init__(repeat_factors, shuffle=shuffle, seed=seed)
        self.start = 0
