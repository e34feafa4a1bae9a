"""The synthetic dataset: deterministic, in the ATR vocabulary, left/right by the person's side, safe to regenerate."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from oshp.data.layout import ReleaseLayoutDataset
from oshp.core.errors import DatasetError
from oshp.data.synth.people import LEFT_ARM, RIGHT_ARM
from oshp.data.synth.generate import generate_synthetic
from oshp.data.synth.people import render_person_image
from oshp.data.vocab import ATR, flip_labels

SIZE = 64


def _files(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> ReleaseLayoutDataset:
    return generate_synthetic(tmp_path_factory.mktemp("synth") / "data", train=5, test=4, size=SIZE, seed=3,
                              workers=1, progress=False)


def test_same_seed_same_bytes_whatever_the_workers(small, tmp_path):
    again = generate_synthetic(tmp_path / "again", train=5, test=4, size=SIZE, seed=3, workers=2, progress=False)
    first, second = _files(small.root), _files(again.root)
    assert list(first) == list(second)
    assert first == second


def test_different_seed_different_images(small, tmp_path):
    other = generate_synthetic(tmp_path / "other", train=5, test=4, size=SIZE, seed=4, workers=1, progress=False)
    image_id = small.ids("train")[0]
    assert small.image_path(image_id).read_bytes() != other.image_path(image_id).read_bytes()
    assert not np.array_equal(small.load_label(image_id), other.load_label(image_id))


def test_every_atr_id_occurs_and_nothing_else():
    seen = np.zeros(ATR.num_raw_classes, bool)
    for i in range(120):
        image, label = render_person_image(np.random.default_rng([11, i]), SIZE)
        assert image.shape == (SIZE, SIZE, 3) and image.dtype == np.uint8
        assert label.shape == (SIZE, SIZE) and label.dtype == np.uint8
        assert label.max() < ATR.num_raw_classes
        seen[np.unique(label)] = True
    missing = [ATR.raw_names[c] for c in np.flatnonzero(~seen)]
    assert not missing, f"classes never drawn: {missing}"


def test_left_and_right_follow_the_persons_side():
    # A person faces the viewer, so the left arm (14) lies on the image's right.
    votes = []
    for i in range(40):
        _, label = render_person_image(np.random.default_rng([12, i]), 96)
        left, right = np.nonzero(label == LEFT_ARM)[1], np.nonzero(label == RIGHT_ARM)[1]
        if left.size and right.size:
            votes.append(left.mean() > right.mean())
    assert len(votes) >= 20 and np.mean(votes) > 0.8


def test_flipped_labels_and_layout(small):
    root = small.root
    meta = json.loads((root / "oshp_dataset.json").read_text())
    assert {k: meta[k] for k in ("generator", "dataset", "train", "test", "size", "seed", "version")} == {
        "generator": "oshp synth", "dataset": "atr", "train": 5, "test": 4, "size": SIZE, "seed": 3, "version": 1}
    assert meta["train_query_pool"] == 2 and meta["test_query_pool"] == 10
    assert small.is_synthetic and small.spec is ATR and small.test_query_pool == 10
    for split, n in (("train", 5), ("test", 4)):
        text = (root / "list" / f"meta_{split}_id.txt").read_text()
        ids = text.splitlines()
        assert text.endswith("\n") and ids == sorted(ids) and len(ids) == n
        assert ids[0] == f"synth_{split}_000001"
        for image_id in ids:
            image, label = small.load_pair(image_id)
            assert image.shape == (SIZE, SIZE, 3)
            with Image.open(small.label_path(image_id)) as png:
                assert png.mode == "P"  # coloured in viewers, class ids as values
            np.testing.assert_array_equal(small.load_flipped_label(image_id), flip_labels(label, ATR))


def test_regenerating_replaces_an_earlier_synthetic_dataset(tmp_path):
    out = tmp_path / "data"
    generate_synthetic(out, train=4, test=2, size=32, workers=1, progress=False)
    ds = generate_synthetic(out, train=2, test=1, size=32, workers=1, progress=False)
    assert ds.ids("train") == ["synth_train_000001", "synth_train_000002"]
    assert len(list((out / "trainval_images").iterdir())) == 3
    assert ds.meta["train"] == 2


def test_refuses_to_overwrite_other_folders(tmp_path):
    precious = tmp_path / "photos"
    (precious / "trainval_images").mkdir(parents=True)
    (precious / "trainval_images" / "mine.jpg").write_bytes(b"keep me")
    with pytest.raises(DatasetError, match="photos"):
        generate_synthetic(precious, train=1, test=1, size=32, workers=1, progress=False)
    assert (precious / "trainval_images" / "mine.jpg").read_bytes() == b"keep me"


@pytest.mark.parametrize("kwargs", [{"size": 16}, {"train": 0}, {"test": 0}])
def test_refuses_bad_sizes_and_counts(tmp_path, kwargs):
    with pytest.raises(ValueError):
        generate_synthetic(tmp_path / "x", **{"train": 1, "test": 1, "size": 32, "progress": False, **kwargs})
    assert not (tmp_path / "x").exists()
