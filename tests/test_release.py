"""The authors' release: its checkpoints convert key for key, and EOP-Net with ``release_compat`` computes what the
release's own code computes (float64 reference outputs of the release-parity fixture, tests/fixtures/release_parity).
Each option that makes the difference changes what it should on a tiny tensor; the COCO DeepLab start point loads
what EOP-Net uses of it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from timm.models.xception_aligned import XceptionModule

import release_fixture as rf
from oshp.cli import main
from oshp.engine.evaluate import PROTOCOLS, default_protocol, restrict_to_model_classes
from oshp.engine.run import load_run_model
from oshp.models.backbone import DeepLabFeatures, rectify_residual_inputs, set_batchnorm_eps, tap_before_activation
from oshp.models.eopnet import EOPNet, EOPNetConfig
from oshp.models.heads import AGMHead, NPMHead
from oshp.models.release import RELEASE_DROPPED_PREFIXES, convert_release_state, xception_key

pytestmark = pytest.mark.usefixtures("single_thread")

FILES = {"kway_18": ("k", 18), "1way_18": ("1", 18), "kway_20": ("k", 20)}


def _release_model(name: str) -> EOPNet:
    way, classes = FILES[name]
    return EOPNet(EOPNetConfig.release_compat(num_classes=classes, way=way, backbone="xception65", embed_dim=256))


@pytest.fixture(scope="module")
def converted() -> dict[str, EOPNet]:
    """Each fixture file's seed-0 state dict, converted and strictly loaded, in float64 and eval mode."""
    models = {}
    for name, (way, _) in FILES.items():
        model = _release_model(name)
        model.load_state_dict(convert_release_state(rf.release_state(name), way).state, strict=True)
        models[name] = model.double().eval()
    return models


# ------------------------------------------------------------------------------------------------ key manifest
@pytest.mark.parametrize("name", list(FILES))
def test_every_release_key_is_accounted_for_and_loads_strictly(name):
    way, _ = FILES[name]
    state = rf.release_state(name)
    assert rf.checksum_mismatches(name, state) == []  # the fill rule reproduces the fixture's bytes
    result = convert_release_state(state, way)
    assert result.unknown == []
    assert not set(result.mapped) & set(result.dropped)
    assert set(result.mapped) | set(result.dropped) == set(state)  # every key mapped or knowingly dropped
    assert len(result.dropped) == 66 and all(k.startswith(RELEASE_DROPPED_PREFIXES) for k in result.dropped)
    model = _release_model(name)
    expected = model.state_dict()
    assert set(result.state) == set(expected)  # 873 keys: nothing missing, nothing extra
    assert len(expected) == 873
    assert all(result.state[k].shape == expected[k].shape for k in expected)
    model.load_state_dict(result.state, strict=True)


def test_xception_keys_follow_the_block_structure():
    assert xception_key("xception_features.conv1.weight") == "stem_0.conv.weight"
    assert xception_key("xception_features.block1.rep.4.pointwise_bn.bias") == "blocks_0.stack.conv3.bn_pw.bias"
    assert xception_key("xception_features.block2.rep.3.depthwise.weight") == "blocks_1.stack.conv2.conv_dw.weight"
    assert xception_key("xception_features.block2.block2_lastconv.1.pointwise.weight") == \
        "blocks_1.stack.conv3.conv_pw.weight"
    assert xception_key("xception_features.block20.skipbn.running_var") == "blocks_19.shortcut.bn.running_var"
    assert xception_key("xception_features.conv5.pointwise_bn.weight") == "blocks_20.stack.conv3.bn_pw.weight"
    assert xception_key("aspp1.bn.weight") is None


