"""The reproduction plan: which runs each notebook needs, how a run is configured, reuse of finished runs, the
papermill batch (`oshp reproduce`), and the figure/table builders the notebooks call."""

import json
from pathlib import Path

import numpy as np
import pytest

from oshp.report.figures import save_figure, write_results
from oshp.study import plans
from oshp.study import reproduce as rp
from oshp.core.errors import DatasetError


# ----------------------------------------------------------------------------------------------- runs and plans
def test_run_spec_names_and_validation():
    assert plans.RunSpec("EOP-Net", "k", 2, 1).name == "atr_eopnet_kway_f2_s1"
    assert plans.RunSpec("eopnet", "k", 1, 0, "atr", "dml-ws").name == "atr_eopnet_kway_f1_s0_dml-ws"
    with pytest.raises(ValueError, match="1-way"):
        plans.RunSpec("panet", "k")
    with pytest.raises(ValueError, match="unknown run variant"):
        plans.RunSpec("eopnet", "k", variant="bogus")
    with pytest.raises(ValueError, match="EOP-Net modules"):
        plans.RunSpec("popnet", "k", variant="agm")


def test_plans_and_training_profile_swap():
    with pytest.raises(ValueError, match="unknown reproduction profile"):
        plans.get_plan("nope")
    swapped = plans.get_plan("demo", "quick")
    assert swapped.name == "demo-quick" and swapped.train_profile == "quick" and swapped.train_overrides == {}
    assert plans.get_plan("demo", "demo") is plans.PLANS["demo"]  # its own training profile: unchanged
    with pytest.raises(ValueError, match="unknown training profile"):
        plans.get_plan("demo", "huge")


def test_run_config_applies_budget_variant_and_validation(tmp_path):
    plan = plans.get_plan("demo")
    cfg = rp.run_config(plans.RunSpec("eopnet", "k", 1, 2, variant="agm"), plan, tmp_path)
    assert (cfg.profile, cfg.epochs, cfg.pairs_per_epoch, cfg.seed, cfg.fold) == ("demo", 6, 400, 2, 1)
    assert (cfg.image_size, cfg.test_size) == (64, 64)
    assert cfg.model_options["ablation"] == "AGM" and cfg.model_options["embed_dim"] == 64  # method's own kept
    assert cfg.val_pairs_per_class == plan.val_pairs_per_class
    oracle = rp.run_config(plans.RunSpec("eopnet", "k", variant="oracle"), plan, tmp_path)
    scratch = rp.run_config(plans.RunSpec("eopnet", "k", variant="scratch"), plan, tmp_path)
    assert oracle.label_novel and not rp.run_config(plans.RunSpec(), plan, tmp_path).label_novel
    assert scratch.backbone_weights == "none"
    no_dp = rp.run_config(plans.RunSpec("eopnet", "k", variant="no-dp"), plan, tmp_path)
    assert no_dp.model_options["dynamic_prototypes"] is False
    assert rp.run_config(plans.RunSpec("amp", "1", 2), plan, tmp_path).val_pairs_per_class == 0


def test_notebook_runs_cover_every_table_and_share_runs():
    tables, _ = plans.notebook_runs("tables_1_3")
    assert len(tables) == 26  # 5 k-way methods + 8 1-way methods, two folds
    ablation, _ = plans.notebook_runs("04")
    assert {s.variant for s in ablation if s.method == "eopnet"} == {v for _, v in plans.TABLE4_VARIANTS}
    assert plans.RunSpec("popnet", "k", 1) in ablation and plans.RunSpec("popnet", "k", 1) in tables
    tour, lower = plans.notebook_runs("01")
    assert lower == [plans.RunSpec("eopnet", "k", 1)]
    runs, _ = plans.all_runs()
    assert len(runs) == 34 and len(set(runs)) == len(runs)
    assert plans.RunSpec("eopnet", "k", 1, variant="no-dp") in runs
    with pytest.raises(ValueError, match="unknown notebook"):
        plans.notebook_runs("99")


def test_each_worker_gets_its_own_gpu():
    assert rp.worker_gpu(0, 1) is None and rp.worker_gpu(3, 0) is None  # one GPU or none: untouched
    assert [rp.worker_gpu(i, 2) for i in range(3)] == ["0", "1", "0"]
    assert [rp.worker_gpu(i, 2, "4,6") for i in range(2)] == ["4", "6"]


