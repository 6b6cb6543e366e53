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

``ResumableClassAwareSampler`` (``DATALOADER.SAMPLER_TRAIN ClassAwareSampler``) is class-balanced
sampling as used by the decoupled cRT / LWS recipes (docs/methods.md#crt-and-lws): draw a class
uniformly, then an image that contains it. Classes come from a stream of seeded permutations of the
classes that have training images, and each class cycles through seeded permutations of its images,
so over every pass of the class permutation each class is drawn exactly once.
:func:`build_train_sampler` builds the sampler a config names (None for the samplers detectron2
builds itself).
"""

import itertools
from typing import Dict, List, Optional, Sequence

import torch
from detectron2.data.samplers import RepeatFactorTrainingSampler, TrainingSampler
from detectron2.utils import comm
from torch.utils.data.sampler import Sampler

__all__ = [
    "ResumableTrainingSampler",
    "ResumableRepeatFactorTrainingSampler",
    "ResumableClassAwareSampler",
    "TRAIN_SAMPLERS",
    "build_train_sampler",
]


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


class ResumableClassAwareSampler(_Resumable, Sampler):
    """Class-aware (class-balanced) sampling, resumable (module docstring).

    Args:
        images_per_class: for every class, the indices of the training images that contain it
            (a class without images is never drawn).
        shuffle: False walks classes and images in index order (tests).
        seed: the stream's seed, equal on every rank (None: detectron2's shared random seed).
    """

    def __init__(
        self, images_per_class: Sequence[Sequence[int]], *, shuffle: bool = True, seed=None
    ):
        self._per_class = [
            torch.as_tensor(sorted(set(int(i) for i in idx)), dtype=torch.int64)
            for idx in images_per_class
        ]
        self._classes = [c for c, idx in enumerate(self._per_class) if len(idx)]
        if not self._classes:
            raise ValueError(
                "ClassAwareSampler (DATALOADER.SAMPLER_TRAIN): no training image has an annotation; "
                "check DATASETS.TRAIN or choose TrainingSampler"
            )
        self._shuffle = bool(shuffle)
        self._seed = int(comm.shared_random_seed() if seed is None else seed)
        self._rank = comm.get_rank()
        self._world_size = comm.get_world_size()
        self.start = 0

    @classmethod
    def from_dataset_dicts(cls, dataset_dicts: List[dict], **kwargs):
        """Images per class from Detectron2 dataset dicts (every annotation's ``category_id``)."""
        per_class: Dict[int, List[int]] = {}
        for i, d in enumerate(dataset_dicts):
            for c in {a["category_id"] for a in d.get("annotations", ())}:
                per_class.setdefault(int(c), []).append(i)
        num = max(per_class) + 1 if per_class else 0
        return cls([per_class.get(c, []) for c in range(num)], **kwargs)

    def _permutations(self, items: torch.Tensor, g: torch.Generator):
        while True:
            yield from (items[torch.randperm(len(items), generator=g)] if self._shuffle else items)

    def _infinite_indices(self):
        g = torch.Generator()
        g.manual_seed(self._seed)
        classes = self._permutations(torch.as_tensor(self._classes), g)
        images = {c: self._permutations(self._per_class[c], g) for c in self._classes}
        for c in classes:
            yield int(next(images[int(c)]))


def _class_aware(cfg, dataset, seed):
    return ResumableClassAwareSampler.from_dataset_dicts(dataset, seed=seed)


def _repeat_factor(cfg, dataset, seed):
    factors = RepeatFactorTrainingSampler.repeat_factors_from_category_frequency(
        dataset, cfg.DATALOADER.REPEAT_THRESHOLD
    )
    return ResumableRepeatFactorTrainingSampler(factors, seed=seed)


# DATALOADER.SAMPLER_TRAIN -> builder(cfg, dataset_dicts, seed) of a resumable sampler
TRAIN_SAMPLERS = {
    "TrainingSampler": lambda cfg, dataset, seed: ResumableTrainingSampler(len(dataset), seed=seed),
    "RepeatFactorTrainingSampler": _repeat_factor,
    "ClassAwareSampler": _class_aware,
}


def build_train_sampler(cfg, dataset: List[dict]) -> Optional[Sampler]:
    """The resumable sampler ``cfg.DATALOADER.SAMPLER_TRAIN`` names (seeded by ``cfg.SEED`` when
    >= 0), or None for a name of detectron2's own (``RandomSubsetTrainingSampler``)."""
    builder = TRAIN_SAMPLERS.get(cfg.DATALOADER.SAMPLER_TRAIN)
    if builder is None:
        return None
    return builder(cfg, dataset, cfg.SEED if cfg.SEED >= 0 else None)
