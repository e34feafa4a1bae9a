"""EOP-Net (paper section 4): end-to-end one-shot human parsing with dual-metric learning.

One siamese embedding network (section 4.1) feeds two metric spaces (eq. 1): a coarse space (human vs background) and a
fine space (the support's part classes). In each space prototypes come from the support mask by masked average
pooling (eq. 2), optionally smoothed into dynamic prototypes (eq. 3). The fine space has two heads on the cosine
maps (eq. 4): the Attention Guidance Module (AGM, eqs. 5-7) and the Nearest Prototype Module (NPM, eqs. 8-9), trained
together with the weight-shifting dual-metric loss (eq. 10); the coarse space uses AGM only (beta = 1). A prototype
contrastive loss (eqs. 11-12) is added in the fine space; eq. 13 sums everything.

Cost: the heads run only over the k classes present in each support (the release loops over every id, facts 3.3),
and in eval mode AGM is skipped (beta = 0 after weight shifting), so inference is backbone + 1x1 projections + NPM
(+ the coarse head, whose human mask the end-to-end model outputs alongside the parts).

Labels keep raw dataset ids (``oshp.data.vocab``): background 0, ignore 255, k-way logits have ``num_classes``
channels indexed by raw id.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from oshp.losses import beta_schedule, cross_entropy, dual_metric_loss, prototype_contrastive_loss
from oshp.core.labels import IGNORE_INDEX
from oshp.models.backbone import DeepLabFeatures, is_aligned_xception
from oshp.models.episode import CachedSupport, EpisodeModel, LOW_LOGIT, check_image, resolve_config
from oshp.core.labels import BACKGROUND
from oshp.models.prototypes import (
    MaskMode,
    PrototypeMemory,
    TestPrototypes,
    cosine_similarity_maps,
    downsample_mask,
    masked_average_pooling,
)
from .heads import AGMHead, NPMHead

__all__ = ["EOPNetConfig", "EOPNet", "SupportCache", "AGMHead", "NPMHead", "LOW_LOGIT", "TABLE4_ROWS"]


TABLE4_ROWS: dict[str, dict[str, bool]] = {
    "AGM": dict(use_agm=True, use_npm=False, weight_shifting=False, multi_task=False, contrastive=False),
    "NPM": dict(use_agm=False, use_npm=True, weight_shifting=False, multi_task=False, contrastive=False),
    "DML": dict(use_agm=True, use_npm=True, weight_shifting=False, multi_task=False, contrastive=False),
    "DML+WS": dict(use_agm=True, use_npm=True, weight_shifting=True, multi_task=False, contrastive=False),
    "DML+WS+MT": dict(use_agm=True, use_npm=True, weight_shifting=True, multi_task=True, contrastive=False),
    "DML+WS+MT+CL": dict(use_agm=True, use_npm=True, weight_shifting=True, multi_task=True, contrastive=True),
}
"""The rows of the paper's Table 4 (ablation on ATR-OS fold 1) as config switches.