def test_value_transforms():
    state = rf.release_state("kway_18")
    out = convert_release_state(state, "k").state
    assert torch.equal(out["backbone.body.stem_0.conv.weight"], state["xception_features.conv1.weight"].flip(1))
    assert torch.equal(out["coarse_agm.classifier.weight"][0], state["s1_semantic.weight"][1])
    assert torch.equal(out["coarse_agm.omega.weight"], torch.ones(1, 1, 1, 1))
    dynamic = state["prototype"].sum(1) != 0
    assert torch.equal(out["fine_memory.num_updates"], dynamic.long())
    assert not bool(out["coarse_memory.num_updates"].any())  # the release never reads the coarse memory at test time
    one = convert_release_state(rf.release_state("1way_18"), "1").state
    w, b = rf.release_state("1way_18")["npm_class.weight"].double().flatten(), \
        rf.release_state("1way_18")["npm_class.bias"].double()
    cos = torch.linspace(-1, 1, 5, dtype=torch.float64)
    background = one["npm.phi_bg.weight"].double().flatten() * (1 - cos) + one["npm.phi_bg.bias"].double()
    assert torch.allclose(background, w[0] * cos + b[0], atol=1e-6)  # phi_bg(omega(1 - cos)) = W0 cos + b0


# ------------------------------------------------------------------------------------------------ parity
def _inputs(ep: dict, way: str) -> tuple[torch.Tensor, ...]:
    image = lambda a: torch.from_numpy(a).permute(2, 0, 1)[None].double() / 255  # noqa: E731  (RGB in [0, 1])
    label = torch.from_numpy(ep["support_label"].astype(np.int64))[None]
    if way == "1":
        label = label * int(ep["class_id"])  # the release's 1-way loader keeps 0/1; oshp reads raw ids
    human = torch.from_numpy(ep["support_human"].astype(np.int64))[None]
    return image(ep["query_rgb"]), image(ep["support_rgb"]), label, human


def _rel(ours: torch.Tensor, ref: np.ndarray) -> float:
    ref_t = torch.from_numpy(ref)
    assert ours.shape == ref_t.shape
    return float((ours - ref_t).abs().max() / ref_t.abs().max())


@pytest.mark.parametrize("name", list(FILES))
def test_converted_model_computes_the_release_outputs(converted, name):
    way, _ = FILES[name]
    model = converted[name]
    for n, ep in enumerate(rf.episodes(name)):
        query, support, label, human = _inputs(ep, way)
        with torch.no_grad():
            out = model(query, support, label, support_human=human)
            if "query_stride16" in ep:
                assert _rel(model.backbone.features(query)[-1], ep["query_stride16"]) <= 1e-10, n
                assert _rel(model.backbone(query), ep["query_fused"]) <= 1e-10, n
        if way == "1":  # the converter writes the 1-way background head's b0 + W0 in float32
            assert float((out["npm"] - torch.from_numpy(ep["npm_logits"])).abs().max()) <= 1e-6, n
        else:
            assert _rel(out["npm"], ep["npm_logits"]) <= 1e-10, n
        assert _rel(out["agm"], ep["agm_logits"]) <= 1e-10, n
        assert _rel(out["coarse"], ep["coarse_logits"]) <= 1e-10, n
        assert torch.equal(out["pred"].argmax(1), torch.from_numpy(ep["pred"])), n
        if way == "k":
            assert list(out["classes"][0]) == ep["support_ids"].tolist()
            dynamic = model.fine_memory.num_updates[ep["support_ids"]] > 0
            assert ep["support_ids"][dynamic.numpy()].tolist() == ep["dynamic_ids"].tolist()


def test_float32_run_stays_within_the_fixture_tolerance(converted):
    model = converted["kway_18"]
    ep = rf.episodes("kway_18")[1]
    query, support, label, human = _inputs(ep, "k")
    single = _release_model("kway_18")
    single.load_state_dict(model.state_dict())
    with torch.no_grad():
        out = single.eval()(query.float(), support.float(), label, support_human=human)
    assert _rel(out["npm"].double(), ep["npm_logits"]) <= 1e-5


@pytest.mark.parametrize("wrong", ["bn_eps", "residual_input", "low_level_tap", "fusion_align_corners",
                                   "background_mean", "agm_absent"])
