"""Balanced Group Softmax (BAGS, Li et al., CVPR 2020) for a Detectron2 softmax ROI classifier.

Pure torch; no Detectron2 config objects. The groups, the logit layout, the loss with its sampled
"others", the scores and every choice: docs/methods.md#bags.

Contract:

- ``C`` foreground classes with contiguous ids ``0..C-1``, background label ``C`` (last);
  ``gt_classes`` ``(R,)`` in ``[0, C]``. ``N`` non-empty foreground groups (:class:`BAGSLayout`, from
  the training instance counts and ``bin_edges``), ``K = C + N + 2`` logits: the foreground groups
  ``[others, classes...]`` in bin order, then the background group ``[fg, bg]``.
- :class:`BAGSLoss` (``ROI_LOSS_REGISTRY`` ``bags``, from ``MODEL.LT.BAGS.*``): logits ``(R, K)``;
  returns a scalar. "Others" are sampled on the logits' device, with the process's own random
  stream and no host sync. No state across iterations. Its classifier is a linear layer of ``K``
  logits, normal(std 0.01) weights and zero bias.
- ``bags_scores`` / ``predict_probs``: ``(R, C + 1)`` scores, background last.
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..class_stats import check_group_edges, instance_bin_index
from .base import ROI_LOSS_REGISTRY, ClassifierSpec, ROIBatch, ROILoss, class_counts

__all__ = ["BAGSLayout", "BAGSLoss", "bags_scores", "group_softmax"]


class BAGSLayout(nn.Module):
    """Static BAGS grouping and logit layout built from per-class training instance counts.

    Args:
        instance_counts: sequence / 1-D tensor of length ``C`` with non-negative instance counts per
            contiguous class id.
        bin_edges: strictly increasing positive bin edges (default ``(10, 100, 1000)``).

    Attributes (Python):
        num_classes (int): ``C``.
        num_groups (int): ``N``, number of NON-EMPTY foreground groups.
        num_logits (int): ``K = C + N + 2``.
        bg_group (int): index of the background group (``== N``).
        group_bins (tuple[int]): original bin index of each kept foreground group.
        group_classes (tuple[tuple[int]]): class ids of each foreground group (ascending).
        group_sizes (tuple[int]): number of slots of each of the ``N + 1`` groups (incl. "others";
            the background group has 2).
        group_slices (tuple[slice]): column slice of each of the ``N + 1`` groups in the logits.

    Buffers (non-persistent, follow ``.to(device)``):
        group_of_class (C,) long: foreground group of each class.
        slot_of_class (C,) long: slot of each class inside its group (``1..|G_n|``).
        group_of_label (C+1,) long: as ``group_of_class`` plus ``N`` for the background label.
        column_of_label (C+1,) long: absolute logit column of each label's own slot (background ->
            the bg slot of the background group).
        label_to_slot (N+1, C+1) long: row ``n`` is group ``n``'s LUT label -> slot (0 = "others";
            for the background group: 0 = foreground, 1 = background).
        group_start (N+1,) long: first column of each group (its slot 0).
        column_group (K,) long: group index of every logit column.
    """

    def __init__(self, instance_counts, bin_edges: Sequence[float] = (10, 100, 1000)):
        super().__init__()
        counts = torch.as_tensor(instance_counts).reshape(-1).tolist()
        if len(counts) == 0:
            raise ValueError("instance_counts must be non-empty")
        if any((c < 0) or (isinstance(c, float) and math.isnan(c)) for c in counts):
            raise ValueError("instance_counts must be non-negative")
        edges = list(check_group_edges(bin_edges, "bin_edges"))
        C = len(counts)
        bins = instance_bin_index(counts, edges, "bin_edges").tolist()  # [lo, hi) bins
        kept = sorted(set(bins))
        N = len(kept)
        bin_to_group = {b: g for g, b in enumerate(kept)}

        self.num_classes = C
        self.num_groups = N
        self.num_logits = C + N + 2
        self.bg_group = N
        self.bin_edges = tuple(edges)
        self.group_bins = tuple(kept)
        group_classes: List[List[int]] = [[] for _ in range(N)]
        group_of_class = [0] * C
        slot_of_class = [0] * C
        for c in range(C):  # ascending id -> ascending slot
            g = bin_to_group[bins[c]]
            group_of_class[c] = g
            group_classes[g].append(c)
            slot_of_class[c] = len(group_classes[g])  # 1-based; slot 0 = others
        self.group_classes = tuple(tuple(g) for g in group_classes)
        self.group_sizes = tuple(len(g) + 1 for g in group_classes) + (2,)
        starts, s = [], 0
        for size in self.group_sizes:
            starts.append(s)
            s += size
        assert s == self.num_logits
        self.group_slices = tuple(slice(a, a + n) for a, n in zip(starts, self.group_sizes))

        label_to_slot = torch.zeros(N + 1, C + 1, dtype=torch.long)
        for c in range(C):
            label_to_slot[group_of_class[c], c] = slot_of_class[c]
        label_to_slot[N, C] = 1
        group_of_label = torch.tensor(group_of_class + [N], dtype=torch.long)
        starts_t = torch.tensor(starts, dtype=torch.long)
        column_of_label = starts_t[group_of_label] + torch.tensor(
            slot_of_class + [1], dtype=torch.long
        )
        column_group = torch.repeat_interleave(
            torch.arange(N + 1), torch.tensor(self.group_sizes, dtype=torch.long)
        )

        self.register_buffer(
            "group_of_class", torch.tensor(group_of_class, dtype=torch.long), persistent=False
        )
        self.register_buffer(
            "slot_of_class", torch.tensor(slot_of_class, dtype=torch.long), persistent=False
        )
        self.register_buffer("group_of_label", group_of_label, persistent=False)
        self.register_buffer("column_of_label", column_of_label, persistent=False)
        self.register_buffer("label_to_slot", label_to_slot, persistent=False)
        self.register_buffer("group_start", starts_t, persistent=False)
        self.register_buffer("column_group", column_group, persistent=False)

    # ------------------------------------------------------------------ helpers
    def class_to_group_slot(self, c: int) -> Tuple[int, int]:
        """Return ``(group, slot)`` of contiguous class id ``c`` (background ``C`` -> ``(N, 1)``)."""
        if c == self.num_classes:
            return self.bg_group, 1
        return int(self.group_of_class[c]), int(self.slot_of_class[c])

    def remap_labels(self, gt_classes: torch.Tensor) -> torch.Tensor:
        """Per-group target slots. ``gt_classes`` (R,) in [0, C] -> (R, N+1) long (0 = "others")."""
        return self.label_to_slot.to(gt_classes.device)[:, gt_classes].t()

    def target_columns(self, gt_classes: torch.Tensor) -> torch.Tensor:
        """Absolute logit column of each group's target slot: (R,) -> (R, N+1) long."""
        return self.remap_labels(gt_classes) + self.group_start.to(gt_classes.device)

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, num_groups={self.num_groups}, "
            f"num_logits={self.num_logits}, group_sizes={self.group_sizes}"
        )


