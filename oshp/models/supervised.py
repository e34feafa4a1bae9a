"""What the two classifier-based contenders (AMP, Fine-Tuning; paper section 6.3) share.

Both are ordinary segmentation networks whose last layer holds one row per *raw dataset id*. They are pre-trained on
the base classes of D_train by plain supervised parsing and only meet a novel class at test time, through the support
(AMP imprints a row from it, Fine-Tuning fine-tunes on it). This module keeps the bookkeeping they have in common:

* which classifier rows were ever learned (a persistent ``learned`` buffer: background and every class that was a
  training target), so that test time knows which rows hold knowledge and which must come from the support;
* the logit layout of :class:`~oshp.models.episode.EpisodeModel` from "scores over every row";
* the supervised losses of a training episode. By default the *query* label is the only target, as for every method
  of the comparison (an episode maps the support and its mask to the query's mask): restricted to the support's
  classes (``oshp.data.episodes.make_episode``), it supervises a softmax over the episode's classes (background and
  the support's classes), exactly what ``"pred"`` holds. ``support_loss_weight > 0`` adds the *support* label as a
  second target, as plain supervised pre-training on every labelled image of D_train would: it is a complete parse of
  the base classes, so in k-way it supervises a softmax over every row; 1-way labels are binary (the episode's class
  vs everything else), so there it supervises background vs that class only. That doubles the labelled pixels an
  episode trains on, so it is an option, not the default.
"""

from __future__ import annotations

import torch

from oshp.losses import cross_entropy, parsing_cross_entropy
from oshp.models.episode import EpisodeModel
from oshp.core.labels import BACKGROUND

__all__ = ["RawIdClassifierModel"]


class RawIdClassifierModel(EpisodeModel):
    """An :class:`EpisodeModel` whose classifier has one row per raw id (see the module docstring)."""

    learned: torch.Tensor

    def __init__(self, num_classes: int, way: str, support_loss_weight: float = 0.0,
                 class_balanced_loss: bool = False) -> None:
        super().__init__(num_classes, way)
        self.class_balanced_loss = bool(class_balanced_loss)
        if support_loss_weight < 0:
            raise ValueError(f"support_loss_weight must be >= 0, got {support_loss_weight}")
        self.support_loss_weight = float(support_loss_weight)
        # persistent: a checkpoint must remember which rows were trained (test time treats the others as novel)
        self.register_buffer("learned", torch.zeros(num_classes, dtype=torch.bool))

    @torch.no_grad()
    def mark_learned(self, classes: list[list[int]]) -> None:
        """Background and the episode's classes have been training targets."""
        ids = sorted({BACKGROUND} | {c for cls in classes for c in cls})
        self.learned[torch.as_tensor(ids, device=self.learned.device)] = True

    def episode_logits(self, scores: torch.Tensor, classes: list[list[int]]) -> torch.Tensor:
        """B x num_classes x h x w scores over every row -> the episode layout (k-way: raw-id channels, classes absent
        from the support at LOW_LOGIT; 1-way: background, the support's class)."""
        group, channel = self.episode_index(classes, scores.device)
        ids = torch.as_tensor([c for cls in classes for c in cls], dtype=torch.long, device=scores.device)
        return self.scatter_logits(scores[group, ids], scores[:, BACKGROUND], group, channel)

    def supervised_losses(self, query_logits: torch.Tensor, query_label: torch.Tensor,
                          support_scores: torch.Tensor | None, support_label: torch.Tensor,
                          classes: list[list[int]]) -> dict[str, torch.Tensor]:
        """``loss_query`` (CE of the episode logits against the restricted query GT), ``loss_support`` (CE on the
        support image: every row in k-way, background vs the class in 1-way; 0 when ``support_scores`` is None) and
        ``loss`` = loss_query + support_loss_weight * loss_support. Logits and scores are at their image's size."""
        loss_query = parsing_cross_entropy(query_logits, self.restrict_query_label(query_label, classes),
                                           self.class_balanced_loss)
        if support_scores is None:
            loss_support = loss_query.detach() * 0.0
        elif self.way == "k":
            loss_support = cross_entropy(support_scores, support_label)
        else:
            loss_support = cross_entropy(self.episode_logits(support_scores, classes),
                                         self.restrict_query_label(support_label, classes))
        self.mark_learned(classes)
        return {"loss_query": loss_query, "loss_support": loss_support,
                "loss": loss_query + self.support_loss_weight * loss_support}