def test_each_release_option_is_needed(converted, wrong):
    """Turning any one option back to oshp's default moves some stored output beyond the tolerance."""
    default = EOPNetConfig.__dataclass_fields__[wrong].default
    model = EOPNet(EOPNetConfig.release_compat(num_classes=18, way="k", backbone="xception65", embed_dim=256,
                                               **{wrong: default}))
    model.load_state_dict(converted["kway_18"].state_dict())
    model = model.double().eval()
    ep = rf.episodes("kway_18")[0]
    with torch.no_grad():
        out = model(*_inputs(ep, "k")[:3], support_human=_inputs(ep, "k")[3])
    worst = max(_rel(out[key], ep[f"{key}_logits"]) for key in ("npm", "agm", "coarse"))
    assert worst > 1e-6


# ------------------------------------------------------------------------------------------------ options, tiny
def test_bn_eps_sets_every_batchnorm():
    body = torch.nn.Sequential(torch.nn.Conv2d(2, 2, 1), torch.nn.BatchNorm2d(2, eps=1e-3), torch.nn.BatchNorm2d(2))
    assert set_batchnorm_eps(body, 1e-5) == 2
    assert body[1].eps == body[2].eps == 1e-5
    bn = body[1].eval()
    bn.running_var.fill_(1e-4)
    x = torch.ones(1, 2, 1, 1, dtype=torch.float64)
    assert torch.allclose(bn.double()(x), x / (1e-4 + 1e-5) ** 0.5)


def test_rectified_residual_adds_relu_of_the_input():
    torch.manual_seed(0)
    block = XceptionModule(4, 4, norm_layer=torch.nn.BatchNorm2d).eval()  # starts with a ReLU; identity shortcut
    x = torch.randn(1, 4, 6, 6)
    plain = block(x)
    assert torch.allclose(plain, block.stack(x) + x)
    assert rectify_residual_inputs(block) == 1
    assert torch.allclose(block(x), block.stack(x) + F.relu(x))
    assert not torch.allclose(block(x), plain)


def test_pre_activation_tap_records_the_tensor_before_the_relu():
    body = torch.nn.Sequential()
    body.add_module("conv", torch.nn.Conv2d(1, 1, 1, bias=False))
    body.add_module("act", torch.nn.ReLU(inplace=True))
    torch.nn.init.constant_(body.conv.weight, -1.0)
    assert tap_before_activation(body, "act") == "act"
    x = torch.ones(1, 1, 2, 2)
    assert torch.equal(body(x), torch.zeros(1, 1, 2, 2))
    assert torch.equal(body.act.recorded_input, -x)  # not rectified in place
    with pytest.raises(ValueError, match="activation layer"):
        tap_before_activation(body, "conv")


def test_fusion_align_corners_is_the_fusion_upsampling():
    torch.manual_seed(0)
    feats = DeepLabFeatures("mobilenetv3_small_050", fusion_align_corners=True).eval()
    x = torch.rand(1, 3, 48, 40)
    with torch.no_grad():
        levels = feats.features(x)
        low, high = feats.low_proj(levels[feats.low_index]), feats.high_proj(levels[feats.high_index])
        manual = feats.fuse(torch.cat([F.interpolate(high, size=low.shape[-2:], mode="bilinear",
                                                     align_corners=True), low], 1))
        assert torch.allclose(feats(x), manual)
        feats.fusion_align_corners = False
        assert not torch.allclose(feats(x), manual)


def test_npm_background_over_all_ids_counts_absent_ids_as_cosine_zero():
    head = NPMHead(scale_init=10.0).double()
    sims = torch.tensor([[[0.5]], [[0.25]]], dtype=torch.float64)  # one sample, two support classes
    group = torch.zeros(2, dtype=torch.long)
    _, bg_support = head(sims, group, 1)
    _, bg_all = head(sims, group, 1, num_ids=4)
    assert torch.allclose(bg_support, torch.tensor([[[10 * (0.5 + 0.75) / 2]]], dtype=torch.float64))
    assert torch.allclose(bg_all, torch.tensor([[[10 * (0.5 + 0.75 + 1 + 1) / 4]]], dtype=torch.float64))


