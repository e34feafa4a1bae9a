"""Tables from result JSON beside the paper's numbers (oshp.tables)."""

import pytest

from oshp.report.tables import (
    main_table,
    paper_dataset_name,
    paper_results,
    to_csv,
    to_latex,
    to_markdown,
    write_table,
)


def _r(method, fold, way, **metrics):
    return {"method": method, "fold": fold, "way": way, **metrics}


def test_paper_reference_ships_with_the_package():
    ref = paper_results()
    assert ref["main"]["ATR-OS"]["kway"]["EOP-Net"]["novel_miou"]["ave"] == 32.9
    assert any("31.9" in d for d in ref["discrepancies"])
    assert paper_dataset_name("synthetic") == "ATR-OS" and paper_dataset_name("cihp") == "CIHP-OS"
    with pytest.raises(ValueError, match="unknown dataset"):
        paper_dataset_name("coco")


def test_main_table_averages_seeds_and_folds_and_keeps_the_paper_order():
    results = [_r("eopnet", 1, "k", novel_miou=10.0, human_miou=20.0, overall_acc=80.0),
               _r("eopnet", 1, "k", novel_miou=12.0, human_miou=22.0, overall_acc=82.0),  # second seed
               _r("eopnet", 2, "k", novel_miou=5.0, human_miou=30.0, overall_acc=90.0),
               _r("eopnet", 1, "1", novel_miou=99.0, human_miou=99.0, binary_miou=99.0)]  # other way: ignored
    rows = main_table(results, "atr", "k")
    assert [r["method"] for r in rows] == ["Fine-Tuning", "SG-One", "AMP", "POPNet", "EOP-Net"]
    eop = rows[-1]
    assert eop["novel_miou_fold1"] == pytest.approx(11.0) and eop["novel_miou_fold2"] == 5.0
    assert eop["novel_miou_ave"] == pytest.approx(8.0) and eop["runs"] == 3
    assert eop["paper_novel_miou_fold1"] == 31.1 and eop["paper_overall_acc_ave"] == 93.5
    assert eop["paper_overall_acc_fold1"] is None  # printed once, for the average
    assert rows[0]["novel_miou_ave"] is None  # no run of Fine-Tuning
    one = main_table(results, "atr", "1", methods=["eopnet"])
    assert one[0]["binary_miou_fold1"] == 99.0 and one[0]["binary_miou_ave"] is None  # fold 2 missing


def test_writers(tmp_path):
    rows = [{"method": "EOP-Net", "novel_miou": 31.14, "x": None}, {"method": "A_B & C", "novel_miou": 2.0, "x": 1}]
    md = to_markdown(rows, ["method", "novel_miou", "x"])
    assert md.splitlines()[0] == "| method | novel mIoU | x |" and "| EOP-Net | 31.1 | - |" in md
    assert to_csv(rows, ["method", "novel_miou"]).splitlines() == ["method,novel_miou", "EOP-Net,31.14",
                                                                   "A_B & C,2.0"]
    tex = to_latex(rows, ["method", "novel_miou"])
    assert r"A\_B \& C & 2.0 \\" in tex and tex.startswith(r"\begin{tabular}{lr}")
    paths = write_table(rows, ["method", "novel_miou"], tmp_path / "t" / "table")
    assert sorted(p.suffix for p in paths) == [".csv", ".md", ".tex"] and all(p.is_file() for p in paths)


def test_mean_std_formats_mean_and_spread():
    from oshp.report.tables import mean_std

    stats = {"mean": 12.24, "std": 3.0, "n": 3}
    assert mean_std(stats) == "12.2 ± 3.0 (n=3)" and mean_std(stats, with_n=False) == "12.2 ± 3.0"
    assert mean_std({"mean": None, "std": None, "n": 0}) == "-"


def test_bounds_pivot_puts_each_bound_in_its_column():
    from oshp.report.tables import bounds_by_setting_markdown

    def stats(mean, n=3):
        return {"mean": mean, "std": 1.0, "n": n}

    summary = [{"way": "k", "fold": 1, "config": "lower", "novel_miou": stats(0.0), "base_miou": stats(16.0),
                "human_miou": stats(12.0), "binary_miou": stats(None, 0)},
               {"way": "k", "fold": 1, "config": "pretrained", "novel_miou": stats(8.0, 2), "base_miou": stats(16.2, 2),
                "human_miou": stats(14.1, 2), "binary_miou": stats(None, 0)},
               {"way": "1", "fold": 2, "config": "pretrained", "novel_miou": stats(8.4), "base_miou": stats(41.1),
                "human_miou": stats(32.9), "binary_miou": stats(59.54)}]
    lines = bounds_by_setting_markdown(summary).splitlines()
    assert lines[0] == "| way | fold | (b) pretrained | (d) lower bound |"  # only the bounds that were run, in order
    assert lines[2] == "| k | 1 | 8.0 ± 1.0 / 16.2 ± 1.0 / 14.1 ± 1.0, n=2 | 0.0 ± 1.0 / 16.0 ± 1.0 / 12.0 ± 1.0, n=3 |"
    assert lines[3] == "| 1 | 2 | 8.4 ± 1.0 / 41.1 ± 1.0 / 32.9 ± 1.0 (Bi 59.5), n=3 | not run |"