Section 6.6.1 writes "only applying AGM (beta = 0 in Eqs. (10))" and "only NPM (beta = 1)", the reverse of eq. 10,
where beta weighs AGM; the switches here follow eq. 10 (AGM only = beta 1), which is what the text means.
"""


@dataclass
class EOPNetConfig:
    """Every knob of EOP-Net. Defaults follow the paper; :meth:`release_compat` gives the authors' release.

    Paper defaults (sections 4 and 6.1): Xception-65 backbone, 256-d metric spaces, alpha = 0.001, 3 warm-up epochs of
    static prototypes, tau = 0.1, all lambdas 1, every Table 4 component on.
    """

    num_classes: int = 18
    """Raw id count of the dataset (ATR 18, LIP/CIHP 20); k-way logits have this many channels."""
    backbone: str = "xception65"
    pretrained: bool = False
    backbone_weights: str | None = None
    output_stride: int = 16
    embed_dim: int = 256
    """Width of the two metric spaces (the f_i of eq. 1) and of the AGM trunk."""
    way: Literal["k", "1"] = "k"
    alpha: float = 0.001
    """Momentum of the dynamic prototypes (eq. 3)."""
    memory_warmup: Literal["overwrite", "running-mean"] = "overwrite"
    """What a memory slot holds during the warm-up epochs: the last static prototype written (the release's), or the
    mean of all of them, so that the moving average starts from a class mean rather than one sample."""
    warmup_epochs: int = 3
    """Epochs 0 .. warmup_epochs-1 use static prototypes (paper: "the first 3 epochs")."""
    tau: float = 0.1
    lambda_nca: float = 1.0
    lambda_dml_fine: float = 1.0
    lambda_dml_coarse: float = 1.0
    # --- Table 4 and Fig. 7 switches
    use_agm: bool = True
    use_npm: bool = True
    weight_shifting: bool = True
    """beta = 1 - epoch/max_epoch (section 4.3.3); off: beta fixed at 0.5 (Table 4 row "DML")."""
    weight_shift: Literal["epoch-start", "mid-epoch"] = "epoch-start"
    """Where in each epoch beta is read: "epoch-start" (the paper's 1 - e/E: NPM unweighted in epoch 0, beta never
    0) or "mid-epoch" (1 - (e + 0.5)/E, the mean over the epoch of a shift falling linearly from 1 to 0 over the
    whole schedule: NPM trains in every epoch, also in a 1-epoch run)."""
    multi_task: bool = True
    """Coarse human-vs-background metric space (section 4.1, Table 4 "MT")."""
    contrastive: bool = True
    """Prototype-level contrastive loss (section 4.4, Table 4 "CL")."""
    class_balanced_loss: bool = False
    """Eq. 10's two cross-entropies weigh every class of the query label the same instead of every pixel (paper: every
    pixel). A part covers a few percent of an image, so pixel-averaged CE is mostly background."""
    contrastive_form: Literal["paper", "release"] = "paper"
    """"paper": eq. 12 as written (rows and columns: the support's classes present in the restricted query).
    "release": the authors' code: a background row and column (fine-space features averaged over the non-human
    mask, so novel parts, annotated as background but human, stay out of it), part rows from the query labels before
    their restriction to the support's classes, and rows the support lacks scoring 0 but counting in the mean."""
    dynamic_prototypes: bool = True
    """Momentum-updated prototypes (section 4.2, Fig. 7 "DP"); off: static prototypes throughout."""
    # --- choices the paper leaves open
    agm_trunk: Literal["release", "separable"] = "release"
    """phi_AGM: "release" = two 3x3 convs + one separable block (the release's layers; with them the model has the
    paper's Table 5 size); "separable" = three separable blocks (a literal "several separable convolutional layers")."""
    npm_scale_init: float = 10.0
    """Initial learnable temperature on the NPM logits (the release's ``scaler``; eq. 9 has none, but cosines lie in
    [-1, 1] and an unscaled softmax over them starts almost uniform)."""
    mask_downsample: MaskMode = "area"
    """How support/query masks reach the stride-4 grid for eqs. 2 and 11 (see oshp.models.prototypes)."""
    test_prototypes: TestPrototypes = "memory"
    """Eval: "memory" = base classes use their dynamic prototype (eq. 3 applied with the support), novel classes the
    static one (section 4.2); "static" = every class uses the support's static prototype (strict one-shot)."""
    restrict_to_support: bool = True
    """k-way logits of classes absent from the support are LOW_LOGIT (the release leaves them constant, facts 3.6)."""
    coarse_at_eval: bool = True
    """Run the coarse head in eval mode and return the human mask (``"coarse"``)."""
    foreground_screening: bool | None = None
    """At test time pixels the coarse head calls background are forced to class 0 (the release, facts 3.6; the paper
    is silent). None (default): on whenever the model has the coarse space (``multi_task``), chosen by measurement:
    it raised novel and human mIoU in every k-way and 1-way run measured (docs/synthetic-results.md). False: the
    fine head alone decides every pixel."""
    eval_agm: bool = False
    """Also run AGM in eval mode (for logging it, as the release does); ``"pred"`` stays NPM."""
    sync_memory: bool = True
    """Average prototype-memory updates across torch.distributed ranks after each training forward."""
    align_corners: bool = False
    """Bilinear upsampling of logits to the input size (the release uses True)."""
    # --- the release's computation where it differs from oshp's with the same weights (no weights change, so these
    # --- are test-time options too; release-parity fixture, docs/release.md)
    bn_eps: float | None = None
    """BatchNorm epsilon in the backbone body; None keeps timm's (1e-3 for xception65); the release: 1e-5."""
    residual_input: Literal["input", "rectified"] = "input"
    """What an Xception block's residual adds: its input x (timm) or relu(x) (the release's in-place ReLU)."""
    low_level_tap: Literal["activated", "pre-activation"] = "activated"
    """The stride-4 low-level feature after its ReLU (timm) or before it (the release)."""
    fusion_align_corners: bool = False
    """align_corners of the stride-16 -> stride-4 upsampling in the fusion (the release: True)."""
    background_mean: Literal["support", "all-ids"] = "support"
    """k-way NPM and AGM background: mean over the support's classes (eqs. 6 and 8), or over every class id 1..C-1
    with the ids absent from the support counted as cosine 0 (the release's fixed divisor C-1)."""
    agm_absent: Literal["bias", "plain-features"] = "bias"
    """With restrict_to_support=False, the AGM logit of an id absent from the support: the classifier's bias (a
    constant) or the head run on the plain query features, r = h (the release)."""
    agm_adds_features: bool = True
    """r_c = m_c h + h (eq. 5); False: r_c = m_c h, the release's 1-way AGM."""

    def __post_init__(self) -> None:
        if self.way not in ("k", "1"):
            raise ValueError(f"way must be 'k' or '1', not {self.way!r}")
        if not (self.use_agm or self.use_npm):
            raise ValueError("at least one of use_agm and use_npm must be on")
        if self.num_classes < 2 or self.num_classes > 255:
            raise ValueError(f"num_classes must be in 2..255 (raw ids, 255 = ignore), got {self.num_classes}")
        choices = {"agm_trunk": ("release", "separable"), "mask_downsample": ("area", "nearest"),
                   "test_prototypes": ("memory", "static"), "weight_shift": ("epoch-start", "mid-epoch"),
                   "memory_warmup": ("overwrite", "running-mean"), "contrastive_form": ("paper", "release"),
                   "residual_input": ("input", "rectified"), "low_level_tap": ("activated", "pre-activation"),
                   "background_mean": ("support", "all-ids"), "agm_absent": ("bias", "plain-features")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}, not {getattr(self, name)!r}")
        if self.foreground_screening and not self.multi_task:
            raise ValueError("foreground_screening needs the coarse space: set multi_task=True")
        if self.background_mean == "all-ids" and self.way == "1":
            raise ValueError("background_mean='all-ids' is the release's k-way background; 1-way episodes have one "
                             "class, so use 'support'")

    @property
    def screens(self) -> bool:
        """Whether test-time predictions are screened by the coarse head (see ``foreground_screening``)."""
        return self.multi_task if self.foreground_screening is None else bool(self.foreground_screening)

    @classmethod
    def release_compat(cls, **overrides: object) -> "EOPNetConfig":
        """What the authors' release computes (facts sections 3 and 6; the release-parity fixture), where it differs
        from the paper, so that its converted checkpoints (`oshp convert-release`) give its outputs.

        ``warmup_epochs=26`` (the release's ``epoch <= prototype_warmup`` with 25 keeps epochs 0..25 static),
        ``test_prototypes="memory"``, ``foreground_screening=True``, ``restrict_to_support=False``,
        ``mask_downsample="nearest"``, ``align_corners=True``, ``eval_agm=True``; and its network: ``bn_eps=1e-5``,
        ``fusion_align_corners=True``, ``agm_absent="plain-features"``, per way ``background_mean="all-ids"``
        (k-way) or ``agm_adds_features=False`` (1-way), and with an aligned Xception backbone (the release's)
        ``residual_input="rectified"`` and ``low_level_tap="pre-activation"``, which other backbones do not have.
        The coarse space's epoch-as-warm-up flag is not reproduced: at test time the release's coarse space is
        static, which ``test_prototypes="memory"`` gives for a converted checkpoint (its coarse memory is marked
        never updated).
        """
        one_way = str(overrides.get("way", cls.way)) == "1"
        base: dict = dict(warmup_epochs=26, test_prototypes="memory", foreground_screening=True,
                          restrict_to_support=False, mask_downsample="nearest", align_corners=True, eval_agm=True,
                          bn_eps=1e-5, fusion_align_corners=True, agm_absent="plain-features")
        if is_aligned_xception(str(overrides.get("backbone", cls.backbone))):  # the release's own backbone
            base.update(residual_input="rectified", low_level_tap="pre-activation")
        base.update(dict(agm_adds_features=False) if one_way else dict(background_mean="all-ids"))
        base.update(overrides)
        return cls(**base)

    @classmethod
    def ablation(cls, row: str, **overrides: object) -> "EOPNetConfig":
        """A row of Table 4 by name: 'AGM', 'NPM', 'DML', 'DML+WS', 'DML+WS+MT', 'DML+WS+MT+CL'."""
        key = row.replace(" ", "").upper()
        if key not in TABLE4_ROWS:
            raise ValueError(f"unknown Table 4 row {row!r}; rows: {list(TABLE4_ROWS)}")
        base: dict = dict(TABLE4_ROWS[key])
        base.update(overrides)
        return cls(**base)