def test_agm_absent_ids_use_the_head_on_plain_features():
    torch.manual_seed(0)
    head = AGMHead(dim=4).double().eval()
    feats = torch.randn(1, 4, 3, 3, dtype=torch.float64)
    sims = torch.rand(2, 3, 3, dtype=torch.float64)
    group = torch.zeros(2, dtype=torch.long)
    with torch.no_grad():
        fg, bg, plain = head.forward_with_absent(feats, sims, group, 1, num_ids=5)
        scores = head.classifier(head.trunk(torch.cat([feats * sims[:, None] + feats, feats])))
        assert torch.allclose(plain[0], scores[2, 0])  # r = 0 * h + h
        mean = (scores[0, 1] + scores[1, 1] + 3 * scores[2, 1]) / 5
        assert torch.allclose(bg[0], head.omega(mean[None, None])[0, 0])
        fg_plain, bg_plain = head(feats.expand(2, -1, -1, -1), sims, group, 1)
        assert torch.allclose(fg, fg_plain)
        assert torch.allclose(head.forward_with_absent(feats, sims, group, 1)[1], bg_plain)


def test_agm_without_added_features():
    head = AGMHead(dim=2, adds_features=False)
    feats, sims = torch.full((1, 2, 1, 1), 2.0), torch.full((1, 1, 1), 0.5)
    assert torch.equal(head.attend(feats, sims), torch.full((1, 2, 1, 1), 1.0))
    head.adds_features = True
    assert torch.equal(head.attend(feats, sims), torch.full((1, 2, 1, 1), 3.0))


def test_release_compat_trains():
    """The release's computation keeps autograd intact (no in-place operation on a saved tensor)."""
    torch.manual_seed(0)
    model = EOPNet(EOPNetConfig.release_compat(num_classes=6, backbone="xception65", embed_dim=16)).train()
    image = torch.rand(1, 3, 32, 32)
    label = torch.zeros(1, 32, 32, dtype=torch.long)
    label[:, 8:24, 8:16], label[:, 8:24, 16:24] = 1, 2
    out = model(image, image.flip(-1), label.flip(-1), query_label=label, epoch=30, max_epoch=40)
    out["loss"].backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert model.backbone.body.stem_0.conv.weight.grad.abs().sum() > 0


def test_release_protocol():
    assert default_protocol({"release_compat": True}) == PROTOCOLS["release"] == {"binary_every": 10,
                                                                                  "gt_classes": "model"}
    assert default_protocol({}) == PROTOCOLS["oshp"]
    target = torch.tensor([[[0, 3, 5], [255, 7, 3]]])
    kept = restrict_to_model_classes(target, [(3,)], torch.nn.Identity())
    assert torch.equal(kept, torch.tensor([[[0, 3, 0], [255, 0, 3]]]))
    with pytest.raises(ValueError, match="gt_classes='support'"):
        restrict_to_model_classes(target, None, torch.nn.Identity())


# ------------------------------------------------------------------------------------------------ COCO start point
@pytest.fixture(scope="module")
def deeplab_file(tmp_path_factory) -> Path:
    """A Graphonomy DeepLab v3+ (21 classes) state dict shaped like the release's COCO start point."""
    path = tmp_path_factory.mktemp("coco") / "deeplab_v3plus_v3.pth"
    torch.save(rf.release_state("coco"), path)
    return path


def test_deeplab_file_loads_the_body_and_low_level_projection(deeplab_file):
    state = rf.release_state("coco")
    torch.manual_seed(0)
    fresh = DeepLabFeatures("xception65")
    torch.manual_seed(0)
    feats = DeepLabFeatures("xception65", weights=deeplab_file)
    report = feats.weights_report
    assert report["loaded"] == 798 and report["skipped"] == 80
    assert report["initialised"] == ["fuse", "high_proj"]
    assert torch.equal(feats.body.stem_0.conv.weight, state["xception_features.conv1.weight"].flip(1))
    assert torch.equal(feats.body.blocks_19.shortcut.bn.running_var,
                       state["xception_features.block20.skipbn.running_var"])
    assert torch.equal(feats.low_proj[0].weight, state["feature_projection_conv1.weight"])
    assert torch.equal(feats.fuse[0].weight, fresh.fuse[0].weight)  # decoder.0 is not loaded, as in the release
    assert torch.equal(feats.high_proj[0].weight, fresh.high_proj[0].weight)


