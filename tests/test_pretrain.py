"""Synthetic pretraining (issue #6): creature episodes, `oshp pretrain`, loading its backbone, pseudo classes, bounds."""


import numpy as np
import pytest
import torch

from oshp.cli import main
from oshp.data.synth.creatures import creature_episode, make_species
from oshp.data.episodes import MetaTrainEpisodes
from oshp.data.synth.pseudo import paste_pseudo_class
from oshp.engine.evaluate import suppress_novel_logits
from oshp.models.registry import build_model
from oshp.models.backbone import DeepLabFeatures
from oshp.engine.config import PretrainConfig
from oshp.engine.pretrain import pretrain
from oshp.models.weights import BACKBONE_FILE, resolve_backbone_weights, shipped_backbone

pytestmark = pytest.mark.usefixtures("single_thread")


def test_species_are_random_part_trees():
    for seed in range(20):
        sp = make_species(np.random.default_rng(seed))
        assert 3 <= len(sp.parts) <= 6 and sp.parts[0].parent == -1
        assert all(0 <= p.parent < i for i, p in enumerate(sp.parts) if i)


def test_creature_episodes_are_repeatable_and_consistent():
    a, b = creature_episode(5, 11, size=64), creature_episode(5, 11, size=64)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert a["query_image"].shape == (3, 64, 64) and a["query_image"].dtype == torch.float32
    assert 0 <= float(a["query_image"].min()) and float(a["query_image"].max()) <= 1
    for i in range(12):
        ep = creature_episode(0, i, size=64)
        support = set(ep["support_label"].unique().tolist())
        query = set(ep["query_label"].unique().tolist())
        assert support - {0}, "the support always shows a part"
        assert max(support | query) < 18
    different = creature_episode(5, 12, size=64)
    assert not torch.equal(a["query_image"], different["query_image"])


def test_query_parts_are_only_the_annotated_ones():
    """Parts left out of the support mask are background in the query too (like novel classes in training)."""
    leftover = 0
    for i in range(30):
        ep = creature_episode(1, i, size=64, keep_prob=0.5)
        annotated = set(ep["support_label"].unique().tolist()) - {0}
        extra = set(ep["query_label"].unique().tolist()) - {0} - annotated
        leftover += len(extra)  # a query may show an annotated part the support hides, nothing else
    assert leftover <= 3


def test_pretrain_writes_a_backbone_every_method_loads(tmp_path):
    cfg = PretrainConfig(backbone="mobilenetv3_small_050", image_size=64, steps=3, batch_size=2, embed_dim=16,
                         checkpoint_every=2)
    summary = pretrain(cfg, tmp_path / "pt", progress=False)
    path = tmp_path / "pt" / BACKBONE_FILE
    assert summary["steps"] == 3 and len(summary["sha256"]) == 64 and path.is_file()
    saved = torch.load(path, weights_only=True)
    assert saved["format"] == "oshp-backbone-1" and saved["backbone"] == "mobilenetv3_small_050"
    net = DeepLabFeatures("mobilenetv3_small_050", weights=path)
    for key, value in net.state_dict().items():
        assert torch.equal(value, saved["state_dict"][key]), key
    model = build_model("eopnet", num_classes=18, way="k", backbone="mobilenetv3_small_050", backbone_weights=str(path),
                        embed_dim=16)
    assert torch.equal(model.backbone.fuse[0].weight, saved["state_dict"]["fuse.0.weight"])
    with pytest.raises(ValueError, match="holds weights of backbone .mobilenetv3_small_050.*uses .resnet18."):
        DeepLabFeatures("resnet18", weights=path)
    # resuming a finished run does nothing more; other settings are refused
    again = pretrain(cfg, tmp_path / "pt", resume=True, progress=False)
    assert again["steps"] == 3
    with pytest.raises(ValueError, match="other settings"):
        pretrain(PretrainConfig(**{**cfg.__dict__, "lr": 0.1}), tmp_path / "pt", resume=True, progress=False)


