"""softplus(x) = log(1 + exp(x)) in a few vectorised passes, as accurate as ``F.softplus``.

On CPU, PyTorch's ``log1p`` (and with it ``F.softplus``, ``F.logsigmoid`` and
``F.binary_cross_entropy_with_logits``) runs several times slower than ``exp`` and ``log``
(benchmarks/README.md#classification-losses-benchmark_losses). The fused losses therefore evaluate

    softplus(x) = max(x, 0) + log1p(e),   e = exp(-|x|) in [0, 1],

with log1p from ``log`` and the rounding error of 1 + e, which floating point gives exactly: with
W = fl(1 + e) (in [1, 2]), W - 1 is exact and so is c = (W - 1) - e, and

    log1p(e) = log(W - c) = log(W) - c / W + O(c^2)

to within one rounding of the result (|c| <= eps / 2), for every e, also when 1 + e rounds to 1
(then c = -e and the result is e). No overflow for any finite x (exp only sees -|x| <= 0); x = +-1e30
give exactly 1e30 and 0, x = +inf gives inf, NaN stays NaN.
"""

import torch

__all__ = ["log1p_exp_neg_abs_into", "softplus_into"]


def log1p_exp_neg_abs_into(
    x: torch.Tensor, out: torch.Tensor, scratch: torch.Tensor
) -> torch.Tensor:
    """Write log1p(exp(-|x|)) into ``out`` and return it; ``out``, ``scratch``: x's shape and dtype,
    overwritten, neither aliasing x. Allocates one more tensor of x's size during the call."""
    e = torch.copysign(x, -1.0, out=out).exp_()  # exp(-|x|): one pass, 0 for +-inf
    w = torch.add(e, 1.0, out=scratch)
    c = torch.sub(w, 1.0).sub_(e)  # (W - 1) - e: both subtractions are exact
    return torch.log(w, out=out).addcdiv_(c, w, value=-1.0)


def softplus_into(x: torch.Tensor, out: torch.Tensor, scratch: torch.Tensor) -> torch.Tensor:
    """Write softplus(x) = max(x, 0) + log1p(exp(-|x|)) into ``out`` and return it (module docstring).

    Args:
        x: any shape, floating point; not modified.
        out, scratch: tensors of x's shape and dtype, overwritten; neither may alias x.

    Allocates one more tensor of x's size for the duration of the call.
    """
    log1p_e = log1p_exp_neg_abs_into(x, out, scratch)
    return log1p_e.add_(torch.clamp_min(x, 0.0, out=scratch))