def test_deeplab_file_into_another_backbone_names_the_fix(deeplab_file):
    with pytest.raises(ValueError, match="pass --backbone xception65"):
        DeepLabFeatures("mobilenetv3_small_050", weights=deeplab_file)


# ------------------------------------------------------------------------------------------------ the command
@pytest.fixture(scope="module")
def release_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("release") / "atr_fold1_kway.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in rf.release_state("kway_18").items()}}, path)
    return path


def test_convert_release_writes_a_run_folder(release_file, tmp_path, capsys):
    out = tmp_path / "atr_kway_fold1"
    assert main(["convert-release", str(release_file), "--dataset", "atr", "--fold", "1", "--way", "k",
                 "--out", str(out)]) == 0
    assert "867 tensors mapped, 66 dropped" in capsys.readouterr().out
    report = json.loads((out / "release.json").read_text())
    assert (report["mapped"], report["dropped"], report["added"]) == (867, 66, 6)
    assert report["dynamic_slots"] == [c for c in range(18) if c % 3]
    cfg, model, _, ckpt = load_run_model(out, device="cpu")
    assert cfg.model_options == {"release_compat": True} and cfg.dataset == "atr" and cfg.profile == "paper"
    assert model.config.background_mean == "all-ids" and model.config.bn_eps == 1e-5
    expected = convert_release_state(rf.release_state("kway_18"), "k").state
    assert all(torch.equal(model.state_dict()[k], v) for k, v in expected.items())
    assert main(["convert-release", str(release_file), "--dataset", "atr", "--fold", "1", "--way", "k",
                 "--out", str(out)]) == 2  # never over a run
    assert "already holds a run" in capsys.readouterr().err


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


@pytest.mark.parametrize("args, message", [
    (["--dataset", "atr", "--way", "1"], "is a k-way checkpoint"),
    (["--dataset", "lip", "--way", "k"], "pass --dataset atr"),
])
def test_convert_release_refuses_the_wrong_description(release_file, tmp_path, capsys, args, message):
    assert main(["convert-release", str(release_file), "--fold", "1", "--out", str(tmp_path / "r"), *args]) == 2
    assert message in _one_line_error(capsys)
    assert not (tmp_path / "r").exists()


def test_convert_release_refuses_foreign_files(tmp_path, deeplab_file, capsys):
    def convert(path: Path) -> str:
        assert main(["convert-release", str(path), "--dataset", "atr", "--fold", "1", "--way", "k",
                     "--out", str(tmp_path / "r")]) == 2
        return _one_line_error(capsys)

    assert "a DeepLab backbone" in convert(deeplab_file)
    pickled = tmp_path / "objects.pth"
    torch.save({"model": rf.release_state("kway_18"), "epoch": 39, "args": object()}, pickled)
    assert "holds Python objects" in convert(pickled)
    extra = tmp_path / "extra.pth"
    torch.save({**rf.release_state("kway_18"), "head.weight": torch.zeros(2)}, extra)
    assert "unknown keys (first: head.weight)" in convert(extra)
    reshaped = tmp_path / "reshaped.pth"
    torch.save({**rf.release_state("kway_18"), "s2_trans.weight": torch.zeros(128, 256, 1, 1)}, reshaped)
    assert "s2_trans.weight is (128, 256, 1, 1), expected (256, 256, 1, 1)" in convert(reshaped)
    assert "is a folder" in convert(tmp_path)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(deeplab_file.read_bytes()[:1000])
    assert "corrupt or truncated" in convert(truncated)
    assert not (tmp_path / "r").exists()