def test_backbone_weights_names():
    assert resolve_backbone_weights(None, "x") is None and resolve_backbone_weights("none", "x") is None
    assert resolve_backbone_weights("/a/b.pt", "x") == "/a/b.pt"
    with pytest.raises(ValueError, match="oshp pretrain --backbone resnet18"):
        resolve_backbone_weights("synthetic", "resnet18")
    assert shipped_backbone("mobilenetv3_small_100").is_file()


def test_pretrain_cli_help(capsys):
    with pytest.raises(SystemExit):
        main(["pretrain", "--help"])
    assert "creatures" in capsys.readouterr().out


def test_pseudo_class_is_pasted_into_both_images():
    rng = np.random.default_rng(0)
    ep = {"support_image": torch.full((3, 48, 48), 0.5), "query_image": torch.full((3, 48, 48), 0.5),
          "support_label": torch.zeros(48, 48, dtype=torch.long), "query_label": torch.zeros(48, 48, dtype=torch.long),
          "query_label_full": torch.zeros(48, 48, dtype=torch.long),
          "support_human": torch.ones(48, 48, dtype=torch.long), "query_human": torch.ones(48, 48, dtype=torch.long),
          "support_classes": torch.zeros(18, dtype=torch.bool)}
    ep["support_label"][:4] = 2
    paste_pseudo_class(ep, rng, 5)
    for side in ("support", "query"):
        where = ep[f"{side}_label"] == 5
        assert where.any()
        assert (ep[f"{side}_human"][where] == 0).all() and (ep[f"{side}_human"][~where] == 1).all()
        changed = (ep[f"{side}_image"] != 0.5).any(0)
        assert not changed[~where].any(), "only the pasted shape's pixels change"
    assert torch.equal(ep["query_label_full"], ep["query_label"]) and bool(ep["support_classes"][5])


def test_oracle_keeps_novel_labels_and_pseudo_classes_need_k_way(tiny_synthetic):
    novel = tiny_synthetic.spec.novel_ids(1)
    seen = set()
    oracle = MetaTrainEpisodes(tiny_synthetic, 1, way="k", size=64, augment=False, label_novel=True)
    plain = MetaTrainEpisodes(tiny_synthetic, 1, way="k", size=64, augment=False)
    for i in range(len(plain.refs)):
        assert not set(plain[i]["support_label"].unique().tolist()) & set(novel)
        seen |= set(oracle[i]["support_label"].unique().tolist())
    assert seen & set(novel)
    with pytest.raises(ValueError, match="pseudo classes"):
        MetaTrainEpisodes(tiny_synthetic, 1, way="1", size=64, pseudo_class_prob=0.5)
    pseudo = MetaTrainEpisodes(tiny_synthetic, 1, way="k", size=64, augment=False, pseudo_class_prob=1.0)
    labels = set(pseudo[0]["support_label"].unique().tolist()) | set(pseudo[0]["query_label"].unique().tolist())
    assert labels & set(novel)


def test_suppress_novel_never_predicts_a_novel_class():
    logits = torch.zeros(1, 18, 2, 2)
    logits[0, 5] = 3.0  # a novel class of ATR fold 1 (skirt) wins everywhere
    logits[0, 0, 0, 0] = 4.0
    pred = suppress_novel_logits(logits, [5, 6, 7], None).argmax(1)
    assert pred[0, 0, 0] == 0 and (pred != 5).all()
    one_way = torch.tensor([[[[0.0]], [[2.0]]]])
    assert suppress_novel_logits(one_way, [5], 5).argmax(1).item() == 0
    assert suppress_novel_logits(one_way, [5], 2).argmax(1).item() == 1


def test_shipped_backbone_matches_its_checksum():
    from oshp.models.weights import SHIPPED_DIR
    from oshp.core.io import sha256

    sums = dict(reversed(line.split()) for line in (SHIPPED_DIR / "SHA256SUMS").read_text().splitlines() if line)
    assert sums, "SHA256SUMS lists the shipped files"
    for name, digest in sums.items():
        assert sha256(SHIPPED_DIR / name) == digest, f"{name} differs from its checksum; regenerate SHA256SUMS"
    saved = torch.load(shipped_backbone("mobilenetv3_small_100"), weights_only=True)
    assert saved["format"] == "oshp-backbone-1" and saved["backbone"] == "mobilenetv3_small_100"
