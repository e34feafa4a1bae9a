"""`oshp check-data`: every kind of problem of a release-layout dataset is found and names its file and fix."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fabricate import example_ids, fabricate_label, fabricate_release
from oshp.data import parallel as parallel_mod
from oshp.data.checks import Problem, check_dataset, format_report
from oshp.data.layout import save_label_map, write_id_list
from oshp.core.errors import DatasetError
from oshp.data.vocab import flip_labels, get_dataset


def _good(tmp_path: Path, dataset: str = "lip", n_train: int = 6, n_test: int = 3, **kw):
    train, test = example_ids(dataset, n_train, n_test)
    root = fabricate_release(tmp_path / "ds", dataset, train, test, **kw)
    return root, train, test


@pytest.mark.parametrize("dataset", ["atr", "lip", "cihp"])
def test_good_dataset_has_no_problems(tmp_path, dataset):
    root, train, test = _good(tmp_path, dataset)
    assert check_dataset(root, pair_rule=False) == []  # vocabulary from oshp_dataset.json
    assert check_dataset(root, dataset, deep=False, pair_rule=False) == []
    report = format_report([], root)
    assert report.startswith(f"OK: {root}") and f"{len(train)} train / {len(test)} test images checked" in report


def test_unsorted_lists_are_fine(tmp_path):
    train, test = example_ids("cihp", 4, 2)
    root = fabricate_release(tmp_path / "ds", "cihp", train[::-1], test[::-1], sort_lists=False)
    assert (root / "list" / "meta_train_id.txt").read_text().split() == train[::-1]
    assert check_dataset(root, pair_rule=False) == []


def test_problem_str_and_report():
    problem = Problem("/d/x.png", "label values [40] are outside", "replace it")
    assert str(problem) == "/d/x.png: label values [40] are outside -> fix: replace it"
    report = format_report([problem], "/d")
    assert "1 problem(s) in /d" in report and "/d/x.png" in report and "fix: replace it" in report


def test_missing_root(tmp_path):
    problems = check_dataset(tmp_path / "nope", "atr", pair_rule=False)
    assert len(problems) == 1
    assert problems[0].path == str(tmp_path / "nope") and "does not exist" in problems[0].message
    assert "oshp prepare" in problems[0].fix


def test_missing_folders_and_list_files(tmp_path):
    root, train, test = _good(tmp_path, "atr")
    shutil.rmtree(root / "Category_rev_ids")
    shutil.rmtree(root / "trainval_images")
    problems = check_dataset(root, pair_rule=False)
    by_path = {p.path: p for p in problems}
    assert set(by_path) == {str(root / "Category_rev_ids"), str(root / "trainval_images")}
    assert all("missing folder" in p.message for p in problems)
    assert "oshp prepare" in by_path[str(root / "Category_rev_ids")].fix

    root2, _, _ = _good(tmp_path / "b", "atr")
    (root2 / "list" / "meta_test_id.txt").unlink()
    write_id_list(root2 / "list" / "meta_train_id.txt", [])
    problems = {p.path: p for p in check_dataset(root2, pair_rule=False)}
    assert "missing list file" in problems[str(root2 / "list" / "meta_test_id.txt")].message
    assert "empty" in problems[str(root2 / "list" / "meta_train_id.txt")].message

    root3, _, _ = _good(tmp_path / "c", "atr")
    shutil.rmtree(root3 / "list")
    assert [p.path for p in check_dataset(root3, pair_rule=False)] == [str(root3 / "list")]


def test_dataset_needed_without_metadata(tmp_path):
    root, _, _ = _good(tmp_path, "cihp", meta=False)
    with pytest.raises(DatasetError, match="--dataset"):
        check_dataset(root, pair_rule=False)
    assert check_dataset(root, "cihp", pair_rule=False) == []


def test_metadata_disagreeing_with_dataset(tmp_path):
    root, _, _ = _good(tmp_path, "cihp")
    problems = check_dataset(root, "lip", pair_rule=False)
    assert [p.path for p in problems] == [str(root / "oshp_dataset.json")]
    assert "--dataset cihp" in problems[0].fix
    (root / "oshp_dataset.json").write_text("{not json")
    problems = check_dataset(root, "cihp", pair_rule=False)
    assert [p.path for p in problems] == [str(root / "oshp_dataset.json")] and "JSON" in problems[0].message


def test_broken_dataset_reports_each_planted_problem_once(tmp_path):
    spec = get_dataset("lip")
    train, test = example_ids("lip", 14, 4)
    root = fabricate_release(tmp_path / "ds", "lip", train, test)
    img, lab, flp = root / "trainval_images", root / "trainval_classes", root / "Category_rev_ids"
    (no_image, no_label, no_flip, bad_values, colour, size, flip_size, flip_content, bad_image, bad_label,
     dup, dangling, bad_flip, flip_colour) = train
    both = test[0]

    (img / f"{no_image}.jpg").unlink()
    (lab / f"{no_label}.png").unlink()
    (flp / f"{no_flip}.png").unlink()
    label = fabricate_label("lip", bad_values)
    label[0, :3] = 40
    save_label_map(lab / f"{bad_values}.png", label)
    save_label_map(flp / f"{bad_values}.png", flip_labels(label, spec))  # consistent, so only the values are wrong
    Image.fromarray(np.zeros((16, 24, 3), np.uint8)).save(lab / f"{colour}.png")
    Image.fromarray(np.zeros((20, 24, 3), np.uint8)).save(img / f"{size}.jpg")
    save_label_map(flp / f"{flip_size}.png", np.zeros((16, 20), np.uint8))
    save_label_map(flp / f"{flip_content}.png", fabricate_label("lip", flip_content))  # not flipped
    (img / f"{bad_image}.jpg").write_bytes(b"\xff\xd8 this is not a jpeg")
    (lab / f"{bad_label}.png").write_bytes(b"garbage")
    (flp / f"{bad_flip}.png").write_bytes(b"garbage")
    Image.fromarray(np.zeros((16, 24, 3), np.uint8)).save(flp / f"{flip_colour}.png")
    (img / f"{dangling}.jpg").unlink()
    (img / f"{dangling}.jpg").symlink_to(tmp_path / "moved-away" / f"{dangling}.jpg")
    lists = root / "list"
    write_id_list(lists / "meta_train_id.txt", train + [dup, both])
    write_id_list(lists / "meta_test_id.txt", test + [f"{test[1]}.jpg"])
    (lab / "a_folder").mkdir()
    Image.fromarray(np.zeros((16, 24, 3), np.uint8)).save(img / "orphan_image.jpg")
    save_label_map(lab / "orphan_label.png", np.zeros((16, 24), np.uint8))
    (img / "notes.txt").write_text("stray")

    problems = check_dataset(root, pair_rule=False)
    text = "\n".join(map(str, problems))
    expected = [  # (path, words in the message)
        (img / f"{no_image}.jpg", "no image"),
        (lab / f"{no_label}.png", "no label map"),
        (flp / f"{no_flip}.png", "no flipped label map"),
        (lab / f"{bad_values}.png", "[40]"),
        (lab / f"{colour}.png", "colour (RGB)"),
        (lab / f"{size}.png", "24x16 but its image"),
        (flp / f"{flip_size}.png", "20x16 but the label map is 24x16"),
        (flp / f"{flip_content}.png", "not the label map mirrored"),
        (img / f"{bad_image}.jpg", "corrupt image"),
        (lab / f"{bad_label}.png", "corrupt label map"),
        (flp / f"{bad_flip}.png", "corrupt flipped"),
        (flp / f"{flip_colour}.png", "RGB (colour)"),
        (img / f"{dangling}.jpg", "broken symbolic link"),
        (lists / "meta_train_id.txt", f"id {dup} is listed 2 times"),
        (lists / "meta_test_id.txt", f"id {both} is in both"),
        (img / "orphan_image.jpg", "image without a label map"),
        (lab / "orphan_label.png", "label map without an image"),
        (img / "notes.txt", "not a .jpg"),
        (lists / "meta_test_id.txt", f"entry '{test[1]}.jpg' has a file extension"),
        (lab / "a_folder", "not a file"),
    ]
    for path, words in expected:
        hits = [p for p in problems if p.path == str(path) and words in p.message]
        assert len(hits) == 1, f"expected one problem for {path} saying {words!r}, got:\n{text}"
        assert hits[0].fix, f"{path}: no fix given"
    assert len(problems) == len(expected), text
    assert "40" in text and spec.display in text
    report = format_report(problems, root)
    assert f"{len(expected)} problem(s) in {root}" in report and "fix:" in report


def test_truncated_image_needs_deep(tmp_path):
    root, train, _ = _good(tmp_path, "atr", size=(64, 48))
    path = root / "trainval_images" / f"{train[0]}.jpg"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert check_dataset(root, deep=False, pair_rule=False) == []
    problems = check_dataset(root, deep=True, pair_rule=False)
    assert [p.path for p in problems] == [str(path)] and "corrupt image" in problems[0].message


def test_many_problems_of_one_kind_are_summarised(tmp_path):
    root, train, test = _good(tmp_path, "cihp", n_train=24, n_test=3, size=(8, 6))
    for image_id in train:
        (root / "Category_rev_ids" / f"{image_id}.png").unlink()
    problems = check_dataset(root, pair_rule=False)
    assert len(problems) == 1
    assert problems[0].path == str(root / "Category_rev_ids")
    assert "24 listed ids with no file in Category_rev_ids" in problems[0].message
    assert train[0] in problems[0].message and "oshp prepare" in problems[0].fix


def test_prepared_dataset_with_moved_source(tmp_path):
    from fabricate import fabricate_original
    from oshp.data.prepare import prepare_dataset

    train, test = example_ids("atr", 3, 2)
    src = fabricate_original(tmp_path / "raw", "atr", train, test)
    prepare_dataset("atr", src["root"], tmp_path / "out", ids={"train": train, "test": test}, progress=False)
    os.rename(src["root"], tmp_path / "elsewhere")
    problems = check_dataset(tmp_path / "out", pair_rule=False)
    assert len(problems) == 10  # every image and label link dangles
    assert all("broken symbolic link" in p.message and "--source" in p.fix for p in problems)


def test_process_pool_and_progress(tmp_path, monkeypatch):
    root, _, _ = _good(tmp_path, "lip")
    monkeypatch.setattr(parallel_mod, "POOL_THRESHOLD", 0)
    assert check_dataset(root, progress=True, pair_rule=False) == []
    json.loads((root / "oshp_dataset.json").read_text())