def test_resolve_paths(tmp_path):
    smoke = plans.resolve_paths("smoke", out_dir=tmp_path / "out")
    assert smoke.data == {"atr": tmp_path / "out" / "data"} and smoke.figures == tmp_path / "out" / "figures"
    with pytest.raises(DatasetError, match="--data-root"):
        plans.resolve_paths("paper", out_dir=tmp_path)
    for name in ("atr", "LIP"):
        (tmp_path / "real" / name / "list").mkdir(parents=True)
    paths = plans.resolve_paths("paper", data_root=tmp_path / "real", datasets=["atr", "lip"], out_dir=tmp_path / "o")
    assert paths.data == {"atr": tmp_path / "real" / "atr", "lip": tmp_path / "real" / "LIP"}


def test_prepare_data_refuses_missing_real_data_and_foreign_folders(tmp_path):
    paths = plans.resolve_paths("paper", data_root=tmp_path / "none", datasets=["lip"], out_dir=tmp_path / "o")
    with pytest.raises(DatasetError, match="oshp prepare --dataset lip"):
        rp.prepare_data("paper", paths, progress=False)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    paths = plans.resolve_paths("smoke", data_root=tmp_path / "busy", out_dir=tmp_path / "o")
    with pytest.raises(DatasetError, match="holds no dataset"):
        rp.prepare_data("smoke", paths, progress=False)


def test_finished_runs_are_never_trained_again(tmp_path, monkeypatch):
    import oshp.engine.train

    paths = plans.resolve_paths("smoke", out_dir=tmp_path, data_root=tmp_path / "data")
    spec = plans.RunSpec("amp", "1", 2)
    (paths.runs / spec.name).mkdir(parents=True)
    (paths.runs / spec.name / "train.json").write_text(json.dumps({"wall_time_s": 1.0}))  # training finished
    (paths.runs / spec.name / "metrics.json").write_text(json.dumps({"novel_miou": 1.0}))
    monkeypatch.setattr(oshp.engine.train, "train", lambda *a, **k: pytest.fail("a finished run was retrained"))
    assert rp.ensure_runs([spec, spec], "smoke", paths, progress=False) == {spec: paths.runs / spec.name}
    assert rp.load_result(paths.runs / spec.name)["novel_miou"] == 1.0
    with pytest.raises(DatasetError, match="no metrics_suppress_novel.json"):
        rp.load_result(paths.runs / spec.name, lower=True)


def test_a_run_trained_with_other_settings_is_reused_with_a_note(tmp_path, monkeypatch, capsys):
    import oshp.engine.train

    paths = plans.resolve_paths("smoke", out_dir=tmp_path, data_root=tmp_path / "data")
    spec = plans.RunSpec("sgone", "k", 1)
    run = paths.runs / spec.name
    run.mkdir(parents=True)
    expected = rp.run_config(spec, plans.get_plan("smoke"), paths.data["atr"])
    saved = {**expected.to_json(), "data_root": "/elsewhere", "device": "cuda", "workers": 4}  # where, not what
    (run / "config.json").write_text(json.dumps(saved))
    (run / "train.json").write_text(json.dumps({"wall_time_s": 1.0}))
    (run / "metrics.json").write_text(json.dumps({"novel_miou": 1.0}))
    monkeypatch.setattr(oshp.engine.train, "train", lambda *a, **k: pytest.fail("a finished run was retrained"))
    assert rp.ensure_runs([spec], "smoke", paths, progress=False) == {spec: run}
    assert capsys.readouterr().err == ""
    (run / "config.json").write_text(json.dumps({**saved, "lr": expected.lr * 2}))  # e.g. an older oshp's lr
    assert rp.ensure_runs([spec], "smoke", paths, progress=False) == {spec: run}
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"reusing {run}" in err and f"lr={expected.lr * 2!r} (plan: {expected.lr!r})" in err
    assert "delete that folder" in err and (run / "metrics.json").is_file()  # nothing of the user's is removed


