"""Fine-Tuning contender (EOP-Net paper, section 6.3): pre-train a parser on D_train, fine-tune it on each support.

Section 6.3: "As suggested in [76], we first pre-train the model on D_train then fine-tune it on the S_test for a few
iterations. Specifically, we use the same backbone as EOP-Net and only fine-tune the last two convolutional layers and
the classification layer." The parser is therefore EOP-Net's embedding network (:class:`DeepLabFeatures`) followed by
a DeepLabV3+-style head: two 3x3 conv + BN + ReLU layers and a 1x1 classifier with one row per raw dataset id.

Pre-training (training mode) is supervised parsing of the base classes (:mod:`oshp.models.supervised`): the query
label, restricted to the support's classes, supervises the episode's classes (1-way: background vs the episode's
class), the one target every method of the comparison trains on. ``support_loss_weight=1`` adds the support's label
(a complete base-class parse, every row in k-way) as a second target.

Test time (eval mode), for every query-support pair:

1. the backbone runs once on both images (no gradient: it is frozen);
2. the two conv layers and the classifier's rows of the episode's classes (background + the support's classes; 1-way:
   background + its class) are *copied*. A row the classifier never learned (a novel class) starts at zero (weight
   and bias: ``novel_init="zero"``, the plain baseline) or is imprinted (``"imprint"``: the normalised masked average
   of the support's head features over that class, scaled to the mean norm of the learned rows, with their mean bias);
3. the copies are fine-tuned for ``finetune_steps`` iterations (default 20) on the support image and mask (pixel CE over
   the episode's classes at the support's resolution) with Adam (default, lr 1e-3) or SGD (momentum 0.9), BatchNorm
   statistics frozen (one image is no batch), in float32 even under autocast;
4. the query is parsed with the fine-tuned copies. The model's own weights are never changed, so the next pair starts
   from the pre-trained weights again, and the result depends only on the pair (no randomness is involved).

Works under ``torch.no_grad()`` (evaluation is decorated with it): the fine-tuning runs under ``torch.enable_grad()``.
The support losses of the test-time iterations are returned as ``"finetune_loss"`` (B x steps, the loss before each
update).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from oshp.losses import cross_entropy
from oshp.core.labels import IGNORE_INDEX
from oshp.models.backbone import ConvBNReLU, DeepLabFeatures
from oshp.models.episode import check_options, resolve_config
from oshp.core.labels import BACKGROUND
from oshp.models.prototypes import downsample_mask, masked_average_pooling
from oshp.models.supervised import RawIdClassifierModel

__all__ = ["FineTuningConfig", "FineTuning", "build", "finetune_head", "local_target"]


@dataclass
class FineTuningConfig:
    """Every knob of the Fine-Tuning contender."""

    num_classes: int = 18
    way: str = "k"
    backbone: str = "xception65"
    pretrained: bool = False
    backbone_weights: str | None = None
    output_stride: int = 16
    head_dim: int = 256
    """Width of the two fine-tuned 3x3 conv layers (DeepLabV3+ decoder: 256)."""
    finetune_steps: int = 20
    """Test-time iterations on each support ("a few iterations")."""
    finetune_lr: float = 1e-3
    """Adam at 1e-3 for 20 steps: on the synthetic demo data (a 3-epoch model, 120 k-way pairs) this beat Adam at 1e-4,
    SGD at 1e-2 and 10 steps on human and novel mIoU."""
    finetune_optimizer: str = "adam"
    """"adam" or "sgd" (momentum ``finetune_momentum``)."""
    finetune_momentum: float = 0.9
    novel_init: str = "zero"
    """Rows of classes the classifier never learned: "zero" (the plain baseline; with lr 1e-3 it also scored best on
    the synthetic demo data) or "imprint" (masked average of the support's head features, AMP-like)."""
    class_balanced_loss: bool = False
    """The parsing loss weighs every class of the query label the same instead of every pixel (the paper: every
    pixel). On with the CPU profiles, for every method (docs/models.md)."""
    support_loss_weight: float = 0.0
    """Pre-training: weight of the support image's supervised CE. 0 (default): the query label is the only target, as
    for every method of the comparison; 1: plain supervised pre-training on every labelled image of D_train (the
    support's full base-class parse too)."""
    align_corners: bool = False

    def __post_init__(self) -> None:
        if self.way not in ("k", "1"):
            raise ValueError(f"way must be 'k' or '1', not {self.way!r}")
        if self.head_dim < 1:
            raise ValueError(f"head_dim must be >= 1, got {self.head_dim}")
        if self.finetune_steps < 0:
            raise ValueError(f"finetune_steps must be >= 0, got {self.finetune_steps}")
        if self.finetune_lr <= 0:
            raise ValueError(f"finetune_lr must be positive, got {self.finetune_lr}")
        if self.finetune_optimizer not in ("adam", "sgd"):
            raise ValueError(f"finetune_optimizer must be 'adam' or 'sgd', not {self.finetune_optimizer!r}")
        if self.novel_init not in ("imprint", "zero"):
            raise ValueError(f"novel_init must be 'imprint' or 'zero', not {self.novel_init!r}")


def local_target(label: torch.Tensor, rows: list[int]) -> torch.Tensor:
    """H x W raw ids -> indices into ``rows`` (row i is class rows[i]); pixels of other classes and 255 -> 255."""
    out = torch.full_like(label, IGNORE_INDEX)
    for i, c in enumerate(rows):
        out[label == c] = i
    return out


def finetune_head(head: nn.Module, weight: torch.Tensor, bias: torch.Tensor, features: torch.Tensor,
                  target: torch.Tensor, steps: int, lr: float, optimizer: str = "adam", momentum: float = 0.9,
                  align_corners: bool = False) -> list[float]:
    """Fine-tune ``head`` (in place) and the K x D / K classifier ``weight``/``bias`` (leaf tensors, updated in place)
    on 1 x C x h x w frozen features against a 1 x H x W target of row indices (255 ignored). Returns the loss before
    each update. BatchNorm layers of ``head`` stay in eval mode (running statistics frozen)."""
    head.eval()
    params = [p for p in head.parameters()] + [weight, bias]
    for p in params:
        p.requires_grad_(True)
    if optimizer == "adam":
        opt: torch.optim.Optimizer = torch.optim.Adam(params, lr=lr)
    else:
        opt = torch.optim.SGD(params, lr=lr, momentum=momentum)
    losses = []
    for _ in range(steps):
        logits = F.conv2d(head(features), weight[:, :, None, None], bias)
        logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=align_corners)
        loss = cross_entropy(logits, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


class FineTuning(RawIdClassifierModel):
    """EOP-Net's embedding network, two conv layers and a raw-id classifier, fine-tuned per test pair (see module)."""

    def __init__(self, config: FineTuningConfig | None = None, **overrides: object) -> None:
        cfg = resolve_config(config, FineTuningConfig, overrides)
        super().__init__(cfg.num_classes, cfg.way, cfg.support_loss_weight, cfg.class_balanced_loss)
        self.config = cfg
        self.backbone = DeepLabFeatures(cfg.backbone, pretrained=cfg.pretrained, weights=cfg.backbone_weights,
                                        output_stride=cfg.output_stride)
        c = self.backbone.out_channels
        self.head = nn.Sequential(ConvBNReLU(c, cfg.head_dim, 3), ConvBNReLU(cfg.head_dim, cfg.head_dim, 3))
        self.classifier = nn.Conv2d(cfg.head_dim, cfg.num_classes, 1)
        for m in self.head.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def scores(self, feats: torch.Tensor) -> torch.Tensor:
        """Backbone features -> B x num_classes x h x w scores over every row."""
        return self.classifier(self.head(feats))

    def forward(self, query: torch.Tensor, support: torch.Tensor, support_label: torch.Tensor,
                support_human: torch.Tensor | None = None, query_label: torch.Tensor | None = None,
                query_human: torch.Tensor | None = None, epoch: int = 0, max_epoch: int = 1) -> dict[str, object]:
        """Training: supervised parsing (``loss``, ``loss_query``, ``loss_support``). Eval: fine-tune copies of the
        head on the support, then parse the query (``pred``, ``finetune_loss``). ``support_human``, ``query_human``,
        ``epoch`` and ``max_epoch`` are accepted for the common call and unused."""
        support_label, _, query_label, _ = self.check_inputs(query, support, support_label, support_human,
                                                             query_label, query_human)
        classes = self.support_classes(support_label)
        n, size_q = query.shape[0], tuple(query.shape[-2:])
        ac = self.config.align_corners
        out: dict[str, object] = {"classes": [tuple(ids) for ids in classes]}
        if not self.training:
            out.update(self._finetune_and_parse(query, support, support_label, classes))
            return out
        with_support = query_label is not None and self.support_loss_weight > 0
        if with_support and query.shape == support.shape:
            g = self.backbone(torch.cat([query, support], dim=0))
            gq, gs = g[:n], g[n:]
        else:
            gq = self.backbone(query)
            gs = self.backbone(support) if with_support else None
        pred = self.upsample(self.episode_logits(self.scores(gq), classes), size_q, ac)
        out["pred"] = pred
        if query_label is not None:
            s_scores = None if gs is None else self.upsample(self.scores(gs), tuple(support.shape[-2:]), ac)
            out.update(self.supervised_losses(pred, query_label, s_scores, support_label, classes))
        return out

    # ------------------------------------------------------------------------------------------------ test time
    def _initial_rows(self, head: nn.Module, gs: torch.Tensor, label: torch.Tensor,
                      rows: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Copies of the classifier rows ``rows`` (K x D weight, K bias); unlearned rows imprinted or zeroed."""
        weight = self.classifier.weight[rows, :, 0, 0].detach().float().clone()
        bias = self.classifier.bias[rows].detach().float().clone()
        learned = self.learned[rows]
        if bool(learned.all()):
            return weight, bias
        novel = (~learned).nonzero().flatten()
        if self.config.novel_init == "zero":
            weight[novel] = 0.0
            bias[novel] = 0.0
            return weight, bias
        reference = self.learned if bool(self.learned.any()) else torch.ones_like(self.learned)
        norm = self.classifier.weight[reference, :, 0, 0].detach().float().norm(dim=-1).mean()
        mean_bias = self.classifier.bias[reference].detach().float().mean()
        with torch.no_grad():
            z = head(gs)
            ids = torch.as_tensor([rows[i] for i in novel.tolist()], device=label.device).view(-1, 1, 1)
            masks = downsample_mask(label == ids, z.shape[-2:])
            protos, _ = masked_average_pooling(z, masks.unsqueeze(0))
        weight[novel] = F.normalize(protos[0], dim=-1) * norm
        bias[novel] = mean_bias
        return weight, bias

    def _finetune_and_parse(self, query: torch.Tensor, support: torch.Tensor, support_label: torch.Tensor,
                            classes: list[list[int]]) -> dict[str, torch.Tensor]:
        cfg = self.config
        device = query.device
        with torch.no_grad():
            gq_all, gs_all = self.backbone(query), self.backbone(support)
        fg, bg, losses = [], [], []
        # float32 fine-tuning even inside an autocast region (bf16 evaluation on CUDA)
        # (and outside inference mode, whose tensors cannot be saved for backward)
        with torch.inference_mode(False), torch.enable_grad(), torch.autocast(device.type, enabled=False):
            for b, ids in enumerate(classes):
                rows = [BACKGROUND] + list(ids)
                gq, gs = gq_all[b:b + 1].float().clone(), gs_all[b:b + 1].float().clone()
                head = copy.deepcopy(self.head).float()
                weight, bias = self._initial_rows(head, gs, support_label[b], rows)
                target = local_target(support_label[b:b + 1], rows)
                losses.append(finetune_head(head, weight, bias, gs, target, cfg.finetune_steps, cfg.finetune_lr,
                                            cfg.finetune_optimizer, cfg.finetune_momentum, cfg.align_corners))
                with torch.no_grad():
                    s = F.conv2d(head(gq), weight[:, :, None, None], bias)[0]  # (1 + K_b) x h x w
                bg.append(s[0])
                fg.append(s[1:])
        group, channel = self.episode_index(classes, device)
        logits = self.scatter_logits(torch.cat(fg, dim=0), torch.stack(bg, dim=0), group, channel)
        return {"pred": self.upsample(logits, tuple(query.shape[-2:]), cfg.align_corners),
                "finetune_loss": torch.tensor(losses, dtype=torch.float32).view(len(classes), cfg.finetune_steps)}


def build(num_classes: int, way: str, backbone: str, pretrained: bool = False, backbone_weights: str | None = None,
          **options: object) -> FineTuning:
    """The registry's builder (``oshp.models.registry``): options are :class:`FineTuningConfig` fields."""
    check_options("Fine-Tuning", options, FineTuningConfig)
    return FineTuning(FineTuningConfig(num_classes=num_classes, way=way, backbone=backbone, pretrained=pretrained,
                                       backbone_weights=backbone_weights, **options))  # type: ignore[arg-type]
