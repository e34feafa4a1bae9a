"""The validation split (held-out meta-train images) and `oshp tune`, which chooses settings on it."""

import json

import pytest

from oshp.cli import main
from oshp.core.errors import DatasetError
from oshp.data.episodes import MetaTestEpisodes, MetaTrainEpisodes
from oshp.data.pairs import meta_train_pools, validation_holdout, validation_pairs
from oshp.engine.config import make_config
from oshp.engine.train import train
from oshp.study import tuning


def test_holdout_takes_the_same_share_of_both_pools_and_is_fixed(tiny_synthetic):
    held = validation_holdout(tiny_synthetic, 0.2)
    query_pool, support_pool = meta_train_pools(tiny_synthetic)
    assert len(held & set(query_pool)) == round(0.2 * len(query_pool))
    assert len(held & set(support_pool)) == round(0.2 * len(support_pool))
    assert held == validation_holdout(tiny_synthetic, 0.2)  # every run holds out the same images
    assert validation_holdout(tiny_synthetic, 0.0) == frozenset()
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        validation_holdout(tiny_synthetic, 1.0)
    with pytest.raises(DatasetError, match="at least 2"):
        validation_holdout(tiny_synthetic, 0.02)


@pytest.mark.parametrize("way", ["k", "1"])
def test_training_never_sees_a_held_out_image(tiny_synthetic, way):
    held = validation_holdout(tiny_synthetic, 0.2)
    episodes = MetaTrainEpisodes(tiny_synthetic, 1, way=way, size=64, held_out=held, pairs_per_class=20)
    used = set()
    for epoch in range(3):
        episodes.set_epoch(epoch)
        used |= {r.query for r in episodes.refs} | {r.support for r in episodes.refs}
        used |= {episodes[i]["support_id"] for i in range(0, len(episodes), 7)}  # replacement supports too
    assert used and not used & held
    everything = MetaTrainEpisodes(tiny_synthetic, 1, way=way, size=64, pairs_per_class=20)
    assert {r.query for r in everything.refs} & held  # without the split they are training images


def test_validation_pairs_are_held_out_and_show_only_base_classes(tiny_synthetic):
    spec, held = tiny_synthetic.spec, validation_holdout(tiny_synthetic, 0.3)
    pairs = validation_pairs(tiny_synthetic, 1, held, per_class=3)
    assert pairs and all(p["query"] in held and p["support"] in held for p in pairs)
    assert {p["class_id"] for p in pairs} <= set(spec.base_foreground_ids(1))
    episodes = MetaTestEpisodes(tiny_synthetic, pairs, way="k", size=64, split="train", keep=spec.base_ids(1))
    novel = set(spec.novel_ids(1))
    for i in range(len(episodes)):
        ep = episodes[i]
        shown = set(ep["support_label"].unique().tolist()) | set(ep["query_label_full"].unique().tolist())
        assert not shown & novel  # novel classes stay background, as in training
    with pytest.raises(DatasetError, match="meta_test_id"):  # meta-test episodes refuse meta-train ids
        MetaTestEpisodes(tiny_synthetic, pairs, way="k")


def test_a_run_with_a_validation_split_scores_it_and_not_the_meta_test(tiny_synthetic, tmp_path):
    cfg = make_config("smoke", data_root=str(tiny_synthetic.root), fold=1, validation_share=0.2,
                      val_pairs_per_class=2, validate_every=5, epochs=2)
    history = train(cfg, tmp_path / "run", progress=False)["history"]
    assert "val_base_miou" not in history[0]  # validate_every=5: only after the last epoch
    last = history[-1]
    assert last["val_split"] == "held-out meta-train" and 0 <= last["val_base_miou"] <= 100
    assert last["val_novel_miou"] is None  # no novel class is labelled in the validation split