def test_a_finished_oracle_gets_only_its_missing_one_shot_rule_evaluation(tmp_path, monkeypatch):
    import oshp.engine.evaluate
    import oshp.engine.train

    paths = plans.resolve_paths("smoke", out_dir=tmp_path, data_root=tmp_path / "data")
    oracle, plain_oracle = plans.RunSpec("eopnet", "k", 1, variant="oracle"), plans.RunSpec("amp", "k", 1, variant="oracle")
    for spec in (oracle, plain_oracle):
        (paths.runs / spec.name).mkdir(parents=True)
        (paths.runs / spec.name / "train.json").write_text(json.dumps({"wall_time_s": 1.0}))
        (paths.runs / spec.name / "metrics.json").write_text(json.dumps({"novel_miou": 1.0}))
    monkeypatch.setattr(oshp.engine.train, "train", lambda *a, **k: pytest.fail("a finished run was retrained"))
    calls = []

    def fake_evaluate(run, **kwargs):
        calls.append((Path(run).name, kwargs.get("static_novel", False), kwargs.get("suppress_novel", False)))
        (Path(run) / "metrics_static_novel.json").write_text(json.dumps({"novel_miou": 2.0}))

    monkeypatch.setattr(oshp.engine.evaluate, "evaluate_run", fake_evaluate)
    rp.ensure_runs([oracle, plain_oracle], "smoke", paths, progress=False)
    # AMP keeps no prototype memory: only EOP-Net's oracle is scored again, and only by the one-shot rule
    assert calls == [(oracle.name, True, False)]
    assert rp.load_result(paths.runs / oracle.name, static_novel=True)["novel_miou"] == 2.0


@pytest.fixture(scope="module")
def smoke_run(tiny_synthetic, tmp_path_factory, single_thread):
    """One EOP-Net smoke run on the shared tiny dataset, with its lower-bound evaluation."""
    out = tmp_path_factory.mktemp("reproduce")
    paths = plans.resolve_paths("smoke", out_dir=out, data_root=tiny_synthetic.root)
    spec = plans.RunSpec("eopnet", "k", 1)
    runs = rp.ensure_runs([spec], "smoke", paths, lower=[spec], progress=False)
    return runs[spec]


def test_ensure_run_trains_evaluates_and_writes_the_lower_bound(smoke_run):
    result = rp.load_result(smoke_run)
    lower = rp.load_result(smoke_run, lower=True)
    assert result["profile"] == "smoke" and result["train_wall_time_s"] > 0
    assert lower["novel_miou"] == 0.0 and lower["suppress_novel"] is True
    history = [json.loads(line) for line in (smoke_run / "log.jsonl").read_text().splitlines()]
    assert all("val_mean_novel_acc" in h for h in history)  # EOP-Net runs log the data of Fig. 7


# ----------------------------------------------------------------------------------------------- qualitative
def test_pair_choice_helpers():
    from oshp.report.qualitative import pairs_of_class, same_query_pairs

    pairs = [{"query": q, "support": s, "class_id": c} for q, s, c in
             [("a", "x", 5), ("a", "y", 5), ("b", "x", 5), ("b", "y", 5), ("b", "z", 5), ("c", "x", 6)]]
    assert [p["query"] for p in pairs_of_class(pairs, 5, 2)] == ["a", "b"]
    assert [p["support"] for p in pairs_of_class(pairs, 5, 2, distinct_queries=False)] == ["x", "y"]
    same = same_query_pairs(pairs, 5, count=5)
    assert {p["query"] for p in same} == {"b"} and [p["support"] for p in same] == ["x", "y", "z"]
    with pytest.raises(DatasetError, match="class 7"):
        pairs_of_class(pairs, 7)


def test_predict_rows_and_chosen_support(smoke_run, tiny_synthetic):
    from oshp.data.pairs import default_test_pairs
    from oshp.report.plotting import comparison_figure, parses_figure
    from oshp.report.qualitative import compare_methods, images_with_classes, parse_chosen, predict_rows

    ds = tiny_synthetic
    pairs = default_test_pairs(ds)[:2]
    rows = predict_rows(smoke_run, ds, pairs, caption="{novel}: {class}")
    assert rows[0]["pred"].shape == rows[0]["target"].shape == rows[0]["query"].shape[:2]
    assert rows[0]["caption"].split(":")[0] in ("novel", "base")
    fig = parses_figure(rows, ds.spec, title="t")
    assert len(fig.axes) == 8
    compared = compare_methods({"A": smoke_run, "B": smoke_run}, ds, pairs)
    assert np.array_equal(compared[0]["preds"]["A"], compared[0]["preds"]["B"])
    assert len(comparison_figure(compared, ds.spec, ["A", "B"]).axes) == 2 * 5
    with pytest.raises(ValueError, match="no prediction of"):
        comparison_figure(compared, ds.spec, ["A", "C"])
    hair, face = ds.spec.class_id("hair"), ds.spec.class_id("face")
    support, query = images_with_classes(ds, [hair, face], count=2)
    row = parse_chosen(smoke_run, ds, query, support, ["hair", "face"])
    assert set(np.unique(row["support_mask"])) <= {0, hair, face}
    assert set(np.unique(row["pred"])) <= {0, hair, face}
    with pytest.raises(DatasetError, match="choose fewer classes"):
        images_with_classes(ds, [hair], count=10_000)


