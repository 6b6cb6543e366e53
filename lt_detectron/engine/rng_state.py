"""RNG states of torch (CPU and CUDA), NumPy and Python as tensors and plain types (so a checkpoint
holding them loads with ``torch.load(weights_only=True)``), per rank, and what a resumed rank restores."""

import random
from typing import Any, Dict, List

import numpy as np
import torch
from detectron2.utils import comm
from detectron2.utils.env import seed_all_rng

__all__ = [
    "rng_state_to_plain",
    "rng_state_from_plain",
    "get_rng_state",
    "set_rng_state",
    "gather_rng_states",
    "rng_state_for_rank",
    "reseed_from",
]


def rng_state_to_plain(torch_state, numpy_state, python_state) -> Dict[str, Any]:
    """torch / NumPy / Python RNG states -> a dict of tensors and plain types."""
    name, keys, pos, has_gauss, cached = numpy_state
    version, internal, gauss_next = python_state
    return {
        "torch": torch_state.clone(),
        "numpy": {
            "name": str(name),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": {
            "version": int(version),
            "state": torch.tensor(internal, dtype=torch.int64),
            "gauss_next": None if gauss_next is None else float(gauss_next),
        },
    }


def rng_state_from_plain(d: Dict[str, Any]):
    """Inverse of :func:`rng_state_to_plain`: ``(torch ByteTensor, numpy tuple, python tuple)``."""
    n, p = d["numpy"], d["python"]
    numpy_state = (
        n["name"],
        n["keys"].numpy().astype(np.uint32),
        n["pos"],
        n["has_gauss"],
        n["cached_gaussian"],
    )
    python_state = (p["version"], tuple(int(x) for x in p["state"].tolist()), p["gauss_next"])
    return d["torch"], numpy_state, python_state


def get_rng_state() -> Dict[str, Any]:
    """This process's torch (CPU, and the current CUDA device's when CUDA is in use), NumPy and
    Python RNG states, as plain data. (detectron2's ROI sampling draws from the CUDA generator.)"""
    d = rng_state_to_plain(torch.get_rng_state(), np.random.get_state(), random.getstate())
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        d["cuda"] = torch.cuda.get_rng_state()
    return d


def set_rng_state(d: Dict[str, Any], torch_too: bool = True):
    t, n, p = rng_state_from_plain(d)
    np.random.set_state(n)
    random.setstate(p)
    if d.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(d["cuda"])
    if torch_too:
        torch.set_rng_state(t)


def gather_rng_states() -> List[Dict[str, Any]]:
    """Every rank's :func:`get_rng_state`, in rank order (a collective: call it on all ranks).
    World size 1 needs no process group."""
    return comm.all_gather(get_rng_state())


def rng_state_for_rank(per_rank: List[Dict[str, Any]], rank: int, world_size: int):
    """The saved RNG state rank ``rank`` restores: ``(state or None, note or None)``.

    Same world size: the rank's own state. Another world size (exact resume is impossible then,
    the data shards differ too): ranks that existed restore the state of the same rank; new
    ranks get ``None`` and should re-seed (the note says which, for the log)."""
    saved = len(per_rank)
    if saved == world_size:
        return per_rank[rank], None
    if rank < saved:
        return per_rank[rank], (
            "the checkpoint holds the RNG states of %d process(es), this run has %d: rank %d restores "
            "the saved state of rank %d; the resumed run will not repeat the interrupted one exactly"
            % (saved, world_size, rank, rank)
        )
    return None, (
        "the checkpoint holds the RNG states of %d process(es), this run has %d: rank %d has no saved "
        "state and is re-seeded from rank 0's saved state plus its rank" % (saved, world_size, rank)
    )


def reseed_from(state: Dict[str, Any], rank: int) -> int:
    """Seed torch / NumPy / Python (detectron2's ``seed_all_rng``) from a saved state plus ``rank``."""
    seed = (int(state["numpy"]["keys"][state["numpy"]["pos"] % 624]) + rank) % (2**31)
    seed_all_rng(seed)
    return seed