@dataclass
class SupportCache(CachedSupport):
    """A support encoded once by :meth:`EOPNet.encode_support`, to parse many queries without re-encoding it.

    Holds what the query branch needs: the episode classes of each support sample, the prototypes in use (after the
    prototype memory, eq. 3) and the coarse human prototype. Tensors live on the model's device.
    """

    classes: list[list[int]]
    """Per support sample, its episode's class ids (raw ids, in the order of ``prototypes``)."""
    prototypes: torch.Tensor
    """P x D fine prototypes in use, P = total number of classes over the samples."""
    static: list[torch.Tensor]
    """Per sample, K_b x D static prototypes (eq. 2)."""
    present: list[torch.Tensor]
    """Per sample, K_b bools: the class has mass on the feature grid."""
    human: torch.Tensor | None
    """B x D human prototypes of the coarse space (None when the coarse head does not run)."""
    channels: int = 3
    """Channels of the support image (a query must have as many)."""
    background: torch.Tensor | None = None
    """B x D fine-space background prototypes over the support's non-human pixels (training with the release's
    contrastive form only)."""
    background_present: torch.Tensor | None = None
    """B bools: the support has non-human pixels (its background prototype is not a zero placeholder)."""

    def expand(self, n: int) -> "SupportCache":
        """The cache for a query batch of ``n``: itself when it holds ``n`` supports, one support repeated n times."""
        if not self.needs_repeat(n):
            return self
        return SupportCache(
            classes=[list(self.classes[0]) for _ in range(n)], prototypes=self.prototypes.repeat(n, 1),
            static=self.static * n, present=self.present * n,
            human=None if self.human is None else self.human.repeat(n, 1), channels=self.channels)


