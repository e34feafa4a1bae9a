"""POPNet (He et al., "Progressive One-shot Human Parsing", AAAI 2021) as the EOP-Net paper compares it (section 6.3).

POPNet parses coarse-to-fine with one *stage network* per granularity. Each stage network is a full one-shot parser:
its own embedding network, masked-average-pooled prototypes with momentum-updated dynamic prototypes (the release's
``beta`` = 0.001), and the Dual-Metric Learning-based meta-learning of two heads on the cosine maps: the Attention
Guidance Module (AGM) and the Nearest Centroid Module (NCM: scalar 1x1 maps of the cosine maps, times a learnable
scale initialised to 10), whose loss weight shifts from AGM to NCM over the stage's training (NCM alone at
inference). A stage after the first receives the previous stage's features through the Knowledge Infusion
Module (KIM): previous and current features are concatenated and fused by two separable conv blocks (the release's
``feature_fusion`` = ``Decoder_module(512, 256)`` + ``Decoder_module(256, 256)``, facts 3.8), for the query and
the support alike, before the prototypes and cosine maps are computed.

Section 6.3 of the EOP-Net paper adapts it: "we replace the original embedding network in POPNet with the embedding
network described in Section 4.1 ... we discard the second stage in POPNet and directly infuse the first stage
knowledge into the third stage". So here:

* stage 1 (coarse): human vs background. Its own :class:`~oshp.models.backbone.DeepLabFeatures` and 1x1 projection
  (section 4.1's G and f), one human prototype per support, AGM + NCM (EOP-Net's :class:`AGMHead` /
  :class:`NPMHead`, which are the release's AGM/NCM layers), its own :class:`PrototypeMemory`;
* stage 3 (fine): the support's part classes, a second, separate stage network of the same kind, whose embedding
  passes through the KIM with stage 1's (projected) features before its own projection.

No contrastive loss and no coarse head inside the fine stage: the stages are separate networks (facts 3.8). The
knowledge infused is stage 1's metric-space features (after its projection; the release has no projection and passes
the features its metric heads use). The NCM background averages (1 - cos) over the support's classes (the release's
'ucs' mode; its default 'fixed' mode divides by every id, absent ones included).

Training is progressive, as in POPNet (each stage network is trained with the previous ones fixed), inside one run
of the project's trainer, which passes ``epoch`` and ``max_epoch``: the first ``stage1_epochs`` share of the epochs
trains stage 1 alone (stage 3 then runs in eval mode without gradients, only to give ``"pred"``); stage 1 is then
frozen (no gradients, BatchNorm statistics and prototype memory untouched, i.e. run in eval mode) while stage 3 and
its KIM train. A 1-epoch run cannot be split into whole epochs: both stages train in it, still as separate networks
(stage 3 infused with stage 1's detached features); a 2-epoch run gives each stage one. Each stage runs its own
weight-shifting and prototype warm-up schedules over its own epochs, as if it were a separate run; the learning rate
is the trainer's single poly decay over the whole run, so stage 3 starts at about half the base rate instead of
restarting it.

Weight shifting within a stage of E epochs (``weight_shift``): the default ``"mid-epoch"`` takes beta = 1 - (e +
0.5)/E in the stage's epoch e, the mean over that epoch of a shift falling linearly from AGM alone to NCM alone across
the stage. The NCM, the head the stage predicts with, so gets weight in every epoch, even when the stage has a single
epoch (beta 0.5), and the schedule is within 0.5/E of the release's. ``"release"`` is the release's beta = 1 - e/E
(NCM weight 0 in the stage's first epoch), the paper setting over 100 epochs: there a stage with a single epoch
would never train its NCM, so a run in which any stage's NCM gets zero weight in all of its epochs raises
:class:`~oshp.core.errors.ScheduleError` at its first training step, naming the fix (:func:`check_stage_weights`).

``schedule="joint"`` trains both stages in every epoch on the summed losses, with the fine loss also reaching stage 1
through the KIM (an end-to-end variant, cf. section 6.6.2). Inference: stage 1, then stage 3 with the infused
knowledge; ``"pred"`` = stage 3's NCM logits, ``"coarse"`` = stage 1's NCM background/human logits.

Size (Table 5 says 85.8 M for POPNet): two stage networks of section 4.1's embedding network (38.49 M each with
Xception-65) + projection (0.07 M) + AGM (1.25 M) + NCM (7 scalars), plus the KIM (0.21 M) = 79.8 M parameters
(-7%). The release's stage network is 43.05 M because it uses DeepLab's ASPP + decoder ('high' features, 3.1 M more
per stage), which section 4.1's embedding network does not have (facts 3.9).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterator, Literal

import torch
import torch.nn.functional as F
from torch import nn

from oshp.losses import beta_schedule, cross_entropy, dual_metric_loss
from oshp.core.errors import ScheduleError
from oshp.core.labels import IGNORE_INDEX
from oshp.models.backbone import DeepLabFeatures, SeparableConvBlock
from oshp.models.heads import AGMHead, NPMHead
from oshp.models.episode import EpisodeModel, check_options, resolve_config
from oshp.core.labels import BACKGROUND
from oshp.models.prototypes import PrototypeMemory, TestPrototypes, cosine_similarity_maps, downsample_mask

__all__ = ["POPNetConfig", "POPNet", "StageNetwork", "KnowledgeInfusion", "StagePlan", "WEIGHT_SHIFT_AT", "build",
           "check_stage_weights", "stage_ncm_weights", "stage_plan"]

HUMAN = 1
"""Prototype slot (and coarse logit channel) of the human class in stage 1; slot 0 (background) stays unused."""

WeightShift = Literal["mid-epoch", "release"]
WEIGHT_SHIFT_AT: dict[str, float] = {"mid-epoch": 0.5, "release": 0.0}
"""Where in each epoch of a stage its beta is read (``at`` of :func:`~oshp.losses.beta_schedule`)."""


@dataclass
class POPNetConfig:
    """Every knob of the POPNet contender. Defaults: the paper configuration of section 6.3."""

    class_balanced_loss: bool = False
    """The parsing loss weighs every class of the query label the same instead of every pixel (the paper: every
    pixel). On with the CPU profiles, for every method (docs/models.md)."""
    num_classes: int = 18
    """Raw id count of the dataset (ATR 18, LIP/CIHP 20); k-way logits have this many channels."""
    way: Literal["k", "1"] = "k"
    backbone: str = "xception65"
    pretrained: bool = False
    backbone_weights: str | None = None
    """A local checkpoint loaded into *both* stage networks' embedding networks (the release starts every stage from
    the same pretrained weights)."""
    output_stride: int = 16
    embed_dim: int = 256
    """Width of each stage's metric space (the release's ``hidden_layers``)."""
    alpha: float = 0.001
    """Momentum of the dynamic prototypes (the release's ``beta=0.001``)."""
    warmup_epochs: int = 3
    """Static prototypes for the first epochs *of each stage* (as EOP-Net's default; the release's flag is
    ``proto_prev_stage``)."""
    npm_scale_init: float = 10.0
    """Initial learnable scale of the NCM logits (the release's ``scaler=10.``)."""
    agm_trunk: Literal["release", "separable"] = "release"
    """AGM trunk: the release's decoder2 (two 3x3 convs) + decoder3 (a separable block), as in EOP-Net."""
    schedule: Literal["progressive", "joint"] = "progressive"
    """'progressive': stage 1 alone, then stage 3 with stage 1 frozen (POPNet). 'joint': both stages every epoch."""
    stage1_epochs: float = 0.5
    """Share of the run's epochs that trains stage 1 (progressive schedule); the rest trains stage 3.

    Default 0.5: the release trains every stage network with the same recipe (the stage classes are one class with
    the same defaults, facts 3.8), so the two stages get equal schedules; and the run's total stays that of the other
    methods, for a comparison at equal training epochs. Give each stage a full EOP-Net schedule by doubling
    ``epochs``. Rounded to whole epochs and kept in 1 .. max_epoch - 1 (a 1-epoch run trains both stages in it)."""
    lambda_coarse: float = 1.0
    """Weight of stage 1's loss in the summed loss when both stages train in one step."""
    weight_shifting: bool = True
    """AGM -> NCM weight shift within each stage (see ``weight_shift``); off: beta fixed at 0.5."""
    weight_shift: WeightShift = "mid-epoch"
    """'mid-epoch': beta = 1 - (e + 0.5)/E in a stage's epoch e of E, so its NCM trains in every epoch, at any budget.
    'release': beta = 1 - e/E (the release, 100 epochs); an error when it would leave a stage's NCM untrained."""
    dynamic_prototypes: bool = True
    test_prototypes: TestPrototypes = "memory"
    """Eval: base classes use their dynamic prototype (eq. 3 applied with the support), novel classes the support's
    static one; 'static': every class the static one."""
    align_corners: bool = False
    """Bilinear upsampling of logits to the input size (the release uses True)."""

    def __post_init__(self) -> None:
        if self.way not in ("k", "1"):
            raise ValueError(f"way must be 'k' or '1', not {self.way!r}")
        if self.num_classes < 2 or self.num_classes > 255:
            raise ValueError(f"num_classes must be in 2..255 (raw ids, 255 = ignore), got {self.num_classes}")
        if self.schedule not in ("progressive", "joint"):
            raise ValueError(f"schedule must be 'progressive' or 'joint', not {self.schedule!r}")
        if not 0.0 < float(self.stage1_epochs) < 1.0:
            raise ValueError(f"stage1_epochs is the share of the epochs that trains stage 1 and must lie strictly "
                             f"between 0 and 1, got {self.stage1_epochs}")
        if self.weight_shift not in WEIGHT_SHIFT_AT:
            raise ValueError(f"weight_shift must be one of {sorted(WEIGHT_SHIFT_AT)}, not {self.weight_shift!r}")
        if self.agm_trunk not in ("release", "separable"):
            raise ValueError(f"agm_trunk must be 'release' or 'separable', not {self.agm_trunk!r}")
        if self.test_prototypes not in ("memory", "static"):
            raise ValueError(f"test_prototypes must be 'memory' or 'static', not {self.test_prototypes!r}")
        if self.lambda_coarse < 0:
            raise ValueError(f"lambda_coarse must be non-negative, got {self.lambda_coarse}")


@dataclass(frozen=True)
class StagePlan:
    """Which stages train in an epoch, and each stage's own (epoch, epochs) for its beta and warm-up schedules."""

    train_coarse: bool
    train_fine: bool
    coarse_epoch: int
    coarse_epochs: int
    fine_epoch: int
    fine_epochs: int
    infuse_gradients: bool
    """Whether the fine stage's loss reaches stage 1 through the KIM (joint schedule only)."""


def stage_plan(epoch: int, max_epoch: int, schedule: str = "progressive", stage1_share: float = 0.5) -> StagePlan:
    """The progressive split of a run of ``max_epoch`` epochs (see :attr:`POPNetConfig.stage1_epochs`)."""
    max_epoch = max(int(max_epoch), 1)
    epoch = min(max(int(epoch), 0), max_epoch - 1)
    if schedule == "joint":
        return StagePlan(True, True, epoch, max_epoch, epoch, max_epoch, True)
    if max_epoch == 1:  # nothing to split: both stages train, still as separate networks
        return StagePlan(True, True, 0, 1, 0, 1, False)
    n1 = min(max(int(math.floor(stage1_share * max_epoch + 0.5)), 1), max_epoch - 1)
    if epoch < n1:
        return StagePlan(True, False, epoch, n1, 0, max_epoch - n1, False)
    return StagePlan(False, True, n1 - 1, n1, epoch - n1, max_epoch - n1, False)


def stage_ncm_weights(max_epoch: int, schedule: str = "progressive", stage1_share: float = 0.5,
                      weight_shift: str = "mid-epoch", weight_shifting: bool = True) -> dict[str, list[float]]:
    """Per stage ("stage 1", "stage 3"), the NCM's loss weight 1 - beta in each epoch that trains it."""
    at = WEIGHT_SHIFT_AT[weight_shift]
    weights: dict[str, list[float]] = {"stage 1": [], "stage 3": []}
    for epoch in range(max(int(max_epoch), 1)):
        plan = stage_plan(epoch, max_epoch, schedule, stage1_share)
        if plan.train_coarse:
            weights["stage 1"].append(1.0 - beta_schedule(plan.coarse_epoch, plan.coarse_epochs, weight_shifting, at))
        if plan.train_fine:
            weights["stage 3"].append(1.0 - beta_schedule(plan.fine_epoch, plan.fine_epochs, weight_shifting, at))
    return weights


@lru_cache(maxsize=64)
def check_stage_weights(max_epoch: int, schedule: str = "progressive", stage1_share: float = 0.5,
                        weight_shift: str = "mid-epoch", weight_shifting: bool = True) -> None:
    """A :class:`~oshp.core.errors.ScheduleError` when a stage's NCM, the head it predicts with, would get zero loss
    weight in every epoch of a ``max_epoch``-epoch run: it would end at its initialisation."""
    settings = (schedule, stage1_share, weight_shift, weight_shifting)
    weights = stage_ncm_weights(max_epoch, *settings)
    untrained = [stage for stage, w in weights.items() if not any(x > 0 for x in w)]
    if not untrained:
        return
    enough = next((m for m in range(int(max_epoch) + 1, int(max_epoch) + 1000)
                   if all(any(x > 0 for x in w) for w in stage_ncm_weights(m, *settings).values())), None)
    longer = f"train for {enough} epochs or more, or " if enough else ""
    detail = ", ".join(f"{stage} trains {len(weights[stage])} epoch(s)" for stage in untrained)
    raise ScheduleError(
        f"POPNet with {max_epoch} epoch(s) and weight_shift={weight_shift!r} would never train the NCM (the head that "
        f"predicts) of {' and '.join(untrained)}: {detail}, and beta = 1 - e/E gives the NCM zero weight in a stage's "
        f"first epoch; {longer}use weight_shift='mid-epoch' (the default), which weights the NCM in every epoch")


class KnowledgeInfusion(nn.Module):
    """KIM: previous-stage features infused into the current stage's: two separable blocks on [previous, current].

    The previous map is bilinearly resized to the current grid when they differ (as in the release). In the paper
    configuration this is ``SeparableConvBlock(256 + 256, 256)`` + ``SeparableConvBlock(256, 256)`` (0.21 M).
    """

    def __init__(self, previous_channels: int, channels: int) -> None:
        super().__init__()
        self.previous_channels, self.channels = int(previous_channels), int(channels)
        self.fuse = nn.Sequential(SeparableConvBlock(self.previous_channels + self.channels, self.channels),
                                  SeparableConvBlock(self.channels, self.channels))
        for m in self.fuse.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, previous: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
        """N x C_prev x h' x w' and N x C x h x w -> N x C x h x w."""
        if previous.dim() != 4 or current.dim() != 4 or previous.shape[0] != current.shape[0]:
            raise ValueError(f"KIM needs N x C x h x w previous and current features with the same N, got "
                             f"{tuple(previous.shape)} and {tuple(current.shape)}")
        if previous.shape[1] != self.previous_channels or current.shape[1] != self.channels:
            raise ValueError(f"KIM expects {self.previous_channels} previous-stage and {self.channels} current "
                             f"channels, got {previous.shape[1]} and {current.shape[1]}")
        if previous.shape[-2:] != current.shape[-2:]:
            previous = F.interpolate(previous, size=current.shape[-2:], mode="bilinear", align_corners=False)
        return self.fuse(torch.cat([previous.to(current.dtype), current], dim=1))


class StageNetwork(nn.Module):
    """One POPNet stage: embedding network (+ KIM), projection to the metric space, prototype memory, AGM and NCM."""

    def __init__(self, cfg: POPNetConfig, slots: int, infuse_channels: int | None = None) -> None:
        super().__init__()
        self.backbone = DeepLabFeatures(cfg.backbone, pretrained=cfg.pretrained, weights=cfg.backbone_weights,
                                        output_stride=cfg.output_stride)
        c, d = self.backbone.out_channels, cfg.embed_dim
        self.kim = KnowledgeInfusion(infuse_channels, c) if infuse_channels else None
        self.proj = nn.Conv2d(c, d, 1)
        self.memory = PrototypeMemory(slots, d, cfg.alpha, cfg.warmup_epochs, cfg.test_prototypes,
                                      enabled=cfg.dynamic_prototypes)
        self.agm = AGMHead(d, cfg.agm_trunk)
        self.ncm = NPMHead(cfg.npm_scale_init)

    def forward(self, images: torch.Tensor, previous: torch.Tensor | None = None) -> torch.Tensor:
        """Images (and, for a stage with a KIM, the previous stage's features of the same images) -> N x D x h x w:
        the stage's embedding network, KIM and projection (the metric space its heads work in)."""
        g = self.backbone(images)
        if self.kim is not None:
            if previous is None:
                raise ValueError("this stage infuses the previous stage's knowledge: pass its features")
            g = self.kim(previous, g)
        elif previous is not None:
            raise ValueError("this stage has no knowledge infusion module: it takes no previous-stage features")
        return self.proj(g)

    def heads(self, hq: torch.Tensor, prototypes: torch.Tensor, group: torch.Tensor, counts: list[int],
              run_agm: bool) -> dict[str, tuple[torch.Tensor, torch.Tensor] | torch.Tensor]:
        """Cosine maps of each sample's query features with its prototypes (P x D, in sample order), then NCM and
        (when asked) AGM: {"sims": P x h x w, "ncm": (P x h x w class, n x h x w background), "agm": ...}."""
        n = hq.shape[0]
        sims, start = [], 0
        for b, k in enumerate(counts):
            sims.append(cosine_similarity_maps(hq[b:b + 1], prototypes[start:start + k].unsqueeze(0))[0])
            start += k
        sims_t = torch.cat(sims, dim=0)
        out: dict = {"sims": sims_t, "ncm": self.ncm(sims_t, group, n)}
        if run_agm:
            out["agm"] = self.agm(hq.index_select(0, group), sims_t, group, n)
        return out


@contextmanager
def _stage_mode(stage: nn.Module, train: bool, grad: bool) -> Iterator[None]:
    """Run ``stage`` in train/eval mode with or without autograd, restoring its mode afterwards."""
    was = stage.training
    stage.train(train)
    try:
        with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
            yield
    finally:
        stage.train(was)


class POPNet(EpisodeModel):
    """POPNet for k-way or 1-way OSHP: stage 1 (human vs background) -> KIM -> stage 3 (the support's classes).

    See the module docstring. ``forward(query, support, support_label, support_human=None, query_label=None,
    query_human=None, epoch=0, max_epoch=1)``; the progressive schedule is read from ``epoch`` / ``max_epoch``.
    """

    def __init__(self, config: POPNetConfig | None = None, **overrides: object) -> None:
        cfg = resolve_config(config, POPNetConfig, overrides)
        super().__init__(cfg.num_classes, cfg.way)
        self.config = cfg
        self.stage1 = StageNetwork(cfg, slots=2)
        self.stage3 = StageNetwork(cfg, slots=cfg.num_classes, infuse_channels=cfg.embed_dim)

    def plan(self, epoch: int, max_epoch: int) -> StagePlan:
        """Which stages train at ``epoch`` of ``max_epoch`` (see :func:`stage_plan`)."""
        return stage_plan(epoch, max_epoch, self.config.schedule, self.config.stage1_epochs)

    def _beta(self, epoch: int, epochs: int) -> float:
        return beta_schedule(epoch, epochs, self.config.weight_shifting, WEIGHT_SHIFT_AT[self.config.weight_shift])

    def check_schedule(self, max_epoch: int) -> None:
        """Refuse a run of ``max_epoch`` epochs that would leave a stage's NCM untrained (see
        :func:`check_stage_weights`)."""
        cfg = self.config
        check_stage_weights(int(max_epoch), cfg.schedule, float(cfg.stage1_epochs), cfg.weight_shift,
                            bool(cfg.weight_shifting))

    def predicting_heads(self) -> dict[str, nn.Module]:
        """Each stage's NCM: stage 3's gives ``"pred"``, stage 1's ``"coarse"`` (and the training of the features
        stage 3 infuses)."""
        return {"stage1.ncm": self.stage1.ncm, "stage3.ncm": self.stage3.ncm}

    # ------------------------------------------------------------------------------------------------ stage heads
    def coarse_head(self, hq: torch.Tensor, hs: torch.Tensor, human: torch.Tensor, size_in: tuple[int, int],
                    epoch: int = 0, run_agm: bool = False) -> dict[str, torch.Tensor]:
        """Stage 1 on its features: the support's human prototype (``human`` = B x H_s x W_s bool mask) -> NCM (and
        AGM) background/human logits B x 2 x H x W at ``size_in``."""
        n = hq.shape[0]
        size_s = (int(hs.shape[-2]), int(hs.shape[-1]))
        weights = [w for w in downsample_mask(human, size_s, "area").unsqueeze(1)]
        protos, _ = self.pool(hs, weights)
        used = self.stage1.memory(torch.cat(protos, dim=0), [HUMAN] * n, epoch)
        group = torch.arange(n, device=hq.device)
        heads = self.stage1.heads(hq, used, group, [1] * n, run_agm)
        ac = self.config.align_corners
        out = {"ncm": self.upsample(torch.stack(heads["ncm"][::-1], dim=1), size_in, ac)}  # [bg, human]
        if "agm" in heads:
            out["agm"] = self.upsample(torch.stack(heads["agm"][::-1], dim=1), size_in, ac)
        return out

    def fine_head(self, hq: torch.Tensor, hs: torch.Tensor, support_label: torch.Tensor, size_in: tuple[int, int],
                  epoch: int = 0, run_agm: bool = False) -> dict[str, object]:
        """Stage 3 on its (KIM-infused) features: one prototype per support class (eq. 2 with the dynamic prototypes
        of eq. 3) -> NCM (and AGM) logits over raw ids (k-way) or background/foreground (1-way) at ``size_in``."""
        size_s = (int(hs.shape[-2]), int(hs.shape[-1]))
        classes = self.support_classes(support_label)
        protos, _ = self.pool(hs, self.class_weights(support_label, classes, size_s, "area"))
        used = self.stage3.memory(torch.cat(protos, dim=0), [c for ids in classes for c in ids], epoch)
        group, channel = self.episode_index(classes, hq.device)
        heads = self.stage3.heads(hq, used, group, [len(ids) for ids in classes], run_agm)
        ac = self.config.align_corners
        out: dict[str, object] = {"classes": classes,
                                  "ncm": self.upsample(self.scatter_logits(*heads["ncm"], group, channel), size_in, ac)}
        if "agm" in heads:
            out["agm"] = self.upsample(self.scatter_logits(*heads["agm"], group, channel), size_in, ac)
        return out

    # ------------------------------------------------------------------------------------------------ stages
    @staticmethod
    def _embed_pair(stage: StageNetwork, query: torch.Tensor, support: torch.Tensor,
                    prev: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Siamese embedding of query and support (one batched pass when their shapes allow it)."""
        n = query.shape[0]
        if query.shape == support.shape and (prev is None or prev[0].shape == prev[1].shape):
            h = stage(torch.cat([query, support]), None if prev is None else torch.cat(prev))
            return h[:n], h[n:]
        if prev is None:
            return stage(query), stage(support)
        return stage(query, prev[0]), stage(support, prev[1])

    def coarse_stage(self, query: torch.Tensor, support: torch.Tensor, human: torch.Tensor, *, epoch: int = 0,
                     run_agm: bool = False) -> dict[str, torch.Tensor]:
        """Stage 1 on images: its query/support features (``"query_features"``, ``"support_features"``: the
        knowledge stage 3 infuses) and its logits (see :meth:`coarse_head`)."""
        hq, hs = self._embed_pair(self.stage1, query, support)
        out = self.coarse_head(hq, hs, human, tuple(query.shape[-2:]), epoch, run_agm)
        out.update(query_features=hq, support_features=hs)
        return out

    def fine_stage(self, query: torch.Tensor, support: torch.Tensor, support_label: torch.Tensor,
                   prev_query: torch.Tensor, prev_support: torch.Tensor, *, epoch: int = 0,
                   run_agm: bool = False) -> dict[str, object]:
        """Stage 3 on images, infused (KIM) with the given stage-1 features of the query and the support."""
        hq, hs = self._embed_pair(self.stage3, query, support, (prev_query, prev_support))
        return self.fine_head(hq, hs, support_label, tuple(query.shape[-2:]), epoch, run_agm)

    # ------------------------------------------------------------------------------------------------ forward
    def forward(
        self,
        query: torch.Tensor,
        support: torch.Tensor,
        support_label: torch.Tensor,
        support_human: torch.Tensor | None = None,
        query_label: torch.Tensor | None = None,
        query_human: torch.Tensor | None = None,
        epoch: int = 0,
        max_epoch: int = 1,
    ) -> dict[str, object]:
        """Parse ``query`` into the classes of ``support_label`` (stage 1, KIM, stage 3).

        Returns ``"pred"`` (= ``"ncm"``, stage 3's NCM logits), ``"coarse"`` (stage 1's NCM logits, B x 2 x H x W:
        background, human), ``"agm"`` / ``"coarse_agm"`` when an AGM ran (training, beta > 0), ``"beta"`` (AGM weight
        of the stage in training; 0 at eval), ``"stages"`` (which stages trained), ``"classes"``; in training mode
        with ``query_label``: ``"loss"`` and ``"loss_coarse"`` / ``"loss_fine"`` for the stages that trained, with
        their detached AGM/NCM cross-entropies.
        """
        support_label, support_human, query_label, query_human = self.check_inputs(
            query, support, support_label, support_human, query_label, query_human)
        training = self.training
        if training:
            self.check_schedule(max_epoch)
        plan = self.plan(epoch, max_epoch)
        train1, train3 = training and plan.train_coarse, training and plan.train_fine
        beta1, beta3 = self._beta(plan.coarse_epoch, plan.coarse_epochs), self._beta(plan.fine_epoch, plan.fine_epochs)

        fg = (support_label != BACKGROUND) & (support_label != IGNORE_INDEX)
        human = fg if support_human is None else (support_human == 1)
        empty = ~human.flatten(1).any(1)  # a human mask without pixels: fall back to the annotated classes
        if bool(empty.any()):
            human = torch.where(empty.view(-1, 1, 1), fg, human)

        with _stage_mode(self.stage1, train1, train1):
            coarse = self.coarse_stage(query, support, human, epoch=plan.coarse_epoch, run_agm=train1 and beta1 > 0)
        prev_q, prev_s = coarse["query_features"], coarse["support_features"]
        if not (train3 and plan.infuse_gradients):
            prev_q, prev_s = prev_q.detach(), prev_s.detach()
        with _stage_mode(self.stage3, train3, train3):
            fine = self.fine_stage(query, support, support_label, prev_q, prev_s, epoch=plan.fine_epoch,
                                   run_agm=train3 and beta3 > 0)

        classes = fine["classes"]
        out: dict[str, object] = {"pred": fine["ncm"], "ncm": fine["ncm"], "coarse": coarse["ncm"],
                                  "classes": [tuple(ids) for ids in classes],  # type: ignore[union-attr]
                                  "stages": tuple(s for s, t in (("coarse", train1), ("fine", train3)) if t),
                                  "beta": beta3 if train3 else (beta1 if train1 else 0.0)}
        if "agm" in fine:
            out["agm"] = fine["agm"]
        if "agm" in coarse:
            out["coarse_agm"] = coarse["agm"]
        if training and query_label is not None and (train1 or train3):
            out.update(self._losses(out, query_label, query_human, classes, train1, train3, beta1, beta3))
        if train1:
            self.stage1.memory.sync()  # DDP: identical memories on every rank; single process: clears bookkeeping
        if train3:
            self.stage3.memory.sync()
        return out

    def _losses(self, out: dict, query_label: torch.Tensor, query_human: torch.Tensor | None,
                classes: list[list[int]], train1: bool, train3: bool, beta1: float,
                beta3: float) -> dict[str, torch.Tensor]:
        """Dual-metric loss (AGM -> NCM weight shifting) of each stage that trains; their sum is ``"loss"``."""
        losses: dict[str, torch.Tensor] = {}
        total = None
        if train1:
            if query_human is None:
                target = ((query_label != BACKGROUND) & (query_label != IGNORE_INDEX)).long()
                target[query_label == IGNORE_INDEX] = IGNORE_INDEX
            else:
                target = query_human
            agm = out.get("coarse_agm")
            coarse = dual_metric_loss(agm, out["coarse"], target, beta1)
            with torch.no_grad():
                losses["loss_coarse_ncm"] = cross_entropy(out["coarse"], target)
                if agm is not None:
                    losses["loss_coarse_agm"] = cross_entropy(agm, target)
            losses["loss_coarse"] = coarse
            total = (self.config.lambda_coarse * coarse) if train3 else coarse
        if train3:
            target = self.restrict_query_label(query_label, classes)
            agm = out.get("agm")
            fine = dual_metric_loss(agm, out["ncm"], target, beta3, class_balanced=self.config.class_balanced_loss)
            with torch.no_grad():
                losses["loss_fine_ncm"] = cross_entropy(out["ncm"], target)
                if agm is not None:
                    losses["loss_fine_agm"] = cross_entropy(agm, target)
            losses["loss_fine"] = fine
            total = fine if total is None else total + fine
        losses["loss"] = total  # type: ignore[assignment]
        return losses


def build(num_classes: int, way: str, backbone: str, pretrained: bool = False, backbone_weights: str | None = None,
          **options: object) -> POPNet:
    """Registry builder: :class:`POPNet` with :class:`POPNetConfig` fields as ``options``."""
    check_options("POPNet", options, POPNetConfig)
    cfg = POPNetConfig(num_classes=num_classes, way=way, backbone=backbone,  # type: ignore[arg-type]
                       pretrained=pretrained, backbone_weights=backbone_weights, **options)  # type: ignore[arg-type]
    return POPNet(cfg)
