"""Losses of EOP-Net (paper sections 4.3.3 and 4.4): dual-metric loss (eq. 10), prototype contrastive loss (eq. 12).

Pure functions on tensors; :class:`oshp.models.eopnet.EOPNet` combines them into eq. 13.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from .core.labels import IGNORE_INDEX

__all__ = ["beta_schedule", "cross_entropy", "class_balanced_cross_entropy", "parsing_cross_entropy", "dual_metric_loss",
           "prototype_contrastive_loss"]


def beta_schedule(epoch: float, max_epoch: float, weight_shifting: bool = True, at: float = 0.0) -> float:
    """beta of eq. 10: the AGM weight (NPM gets 1 - beta).

    With weight shifting (section 4.3.3) beta = 1 - (epoch + at) / max_epoch, clamped to [0, 1]. ``epoch`` is
    0-based and ``at`` is where in the epoch beta is read, as a fraction of it. ``at=0`` (the default, the release's
    ``get_beta``): beta is 1 in the first epoch (NPM unweighted) and 1/max_epoch in the last; a 1-epoch schedule never
    trains NPM. ``at=0.5``: the mean over each epoch of a shift that falls linearly from 1 to 0 across the schedule,
    so NPM gets weight in every epoch, even in a 1-epoch schedule (beta 0.5). Without weight shifting beta is fixed
    at 0.5 (Table 4, row "DML": "employing two modules together (beta = 0.5)").
    """
    if not weight_shifting:
        return 0.5
    if max_epoch <= 0:
        raise ValueError(f"max_epoch must be positive, got {max_epoch}")
    if not 0.0 <= at < 1.0:
        raise ValueError(f"at is a fraction of an epoch in [0, 1), got {at}")
    return float(min(1.0, max(0.0, 1.0 - (float(epoch) + at) / float(max_epoch))))


def cross_entropy(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Pixel-wise CE averaged over non-ignored pixels; 0 (not NaN) when every pixel is ignored.

    ``logits`` B x C x H x W, ``target`` B x H x W integer ids (``ignore_index`` skipped).
    """
    if logits.dim() != 4 or target.dim() != 3 or logits.shape[0] != target.shape[0] or \
            logits.shape[-2:] != target.shape[-2:]:
        raise ValueError(f"logits must be B x C x H x W and target B x H x W with the same B, H, W; got "
                         f"{tuple(logits.shape)} and {tuple(target.shape)}")
    target = target.long()
    valid = target != ignore_index
    if (target[valid] >= logits.shape[1]).any() or (target[valid] < 0).any():
        raise ValueError(f"target holds ids outside 0..{logits.shape[1] - 1} (other than {ignore_index})")
    total = F.cross_entropy(logits.float(), target, ignore_index=ignore_index, reduction="sum")
    return total / valid.sum().clamp_min(1)


