"""One registry of methods, so the CLI, the benchmark and the notebooks pick a method by name.

A :class:`Method` says how to build its model, which settings (k-way, 1-way) the paper gives it, its backbone in the
paper's configuration, its per-profile training settings and its Table 5 row where the paper gives one. Contenders
(paper section 6.3) live in ``oshp.models`` and are registered here, one entry each; their builders are imported lazily
so that ``oshp --help`` stays fast.

Every model takes the same call, ``model(query, support, support_label, support_human=None, query_label=None,
query_human=None, epoch=0, max_epoch=1)``, and returns a dict with ``"pred"`` (k-way: logits over the dataset's raw ids,
classes absent from the support at a very low logit; 1-way: background/foreground logits) and, in training mode with
``query_label``, ``"loss"`` and its named ``"loss_*"`` terms.
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:  # importing the registry loads no torch: `oshp --help` stays instant
    from torch import nn


@dataclass(frozen=True)
class Method:
    name: str
    display: str
    ways: tuple[str, ...]
    build: Callable[..., nn.Module] | str
    """A builder ``(num_classes, way, backbone, pretrained, backbone_weights, **model_options) -> nn.Module`` or the
    dotted path ``"module:function"`` of one (imported on first use)."""
    description: str = ""
    paper_backbone: str = "xception65"
    """The backbone of the paper's configuration (Table 5; ``profile="paper"`` uses it unless overridden)."""
    settings: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per profile, TrainConfig fields this method sets on top of the profile (``model_options`` merged)."""
    tuned: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    """Per profile and way, the settings `oshp tune` chose on the validation split (held-out meta-train images, never
    the meta-test): applied after ``settings``; the result file that chose them is named beside each entry."""
    table5: dict[str, float] | None = None
    """The paper's Table 5 row (params_m, gmacs, fps at 512 x 512, k = 5, V100) where it gives one."""

    def builder(self) -> Callable[..., nn.Module]:
        if callable(self.build):
            return self.build
        module, _, func = self.build.partition(":")
        return getattr(importlib.import_module(module), func)


def _build_eopnet(num_classes: int, way: str, backbone: str, pretrained: bool = False,
                  backbone_weights: str | None = None, **model_options) -> nn.Module:
    from .eopnet import EOPNet, EOPNetConfig
    from .episode import check_options

    check_options("EOP-Net", model_options, EOPNetConfig, {"ablation", "release_compat"})
    ablation = model_options.pop("ablation", None)
    release = model_options.pop("release_compat", False)
    fields = dict(num_classes=num_classes, way=way, backbone=backbone, pretrained=pretrained,
                  backbone_weights=backbone_weights)
    if ablation:  # a row of Table 4 sets the module switches
        fields.update(dataclasses.asdict(EOPNetConfig.ablation(ablation)) | fields)
    fields.update(model_options)
    return EOPNet(EOPNetConfig.release_compat(**fields) if release else EOPNetConfig(**fields))


