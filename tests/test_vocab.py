"""Class maps and folds against the paper (section 5) and the release (facts 1.1-1.2, 1.7)."""

import numpy as np
import pytest

from oshp.data.vocab import (
    ATR,
    CIHP,
    DATASETS,
    LIP,
    flip_labels,
    get_dataset,
    human_mask,
    merge_labels,
    restrict_query_to_support,
    training_labels,
)
from oshp.core.errors import UnknownClassError


def names(spec, ids):
    return {spec.class_name(i) for i in ids}


def test_raw_vocabularies():
    assert ATR.num_raw_classes == 18 and LIP.num_raw_classes == 20 and CIHP.num_raw_classes == 20
    assert ATR.raw_names[3] == "sunglasses" and ATR.raw_names[17] == "scarf"
    assert LIP.raw_names[10] == "jumpsuits" and CIHP.raw_names[10] == "torso-skin"
    assert LIP.raw_names[:10] == CIHP.raw_names[:10] and LIP.raw_names[11:] == CIHP.raw_names[11:]


def test_oshp_class_sets():
    assert len(ATR.oshp_ids) == 12 and len(LIP.oshp_ids) == 13 and len(CIHP.oshp_ids) == 13
    assert names(ATR, ATR.oshp_ids) == {"background", "hat", "hair", "upper-clothes", "skirt", "pants", "dress",
                                        "shoes", "face", "legs", "arms", "bag"}
    assert names(LIP, LIP.oshp_ids) == {"background", "hat", "hair", "upper-clothes", "dress", "coat", "pants",
                                        "jumpsuits", "skirt", "face", "arms", "legs", "shoes"}


@pytest.mark.parametrize("spec, fold, novel", [
    (ATR, 1, {"dress", "skirt", "pants"}), (ATR, 2, {"hat", "upper-clothes", "bag"}),
    (LIP, 1, {"dress", "skirt", "pants"}), (LIP, 2, {"upper-clothes", "coat", "jumpsuits"}),
    (CIHP, 1, {"dress", "skirt", "pants"}), (CIHP, 2, {"upper-clothes", "hat", "coat"}),
])
def test_folds_match_paper_section_5(spec, fold, novel):
    assert names(spec, spec.novel_ids(fold)) == novel
    base, nov = set(spec.base_ids(fold)), set(spec.novel_ids(fold))
    assert not base & nov and base | nov == set(spec.oshp_ids) and 0 in base
    # body parts are base classes in every fold (section 5.1)
    assert {"hair", "face", "arms", "legs"} <= names(spec, base)


def test_unknown_fold_and_names():
    with pytest.raises(ValueError, match="--fold 1 or --fold 2"):
        ATR.novel_ids(3)
    assert ATR.class_id("legs") == 12 and ATR.class_id("right leg") == 12 and ATR.class_id("Upper_Clothes") == 4
    with pytest.raises(UnknownClassError, match="no class named 'cape'.*skirt"):
        ATR.class_id("cape")
    with pytest.raises(UnknownClassError, match="unknown dataset"):
        get_dataset("mhp")
    assert get_dataset("ATR-OS") is ATR and set(DATASETS) == {"atr", "lip", "cihp"}


def test_merges():
    raw = np.arange(18, dtype=np.uint8)[None]
    merged = merge_labels(raw, ATR)[0]
    assert merged[10] == 9 and merged[13] == 12 and merged[15] == 14  # right -> left twin
    assert merged[3] == merged[8] == merged[17] == 0  # sunglasses, belt, scarf -> background
    assert set(np.unique(merged)) == set(ATR.oshp_ids)
    raw20 = np.arange(20, dtype=np.uint8)[None]
    m = merge_labels(raw20, CIHP)[0]
    assert m[15] == 14 and m[17] == 16 and m[19] == 18 and m[3] == m[4] == m[8] == m[11] == 0
    assert set(np.unique(m)) == set(CIHP.oshp_ids)
    assert merge_labels(np.array([[255]], np.uint8), ATR)[0, 0] == 255


def test_training_labels_send_novel_and_merged_to_background():
    raw = np.array([[0, 5, 6, 7, 3, 13, 4, 255]], np.uint8)
    assert training_labels(raw, ATR, 1).tolist() == [[0, 0, 0, 0, 0, 12, 4, 255]]
    assert training_labels(raw, ATR, 2).tolist() == [[0, 5, 6, 7, 0, 12, 0, 255]]


def test_flip_swaps_left_and_right():
    raw = np.array([[14, 0, 15], [9, 2, 13]], np.uint8)
    flipped = flip_labels(raw, ATR)
    assert flipped.tolist() == [[14, 0, 15], [12, 2, 10]]
    assert np.array_equal(flip_labels(flipped, ATR), raw)
    lip = np.array([[14, 16, 18, 5]], np.uint8)
    assert flip_labels(lip, LIP).tolist() == [[5, 19, 17, 15]]


def test_human_masks():
    raw = np.array([[0, 3, 5, 13, 255]], np.uint8)  # bg, sunglasses, skirt (novel in fold 1), right-leg, ignore
    assert human_mask(raw, ATR).tolist() == [[0, 0, 1, 1, 255]]  # paper: C_human only, novel included
    assert human_mask(raw, ATR, "raw").tolist() == [[0, 1, 1, 1, 255]]  # release: every raw foreground id
    with pytest.raises(ValueError):
        human_mask(raw, ATR, "other")


def test_query_ground_truth_restricted_to_support_classes():
    query = np.array([[0, 2, 4, 11, 255]], np.uint8)
    support = np.array([[0, 2, 11, 11, 255]], np.uint8)
    assert restrict_query_to_support(query, support).tolist() == [[0, 2, 0, 11, 255]]
