"""ClassAwareSampler (DATALOADER.SAMPLER_TRAIN): class-balanced sampling for cRT / LWS
(docs/methods.md#crt-and-lws): a class uniformly, then an image that contains it."""

import collections
import itertools

import pytest

from lt_detectron.data.samplers import (
    ResumableClassAwareSampler,
    ResumableTrainingSampler,
    build_train_sampler,
)
from lt_detectron.utils.testing import lt_cfg

# one class per image, heavily imbalanced: 200 / 40 / 5 / 1 images of classes 0..3; class 4 has none
SIZES = [200, 40, 5, 1]


def _dicts():
    out = []
    for c, n in enumerate(SIZES):
        out += [{"annotations": [{"category_id": c}]} for _ in range(n)]
    return out


def _classes_of(dicts, indices):
    return collections.Counter(dicts[i]["annotations"][0]["category_id"] for i in indices)


def test_sampler_is_class_balanced():
    """Every pass of the class permutation draws each class once, so over N = 4 x 2500 draws the
    class counts are exactly 2500 each (the tolerance is 0 by construction; a partial pass could
    shift a count by at most 1). The uniform sampler, on the same data, follows the image counts."""
    dicts = _dicts()
    n = 4 * 2500
    s = ResumableClassAwareSampler.from_dataset_dicts(dicts, seed=3)
    counts = _classes_of(dicts, itertools.islice(iter(s), n))
    assert counts == {0: 2500, 1: 2500, 2: 2500, 3: 2500}
    # a partial pass: each class within 1 of n / 4
    part = _classes_of(dicts, itertools.islice(iter(s), n + 2))
    assert max(part.values()) - min(part.values()) <= 1
    uniform = _classes_of(dicts, itertools.islice(iter(ResumableTrainingSampler(246, seed=3)), n))
    assert uniform[0] > 30 * uniform[3]


def test_images_within_a_class_are_cycled():
    """Each class walks permutations of its images: its 40 images are each drawn 2500 / 40 times
    (62 or 63: whole cycles plus one partial)."""
    dicts = _dicts()
    s = ResumableClassAwareSampler.from_dataset_dicts(dicts, seed=0)
    drawn = collections.Counter(i for i in itertools.islice(iter(s), 4 * 2500) if 200 <= i < 240)
    assert len(drawn) == 40 and set(drawn.values()) <= {62, 63}
    assert sum(drawn.values()) == 2500


def test_multi_label_images_and_empty_class():
    dicts = [
        {"annotations": [{"category_id": 0}, {"category_id": 2}, {"category_id": 2}]},
        {"annotations": [{"category_id": 0}]},
        {"annotations": []},
    ]
    s = ResumableClassAwareSampler.from_dataset_dicts(dicts, seed=1)
    drawn = list(itertools.islice(iter(s), 200))
    # class 2 (only image 0) is drawn 100 times; class 0 splits its 100 draws over images 0 and 1
    assert collections.Counter(drawn) == {0: 150, 1: 50}
    assert 2 not in drawn  # no annotation: never drawn by any class
    with pytest.raises(ValueError, match="SAMPLER_TRAIN"):
        ResumableClassAwareSampler.from_dataset_dicts([{"annotations": []}], seed=0)


def test_resume_and_ranks_continue_the_stream():
    dicts = _dicts()
    full = list(
        itertools.islice(iter(ResumableClassAwareSampler.from_dataset_dicts(dicts, seed=5)), 50)
    )
    s = ResumableClassAwareSampler.from_dataset_dicts(dicts, seed=999)
    s.load_state_dict({"seed": 5})
    s.set_start(20)
    assert list(itertools.islice(iter(s), 30)) == full[20:]
    r1 = ResumableClassAwareSampler.from_dataset_dicts(dicts, seed=5)
    r1._rank, r1._world_size = 1, 2
    assert list(itertools.islice(iter(r1), 10)) == full[1:20:2]


def test_built_from_config_name():
    dicts = _dicts()
    cfg = lt_cfg(None, "DATALOADER.SAMPLER_TRAIN", "ClassAwareSampler", "SEED", 4)
    s = build_train_sampler(cfg, dicts)
    assert isinstance(s, ResumableClassAwareSampler) and s.state_dict() == {"seed": 4}
    cfg.DATALOADER.SAMPLER_TRAIN = "RandomSubsetTrainingSampler"
    assert build_train_sampler(cfg, dicts) is None  # detectron2 builds its own
