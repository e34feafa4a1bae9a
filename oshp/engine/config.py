"""What a run is configured by, without importing torch: the training configuration and its profiles, and the
synthetic-pretraining configuration. The CLI builds its flags from these, so `oshp --help` stays instant."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ..core.labels import check_way
from ..models.registry import method_settings


@dataclass
class TrainConfig:
    """Everything a run depends on. ``model_options`` are passed to the method (e.g. an EOPNetConfig field).

    Fields with ``metadata["cli"]`` are `oshp train` flags (``--batch-size`` for ``batch_size``), built from here.
    """

    data_root: str = "data/synthetic"
    dataset: str | None = None
    fold: int = 1
    way: str = "k"
    method: str = "eopnet"
    profile: str = "demo"
    backbone: str = field(default="mobilenetv3_small_100", metadata={"cli": 'timm backbone name'})
    pretrained: bool = field(default=False, metadata={"cli": "start from timm's pretrained weights"})
    backbone_weights: str | None = field(default=None, metadata={
        "cli": "local checkpoint for the backbone, 'synthetic' for the shipped synthetic-pretrained one (oshp "
               "pretrain), or 'none'"})
    image_size: int = field(default=128, metadata={"cli": 'training crop side'})
    test_size: int | None = field(default=None, metadata={
        "cli": "side the model sees at test time, its predictions upsampled back to the native size for scoring; "
               "0: the native images, as the paper"})
    """Meta-test (and `oshp parse`) input side; None: native resolution (paper). A model trained on small crops is
    tested at the scale it learnt, while scoring stays at the native resolution (oshp.models.episode.AtInputSize)."""
    epochs: int = field(default=12, metadata={"cli": 'training epochs'})
    batch_size: int = field(default=8, metadata={"cli": 'episodes per step'})
    lr: float = field(default=0.02, metadata={"cli": 'initial learning rate'})
    optimizer: str = field(default="sgd", metadata={"cli": 'sgd (paper) or adamw'})
    """'sgd' (paper: SGD, momentum 0.9, weight decay 5e-4 as in the release) or 'adamw' (the CPU demo trains from
    scratch for minutes, where SGD's slow start leaves the nearest-prototype head predicting background)."""
    momentum: float = 0.9
    weight_decay: float = field(default=5e-4, metadata={"cli": 'weight decay'})
    poly_power: float = 0.9
    lr_schedule: str = field(default="poly", metadata={"cli": 'poly (paper) or release'})
    """'poly': per-iteration poly decay (paper). 'release': the poly value applied every 10 epochs with the
    optimiser re-created (momentum reset), as the authors' code does (facts 4)."""
    pairs_per_epoch: int | None = field(default=None, metadata={"cli": 'cap on episodes per epoch'})
    """Cap on training episodes per epoch (None: every query of the query pool once, as in the paper)."""
    one_way_pairs_per_class: int = 1500
    fixed_supports: bool = False
    release_pools: bool = False
    """The release's 7,500-image meta-train query pool for LIP and CIHP too (paper: 14,000)."""
    augment: bool = True
    label_novel: bool = field(default=False, metadata={"cli": 'the oracle bound, not one-shot: keep the novel classes labelled in meta-training'})
    """The oracle bound (not one-shot): novel classes stay labelled in meta-training."""
    pseudo_class_prob: float = 0.0
    """Share of k-way training episodes that get a pasted pseudo class (against the testing bias; oshp.data.synth.pseudo)."""
    val_pairs_per_class: int = field(default=10, metadata={"cli": 'held-out episodes per class scored after every epoch'})
    """Held-out meta-test episodes per class scored after every epoch (mean base/novel class accuracy, Fig. 7); with
    ``validation_share``, episodes on the held-out meta-train images instead."""
    validate_every: int = 1
    """Score the held-out episodes after every N-th epoch and after the last (tuning needs only the last)."""
    validation_share: float = field(default=0.0, metadata={
        "cli": "share of the meta-train images held out of training as a validation split, scored after every epoch "
               "on the base classes instead of meta-test pairs (what `oshp tune` chooses settings on)"})
    """0: train on every meta-train image. A share > 0 holds out that share of both meta-train pools (the same images
    for every run, oshp.data.pairs.validation_holdout); the per-epoch log then scores them, so a setting chosen from
    the log never saw a meta-test image or a novel-class label."""
    workers: int = field(default=0, metadata={"cli": 'data-loader processes'})
    seed: int = field(default=0, metadata={"cli": 'random seed'})
    device: str = field(default="auto", metadata={"cli": 'auto, cpu or cuda'})
    amp: bool = True
    """bf16 autocast and channels-last on CUDA; ignored on the CPU."""
    model_options: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


PROFILE_NOTES: dict[str, str] = {
    "paper": "the paper's configuration: Xception-65, 512 px, 50 epochs; a GPU and the real datasets. The paper "
             "starts from COCO-pretrained DeepLab v3+ weights: pass --backbone-weights deeplab_v3plus_v3.pth; "
             "without it timm's ImageNet Xception-65 weights are fetched (a fallback, not the paper's start)",
    "demo": "the CPU demo: a small synthetic-pretrained backbone on 64 px crops, 6 x 400 episodes, about a minute "
            "on 2 CPU cores",
    "quick": "the demo's model for 3 x 400 episodes, half a minute on a CPU",
    "smoke": "seconds on a CPU; checks that everything runs, the numbers mean nothing",
}
"""What each training profile is for and what it costs, said wherever a profile is chosen."""

PROFILES: dict[str, dict[str, Any]] = {
    # The paper's start point is the release's COCO-pretrained DeepLab v3+ file (--backbone-weights, a Graphonomy
    # state dict: the Xception body and the low-level projection load); timm's ImageNet weights are the fallback.
    "paper": dict(backbone="xception65", pretrained=True, image_size=512, epochs=50, batch_size=2, lr=1e-3,
                  pairs_per_epoch=None, val_pairs_per_class=15, workers=4),
    # The demo fine-tunes the shipped synthetic-pretrained backbone (`oshp pretrain`, the stand-in for the paper's
    # COCO-pretrained one) on a CPU: AdamW, because SGD's slow start leaves the nearest-prototype head predicting
    # background everywhere in that budget (measured; docs/synthetic-results.md). 64 px crops of the 192 px images,
    # tested at 64 px and scored at 192 px: 3.2 times the training steps per CPU-second of 128 px at the same quality,
    # and every method's parsing loss class-balanced: with pixel-averaged CE a part is a few percent of the loss, SG-One
    # and PFENet never leave the background prior and EOP-Net's NPM drifts to background over longer runs
    # (docs/synthetic-results.md#the-64-px-demo). lr 2e-3 is for a method without a rate of its own: every registered
    # method trains at the rate `oshp tune` chose for it and the way on a validation split (Method.tuned).
    "demo": dict(backbone="mobilenetv3_small_100", pretrained=False, backbone_weights="synthetic", image_size=64,
                 test_size=64, epochs=6, batch_size=8, optimizer="adamw", lr=2e-3, weight_decay=1e-4,
                 pairs_per_epoch=400, val_pairs_per_class=10, workers=0,
                 model_options={"class_balanced_loss": True}),
    # Half the demo's budget, for quick comparisons and the notebooks' own training cells.
    "quick": dict(backbone="mobilenetv3_small_100", pretrained=False, backbone_weights="synthetic", image_size=64,
                  test_size=64, epochs=3, batch_size=8, optimizer="adamw", lr=2e-3, weight_decay=1e-4,
                  pairs_per_epoch=400, val_pairs_per_class=10, workers=0,
                  model_options={"class_balanced_loss": True}),
    "smoke": dict(backbone="mobilenetv3_small_050", pretrained=False, image_size=64, epochs=2, batch_size=2,
                  lr=0.01, pairs_per_epoch=8, one_way_pairs_per_class=2, val_pairs_per_class=1, workers=0),
}


def make_config(profile: str = "demo", **overrides: Any) -> TrainConfig:
    """A profile's configuration, then the method's own settings for it (e.g. its paper backbone, its model options
    on the small demo backbone), then ``overrides`` (``model_options`` are merged at each step, not replaced)."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose one of {', '.join(PROFILES)}")
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = set(overrides) - fields
    if unknown:
        raise ValueError(f"unknown training settings {sorted(unknown)}; known: {sorted(fields)}")
    values = dict(PROFILES[profile])
    model_options = dict(values.pop("model_options", {}))
    own = method_settings(overrides.get("method") or TrainConfig.method, profile,
                          check_way(overrides.get("way") or TrainConfig.way))
    model_options.update(own.pop("model_options"))
    values.update(own)
    model_options.update(overrides.pop("model_options", None) or {})
    values.update({k: v for k, v in overrides.items() if v is not None})
    cfg = TrainConfig(profile=profile, model_options=model_options, **values)
    cfg.way = check_way(cfg.way)
    if cfg.optimizer not in ("sgd", "adamw"):
        raise ValueError(f"optimizer must be 'sgd' or 'adamw', not {cfg.optimizer!r}")
    if cfg.lr_schedule not in ("poly", "release"):
        raise ValueError(f"lr_schedule must be 'poly' or 'release', not {cfg.lr_schedule!r}")
    return cfg


def config_from_dict(data: dict) -> TrainConfig:
    """A TrainConfig from its JSON form (config.json or a checkpoint); keys of newer versions are ignored."""
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in data.items() if k in known})


@dataclass
class PretrainConfig:
    """A synthetic pretraining run (`oshp pretrain`); fields with ``metadata["cli"]`` are its flags."""

    backbone: str = field(default="mobilenetv3_small_100", metadata={"cli": "timm backbone"})
    image_size: int = field(default=128, metadata={"cli": 'episode image side'})
    steps: int = field(default=1500, metadata={"cli": 'optimiser steps'})
    batch_size: int = field(default=8, metadata={"cli": 'episodes per step'})
    lr: float = field(default=2e-3, metadata={"cli": 'AdamW learning rate, poly decay'})
    weight_decay: float = 1e-4
    embed_dim: int = field(default=64, metadata={"cli": 'metric space width'})
    num_classes: int = 18
    """Class slots of the pretraining episodes (parts get random slots; the number only bounds the parts per episode)."""
    keep_prob: float = 0.8
    distractor_prob: float = 0.5
    seed: int = field(default=0, metadata={"cli": 'random seed'})
    workers: int = field(default=0, metadata={"cli": 'episode-drawing processes'})
    device: str = field(default="auto", metadata={"cli": 'auto, cpu or cuda'})
    checkpoint_every: int = 250


def cli_fields(config: type) -> list[dataclasses.Field]:
    """The fields of a configuration dataclass that the command line exposes as flags (``metadata["cli"]``)."""
    return [f for f in dataclasses.fields(config) if "cli" in f.metadata]