def test_tune_chooses_the_best_mean_score_and_reuses_finished_trials(tiny_synthetic, tmp_path, monkeypatch):
    scores = {1e-3: 30.0, 2e-3: 40.0, 4e-3: 35.0}
    calls = []

    def fake_train(cfg, run, resume=False, progress=True):
        calls.append((cfg.lr, cfg.seed, cfg.validation_share, cfg.model_options.get("class_balanced_loss")))
        run.mkdir(parents=True, exist_ok=True)
        score = scores[cfg.lr] + cfg.seed  # seeds shift every value alike: the ranking holds
        record = {"epoch": 0, "val_split": "held-out meta-train", "val_base_miou": score,
                  "val_human_miou": score, "val_mean_base_acc": score}
        (run / "train.json").write_text(json.dumps({"history": [record]}))

    monkeypatch.setattr(tuning, "train", fake_train)
    kwargs = dict(param="lr", values=list(scores), profile="demo", data_root=tiny_synthetic.root, seeds=(0, 1),
                  out_dir=tmp_path / "tune", validation_share=0.2)
    result = tuning.tune(["sgone", "panet"], ["k", "1"], **kwargs)
    assert result["chosen"] == {"sgone/k": 2e-3, "sgone/1": 2e-3, "panet/1": 2e-3}  # PANet runs 1-way only
    assert len(calls) == 3 * 3 * 2  # (SG-One k, SG-One 1, PANet 1) x 3 values x 2 seeds
    assert {c[2] for c in calls} == {0.2} and all(c[3] for c in calls)  # the profile's settings, held-out split
    row = next(r for r in result["rows"] if (r["method"], r["way"], r["value"]) == ("sgone", "k", 1e-3))
    assert row["val_base_miou"] == pytest.approx(30.5) and row["val_base_miou_values"] == [30.0, 31.0]
    assert json.loads((tmp_path / "tune" / "tuning.json").read_text())["chosen"] == result["chosen"]
    calls.clear()
    tuning.tune(["sgone"], ["k"], **kwargs)
    assert calls == []  # finished trials are reused


def test_tune_sets_a_model_option_when_the_setting_is_not_a_training_field(tiny_synthetic):
    trial = tuning.Trial("eopnet", "k", 1, "lambda_nca", 0.1, 0)
    cfg = tuning.trial_config(trial, "demo", tiny_synthetic.root, validation_share=0.1, val_pairs_per_class=5)
    assert cfg.model_options["lambda_nca"] == 0.1 and cfg.model_options["embed_dim"] == 64
    lr = tuning.trial_config(tuning.Trial("amp", "1", 1, "lr", 5e-4, 2), "demo", tiny_synthetic.root,
                             validation_share=0.1, val_pairs_per_class=5)
    assert (lr.lr, lr.seed, lr.way, lr.validation_share) == (5e-4, 2, "1", 0.1)


def test_tune_cli_trains_and_reports(tiny_synthetic, tmp_path, capsys):
    out = tmp_path / "tune"
    code = main(["tune", "--methods", "eopnet", "--ways", "k", "--values", "1e-3", "3e-3", "--profile", "smoke",
                 "--data-root", str(tiny_synthetic.root), "--validation-share", "0.2", "--val-pairs-per-class", "2",
                 "--out", str(out), "--result", str(tmp_path / "r.json"), "--quiet"])
    assert code == 0
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["values"] == [1e-3, 3e-3] and result["chosen"]["eopnet/k"] in (1e-3, 3e-3)
    assert (out / "eopnet_kway_f1" / "lr-0.001" / "s0" / "checkpoint.pt").is_file()
    assert "| eopnet | k | 0.001 |" in capsys.readouterr().out


def test_tune_cli_refuses_bad_input_in_one_line(tiny_synthetic, tmp_path, capsys):
    (tmp_path / "folder").mkdir()
    for argv, expected in (
            (["--data-root", str(tmp_path / "missing")], "holds no dataset"),
            (["--data-root", str(tiny_synthetic.root), "--result", str(tmp_path / "folder")], "is a folder"),
            (["--data-root", str(tiny_synthetic.root), "--methods", "nope"], "unknown method"),
            (["--data-root", str(tiny_synthetic.root), "--validation-share", "0"], "validation share above 0")):
        code = main(["tune", "--values", "1e-3", "--profile", "smoke", "--out", str(tmp_path / "t"), *argv])
        err = capsys.readouterr().err.strip()
        assert code == 2 and expected in err and "\n" not in err and "Traceback" not in err


def test_the_cpu_profiles_train_at_the_settings_tuned_on_the_validation_split():
    """The registry's tuned entries are the committed tuning results' choices, for every method and way."""
    from pathlib import Path

    results = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
    for name in ("lr_tuning_demo.json", "contrastive_weight_tuning_demo.json"):
        result = json.loads((results / name).read_text())
        assert result["profile"] == "demo" and result["validation_share"] > 0
        assert result["chosen"], name
        for key, value in result["chosen"].items():
            method, way = key.split("/")
            for profile in ("demo", "quick"):
                cfg = make_config(profile, method=method, way=way)
                used = getattr(cfg, result["param"]) if hasattr(cfg, result["param"]) \
                    else cfg.model_options.get(result["param"])
                assert used == value, f"{profile} {method} {way}-way: {result['param']}={used}, tuned {value} ({name})"