class EOPNet(EpisodeModel):
    """EOP-Net for k-way or 1-way one-shot human parsing (see the module docstring and :class:`EOPNetConfig`).

    Call ``forward(query, support, support_label, ...)``; ``model.eval()`` gives the inference path (NPM only).
    """

    def __init__(self, config: EOPNetConfig | None = None, **overrides: object) -> None:
        cfg = resolve_config(config, EOPNetConfig, overrides)
        super().__init__(cfg.num_classes, cfg.way)
        self.config = cfg
        self.backbone = DeepLabFeatures(cfg.backbone, pretrained=cfg.pretrained, weights=cfg.backbone_weights,
                                        output_stride=cfg.output_stride, bn_eps=cfg.bn_eps,
                                        residual_input=cfg.residual_input, low_level_tap=cfg.low_level_tap,
                                        fusion_align_corners=cfg.fusion_align_corners)
        c, d = self.backbone.out_channels, cfg.embed_dim
        self.fine_proj = nn.Conv2d(c, d, 1)  # f_2 of eq. 1
        self.fine_memory = PrototypeMemory(cfg.num_classes, d, cfg.alpha, cfg.warmup_epochs, cfg.test_prototypes,
                                           enabled=cfg.dynamic_prototypes, warmup=cfg.memory_warmup)
        self.npm = NPMHead(cfg.npm_scale_init) if cfg.use_npm else None
        self.agm = AGMHead(d, cfg.agm_trunk, cfg.agm_adds_features) if cfg.use_agm else None
        if cfg.multi_task:
            self.coarse_proj = nn.Conv2d(c, d, 1)  # f_1 of eq. 1
            # slot 1 = human (slot 0, background, is unused: no background prototype is built, section 4.2)
            self.coarse_memory = PrototypeMemory(2, d, cfg.alpha, cfg.warmup_epochs, cfg.test_prototypes,
                                                 enabled=cfg.dynamic_prototypes, warmup=cfg.memory_warmup)
            self.coarse_agm = AGMHead(d, cfg.agm_trunk)
        else:
            self.coarse_proj = self.coarse_memory = self.coarse_agm = None

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
        """Parse ``query`` into the classes annotated in ``support_label``.

        Args:
            query, support: B x 3 x H x W float images (query and support sizes may differ).
            support_label: B x H_s x W_s raw class ids (0 = background, 255 = ignore). 1-way: one foreground id.
            support_human: B x H_s x W_s human mask (1 human, 0 background, 255 ignore) for the coarse prototypes;
                default: every non-background support pixel (the paper aggregates all classes of C_human, so pass it
                when novel classes were merged into background).
            query_label: B x H x W raw ids, for the losses (training mode only). Pixels of classes the support lacks
                become background (paper section 4.4, last paragraph; the data layer normally does this already).
                1-way: pixels equal to the support's class are foreground, all others background.
            query_human: B x H x W human mask for the coarse loss; default: non-background pixels of ``query_label``.
            epoch, max_epoch: 0-based epoch and epoch count (weight shifting, eq. 10; prototype warm-up, eq. 3).
        Returns:
            dict with ``"npm"``/``"agm"`` (fine logits B x C x H x W when run), ``"coarse"`` (B x 2 x H x W),
            ``"pred"`` (NPM when on, else AGM; screened by the coarse head in eval, see ``foreground_screening``),
            ``"beta"``,
            ``"classes"`` (per-sample tuple of episode class ids), and in training mode with ``query_label``:
            ``"loss_agm"``, ``"loss_npm"`` (detached CE terms), ``"loss_dml_fine"``, ``"loss_dml_coarse"``,
            ``"loss_nca"`` and ``"loss"`` (eq. 13).

        To parse many queries with one support, encode it once with :meth:`encode_support` and call
        :meth:`forward_with_support` (eval mode).
        """
        support_label, support_human, query_label, query_human = self.check_inputs(
            query, support, support_label, support_human, query_label, query_human)
        n = query.shape[0]
        # --- embedding network (siamese, one pass when the shapes allow it)
        if query.shape == support.shape:
            g = self.backbone(torch.cat([query, support], dim=0))
            gq, gs = g[:n], g[n:]
        else:
            gq, gs = self.backbone(query), self.backbone(support)
        support_state = self._encode_support(gs, support_label, support_human, epoch, support.shape[1])
        return self._parse_query(query, gq, support_state, epoch, max_epoch, query_label, query_human)

    @torch.no_grad()
    def encode_support(self, support: torch.Tensor, support_label: torch.Tensor,
                       support_human: torch.Tensor | None = None) -> SupportCache:
        """Encode a support once (eval mode): its backbone pass, episode classes and prototypes, for many queries.

        ``forward_with_support(query, cache)`` then gives what ``forward(query, support, support_label,
        support_human)`` gives, without the support's share of the work (half the backbone at equal sizes). Runs
        under ``torch.no_grad`` so that a cache kept for many queries holds no autograd graph.
        """
        if self.training:
            raise RuntimeError("encode_support is for inference: call model.eval() first (a training forward writes "
                               "the prototype memory and needs the query's labels, so it cannot reuse a support)")
        check_image("support", support)
        if support_label is None:
            raise ValueError("encode_support needs support_label: the support mask defines the episode's classes")
        support_label = self.check_label("support_label", support_label, support, "support")
        support_human = self.check_label("support_human", support_human, support, "support", binary=True)
        self.check_support_foreground(support_label)
        return self._encode_support(self.backbone(support), support_label, support_human, 0, support.shape[1])

    def forward_with_support(self, query: torch.Tensor, cache: SupportCache) -> dict[str, object]:
        """Parse ``query`` (B x 3 x H x W) with a support encoded by :meth:`encode_support`; eval mode only.

        Returns the eval-mode dict of :meth:`forward`. A cache of one support is shared by every query of the batch;
        a cache of B supports pairs them with the B queries in order. The outputs equal ``forward``'s up to float
        rounding: at equal query/support sizes ``forward`` runs both images through the backbone in one batch, and a
        batched convolution may differ from two separate ones in the last bits; at different sizes they are identical.
        """
        if self.training:
            raise RuntimeError("forward_with_support is for inference: call model.eval() first")
        if not isinstance(cache, SupportCache):
            raise TypeError(f"cache must be a SupportCache from encode_support, not {type(cache).__name__}")
        check_image("query", query)
        if query.shape[1] != cache.channels:
            raise ValueError(f"query has {query.shape[1]} channels and support {cache.channels}")
        if cache.prototypes.shape[-1] != self.config.embed_dim:
            raise ValueError(f"this support cache holds {cache.prototypes.shape[-1]}-d prototypes but the model's "
                             f"metric spaces are {self.config.embed_dim}-d: encode the support with this model")
        state = cache.expand(query.shape[0])
        if self._runs_coarse() and state.human is None:
            raise ValueError("this support cache has no human prototype but the model runs its coarse head: encode "
                             "the support again with this model in its current configuration")
        return self._parse_query(query, self.backbone(query), state, 0, 1, None, None)

    def _beta(self, epoch: int, max_epoch: int) -> float:
        cfg = self.config
        if cfg.use_agm and cfg.use_npm:
            return beta_schedule(epoch, max_epoch, cfg.weight_shifting, 0.5 if cfg.weight_shift == "mid-epoch" else 0.0)
        return 1.0 if cfg.use_agm else 0.0

    def _runs_coarse(self) -> bool:
        cfg = self.config
        return self.coarse_agm is not None and (self.training or cfg.coarse_at_eval or cfg.screens)

    def _encode_support(self, gs: torch.Tensor, support_label: torch.Tensor, support_human: torch.Tensor | None,
                        epoch: int, channels: int) -> SupportCache:
        """The support branch of the forward: episode classes, prototypes (eqs. 2-3), the coarse human prototype.

        In training mode this writes the prototype memories (eq. 3), exactly as the forward always did.
        """
        cfg = self.config
        hs = self.fine_proj(gs)
        size_s = (int(hs.shape[-2]), int(hs.shape[-1]))  # support feature grid (sizes may differ at test time)

        # --- episode classes and static support prototypes (eq. 2)
        classes = self.support_classes(support_label)
        s_weights = self.class_weights(support_label, classes, size_s, cfg.mask_downsample)
        s_protos, s_present = self.pool(hs, s_weights)
        if cfg.mask_downsample == "nearest":  # classes that vanished on the feature grid leave the episode
            for b in range(len(classes)):
                keep = s_present[b]
                if not bool(keep.any()):
                    raise ValueError(f"support sample {b}: every annotated class vanished when the mask was "
                                     f"nearest-downsampled to {size_s}; use mask_downsample='area'")
                if not bool(keep.all()):
                    classes[b] = [c for c, k in zip(classes[b], keep.tolist()) if k]
                    s_weights[b], s_protos[b], s_present[b] = s_weights[b][keep], s_protos[b][keep], s_present[b][keep]
        class_ids = [c for ids in classes for c in ids]
        static = torch.cat(s_protos, dim=0)
        # --- dynamic prototypes (eq. 3)
        protos = self.fine_memory(static, class_ids, epoch)

        # --- coarse space: the human prototype (no background prototype, section 4.2)
        human_proto = None
        if self._runs_coarse():
            h1s = self.coarse_proj(gs)
            if support_human is None:
                human = (support_label != BACKGROUND) & (support_label != IGNORE_INDEX)
            else:
                human = support_human == 1
            hw = downsample_mask(human, size_s, cfg.mask_downsample)
            h_proto, h_present = masked_average_pooling(h1s, hw.unsqueeze(1))
            h_proto, h_present = h_proto[:, 0], h_present[:, 0]
            idx = h_present.nonzero().flatten()
            if idx.numel():
                used = self.coarse_memory(h_proto.index_select(0, idx), [1] * idx.numel(), epoch)
                h_proto = h_proto.index_copy(0, idx, used.to(h_proto.dtype))
            human_proto = h_proto
        background = background_present = None
        if self.training and cfg.contrastive and cfg.contrastive_form == "release" and cfg.way == "k":
            background, background_present = self.background_prototypes(hs, support_label, support_human)
        return SupportCache(classes=classes, prototypes=protos, static=s_protos, present=s_present,
                            human=human_proto, channels=channels, background=background,
                            background_present=background_present)

    def background_prototypes(self, feats: torch.Tensor, label: torch.Tensor,
                              human: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(B x D fine-space prototypes of the non-human pixels, B bools "has such pixels"); the human mask, else the
        labelled parts, says which pixels are human; ignored pixels count as neither."""
        if human is None:
            nonhuman = label == BACKGROUND
        else:
            nonhuman = (human == 0) & (label != IGNORE_INDEX)
        weights = downsample_mask(nonhuman, feats.shape[-2:], self.config.mask_downsample)
        protos, present = masked_average_pooling(feats, weights.unsqueeze(1))
        return protos[:, 0], present[:, 0]

    def _parse_query(self, query: torch.Tensor, gq: torch.Tensor, support: SupportCache, epoch: int, max_epoch: int,
                     query_label: torch.Tensor | None, query_human: torch.Tensor | None) -> dict[str, object]:
        """The query branch of the forward: cosine maps (eq. 4), NPM/AGM heads, coarse head, losses in training."""
        cfg = self.config
        n, size_in = query.shape[0], tuple(query.shape[-2:])
        training = self.training
        beta = self._beta(epoch, max_epoch)
        hq = self.fine_proj(gq)
        size = (int(hq.shape[-2]), int(hq.shape[-1]))  # query feature grid
        classes = support.classes
        dev = hq.device
        group, channel = self.episode_index(classes, dev)

        # --- cosine maps (eq. 4) against the prototypes in use
        protos = support.prototypes
        sims = []
        start = 0
        for b, ids in enumerate(classes):
            sims.append(cosine_similarity_maps(hq[b:b + 1], protos[start:start + len(ids)].unsqueeze(0))[0])
            start += len(ids)
        sims_t = torch.cat(sims, dim=0)  # P x h x w

        # eval reports the inference weight: NPM alone (beta = 0 "after training") unless NPM is off
        out: dict[str, object] = {"beta": beta if training else (0.0 if self.npm is not None else 1.0),
                                  "classes": [tuple(ids) for ids in classes]}
        # --- NPM (eqs. 8-9)
        num_ids = self.num_classes - 1 if cfg.background_mean == "all-ids" else None
        if self.npm is not None:
            fg, bg = self.npm(sims_t, group, n, num_ids)
            fill = LOW_LOGIT if cfg.restrict_to_support else self.npm.absent_logit()
            out["npm"] = self.upsample(self.scatter_logits(fg, bg, group, channel, fill), size_in, cfg.align_corners)
        # --- AGM (eqs. 5-7): in training while beta > 0 (or when it is the only head); never at eval unless asked
        run_agm = self.agm is not None and (
            (training and (beta > 0 or self.npm is None)) or (not training and (self.npm is None or cfg.eval_agm)))
        if run_agm:
            fill: torch.Tensor | float
            if num_ids is not None or (cfg.agm_absent == "plain-features" and not cfg.restrict_to_support):
                fg, bg, plain = self.agm.forward_with_absent(hq, sims_t, group, n, num_ids)
                fill = plain if cfg.agm_absent == "plain-features" else self.agm.absent_logit()
            else:
                fg, bg = self.agm(hq.index_select(0, group), sims_t, group, n)
                fill = self.agm.absent_logit()
            fill = LOW_LOGIT if cfg.restrict_to_support else fill
            out["agm"] = self.upsample(self.scatter_logits(fg, bg, group, channel, fill), size_in, cfg.align_corners)

        # --- coarse space: human vs background, AGM only (beta = 1)
        if self._runs_coarse():
            h1q = self.coarse_proj(gq)
            h_sims = cosine_similarity_maps(h1q, support.human.unsqueeze(1))[:, 0]  # type: ignore[union-attr]
            arange = torch.arange(n, device=dev)
            fg, bg = self.coarse_agm(h1q, h_sims, arange, n)  # type: ignore[misc]
            out["coarse"] = self.upsample(torch.stack([bg, fg], dim=1), size_in, cfg.align_corners)

        pred = out["npm"] if "npm" in out else out["agm"]
        if not training and cfg.screens and "coarse" in out:
            screen = out["coarse"].argmax(1) == BACKGROUND  # type: ignore[union-attr]
            pred = pred.clone()  # type: ignore[union-attr]
            pred[:, 0] = torch.where(screen, torch.full_like(pred[:, 0], -LOW_LOGIT), pred[:, 0])
        out["pred"] = pred

        if training and query_label is not None:
            out.update(self._losses(out, query_label, query_human, classes, hq, support, beta, size))
        if training and cfg.sync_memory:
            self._sync_memories()
        return out

    # ------------------------------------------------------------------------------------------------ losses
    def _losses(self, out: dict, query_label: torch.Tensor, query_human: torch.Tensor | None,
                classes: list[list[int]], hq: torch.Tensor, support: SupportCache, beta: float,
                size: tuple[int, int]) -> dict[str, torch.Tensor]:
        cfg = self.config
        target = self.restrict_query_label(query_label, classes)
        agm, npm = out.get("agm"), out.get("npm")
        losses: dict[str, torch.Tensor] = {}
        fine = dual_metric_loss(agm, npm, target, beta, class_balanced=cfg.class_balanced_loss)  # eq. 10
        with torch.no_grad():
            if agm is not None:
                losses["loss_agm"] = cross_entropy(agm, target)
            if npm is not None:
                losses["loss_npm"] = cross_entropy(npm, target)
        zero = fine * 0.0
        coarse = zero
        if "coarse" in out:
            if query_human is None:
                human_t = ((query_label != BACKGROUND) & (query_label != IGNORE_INDEX)).long()
                human_t[query_label == IGNORE_INDEX] = IGNORE_INDEX
            else:
                human_t = query_human
            coarse = cross_entropy(out["coarse"], human_t)
        nca = zero
        if cfg.contrastive and cfg.way == "k":  # 1-way: one class, so eq. 12 is -log 1 = 0
            if cfg.contrastive_form == "release":
                nca = self._release_contrastive(hq, query_label, query_human, classes, support, size)
            else:
                q_weights = self.class_weights(target, classes, size, cfg.mask_downsample)
                q_protos, q_present = self.pool(hq, q_weights)
                nca = prototype_contrastive_loss(*self._padded(q_protos, support.static, q_present, support.present),
                                                 cfg.tau)
        total = cfg.lambda_nca * nca + cfg.lambda_dml_fine * fine + cfg.lambda_dml_coarse * coarse  # eq. 13
        losses.update(loss_dml_fine=fine, loss_dml_coarse=coarse, loss_nca=nca, loss=total)
        return losses

    @staticmethod
    def _padded(*groups: list[torch.Tensor]) -> list[torch.Tensor]:
        """Per-sample K_b x ... lists as B x K x ... tensors (zeros / False beyond each sample's K_b)."""
        k = max(t.shape[0] for t in groups[0])
        out = []
        for items in groups:
            res = items[0].new_zeros((len(items), k) + tuple(items[0].shape[1:]))
            for b, t in enumerate(items):
                res[b, : t.shape[0]] = t
            out.append(res)
        return out

    def _release_contrastive(self, hq: torch.Tensor, query_label: torch.Tensor, query_human: torch.Tensor | None,
                             classes: list[list[int]], support: SupportCache, size: tuple[int, int]) -> torch.Tensor:
        """The release's L_con (see ``contrastive_form``): slots [background, the union of query and support classes]."""
        cfg = self.config
        slots = []
        for b, ids in enumerate(classes):
            query_ids = torch.unique(query_label[b]).tolist()
            slots.append(sorted(set(ids) | {c for c in query_ids if c not in (BACKGROUND, IGNORE_INDEX)}))
        q_protos, q_present = self.pool(hq, self.class_weights(query_label, slots, size, cfg.mask_downsample))
        q_bg, q_bg_present = self.background_prototypes(hq, query_label, query_human)
        s_bg, s_bg_present = support.background, support.background_present
        if s_bg is None or s_bg_present is None:
            raise RuntimeError("the release's contrastive form needs the support's background prototype: encode the "
                               "support in training mode")
        s_protos, s_present = [], []
        for b, ids in enumerate(slots):
            where = {c: i for i, c in enumerate(classes[b])}
            rows = [support.static[b][where[c]] if c in where else hq.new_zeros(hq.shape[1]) for c in ids]
            present = [bool(support.present[b][where[c]]) if c in where else False for c in ids]
            s_protos.append(torch.stack([s_bg[b], *rows]))
            s_present.append(torch.tensor([bool(s_bg_present[b]), *present], device=hq.device))
        q_protos = [torch.cat([q_bg[b:b + 1], p]) for b, p in enumerate(q_protos)]
        q_present = [torch.cat([q_bg_present[b:b + 1], m]) for b, m in enumerate(q_present)]
        return prototype_contrastive_loss(*self._padded(q_protos, s_protos, q_present, s_present), cfg.tau,
                                          absent_rows="zero")

    def _sync_memories(self) -> None:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            self.fine_memory.sync()
            if self.coarse_memory is not None:
                self.coarse_memory.sync()
        else:
            self.fine_memory._touched.zero_()
            if self.coarse_memory is not None:
                self.coarse_memory._touched.zero_()