def _group_bounds(layout: BAGSLayout) -> List[Tuple[int, int]]:
    return [(s.start, s.stop) for s in layout.group_slices]


class _GroupSoftmaxCE(torch.autograd.Function):
    """Segmented softmax CE over contiguous column groups.

    forward(logits (R, K), target_cols (R, G) long, coef (R, G), bounds list[(start, stop)] of len G)
      -> (G,) with out[n] = sum_r coef[r, n] * (logsumexp(logits[r, group n]) - logits[r, target_cols[r, n]]).
    ``coef`` is treated as a constant.  One (R, K) buffer in forward, one in backward.
    """

    @staticmethod
    def forward(ctx, logits, target_cols, coef, bounds):
        # per-group max for stability (logits may span [-80, 80] across groups)
        gmax = torch.stack([logits[:, a:b].amax(dim=1) for a, b in bounds], dim=1)  # (R, G)
        e = torch.empty_like(logits)
        for n, (a, b) in enumerate(bounds):
            torch.sub(logits[:, a:b], gmax[:, n : n + 1], out=e[:, a:b])
        e.exp_()
        gsum = torch.stack([e[:, a:b].sum(dim=1) for a, b in bounds], dim=1)  # (R, G), >= 1
        lse = gmax + gsum.log()
        per_roi = lse - logits.gather(1, target_cols)  # (R, G), >= 0
        out = (coef * per_roi).sum(dim=0)
        ctx.bounds = bounds
        ctx.save_for_backward(e, gsum, coef, target_cols)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        e, gsum, coef, target_cols = ctx.saved_tensors
        f = coef * grad_out.unsqueeze(0)  # (R, G)
        fs = f / gsum
        grad = torch.empty_like(e)
        for n, (a, b) in enumerate(ctx.bounds):
            torch.mul(e[:, a:b], fs[:, n : n + 1], out=grad[:, a:b])
        grad.scatter_add_(1, target_cols, -f)
        return grad, None, None, None