def class_balanced_cross_entropy(logits: torch.Tensor, target: torch.Tensor,
                                 ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """The mean over the classes present in ``target`` of each class's mean pixel CE.

    Every present class weighs the same whatever its area, so a part covering 3% of the pixels is not outweighed by
    the background (plain CE then learns the prior and predicts background everywhere). 0 when every pixel is ignored.
    """
    cross_entropy(logits, target, ignore_index)  # the same shape and id checks
    target = target.long()
    valid = target != ignore_index
    per_pixel = F.cross_entropy(logits.float(), target, ignore_index=ignore_index, reduction="none")
    present = torch.unique(target[valid])
    if present.numel() == 0:
        return per_pixel.sum() * 0.0
    return torch.stack([per_pixel[target == c].mean() for c in present.tolist()]).mean()


def parsing_cross_entropy(logits: torch.Tensor, target: torch.Tensor, class_balanced: bool = False,
                          ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """A method's parsing loss: :func:`class_balanced_cross_entropy` when its ``class_balanced_loss`` option is on,
    else pixel-averaged :func:`cross_entropy` (the papers')."""
    return (class_balanced_cross_entropy if class_balanced else cross_entropy)(logits, target, ignore_index)


def dual_metric_loss(
    agm_logits: torch.Tensor | None,
    npm_logits: torch.Tensor | None,
    target: torch.Tensor,
    beta: float,
    ignore_index: int = IGNORE_INDEX,
    class_balanced: bool = False,
) -> torch.Tensor:
    """L_dml = beta * CE(AGM) + (1 - beta) * CE(NPM) (eq. 10); ``class_balanced`` takes each CE class-balanced
    (:func:`class_balanced_cross_entropy`) instead of pixel-averaged.

    A missing branch (``None``: the module is switched off, or AGM is skipped because beta = 0) gets no weight and the
    other branch gets weight 1, so the AGM-only and NPM-only rows of Table 4 are plain CE.
    """
    if agm_logits is None and npm_logits is None:
        raise ValueError("dual_metric_loss needs at least one of agm_logits and npm_logits")
    if agm_logits is None:
        return parsing_cross_entropy(npm_logits, target, class_balanced, ignore_index)
    if npm_logits is None:
        return parsing_cross_entropy(agm_logits, target, class_balanced, ignore_index)
    loss = 0.0
    if beta > 0:
        loss = loss + beta * parsing_cross_entropy(agm_logits, target, class_balanced, ignore_index)
    if beta < 1:
        loss = loss + (1.0 - beta) * parsing_cross_entropy(npm_logits, target, class_balanced, ignore_index)
    if isinstance(loss, float):  # pragma: no cover - beta outside [0, 1] cannot give both terms zero weight
        raise ValueError(f"beta must lie in [0, 1], got {beta}")
    return loss


def prototype_contrastive_loss(
    query_prototypes: torch.Tensor,
    support_prototypes: torch.Tensor,
    query_present: torch.Tensor,
    support_present: torch.Tensor,
    tau: float = 0.1,
    absent_rows: str = "skip",
) -> torch.Tensor:
    """L_nca (eq. 12): InfoNCE between query static prototypes p'_c (eq. 11) and support static prototypes p^s (eq. 2).

    Args:
        query_prototypes, support_prototypes: B x K x D; slot k of both is the same class (foreground only: the paper
            builds no background prototype).
        query_present, support_present: B x K bool.
        tau: temperature (0.1 in the paper).

    For each sample, the columns (negatives) are the classes present in the support; the rows are the classes present
    in *both* query and support, and row c scores -log softmax_k(cos(p'_c, p^s_k) / tau) at k = c. Each sample averages
    over its rows (eq. 12 divides by |C_s| - 1, which assumes every support class also occurs in the query; a class
    missing from the query GT has no p'_c and is skipped instead of counting as zero, unlike the release); the batch
    averages over samples with at least one row. With a single support class the term is -log 1 = 0. When no sample
    has a row the loss is a graph-connected zero.

    ``absent_rows="zero"`` is the release's rule: every present query prototype is a row, and a row whose class the
    support lacks scores 0 but still counts in the sample's mean.
    """
    if absent_rows not in ("skip", "zero"):
        raise ValueError(f"absent_rows must be 'skip' or 'zero', not {absent_rows!r}")
    if query_prototypes.shape != support_prototypes.shape or query_prototypes.dim() != 3:
        raise ValueError(f"query and support prototypes must both be B x K x D, got {tuple(query_prototypes.shape)} "
                         f"and {tuple(support_prototypes.shape)}")
    if query_present.shape != query_prototypes.shape[:2] or support_present.shape != query_present.shape:
        raise ValueError("present masks must be B x K, matching the prototypes")
    if tau <= 0:
        raise ValueError(f"tau must be positive, got {tau}")
    q = F.normalize(query_prototypes.float(), dim=-1)
    s = F.normalize(support_prototypes.float(), dim=-1)
    sims = torch.einsum("bid,bjd->bij", q, s) / tau  # B x K(rows) x K(cols)
    cols = support_present.bool()
    sims = sims.masked_fill(~cols.unsqueeze(1), float("-inf"))
    rows = query_present.bool() & cols
    per_sample = []
    for b in range(sims.shape[0]):
        r = rows[b].nonzero().flatten()
        counted = int(query_present[b].sum()) if absent_rows == "zero" else r.numel()
        if counted == 0:
            continue
        if r.numel() == 0:  # rows only of classes the support lacks: each scores 0
            per_sample.append(sims[b].nan_to_num(0.0, 0.0, 0.0).sum() * 0.0)
            continue
        logp = F.log_softmax(sims[b, r], dim=-1)
        per_sample.append(-logp[torch.arange(r.numel(), device=r.device), r].sum() / counted)
    if not per_sample:
        return (query_prototypes.sum() + support_prototypes.sum()) * 0.0
    return torch.stack(per_sample).mean()
