"""Trainer, evaluation and the CLI around them, on the smoke profile and the tiny synthetic dataset."""

import json
from types import SimpleNamespace
import os
import socket

import numpy as np
import pytest
import torch
from PIL import Image

from oshp.cli import main
from oshp.core.errors import DatasetError
from oshp.engine.evaluate import evaluate_run
from oshp.engine.config import make_config
from oshp.engine.run import CHECKPOINT
from oshp.engine.train import Trainer, train
from oshp.core.schedule import poly_lr


def smoke(ds, **overrides):
    return make_config("smoke", data_root=str(ds.root), **overrides)


def test_profiles_and_overrides():
    cfg = make_config("paper")
    assert (cfg.backbone, cfg.image_size, cfg.epochs, cfg.batch_size, cfg.lr) == ("xception65", 512, 50, 2, 1e-3)
    demo = make_config("demo", epochs=3, model_options={"alpha": 0.01})
    assert demo.epochs == 3 and demo.model_options["alpha"] == 0.01 and "embed_dim" in demo.model_options
    assert demo.backbone_weights == "synthetic" and make_config("smoke").backbone_weights is None
    quick = make_config("quick", method="amp", way="1")  # the quick budget keeps each method's demo settings
    assert (quick.epochs, quick.model_options) == (3, {"embed_dim": 64, "class_balanced_loss": True})
    assert quick.lr == make_config("demo", method="amp", way="1").lr != make_config("demo", method="amp").lr  # per way
    assert make_config("demo", method="amp", way="1", lr=1e-4).lr == 1e-4  # a given setting wins over a tuned one
    assert make_config("demo", method="pfenet").model_options["class_balanced_loss"]  # CPU budgets: balanced
    assert "class_balanced_loss" not in make_config("paper", method="sgone").model_options
    assert make_config("quick").model_options["warmup_epochs"] == 1
    assert make_config("paper", method="panet").backbone == "vgg16"
    with pytest.raises(ValueError, match="unknown training settings"):
        make_config("demo", epoch=3)
    with pytest.raises(ValueError, match="unknown profile"):
        make_config("fast")


def test_poly_and_release_schedules():
    assert poly_lr(1e-3, 0, 100, 0.9) == 1e-3 and poly_lr(1e-3, 100, 100, 0.9) == 0
    assert poly_lr(1.0, 50, 100, 0.9) == pytest.approx(0.5 ** 0.9)
    cfg = make_config("paper", lr_schedule="release")
    trainer = Trainer.__new__(Trainer)
    trainer.cfg = cfg
    # facts 4: piecewise constant LR of the release
    expected = {0: 1e-3, 8: 1e-3, 9: 8.36e-4, 18: 8.36e-4, 19: 6.50e-4, 39: 2.56e-4, 49: 2.96e-5}
    for epoch, lr in expected.items():
        assert trainer._lr(epoch, 0, 1) == pytest.approx(lr, rel=2e-3), epoch


def test_smoke_train_and_evaluate_kway(tiny_synthetic, tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--data-root", str(tiny_synthetic.root), "--fold", "1", "--profile", "smoke",
                 "--out", str(run), "--quiet"]) == 0
    for name in ("config.json", "checkpoint.pt", "log.jsonl", "train.json"):
        assert (run / name).is_file(), name
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [0, 1]
    assert {"loss", "lr", "val_mean_base_acc", "val_mean_novel_acc"} <= set(log[0])
    assert main(["evaluate", "--run", str(run), "--max-pairs", "4", "--quiet"]) == 0
    metrics = json.loads((run / "metrics_max-pairs-4.json").read_text())
    for key in ("novel_miou", "base_miou", "human_miou", "overall_acc", "mean_base_acc", "mean_novel_acc",
                "per_class_iou", "versions", "config", "seed", "wall_time_s"):
        assert key in metrics, key
    assert "skirt" in metrics["per_class_iou"] and metrics["units"] == "percent"
    assert "pooled" in metrics["details"]["pooling"] or "summed" in metrics["details"]["pooling"]


def test_smoke_train_and_evaluate_one_way(tiny_synthetic, tmp_path):
    run = tmp_path / "run1"
    train(smoke(tiny_synthetic, way="1", fold=2), run, progress=False)
    result = evaluate_run(run, max_pairs=4, progress=False)
    assert result["way"] == "1" and result["binary_miou"] is not None
    assert set(result["per_class_iou"]) >= {"hat", "bag"}