@ROI_LOSS_REGISTRY.register("bags")
class BAGSLoss(ROILoss):
    """BAGS classification loss.

    Args:
        instance_counts: (C,) training instance counts per contiguous class id.
        bin_edges: instance-count bin edges (default ``(10, 100, 1000)``); empty bins are dropped.
        beta: "others" sampling ratio, ``m_n = floor(beta * |P_n|)`` (default 8).
        prior_prob (keyword-only): > 0 sets the classifier bias prior (default: zero bias).

    ``forward(logits, gt_classes, batch=None, generator=None) -> scalar``:
        logits (R, K=C+N+2) in the layout of :class:`BAGSLayout`; gt_classes (R,) long in [0, C]
        (C = background).  Returns ``CE_bg + sum_n L_n`` (docs/methods.md#bags).  There is no
        ``reduction`` argument: each group is averaged over its own selected ROIs, as in the paper.
        ``generator``: optional ``torch.Generator`` on the logits' device for the "others" sampling.
        fp16/bf16 logits are computed in fp32.
        R = 0 returns a zero connected to the graph.
    """

    needs_class_stats = True

    def __init__(
        self,
        instance_counts,
        bin_edges: Sequence[float] = (10, 100, 1000),
        beta: float = 8.0,
        *,
        prior_prob: float = -1.0,
    ):
        if not beta >= 0:
            raise ValueError("beta must be >= 0")
        layout = BAGSLayout(instance_counts, bin_edges)
        super().__init__(layout.num_classes, prior_prob=prior_prob)
        self.layout = layout
        self.beta = float(beta)
        self._bounds = _group_bounds(self.layout)

    @classmethod
    def from_config(cls, cfg, num_classes: int, class_stats=None) -> dict:
        lt = cfg.MODEL.LT
        if str(lt.CLASSIFIER).lower() != "linear":
            raise ValueError(
                "MODEL.LT.ROI_LOSS bags trains a grouped linear classifier; MODEL.LT.CLASSIFIER %r is not supported. "
                "Set MODEL.LT.CLASSIFIER linear." % (lt.CLASSIFIER,)
            )
        return dict(
            instance_counts=class_counts(class_stats),
            bin_edges=tuple(lt.BAGS.BIN_EDGES),
            beta=lt.BAGS.BETA,
            prior_prob=lt.PRIOR_PROB,
        )

    @property
    def num_logits(self) -> int:
        return self.layout.num_logits

    def logit_columns(self) -> torch.Tensor:
        """``(K,)``: each class's own slot holds its id, the background slot ``C``; "others" of
        foreground group g is ``-1 - g`` and the background group's foreground slot ``-1 - N``."""
        lay = self.layout
        cols = -1 - lay.column_group.clone().cpu()
        cols[lay.column_of_label.cpu()] = torch.arange(self.num_classes + 1)
        return cols

    def classifier_spec(self) -> ClassifierSpec:
        return ClassifierSpec(
            self.num_logits, kind="linear", bias=True, prior_prob=self.prior_prob, init_std=0.01
        )

    def sample_selection(
        self, gt_classes: torch.Tensor, generator: Optional[torch.Generator] = None
    ) -> torch.Tensor:
        """ROIs that enter each group's loss: (R,) -> bool (R, N+1).

        Column ``n < N``: positives of group n plus ``min(floor(beta*|P_n|), #non-members)``
        non-members sampled uniformly without replacement (all False if |P_n| = 0).
        Column ``N`` (background group): all True.  Device-side, no host synchronisation.
        """
        lay = self.layout
        device = gt_classes.device
        R, N = gt_classes.shape[0], lay.num_groups
        g_of_label = lay.group_of_label.to(device)[gt_classes]  # (R,)
        pos = g_of_label.unsqueeze(0) == torch.arange(N, device=device).unsqueeze(1)  # (N, R)
        npos = pos.sum(dim=1)  # (N,)
        if float(self.beta).is_integer():
            m = npos * int(self.beta)
        else:
            m = torch.floor(npos.double() * self.beta).long()
        # uniform random ranks among non-members: positives get key 2 > any rand in [0, 1)
        keys = torch.rand(N, R, generator=generator, device=device)
        keys.masked_fill_(pos, 2.0)
        order = keys.argsort(dim=1)
        rank = torch.empty_like(order)
        rank.scatter_(1, order, torch.arange(R, device=device).expand(N, R))
        sel = pos | (
            rank < m.unsqueeze(1)
        )  # positives ranked last, so rank < m picks non-members only
        sel = torch.cat([sel, torch.ones(1, R, dtype=torch.bool, device=device)], dim=0)
        return sel.t()

    def group_losses(
        self,
        logits: torch.Tensor,
        gt_classes: torch.Tensor,
        generator: Optional[torch.Generator] = None,
        selection: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Per-group losses (N+1,) (foreground groups, then the background group); sum = the loss.

        ``selection`` (R, N+1) bool overrides the random sampling (for testing / analysis).
        """
        lay = self.layout
        if logits.dim() != 2 or logits.shape[1] != lay.num_logits:
            raise ValueError(f"expected logits (R, {lay.num_logits}), got {tuple(logits.shape)}")
        R = logits.shape[0]
        if R == 0:
            return logits.sum() * 0.0 + logits.new_zeros(lay.num_groups + 1)
        if logits.dtype in (torch.float16, torch.bfloat16):
            logits = logits.float()
        gt_classes = gt_classes.to(device=logits.device, dtype=torch.long)
        if selection is None:
            selection = self.sample_selection(gt_classes, generator)
        w = selection.to(logits.dtype)
        coef = w / w.sum(dim=0, keepdim=True).clamp_min(
            1.0
        )  # groups w/o positives -> all-zero column
        tcols = lay.target_columns(gt_classes)
        return _GroupSoftmaxCE.apply(logits, tcols, coef, self._bounds)

    def forward(
        self,
        logits: torch.Tensor,
        gt_classes: torch.Tensor,
        batch: Optional[ROIBatch] = None,
        generator: Optional[torch.Generator] = None,
    ) -> torch.Tensor:
        return self.group_losses(logits, gt_classes, generator).sum()

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        """Inference scores (R, C+1); see :func:`bags_scores`."""
        return bags_scores(logits, self.layout)

    predict_probs = scores

    def extra_repr(self) -> str:
        return "num_classes=%d, num_logits=%d, beta=%g" % (
            self.num_classes,
            self.num_logits,
            self.beta,
        )


def group_softmax(logits: torch.Tensor, layout: BAGSLayout) -> torch.Tensor:
    """Softmax inside every group: (R, K) -> (R, K)."""
    return torch.cat([F.softmax(logits[:, s], dim=1) for s in layout.group_slices], dim=1)


def bags_scores(logits: torch.Tensor, layout: BAGSLayout) -> torch.Tensor:
    """BAGS inference scores.

    Args:
        logits: (R, K = C+N+2) in the layout of ``layout``.
    Returns:
        (R, C+1): column c < C is ``P_bg-group(fg) * P_{G_n}(c)`` (softmax inside c's group), column C is
        ``P_bg-group(bg)``.  "Others" are discarded; rows are NOT renormalised (not a distribution).
    """
    if logits.shape[-1] != layout.num_logits:
        raise ValueError(f"expected (R, {layout.num_logits}) logits, got {tuple(logits.shape)}")
    probs = group_softmax(logits, layout)
    bg0 = layout.group_slices[-1].start
    p_fg = probs[:, bg0 : bg0 + 1]
    cols = layout.column_of_label[:-1].to(logits.device)
    return torch.cat([probs.index_select(1, cols) * p_fg, probs[:, bg0 + 1 : bg0 + 2]], dim=1)
