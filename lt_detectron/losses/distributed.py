"""Minimal torch.distributed helpers used by the losses.

All helpers are safe to call in a single process: when ``torch.distributed`` is not available or
not initialised they are no-ops (world size 1).
"""
import torch
import torch.distributed as dist

__all__ = ["is_distributed", "get_world_size", "all_reduce_sum"]


def is_distributed() -> bool:
    """True iff torch.distributed is available and a default process group is initialised."""
    return dist.is_available() and dist.is_initialized()


def get_world_size() -> int:
    """Number of processes in the default group (1 when not distributed)."""
    return dist.get_world_size() if is_distributed() else 1


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """In-place SUM all-reduce of ``tensor`` over the default group; returns ``tensor``.

    No-op (returns the tensor unchanged) when not distributed or when the world size is 1.
    Must be called by every rank in the same order (it is a collective).
    """
    if is_distributed() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor
