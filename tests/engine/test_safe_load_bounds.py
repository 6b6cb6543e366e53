"""Issue 22 §2, bad .pkl input: the restricted unpickler bounds the work and memory a file can cause
by the file's size (crafted array views, arrays referenced many times, pre-sized allocations,
shared containers), and malformed weights (a list, negative strides, big-endian arrays) get an
error naming the file or load correctly. Every crafted file is written here; every check is
structural (instant), so a regression fails instead of hanging."""

import collections
import os
import pickle

import numpy as np
import pytest
import torch
import torch.nn as nn

import lt_detectron  # noqa: F401
from lt_detectron.engine import LTCheckpointer
from lt_detectron.engine.checkpoint import (
    CheckpointError,
    CorruptCheckpointError,
    UnsafeCheckpointError,
    load_checkpoint_file,
)

_NP_RECONSTRUCT = np.zeros(1).__reduce__()[0]


class _Call:
    """Pickles as ``func(*args)``: what a crafted file holds."""

    def __init__(self, func, *args):
        self.r = (func, args)

    def __reduce__(self):
        return self.r


def _write(path, obj, protocol=2):
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)
    return str(path)


def _view(shape, strides, buf=b"\0\0\0\0", offset=0):
    """numpy.ndarray(shape, float32, buffer, offset, strides) called from the pickle."""
    return _Call(np.ndarray, shape, np.dtype("f4"), buf, offset, strides)


def test_pkl_array_view_over_crafted_memory_is_refused(tmp_path):
    """A file of ~250 bytes viewing 4 bytes as 4 EiB (zero strides); loading it was instant but
    used as MODEL.WEIGHTS (--eval-only) it never finished."""
    w = _view((2**40, 2**20), (0, 0))
    path = _write(
        tmp_path / "view.pkl", {"model": {"w": w}, "__author__": "x", "matching_heuristics": True}
    )
    assert os.path.getsize(path) < 300
    with pytest.raises(UnsafeCheckpointError, match=r"view\.pkl.*numpy\.ndarray\(shape, dtype"):
        load_checkpoint_file(path)


def test_pkl_arrays_referenced_many_times_are_refused(tmp_path):
    """One 64 KiB array referenced 100 times (pickle's memo stores it once): 6.4 MiB of arrays
    from a 64 KiB file, the 4 MB -> 2.6 GB blow-up scaled down."""
    a = np.ones(16384, np.float32)
    model = collections.OrderedDict(("w%d" % i, a) for i in range(100))
    path = _write(tmp_path / "dup.pkl", {"model": model, "__author__": "x"})
    size = os.path.getsize(path)
    assert size < 2 * a.nbytes  # the file really holds the data once
    with pytest.raises(UnsafeCheckpointError, match=r"dup\.pkl \(%d bytes\).*more than" % size):
        load_checkpoint_file(path)
    # the same arrays stored separately are a legitimate (large) file and load
    model = collections.OrderedDict(("w%d" % i, a.copy() + i) for i in range(4))
    path = _write(tmp_path / "four.pkl", {"model": model, "__author__": "x"})
    loaded = load_checkpoint_file(path)["model"]
    assert all(np.array_equal(loaded[k], v) for k, v in model.items())


def test_pkl_preallocated_reconstruct_is_refused(tmp_path):
    """numpy's _reconstruct with a 100 MB shape (NumPy pickles always pass (0,))."""
    big = _Call(_NP_RECONSTRUCT, np.ndarray, (10**8,), b"b")
    path = _write(tmp_path / "alloc.pkl", {"model": {"w": big}, "__author__": "x"})
    with pytest.raises(UnsafeCheckpointError, match=r"alloc\.pkl.*pre-allocating"):
        load_checkpoint_file(path)


def test_pkl_shared_containers_are_refused(tmp_path):
    """Nested lists sharing their children: 60 memo references that a walk visits 2**60 times."""
    tree = []
    for _ in range(60):
        tree = [tree, tree]
    path = _write(tmp_path / "dag.pkl", {"model": {"w": np.ones(2, np.float32)}, "x": tree})
    assert os.path.getsize(path) < 1000
    with pytest.raises(UnsafeCheckpointError, match=r"dag\.pkl.*(references|nested)"):
        load_checkpoint_file(path)


def _linear():
    torch.manual_seed(0)
    return nn.Linear(3, 2)


def test_pkl_negative_strides_list_model_and_non_arrays_name_the_file(tmp_path):
    neg = _view((4,), (-4,), buf=b"\0" * 16, offset=12)
    cases = {
        "neg.pkl": {"model": {"weight": neg}, "__author__": "x", "matching_heuristics": True},
        "list.pkl": {"model": [np.ones((2, 3), np.float32)], "__author__": "x"},
        "strval.pkl": {"model": {"weight": "abc"}, "__author__": "x"},
        "blobs.pkl": {"blobs": [1, 2]},
    }
    for name, obj in cases.items():
        path = _write(tmp_path / name, obj)
        with pytest.raises(CheckpointError, match=name.replace(".", r"\.")) as e:
            LTCheckpointer(_linear()).load(path)
        assert "Traceback" not in str(e.value)
    with pytest.raises(
        CorruptCheckpointError, match=r"list\.pkl: the weights\['model'\] are a list"
    ):
        LTCheckpointer(_linear()).load(str(tmp_path / "list.pkl"))


def test_pkl_big_endian_arrays_load_converted(tmp_path):
    """A .pkl written on a big-endian machine (a legitimate file: NumPy stores the byte order in the
    dtype) loads with the same values."""
    src = _linear()
    blobs = {k: v.numpy().astype(">f4") for k, v in src.state_dict().items()}
    path = _write(
        tmp_path / "be.pkl", {"model": blobs, "__author__": "be", "matching_heuristics": True}
    )
    dst = nn.Linear(3, 2)
    LTCheckpointer(dst).load(path)
    for k, v in src.state_dict().items():
        assert torch.equal(dst.state_dict()[k], v), k
