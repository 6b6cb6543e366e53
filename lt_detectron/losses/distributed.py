"""Minimal torch.distributed helpers used by the losses.

All helpers are safe to call in a single process: when ``torch.distributed`` is not available or
not initialised they are no-ops (world size 1). :func:`warn_nonfinite_skip` is the shared, rate-limited
warning of the stateful losses (EQL v2, ECM) when they drop a non-finite batch's statistics.
"""

import logging

import torch
import torch.distributed as dist

__all__ = ["is_distributed", "get_world_size", "all_reduce_sum", "warn_nonfinite_skip"]


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


def warn_nonfinite_skip(module, what: str, every: int = 100) -> int:
    """Count a skipped non-finite statistics update on ``module`` and warn on the 1st and every
    ``every``-th skip (rate-limited: a run of bad steps logs a few lines, not one per iteration).

    The counter is a plain attribute of the module (``num_nonfinite_skips``, this process only, not in
    the state_dict). Returns the count. Logged on ``module``'s own logger (``lt_detectron.losses.*``).
    """
    n = int(getattr(module, "num_nonfinite_skips", 0)) + 1
    module.num_nonfinite_skips = n
    if n == 1 or n % every == 0:
        logging.getLogger(type(module).__module__).warning(
            "%s: skipped the update of %s for a batch with non-finite values (NaN logits, or non-finite "
            "statistics, on at least one rank); %d batch(es) skipped so far, the state stays as before them. "
            "The loss of such a "
            "batch is not finite either: AMP's grad scaler skips that step; without AMP, lower the "
            "learning rate or enable SOLVER.CLIP_GRADIENTS.",
            type(module).__name__,
            what,
            n,
        )
    return n