# ``tuned``: the learning rates `oshp tune` chose on the validation split (held-out meta-train images, base classes)
# for the CPU profiles, every method and way on the same grid (benchmarks/results/lr_tuning_demo.json); EOP-Net's
# contrastive-loss weight likewise (benchmarks/results/contrastive_weight_tuning_demo.json). docs/models.md.
METHODS: dict[str, Method] = {
    "eopnet": Method(
        "eopnet", "EOP-Net", ("k", "1"), _build_eopnet,
        "End-to-end One-shot human Parsing network (TPAMI 2023), paper sections 4 and 6.1",
        settings={"demo": {"model_options": {"embed_dim": 64, "warmup_epochs": 1}},
                  "smoke": {"model_options": {"embed_dim": 32, "warmup_epochs": 1}}},
        table5={"params_m": 42.5, "gmacs": 129.3, "fps": 12.0},
        tuned={"demo": {"k": {"lr": 0.004, "model_options": {"lambda_nca": 1.0}}, "1": {"lr": 0.001}}}),
    # --- contenders (paper section 6.3), in the settings the paper's tables give them
    "finetuning": Method(
        "finetuning", "Fine-Tuning", ("k", "1"), "oshp.models.finetuning:build",
        "a parser pre-trained on the base classes, its last two conv layers and classifier fine-tuned on the support "
        "for a few iterations per test pair",
        settings={"demo": {"model_options": {"head_dim": 64}},
                  "smoke": {"model_options": {"head_dim": 32, "finetune_steps": 3}}},
        tuned={"demo": {"k": {"lr": 0.004}, "1": {"lr": 0.032}}}),
    "sgone": Method(
        "sgone", "SG-One", ("k", "1"), "oshp.models.sgone:build",
        "similarity guidance network (Zhang et al., TCYB 2020): masked average pooling, cosine guidance; k-way "
        "through the AGM-like procedure of eq. 6 without the residual",
        settings={"demo": {"model_options": {"guide_dim": 64, "seg_dim": 64}},
                  "smoke": {"model_options": {"guide_dim": 32, "seg_dim": 32}}},
        tuned={"demo": {"k": {"lr": 0.001}, "1": {"lr": 0.0005}}}),
    "panet": Method(
        "panet", "PANet", ("1",), "oshp.models.panet:build",
        "prototype alignment network (Wang et al., ICCV 2019): non-parametric prototype matching with the prototype "
        "alignment regularisation", paper_backbone="vgg16", table5={"params_m": 14.7, "gmacs": 612.6, "fps": 2.3},
        tuned={"demo": {"1": {"lr": 0.001}}}),
    "ppnet": Method(
        "ppnet", "PPNet", ("1",), "oshp.models.ppnet:build",
        "part-aware prototype network (Liu et al., ECCV 2020) without its semantic branch", paper_backbone="resnet50",
        settings={"demo": {"model_options": {"output_stride": 16}}, "smoke": {"model_options": {"output_stride": 16}}},
        table5={"params_m": 24.7, "gmacs": 560.0, "fps": 0.3},
        tuned={"demo": {"1": {"lr": 0.0005}}}),
    "amp": Method(
        "amp", "AMP", ("k", "1"), "oshp.models.amp:build",
        "adaptive masked proxies (Siam et al., ICCV 2019) with multi-resolution weight imprinting",
        paper_backbone="vgg16", settings={"demo": {"model_options": {"embed_dim": 64}},
                                          "smoke": {"model_options": {"embed_dim": 32}}},
        tuned={"demo": {"k": {"lr": 0.016}, "1": {"lr": 0.004}}}),
    "pfenet": Method(
        "pfenet", "PFENet", ("1",), "oshp.models.pfenet:build",
        "prior guided feature enrichment network (Tian et al., TPAMI 2020): training-free prior mask and the feature "
        "enrichment module", paper_backbone="resnet50",
        # the release's SGD: base lr 2.5e-3 scaled by 10 for every trained layer (scale_lr, index_split=-1)
        settings={"paper": {"lr": 2.5e-2, "weight_decay": 1e-4, "model_options": {"eval_size": 512}},
                  "demo": {"model_options": {"reduce_dim": 64, "freeze_backbone": "if_pretrained"}},
                  "smoke": {"model_options": {"reduce_dim": 16}}},
        tuned={"demo": {"1": {"lr": 0.016}}}),
    "popnet": Method(
        "popnet", "POPNet", ("k", "1"), "oshp.models.popnet:build",
        "progressive one-shot human parsing (He et al., AAAI 2021): coarse-to-fine stage networks with knowledge "
        "infusion, dynamic prototypes, AGM and the nearest-centroid module (second stage dropped, section 6.3)",
        # each stage has half the run (stage1_epochs=0.5), so its prototype warm-up is about half of EOP-Net's
        settings={"demo": {"model_options": {"embed_dim": 64, "warmup_epochs": 1}},
                  "smoke": {"model_options": {"embed_dim": 32, "warmup_epochs": 1}}},
        table5={"params_m": 85.8, "gmacs": 264.4, "fps": 7.8},
        tuned={"demo": {"k": {"lr": 0.008}, "1": {"lr": 0.008}}}),
}


def register(method: Method) -> Method:
    """Add (or replace) a registry entry; returns it."""
    METHODS[method.name] = method
    return method


def get_method(name: str) -> Method:
    key = name.strip().lower().replace("-", "").replace("_", "")
    if key not in METHODS:
        raise ValueError(f"unknown method {name!r}; available: {', '.join(sorted(METHODS))}")
    return METHODS[key]


def method_settings(method: str, profile: str, way: str = "k") -> dict[str, Any]:
    """The TrainConfig fields ``method`` sets in ``profile`` for ``way``: its paper backbone in the paper profile, its
    own settings, then the settings tuned for that way (the quick budget keeps the demo's)."""
    m = get_method(method)
    values: dict[str, Any] = {"model_options": {}}
    if profile == "paper":
        values["backbone"] = m.paper_backbone
    source = "demo" if profile == "quick" and profile not in m.settings and profile not in m.tuned else profile
    for own in (m.settings.get(source) or {}, (m.tuned.get(source) or {}).get(way) or {}):
        for key, value in own.items():
            if key == "model_options":
                values["model_options"].update(value)
            else:
                values[key] = value
    return values


def build_model(method: str, *, num_classes: int, way: str, backbone: str, pretrained: bool = False,
                backbone_weights: str | None = None, **model_options) -> nn.Module:
    from .weights import resolve_backbone_weights

    m = get_method(method)
    backbone_weights = resolve_backbone_weights(backbone_weights, backbone)
    if way not in m.ways:
        raise ValueError(f"{m.display} is evaluated {' and '.join(w + '-way' for w in m.ways)} in the paper, "
                         f"not {way}-way")
    return m.builder()(num_classes=num_classes, way=way, backbone=backbone, pretrained=pretrained,
                       backbone_weights=backbone_weights, **model_options)
