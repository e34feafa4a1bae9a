"""The paper's path end to end on a CPU, as a researcher with the real data would walk it: a raw ATR download (a few
512 x 512 images in its original layout), `oshp prepare`, `oshp check-data`, `oshp train --profile paper` (Xception-65
at 512 px from a DeepLab v3+ file standing in for the COCO start point, two optimiser steps), `oshp evaluate` on a
handful of pairs, and `oshp reproduce --profile paper` over that run. Minutes, not hours: the budget is the only
thing that differs from the paper's configuration."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import release_fixture as rf
from fabricate import fabricate_original
from oshp.cli import main
from oshp.data.layout import read_dataset_meta, save_label_map, write_dataset_meta
from oshp.data.official import official_ids

SIZE = (512, 512)


@pytest.fixture(scope="module")
def raw_atr(tmp_path_factory) -> Path:
    """Released ATR ids (4 meta-train, 22 meta-test) as a raw 'humanparsing' download, each label map a person of 17
    part bands (every ATR class): the pair rule never reuses an image, so the 11 meta-test classes of a k-way fold
    need 11 query and 11 support images."""
    train, test = list(official_ids("atr", "train")[:4]), list(official_ids("atr", "test")[:22])
    root = tmp_path_factory.mktemp("raw_atr")
    files = fabricate_original(root, "atr", train, test, size=SIZE)
    label = np.zeros(SIZE[::-1], dtype=np.uint8)
    for i, rows in enumerate(np.array_split(np.arange(64, 448), 17)):
        label[rows, 128:384] = i + 1
    for path in files["labels"].values():
        save_label_map(path, label)
    return root


def test_paper_path_end_to_end(raw_atr, tmp_path, capsys):
    data = tmp_path / "atr"
    assert main(["prepare", "--quiet", "--dataset", "atr", "--source", str(raw_atr), "--out", str(data),
                 "--allow-missing"]) == 0
    # 26 images cannot meet the release's pools and pair rule (150 pairs a class): shrink them, as the dataset file
    # allows
    write_dataset_meta(data, {**read_dataset_meta(data), "train_query_pool": 2, "test_query_pool": 11,
                              "queries_per_class": 1, "supports_per_query": 1})
    assert main(["check-data", "--quiet", "--dataset", "atr", "--data-root", str(data)]) == 0

    coco = tmp_path / "deeplab_v3plus_v3.pth"
    torch.save(rf.release_state("coco"), coco)
    out = tmp_path / "reproduce"
    run = out / "runs" / "atr_eopnet_kway_f1_s0"  # where `oshp reproduce --profile paper` looks for this run
    capsys.readouterr()
    assert main(["train", "--quiet", "--profile", "paper", "--data-root", str(data), "--dataset", "atr",
                 "--fold", "1", "--way", "k", "--backbone-weights", str(coco), "--epochs", "1",
                 "--pairs-per-epoch", "2", "--batch-size", "1", "--workers", "0", "--val-pairs-per-class", "1",
                 "--out", str(run)]) == 0
    said = capsys.readouterr().out
    assert "798 tensors loaded, 80 skipped" in said  # the COCO start point's partial load is reported
    config = json.loads((run / "config.json").read_text())
    assert (config["backbone"], config["image_size"], config["profile"]) == ("xception65", 512, "paper")
    history = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert history[0]["steps"] == 2 and all(torch.isfinite(torch.tensor(h["loss"])) for h in history)

    assert main(["evaluate", "--quiet", "--run", str(run)]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["num_pairs"] >= 3 and metrics["protocol"] == {"binary_every": 1, "gt_classes": "support"}
    assert all(0.0 <= metrics[key] <= 100.0 for key in ("base_miou", "human_miou", "overall_acc"))

    assert main(["reproduce", "--quiet", "--profile", "paper", "--data-root", str(data), "--datasets", "atr",
                 "--out", str(out), "--notebooks", "train_one_fold"]) == 0
    executed = list((out / "notebooks").glob("02_train_one_fold*.ipynb"))
    assert executed
    assert json.loads((run / "metrics.json").read_text())["wall_time_s"] == metrics["wall_time_s"]  # not retrained