# ----------------------------------------------------------------------------------------------- tables and plots
def test_ablation_progressive_complexity_and_bounds_tables():
    from oshp.report.tables import ablation_table, bounds_table, complexity_table, progressive_table

    rows = ablation_table({"AGM": {"novel_miou": 1.0, "base_miou": 2.0, "human_miou": 3.0}, "NPM": {}})
    assert rows[0] == {"method": "AGM", "novel_miou": 1.0, "base_miou": 2.0, "human_miou": 3.0,
                       "paper_novel_miou": 0.4, "paper_human_miou": 51.6}
    assert rows[1]["novel_miou"] is None and rows[1]["paper_novel_miou"] == 8.2
    prog = progressive_table({"novel_miou": 5.0, "human_miou": 6.0}, {"novel_miou": 7.0, "human_miou": 8.0})
    assert [(r["method"], r["paper_novel_miou"]) for r in prog] == [("Progressive", 29.0), ("End-to-end", 30.2)]
    comp = complexity_table([{"method": "eopnet", "backbone": "xception65", "params_m": 41.1, "gmacs": 121.0},
                             {"method": "amp", "backbone": "vgg16", "params_m": 14.9, "gmacs": 160.5}],
                            {"pairs_per_s": {"eopnet": {"inference_batch1": 3.0, "inference_best": 4.0,
                                                        "cached_best": 5.0}}})
    assert (comp[0]["fps"], comp[0]["fps_cached"], comp[0]["paper_fps"]) == (3.0, 5.0, 12.0)
    assert comp[1]["fps"] is None and comp[1]["paper_gmacs"] is None
    bounds = bounds_table({"oracle": {"novel_miou": 9.0, "base_miou": 1.0, "human_miou": 2.0}})
    assert bounds == [{"run": "oracle", "novel_miou": 9.0, "base_miou": 1.0, "human_miou": 2.0, "binary_miou": None}]


def test_curves_and_training_figures(tmp_path):
    from oshp.report.plotting import curves_figure, training_figure

    fig = curves_figure({"a": ([1, 2], [3.0, None])}, xlabel="epoch", ylabel="acc", title="t")
    ax = fig.axes[0]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("epoch", "acc")
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["a"]
    with pytest.raises(ValueError, match="no series"):
        curves_figure({}, xlabel="x", ylabel="y")
    history = [{"epoch": 0, "lr": 0.1, "loss": 2.0}, {"epoch": 1, "lr": 0.05, "loss": 1.0}]
    fig = training_figure(history)
    assert fig.axes[1].get_title() == "learning rate"
    paths = save_figure(fig, tmp_path / "sub" / "curves")
    assert [p.suffix for p in paths] == [".png", ".pdf"] and all(p.stat().st_size > 0 for p in paths)
    again = save_figure(fig, tmp_path / "again")
    assert [p.read_bytes() for p in paths] == [p.read_bytes() for p in again]  # no timestamps: reproducible files
    with pytest.raises(ValueError, match="no epoch"):
        training_figure([])


# ----------------------------------------------------------------------------------------------- the batch
def test_reproduce_cli_runs_one_notebook_with_papermill(tiny_synthetic, tmp_path, single_thread):
    from oshp.cli import main

    out = tmp_path / "out"
    assert main(["reproduce", "--profile", "smoke", "--data-root", str(tiny_synthetic.root), "--out", str(out),
                 "--notebooks", "02", "--quiet"]) == 0
    executed = out / "notebooks" / "02_train_one_fold.ipynb"
    assert executed.is_file() and (out / "runs" / "atr_eopnet_kway_f1_s0" / "metrics.json").is_file()
    assert (out / "figures" / "train_atr_eopnet_kway_f1_s0.png").is_file()
    summary = json.loads((out / "reproduce.json").read_text())
    assert summary["runs"] == 1 and summary["profile"] == "smoke"
    assert main(["reproduce", "--profile", "smoke", "--notebooks", "99", "--out", str(out)]) == 2


def test_write_results_keeps_the_plan_beside_the_numbers(tmp_path):
    path = write_results([{"method": "eopnet", "novel_miou": 1.5}], tmp_path / "t" / "runs", plans.get_plan("demo").settings())
    data = json.loads(path.read_text())
    assert path.name == "runs.json" and data["results"] == [{"method": "eopnet", "novel_miou": 1.5}]
    assert (data["train_profile"], data["train_overrides"], data["eval_max_pairs"]) == ("demo", {}, 330)
