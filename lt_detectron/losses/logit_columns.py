"""The class of each logit column: :meth:`ROILoss.logit_columns` / :meth:`DenseLoss.logit_columns`
(:mod:`lt_detectron.losses.base`) against a classifier whose columns have fixed meanings.

Encoding: ``c`` in [0, C) is class c, ``C`` the background, ``-1 - g`` an auxiliary column g of the
method (BAGS' "others" of group g, Seesaw's objectness).
"""

import torch

__all__ = ["check_logit_columns", "describe_logit_column"]


def describe_logit_column(value: int, num_classes: int) -> str:
    """Words for one entry of ``logit_columns()``."""
    value = int(value)
    if 0 <= value < num_classes:
        return "class %d" % value
    if value == num_classes:
        return "the background"
    return "auxiliary column %d of the method" % (-1 - value)


def check_logit_columns(loss, classifier, where: str = "the classifier") -> None:
    """Raise a ``ValueError`` when ``classifier`` declares a ``logit_columns`` (the class of each of
    its output columns, in the encoding of ``loss.logit_columns()``) that differs from the loss's
    layout; the message names the first differing column and the fix. A classifier without the
    attribute (a plain layer, whose columns are whatever training makes them) is not checked."""
    declared = getattr(classifier, "logit_columns", None)
    if declared is None:
        return
    if callable(declared):
        declared = declared()
    have = torch.as_tensor(declared, dtype=torch.long).flatten().cpu()
    want = loss.logit_columns().to(torch.long).cpu()
    C = loss.num_classes
    fix = (
        "Build the classifier's columns in the order of cls_loss.logit_columns() (e.g. the weight "
        "row of column k from the class cls_loss.logit_columns()[k]), or use a loss with this layout"
    )
    if have.numel() != want.numel():
        raise ValueError(
            "%s has %d logit columns but %s %s expects %d. %s."
            % (where, have.numel(), type(loss).__name__, loss.name, want.numel(), fix)
        )
    diff = torch.nonzero(have != want).flatten()
    if diff.numel():
        k = int(diff[0])
        raise ValueError(
            "%s puts %s in logit column %d, but %s %s reads that column as %s (%d of %d columns "
            "differ). %s."
            % (
                where,
                describe_logit_column(have[k], C),
                k,
                type(loss).__name__,
                loss.name,
                describe_logit_column(want[k], C),
                diff.numel(),
                want.numel(),
                fix,
            )
        )
