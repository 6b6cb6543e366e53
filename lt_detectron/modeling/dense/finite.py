"""A diverged dense head's box predictions, caught where they are decoded for the box loss."""

import torch

__all__ = ["check_finite_box_predictions"]


def check_finite_box_predictions(pred: torch.Tensor, what: str):
    """Raise ``FloatingPointError`` when ``pred`` (the box regression outputs at the positive
    locations) holds NaN or inf: fvcore's GIoU would fail on the decoded boxes with an
    ``AssertionError`` ("bad box: x1 larger than x2"). The trainer turns the error into its "Training
    stopped at iteration N" message (``LTTrainer.run_step``)."""
    finite = torch.isfinite(pred)
    if bool(finite.all()):
        return
    bad = int((~finite).reshape(finite.shape[0], -1).any(dim=1).sum()) if pred.dim() else 1
    raise FloatingPointError(
        "%s: %d of %d box regression predictions at positive locations are not finite (NaN or inf) "
        "before their box loss: the training diverged" % (what, bad, max(pred.shape[0], 1))
    )