def test_resumed_run_matches_uninterrupted(tiny_synthetic, tmp_path, monkeypatch):
    cfg = smoke(tiny_synthetic, epochs=2, val_pairs_per_class=0)
    train(cfg, tmp_path / "full", progress=False)

    original = Trainer._train_epoch

    def crash_in_second_epoch(self, model, epoch):
        if epoch == 1:
            raise KeyboardInterrupt
        return original(self, model, epoch)

    monkeypatch.setattr(Trainer, "_train_epoch", crash_in_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        train(smoke(tiny_synthetic, epochs=2, val_pairs_per_class=0), tmp_path / "cut", progress=False)
    monkeypatch.setattr(Trainer, "_train_epoch", original)
    assert torch.load(tmp_path / "cut" / CHECKPOINT, weights_only=False)["epoch"] == 0
    train(smoke(tiny_synthetic, epochs=2, val_pairs_per_class=0), tmp_path / "cut", resume=True, progress=False)
    full = torch.load(tmp_path / "full" / CHECKPOINT, weights_only=False)["model"]
    resumed = torch.load(tmp_path / "cut" / CHECKPOINT, weights_only=False)["model"]
    assert full.keys() == resumed.keys()
    for key in full:
        assert torch.equal(full[key], resumed[key]), key


def test_resume_refuses_other_settings(tiny_synthetic, tmp_path):
    train(smoke(tiny_synthetic, epochs=1, val_pairs_per_class=0), tmp_path / "r", progress=False)
    with pytest.raises(DatasetError, match="trained with fold=1, not 2"):
        train(smoke(tiny_synthetic, epochs=1, fold=2, val_pairs_per_class=0), tmp_path / "r", resume=True,
              progress=False)


def test_corrupt_and_mismatched_checkpoints(tiny_synthetic, tmp_path, capsys):
    run = tmp_path / "r"
    train(smoke(tiny_synthetic, epochs=1, val_pairs_per_class=0), run, progress=False)
    good = (run / CHECKPOINT).read_bytes()
    (run / CHECKPOINT).write_bytes(good[: len(good) // 3])
    assert main(["evaluate", "--run", str(run), "--quiet"]) == 2
    assert "corrupt or truncated" in capsys.readouterr().err
    ckpt = torch.load(__import__("io").BytesIO(good), weights_only=False)
    ckpt["config"]["model_options"]["embed_dim"] = 48  # another architecture than the weights
    torch.save(ckpt, run / CHECKPOINT)
    with pytest.raises(DatasetError, match="does not match the model"):
        evaluate_run(run, progress=False)
    torch.save({"model": {}}, run / CHECKPOINT)
    with pytest.raises(DatasetError, match="not an oshp checkpoint"):
        evaluate_run(run, progress=False)
    with pytest.raises(DatasetError, match="missing checkpoint"):
        evaluate_run(tmp_path / "nowhere", progress=False)


def test_parse_and_its_errors(tiny_synthetic, tmp_path, capsys):
    run = tmp_path / "r"
    train(smoke(tiny_synthetic, epochs=1, val_pairs_per_class=0), run, progress=False)
    ids = tiny_synthetic.ids("test")
    query, support = tiny_synthetic.image_path(ids[0]), tiny_synthetic.image_path(ids[15])
    mask = tiny_synthetic.label_path(ids[15])
    out = tmp_path / "pred.png"
    args = ["parse", "--checkpoint", str(run / CHECKPOINT), "--query", str(query), "--support", str(support),
            "--support-mask"]
    assert main(args + [str(mask), "--out", str(out), "--quiet"]) == 0
    labels = np.array(Image.open(tmp_path / "pred_labels.png"))
    assert out.is_file() and labels.shape == (64, 64)
    assert set(np.unique(labels)) <= set(np.unique(tiny_synthetic.load_label(ids[15]))) | {0, 9, 12, 14}
    empty = tmp_path / "empty.png"
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(empty)
    assert main(args + [str(empty), "--out", str(out), "--quiet"]) == 2
    assert "no foreground pixels" in capsys.readouterr().err
    small = tmp_path / "small.png"
    Image.fromarray(np.ones((32, 32), np.uint8)).save(small)
    assert main(args + [str(small), "--out", str(out), "--quiet"]) == 2
    assert "must have the same size" in capsys.readouterr().err
    assert main(args + [str(mask), "--classes", "cape", "--out", str(out), "--quiet"]) == 2
    assert "no class named 'cape'" in capsys.readouterr().err


def test_complexity_cli(capsys):
    assert main(["complexity", "--backbone", "mobilenetv3_small_050", "--image-size", "64", "--ways", "2",
                 "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["params_m"] > 0 and result["gmacs"] > 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, root: str, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    cfg = make_config("smoke", data_root=root, epochs=2, pairs_per_epoch=8, val_pairs_per_class=0)
    trainer = Trainer(cfg, out, progress=False)
    trainer.train()
    torch.save(trainer.model.state_dict(), os.path.join(out, f"rank{rank}.pt"))
    torch.distributed.destroy_process_group()


def test_two_process_ddp_keeps_prototypes_identical(tiny_synthetic, tmp_path):
    torch.multiprocessing.spawn(_ddp_worker, args=(2, _free_port(), str(tiny_synthetic.root), str(tmp_path)),
                                nprocs=2, join=True)
    a, b = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    memory = [k for k in a if "memory" in k]
    assert memory
    # parameters and prototype memories agree; BatchNorm running statistics are per rank by design
    for key in a:
        if not key.endswith(("running_mean", "running_var", "num_batches_tracked")):
            assert torch.allclose(a[key].float(), b[key].float(), atol=1e-6), key
    assert any(a[k].abs().sum() > 0 for k in memory if a[k].is_floating_point())  # memories were written


class _Oracle(torch.nn.Module):
    """Predicts the support's labels; with query = support every prediction is right."""

    def __init__(self, channels: int | None):
        super().__init__()
        self.channels = channels

    def forward(self, query, support, support_label, support_human=None):
        if self.channels == 2:  # 1-way models answer background / foreground
            fg = (support_label > 0) & (support_label < 255)
            logits = torch.stack([~fg, fg], 1).float()
        else:
            logits = torch.nn.functional.one_hot(support_label.clamp(max=17), 18).permute(0, 3, 1, 2).float()
        return {"pred": logits}


@pytest.mark.parametrize("way, channels", [("k", None), ("1", 2)])
def test_evaluation_scores_a_perfect_model_100(tiny_synthetic, way, channels):
    from oshp.data.episodes import MetaTestEpisodes
    from oshp.engine.evaluate import evaluate_episodes

    ids = tiny_synthetic.ids("test")[:6]
    pairs = [{"query": i, "support": i, "class_id": c} for i in ids for c in (2, 11)]  # hair, face: in every image
    episodes = MetaTestEpisodes(tiny_synthetic, pairs, way=way)
    metrics = evaluate_episodes(_Oracle(channels), episodes, tiny_synthetic.spec, 1, way, torch.device("cpu"),
                                progress=False)
    assert metrics["per_class_iou"]["hair"] == pytest.approx(100) and metrics["per_class_iou"]["face"] == 100
    assert metrics["overall_acc"] == pytest.approx(100)
    if way == "1":
        assert metrics["binary_miou"] == pytest.approx(100)


def test_one_way_parse_labels_the_chosen_class(tiny_synthetic, tmp_path):
    from oshp.engine.parse import parse_files

    run = tmp_path / "r1"
    train(smoke(tiny_synthetic, way="1", epochs=1, val_pairs_per_class=0), run, progress=False)
    ids = tiny_synthetic.ids("test")
    result = parse_files(run / CHECKPOINT, tiny_synthetic.image_path(ids[0]), tiny_synthetic.image_path(ids[15]),
                         tiny_synthetic.label_path(ids[15]), tmp_path / "p.png", classes="face")
    labels = np.array(Image.open(tmp_path / "p_labels.png"))
    assert result["classes"] == ["face"] and set(np.unique(labels)) <= {0, 11}
    folder = tmp_path / "queries"
    folder.mkdir()
    for i in ids[:2]:
        Image.open(tiny_synthetic.image_path(i)).save(folder / f"{i}.png")
    parse_files(run / CHECKPOINT, folder, tiny_synthetic.image_path(ids[15]), tiny_synthetic.label_path(ids[15]),
                tmp_path / "out", classes="face")
    for i in ids[:2]:
        assert set(np.unique(np.array(Image.open(tmp_path / "out" / f"{i}_labels.png")))) <= {0, 11}


def test_output_labels_maps_one_way_foreground_to_its_class():
    from types import SimpleNamespace

    from oshp.engine.parse import output_labels

    logits = torch.tensor([[[[3.0, 0.0, 1.0]], [[0.0, 2.0, 4.0]]]])  # 1 x 2 x 1 x 3: background, fg, fg
    mask = np.array([[0, 11, 11]], np.uint8)
    one_way = SimpleNamespace(config=SimpleNamespace(way="1"))
    assert output_labels(one_way, {"pred": logits}, mask).tolist() == [[0, 11, 11]]
    k_way = SimpleNamespace(config=SimpleNamespace(way="k"))
    assert output_labels(k_way, {"pred": logits}, mask).tolist() == [[0, 1, 1]]


def test_fast_path_is_off_on_cpu_unless_forced(tiny_synthetic, tmp_path):
    cfg = smoke(tiny_synthetic)
    assert cfg.amp and not Trainer(cfg, tmp_path / "a", progress=False).fast
    assert not Trainer(cfg, tmp_path / "b", progress=False, fast=False).fast


def test_static_novel_scores_an_oracle_by_the_one_shot_rule(tiny_synthetic, tmp_path):
    """An oracle (--label-novel) fills its novel memory slots; --static-novel forgets them, a one-shot run is unchanged."""
    from oshp.engine.evaluate import forget_novel_prototypes
    from oshp.engine.run import load_run_model

    opts = {"warmup_epochs": 1}  # epoch 1 of 2 makes momentum updates
    oracle, one_shot = tmp_path / "oracle", tmp_path / "one_shot"
    train(smoke(tiny_synthetic, label_novel=True, model_options=opts), oracle, progress=False)
    train(smoke(tiny_synthetic, model_options=opts), one_shot, progress=False)
    novel = [5, 6, 7]  # ATR fold 1
    _, model, _, _ = load_run_model(oracle)
    updates = model.fine_memory.num_updates
    assert (updates[novel] > 0).any(), "the oracle should have trained a novel slot"
    base_before = updates[[c for c in range(18) if c not in novel]].clone()
    assert forget_novel_prototypes(model, novel, 18) == 1
    assert (updates[novel] == 0).all() and torch.equal(updates[[c for c in range(18) if c not in novel]], base_before)

    plain = evaluate_run(one_shot, max_pairs=4, progress=False)
    assert (one_shot / "metrics_max-pairs-4.json").is_file()
    same = evaluate_run(one_shot, max_pairs=4, progress=False, static_novel=True)
    assert (one_shot / "metrics_static_novel_max-pairs-4.json").is_file() and same["static_novel"]
    assert same["per_class_iou"] == plain["per_class_iou"]
    with pytest.raises(ValueError, match="choose one"):
        evaluate_run(one_shot, max_pairs=4, progress=False, static_novel=True, suppress_novel=True)
    assert main(["evaluate", "--run", str(oracle), "--max-pairs", "4", "--static-novel", "--quiet"]) == 0
    assert (oracle / "metrics_static_novel_max-pairs-4.json").is_file()


def test_static_novel_needs_a_prototype_memory(tiny_synthetic, tmp_path):
    from oshp.engine.evaluate import forget_novel_prototypes
    from oshp.models.registry import build_model

    model = build_model("sgone", num_classes=18, way="k", backbone="mobilenetv3_small_050")
    with pytest.raises(ValueError, match="keeps no class prototype memory"):
        forget_novel_prototypes(model, [5, 6, 7], 18)


def test_evaluate_with_test_time_options_and_clear_errors_for_others(tiny_synthetic, tmp_path, capsys):
    run = tmp_path / "run"
    train(smoke(tiny_synthetic, epochs=1, val_pairs_per_class=0), run, progress=False)
    assert main(["evaluate", "--run", str(run), "--max-pairs", "4", "--option", "test_prototypes=static",
                 "--option", "foreground_screening=true", "--quiet"]) == 0
    written = run / "metrics_foreground_screening-true_test_prototypes-static_max-pairs-4.json"
    result = json.loads(written.read_text())
    assert result["eval_options"] == {"test_prototypes": "static", "foreground_screening": True}
    assert result["config"]["model_options"]["test_prototypes"] == "static"
    assert not (run / "metrics.json").exists()  # the standard evaluation is not overwritten
    capsys.readouterr()
    assert main(["evaluate", "--run", str(run), "--max-pairs", "4", "--option", "embed_dim=8", "--quiet"]) == 2
    assert "change the weights" in capsys.readouterr().err
    assert main(["evaluate", "--run", str(run), "--max-pairs", "4", "--option", "tesst_prototypes=static"]) == 2
    assert "unknown EOP-Net option(s) ['tesst_prototypes']" in capsys.readouterr().err
    assert main(["train", "--data-root", str(tiny_synthetic.root), "--fold", "1", "--profile", "smoke", "--out",
                 str(tmp_path / "x"),
                 "--option", "warmup=1", "--quiet"]) == 2
    assert "unknown EOP-Net option(s) ['warmup']" in capsys.readouterr().err


class _SupportEcho(torch.nn.Module):
    """Predicts the support's label map (query = support in the test below) and records the sizes it was given."""

    config = SimpleNamespace(way="k")

    def forward(self, query, support, support_label, support_human=None):
        self.seen = {"query": tuple(query.shape[-2:]), "support": tuple(support.shape[-2:]),
                     "label": tuple(support_label.shape[-2:]), "human": tuple(support_human.shape[-2:])}
        return {"pred": torch.nn.functional.one_hot(support_label, 18).permute(0, 3, 1, 2).float()}

    def encode_support(self, support, support_label, support_human=None):
        return support_label

    def forward_with_support(self, query, cache):
        assert query.shape[-2:] == cache.shape[-2:]
        return {"pred": torch.nn.functional.one_hot(cache, 18).permute(0, 3, 1, 2).float()}


def test_at_input_size_feeds_small_inputs_and_answers_at_the_query_size():
    from oshp.models.episode import AtInputSize

    label = torch.zeros(1, 64, 48, dtype=torch.long)
    label[:, 8:40, 8:24], label[:, 40:64, 16:40] = 4, 9  # blocks, so that 32 px loses no class
    image = torch.rand(1, 3, 64, 48)
    inner = _SupportEcho()
    model = AtInputSize(inner, 32)
    out = model(image, image, label, support_human=(label > 0).long())
    assert inner.seen == {"query": (32, 32), "support": (32, 32), "label": (32, 32), "human": (32, 32)}
    pred = out["pred"].argmax(1)
    assert pred.shape == (1, 64, 48) and set(pred.unique().tolist()) == {0, 4, 9}
    assert (pred == label).float().mean() > 0.95
    assert model.config.way == "k"  # everything else is the wrapped model's
    cached = model.forward_with_support(image, model.encode_support(image, label))
    assert torch.equal(cached["pred"], out["pred"])
    with pytest.raises(ValueError, match="positive"):
        AtInputSize(inner, 0)


def test_a_run_is_tested_at_its_test_size_unless_told(tiny_synthetic, tmp_path, capsys):
    from oshp.engine.parse import parse_files
    from oshp.engine.run import load_run_model
    from oshp.models.episode import AtInputSize

    run = tmp_path / "small"
    train(smoke(tiny_synthetic, epochs=1, image_size=32, test_size=32, val_pairs_per_class=0), run, progress=False)
    cfg, model, _, _ = load_run_model(run)
    assert cfg.test_size == 32 and isinstance(model, AtInputSize)
    assert not isinstance(load_run_model(run, test_size=0)[1], AtInputSize)
    own = evaluate_run(run, max_pairs=4, progress=False)
    assert own["test_size"] == 32 and own["path"].endswith("metrics_max-pairs-4.json")
    native = evaluate_run(run, max_pairs=4, progress=False, test_size=0)
    assert native["test_size"] is None and native["path"].endswith("metrics_test-size-native_max-pairs-4.json")
    ids = tiny_synthetic.ids("test")
    parse_files(run / CHECKPOINT, tiny_synthetic.image_path(ids[0]), tiny_synthetic.image_path(ids[1]),
                tiny_synthetic.label_path(ids[1]), tmp_path / "p.png")
    assert np.array(Image.open(tmp_path / "p_labels.png")).shape == (64, 64)
    assert main(["evaluate", "--run", str(run), "--max-pairs", "4", "--test-size", "-1", "--quiet"]) == 2
    assert "--test-size must be" in capsys.readouterr().err


def test_resized_support_masks_keep_every_class():
    from oshp.models.episode import resize_label

    label = torch.zeros(2, 64, 64, dtype=torch.long)
    label[0, 10:40, 10:40] = 3
    label[0, 50, 5:60] = 7  # a one-pixel line that nearest sampling at 16 px misses
    label[1, 31, 33] = 11  # a single pixel
    small = resize_label(label, 16)
    assert small.shape == (2, 16, 16) and small.dtype == label.dtype
    assert set(small[0].unique().tolist()) == {0, 3, 7} and set(small[1].unique().tolist()) == {0, 11}
    assert int((small[1] == 11).sum()) == 1 and bool(small[1, 31 // 4, 33 // 4] == 11)
