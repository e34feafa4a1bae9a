"""`oshp prepare`: original ATR / LIP / CIHP downloads -> release layout (links, generated flipped maps, lists)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fabricate import example_ids, fabricate_label, fabricate_original
from oshp.data import parallel as parallel_mod
from oshp.data.checks import check_dataset
from oshp.data.layout import ReleaseLayoutDataset, load_label_map, read_id_list, save_label_map
from oshp.core.errors import DatasetError
from oshp.data.official import official_ids
from oshp.data.prepare import locate_source, prepare_dataset
from oshp.data.vocab import flip_labels, get_dataset

VARIANTS = [
    ("atr", "standard"),
    ("atr", "bare"),
    ("lip", "standard"),
    ("lip", "flat"),
    ("lip", "flat_lip"),
    ("cihp", "standard"),
    ("cihp", "bare"),
]


def _setup(tmp_path: Path, dataset: str, variant: str = "standard", n_train: int = 4, n_test: int = 2):
    train, test = example_ids(dataset, n_train, n_test)
    src = fabricate_original(tmp_path / "raw", dataset, train, test, variant=variant)
    return train, test, src


@pytest.mark.parametrize("dataset,variant", VARIANTS)
def test_prepare_builds_release_layout(tmp_path, dataset, variant):
    train, test, src = _setup(tmp_path, dataset, variant)
    out = tmp_path / "out"
    report = prepare_dataset(dataset, src["root"], out, ids={"train": train, "test": test}, progress=False)
    spec = get_dataset(dataset)

    assert (report["train"], report["test"], report["missing"]) == (len(train), len(test), 0)
    assert report["linked"] == 2 * (len(train) + len(test))
    assert report["flipped_written"] == len(train) + len(test)

    for image_id in train + test:
        for link, target in (
            (out / "trainval_images" / f"{image_id}.jpg", src["images"][image_id]),
            (out / "trainval_classes" / f"{image_id}.png", src["labels"][image_id]),
        ):
            assert link.is_symlink(), f"{link} must be a link, not a copy"
            assert Path(os.readlink(link)).is_absolute()
            assert Path(os.readlink(link)) == target.absolute()
        label = load_label_map(src["labels"][image_id], spec)
        flipped = load_label_map(out / "Category_rev_ids" / f"{image_id}.png", spec)
        assert not (out / "Category_rev_ids" / f"{image_id}.png").is_symlink()
        assert np.array_equal(flipped, flip_labels(label, spec))
        # mirrored, and every left id became its right twin (and back)
        for left, right in spec.lr_pairs:
            assert np.array_equal(flipped[:, ::-1] == right, label == left)
            assert np.array_equal(flipped[:, ::-1] == left, label == right)

    assert read_id_list(out / "list" / "meta_train_id.txt") == sorted(train)
    assert read_id_list(out / "list" / "meta_test_id.txt") == sorted(test)
    meta = json.loads((out / "oshp_dataset.json").read_text())
    source = str(src["root"].absolute())
    assert meta == {"dataset": spec.key, "generator": "oshp prepare", "source": source, "missing": 0}

    ds = ReleaseLayoutDataset.open(out)  # the dataset is inferred from oshp_dataset.json
    image, label = ds.load_pair(train[0])
    assert image.shape[:2] == label.shape == (16, 24)
    assert check_dataset(out, pair_rule=False) == []


def test_lip_train_and_val_folders_feed_the_right_lists(tmp_path):
    train, test, src = _setup(tmp_path, "lip", "standard")
    report = prepare_dataset("lip", src["root"], tmp_path / "out", ids={"train": train, "test": test}, progress=False)
    assert report["folders"]["train images"].endswith("TrainVal_images/train_images")
    assert report["folders"]["test labels"].endswith("TrainVal_parsing_annotations/val_segmentations")
    # an id that is only in the val folder cannot be a meta-train id
    with pytest.raises(DatasetError, match=test[0]):
        prepare_dataset("lip", src["root"], tmp_path / "out2", ids={"train": train + [test[0]], "test": test[1:]},
                        progress=False)


def test_rerun_is_cheap_and_repairs(tmp_path):
    train, test, src = _setup(tmp_path, "cihp")
    out = tmp_path / "out"
    ids = {"train": train, "test": test}
    prepare_dataset("cihp", src["root"], out, ids=ids, progress=False)
    again = prepare_dataset("cihp", src["root"], out, ids=ids, progress=False)
    assert (again["linked"], again["flipped_written"], again["flipped_kept"]) == (0, 0, len(train) + len(test))

    # a label map newer than its flipped map, and an unreadable flipped map, are regenerated
    newer = src["labels"][train[0]]
    stamp = (out / "Category_rev_ids" / f"{train[0]}.png").stat().st_mtime + 10
    os.utime(newer, (stamp, stamp))
    (out / "Category_rev_ids" / f"{train[1]}.png").write_bytes(b"not a png")
    third = prepare_dataset("cihp", src["root"], out, ids=ids, progress=False)
    assert third["flipped_written"] == 2
    assert check_dataset(out, pair_rule=False) == []


def test_relinks_when_source_moves(tmp_path):
    train, test, src = _setup(tmp_path, "atr")
    out = tmp_path / "out"
    ids = {"train": train, "test": test}
    prepare_dataset("atr", src["root"], out, ids=ids, progress=False)
    moved = tmp_path / "moved"
    src["root"].rename(moved)
    report = prepare_dataset("atr", moved, out, ids=ids, progress=False)
    assert report["linked"] == 2 * (len(train) + len(test))
    assert Path(os.readlink(out / "trainval_images" / f"{train[0]}.jpg")).is_relative_to(moved.absolute())
    assert check_dataset(out, pair_rule=False) == []


def test_regular_file_in_out_is_never_overwritten(tmp_path):
    train, test, src = _setup(tmp_path, "atr")
    out = tmp_path / "out"
    (out / "trainval_images").mkdir(parents=True)
    mine = out / "trainval_images" / f"{train[0]}.jpg"
    mine.write_bytes(b"mine")
    with pytest.raises(DatasetError, match="regular file") as err:
        prepare_dataset("atr", src["root"], out, ids={"train": train, "test": test}, progress=False)
    assert str(mine) in str(err.value)
    assert mine.read_bytes() == b"mine"


def test_released_lists_are_the_default(tmp_path, capsys):
    train = list(official_ids("atr", "train")[:3])
    test = list(official_ids("atr", "test")[:2])
    src = fabricate_original(tmp_path / "raw", "atr", train, test)
    total = len(official_ids("atr", "train")) + len(official_ids("atr", "test"))

    with pytest.raises(DatasetError) as err:
        prepare_dataset("atr", src["root"], tmp_path / "out", progress=False)
    assert f"{total - 5} of {total} listed ids" in str(err.value)
    assert not (tmp_path / "out" / "list").exists()

    report = prepare_dataset("atr", src["root"], tmp_path / "out", allow_missing=True, progress=False)
    assert report["missing"] == total - 5
    assert len((tmp_path / "out" / "missing_ids.txt").read_text().splitlines()) == total - 5
    assert read_id_list(tmp_path / "out" / "list" / "meta_train_id.txt") == train
    assert read_id_list(tmp_path / "out" / "list" / "meta_test_id.txt") == test
    assert json.loads((tmp_path / "out" / "oshp_dataset.json").read_text())["missing"] == total - 5
    assert f"{total - 5} listed id(s)" in capsys.readouterr().err


def test_missing_files_name_id_paths_and_fix(tmp_path):
    train, test, src = _setup(tmp_path, "lip")
    src["images"][train[1]].unlink()
    src["labels"][test[0]].unlink()
    with pytest.raises(DatasetError) as err:
        prepare_dataset("lip", src["root"], tmp_path / "out", ids={"train": train, "test": test}, progress=False)
    message = str(err.value)
    assert "2 of 6 listed ids" in message
    assert train[1] in message and str(src["images"][train[1]]) in message
    assert test[0] in message and str(src["labels"][test[0]]) in message
    assert "--source" in message and "--allow-missing" in message
    assert not (tmp_path / "out" / "list").exists()


def test_allow_missing_writes_reduced_lists_and_counts(tmp_path, capsys):
    train, test, src = _setup(tmp_path, "cihp")
    src["labels"][train[2]].unlink()
    out = tmp_path / "out"
    report = prepare_dataset(
        "cihp", src["root"], out, ids={"train": train, "test": test}, allow_missing=True, progress=False
    )
    assert report["missing"] == 1 and report["missing_examples"] == {"train": [train[2]], "test": []}
    assert (out / "missing_ids.txt").read_text() == f"train\t{train[2]}\t{src['labels'][train[2]]}\n"
    assert read_id_list(out / "list" / "meta_train_id.txt") == [i for i in train if i != train[2]]
    assert read_id_list(out / "list" / "meta_test_id.txt") == test
    assert json.loads((out / "oshp_dataset.json").read_text())["missing"] == 1
    assert not (out / "trainval_images" / f"{train[2]}.jpg").exists()
    assert "1 listed id(s)" in capsys.readouterr().err
    assert check_dataset(out, pair_rule=False) == []
    # once the file is back, a rerun restores the full lists and forgets the old report
    save_label_map(src["labels"][train[2]], fabricate_label("cihp", train[2]))
    report = prepare_dataset("cihp", src["root"], out, ids={"train": train, "test": test}, progress=False)
    assert report["missing"] == 0 and report["missing_file"] is None and not (out / "missing_ids.txt").exists()
    assert read_id_list(out / "list" / "meta_train_id.txt") == train


@pytest.mark.parametrize("dataset,expected", [
    ("atr", ["humanparsing/JPEGImages", "humanparsing/SegmentationClassAug"]),
    ("lip", ["TrainVal_images/train_images", "TrainVal_parsing_annotations/val_segmentations", "LIP/train_images"]),
    ("cihp", ["instance-level_human_parsing/Training/Images", "instance-level_human_parsing/Validation/Category_ids"]),
])
def test_unknown_layout_lists_what_was_looked_for(tmp_path, dataset, expected):
    source = tmp_path / "somewhere"
    (source / "images").mkdir(parents=True)
    with pytest.raises(DatasetError) as err:
        locate_source(dataset, source)
    message = str(err.value)
    assert str(source) in message
    for rel in expected:
        assert f"{source}/{rel}" in message
    assert "--source" in message


def test_missing_source_folder(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        prepare_dataset("atr", tmp_path / "nope", tmp_path / "out", ids={"train": [], "test": []}, progress=False)


def test_partial_layout_names_the_missing_folder(tmp_path):
    train, test, src = _setup(tmp_path, "lip")
    for path in src["folders"][("labels", "test")].iterdir():
        path.unlink()
    src["folders"][("labels", "test")].rmdir()
    with pytest.raises(DatasetError, match="test labels: looked for") as err:
        locate_source("lip", src["root"])
    assert "train images" not in str(err.value)


def test_wrong_label_values_name_the_file(tmp_path):
    train, test, src = _setup(tmp_path, "atr")
    bad = src["labels"][train[0]]
    label = fabricate_label("atr", train[0])
    label[0, 0] = 19  # ATR has ids 0..17; 19 is a LIP/CIHP id
    save_label_map(bad, label)
    with pytest.raises(DatasetError) as err:
        prepare_dataset("atr", src["root"], tmp_path / "out", ids={"train": train, "test": test}, progress=False)
    message = str(err.value)
    assert str(bad) in message and "[19]" in message and "--dataset" in message
    assert not (tmp_path / "out" / "list").exists()


def test_colour_label_maps_are_refused(tmp_path):
    train, test, src = _setup(tmp_path, "cihp")
    bad = src["labels"][test[0]]
    Image.fromarray(np.zeros((16, 24, 3), np.uint8)).save(bad)
    with pytest.raises(DatasetError, match="RGB") as err:
        prepare_dataset("cihp", src["root"], tmp_path / "out", ids={"train": train, "test": test}, progress=False)
    assert str(bad) in str(err.value)


def test_label_that_is_not_png_is_a_clear_error(tmp_path):
    train, test, src = _setup(tmp_path, "lip")
    png = src["labels"][train[0]]
    png.rename(png.with_suffix(".jpg"))
    with pytest.raises(DatasetError, match="not PNG") as err:
        prepare_dataset("lip", src["root"], tmp_path / "out", ids={"train": train, "test": test},
                        allow_missing=True, progress=False)
    assert f"{train[0]}.jpg" in str(err.value)


def test_custom_ids_are_validated(tmp_path):
    train, test, src = _setup(tmp_path, "atr")
    with pytest.raises(ValueError, match="both"):
        prepare_dataset("atr", src["root"], tmp_path / "out", ids={"train": train, "test": train[:1]}, progress=False)
    with pytest.raises(ValueError, match="more than once"):
        prepare_dataset("atr", src["root"], tmp_path / "out", ids={"train": train + train[:1], "test": test},
                        progress=False)
    with pytest.raises(ValueError, match="'train' and 'test'"):
        prepare_dataset("atr", src["root"], tmp_path / "out", ids={"train": train}, progress=False)


def test_process_pool_and_progress(tmp_path, monkeypatch, capsys):
    train, test, src = _setup(tmp_path, "lip")
    monkeypatch.setattr(parallel_mod, "POOL_THRESHOLD", 0)
    report = prepare_dataset("lip", src["root"], tmp_path / "out", ids={"train": train, "test": test},
                             workers=2, progress=True)
    assert report["flipped_written"] == len(train) + len(test)
    assert "LIP-OS: 4 meta-train / 2 meta-test" in capsys.readouterr().err
    assert check_dataset(tmp_path / "out", pair_rule=False) == []
