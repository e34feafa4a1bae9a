"""The released split files shipped as package data: checksums, shapes and the ATR support index."""

import pytest

from oshp.data.official import official_atr_supports, official_dir, official_ids, verify_checksums


def test_checksums_and_attribution():
    assert verify_checksums() == []
    notice = (official_dir() / "NOTICE").read_text()
    assert "Apache License" in notice and "Charleshhy/One-shot-Human-Parsing" in notice


@pytest.mark.parametrize("dataset, n_train, n_test, first_train, first_test", [
    ("atr", 15000, 2706, "2500_19", "2500_1"),
    ("lip", 30462, 10000, "1000_1234574", "100034_483681"),
    ("cihp", 28280, 5000, "0000006", "0000001"),
])
def test_lists(dataset, n_train, n_test, first_train, first_test):
    train, test = official_ids(dataset, "train"), official_ids(dataset, "test")
    assert (len(train), len(test)) == (n_train, n_test)
    assert (train[0], test[0]) == (first_train, first_test)
    for ids in (train, test):
        assert list(ids) == sorted(ids) and len(set(ids)) == len(ids)
    assert not set(train) & set(test)


def test_released_atr_support_index():
    test, train = official_atr_supports("test"), official_atr_supports("train")
    assert sorted(test) == list(range(35)) and test[0] == ()
    # per-key lengths from the release (facts 1.5): (query pool, support pool)
    assert (len(test[1]), len(test[1 + 17])) == (46, 528)  # hat
    assert (len(test[7]), len(test[7 + 17])) == (66, 607)  # dress
    assert (len(train[5]), len(train[5 + 17])) == (2153, 2048)  # skirt
    assert len(test[10]) == len(test[13]) == len(test[15]) == 0  # right-hand twins are merged
    assert max(test[1]) <= 200 and min(test[1 + 17]) >= 201  # test split point 200
    assert max(train[1]) <= 7500 and min(train[1 + 17]) >= 7501  # train split point 7500
