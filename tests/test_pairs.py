"""The meta-test pair rule (facts 1.6) against the released ATR support index, and the pools."""

import json

import numpy as np
import pytest
from PIL import Image

from oshp.cli import main
from oshp.data.layout import ReleaseLayoutDataset, write_dataset_meta, write_id_list
from oshp.core.errors import DatasetError
from oshp.data.official import official_atr_supports, official_ids
from oshp.data.pairs import (
    SupportIndex, build_meta_test_pairs, coverage, load_pairs, meta_test_pairs, meta_train_pools,
    released_support_index,
)
from oshp.data.vocab import ATR

# facts 1.6: pairs in which each class is in both query and support (k-way scoring), from the release
RELEASE_KWAY_COOCCURRENCE = {"hat": 207, "hair": 1614, "upper-clothes": 1252, "skirt": 240, "pants": 721,
                             "dress": 227, "shoes": 1509, "face": 1647, "legs": 760, "arms": 1550, "bag": 454}


@pytest.fixture(scope="module")
def atr_pairs():
    return build_meta_test_pairs("atr")


def test_released_atr_pairs_are_the_release_1650(atr_pairs):
    pairs = atr_pairs["pairs"]
    assert len(pairs) == 1650
    ids = official_ids("atr", "test")
    pos = {i: n for n, i in enumerate(ids)}
    queries = [pos[p["query"]] for p in pairs]
    supports = [pos[p["support"]] for p in pairs]
    assert len(set(queries)) == 110 and (min(queries), max(queries)) == (0, 114)
    assert len(set(supports)) == 1650 and (min(supports), max(supports)) == (201, 1858)
    # rarest class first, 150 consecutive pairs per class, each query repeated 15 times in a row
    order = [p["class_id"] for p in pairs[::150]]
    assert order == list(ATR.rarest_first)
    assert all(len({p["query"] for p in pairs[i:i + 15]}) == 1 for i in range(0, 1650, 15))
    # both images of each pair contain the class it was drawn for
    index = released_support_index("atr", "test")
    assert all(index.contains(p["class_id"], pos[p["query"]]) and index.contains(p["class_id"], pos[p["support"]])
               for p in pairs)


def test_coverage_matches_release(atr_pairs):
    rows = {r["class"]: r for r in atr_pairs["coverage"]}
    assert all(r["pairs"] == 150 and r["queries"] == 10 and r["supports"] == 150 for r in rows.values())
    assert {name: r["kway_pairs"] for name, r in rows.items()} == RELEASE_KWAY_COOCCURRENCE


def test_rule_is_deterministic(atr_pairs):
    assert build_meta_test_pairs("atr")["pairs"] == atr_pairs["pairs"]


def test_rule_on_a_hand_made_index():
    # class 2 is listed first: it takes queries 0, 1; class 1 must then skip 1 and reuse nothing
    index = SupportIndex.from_classes([{1, 2}, {1, 2}, {1}, {1, 2}, {1, 2}, {1}, {2}, {1}], "test", query_pool=3)
    pairs = meta_test_pairs(index, (2, 1), queries_per_class=1, supports_per_query=2)
    assert [(p.query, p.support, p.class_id) for p in pairs] == [(0, 3, 2), (0, 4, 2), (1, 5, 1), (1, 7, 1)]
    with pytest.raises(DatasetError, match="class 1: the meta-test pair rule needs 2 unused query-pool images"):
        meta_test_pairs(index, (2, 1), queries_per_class=2, supports_per_query=1)


def test_lip_and_cihp_need_labels():
    with pytest.raises(DatasetError, match="published no support index for LIP-OS"):
        build_meta_test_pairs("lip")


def _fabricate_atr_from_released_index(root):
    """An ATR release-layout root whose tiny label maps hold exactly the classes of the released test index."""
    index = official_atr_supports("test")
    ids = official_ids("atr", "test")
    classes = [[] for _ in ids]
    for key, positions in index.items():
        c = key if key <= 17 else key - 17
        for p in positions:
            classes[p].append(c)
    (root / "trainval_classes").mkdir(parents=True)
    for n, (image_id, cls) in enumerate(zip(ids, classes)):
        # use the right-hand twin for odd positions: the scan must merge it
        row = [0] + [{9: 10, 12: 13, 14: 15}.get(c, c) if n % 2 else c for c in sorted(cls)]
        Image.fromarray(np.array([row], np.uint8)).save(root / "trainval_classes" / f"{image_id}.png")
    write_id_list(root / "list" / "meta_test_id.txt", ids)
    write_id_list(root / "list" / "meta_train_id.txt", official_ids("atr", "train")[:10])
    write_dataset_meta(root, {"dataset": "atr"})


def test_scanning_labels_reproduces_the_released_pairs(tmp_path, atr_pairs):
    _fabricate_atr_from_released_index(tmp_path)
    out = tmp_path / "pairs.json"
    assert main(["pairs", "--dataset", "atr", "--data-root", str(tmp_path), "--out", str(out), "--quiet"]) == 0
    scanned = json.loads(out.read_text())
    assert scanned["pairs"] == atr_pairs["pairs"]
    assert load_pairs(out) == atr_pairs["pairs"]
    assert (tmp_path / "oshp_index_test.json").is_file()  # cached for the next run


def test_pairs_cli_without_data_root(tmp_path, capsys):
    out = tmp_path / "p.json"
    assert main(["pairs", "--dataset", "atr", "--out", str(out), "--quiet"]) == 0
    data = json.loads(out.read_text())
    assert len(data["pairs"]) == 1650 and set(data["pairs"][0]) == {"query", "support", "class_id"}
    printed = capsys.readouterr().out
    assert "| 1 | hat | 150 | 10 | 150 | 207 |" in printed and "| | total | 1650 |" in printed


def test_load_pairs_errors(tmp_path):
    with pytest.raises(DatasetError, match="missing pairs file"):
        load_pairs(tmp_path / "none.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"pairs": [{"query": "a"}]}')
    with pytest.raises(DatasetError, match="not a pairs file"):
        load_pairs(bad)


def test_meta_train_pools(tmp_path):
    ids = [f"im{i:03d}" for i in range(10)]
    write_id_list(tmp_path / "list" / "meta_train_id.txt", ids)
    write_dataset_meta(tmp_path, {"dataset": "atr", "train_query_pool": 4})
    queries, supports = meta_train_pools(ReleaseLayoutDataset.open(tmp_path))
    assert queries == ids[:4] and supports == ids[4:]
    write_dataset_meta(tmp_path, {"dataset": "atr", "train_query_pool": 10})
    with pytest.raises(DatasetError, match="empty pool"):
        meta_train_pools(ReleaseLayoutDataset.open(tmp_path))
    # the real datasets: ATR 7,500 (paper and release); LIP and CIHP 14,000 in the paper, 7,500 in the release
    write_id_list(tmp_path / "list" / "meta_train_id.txt", [f"im{i:05d}" for i in range(20000)])
    write_dataset_meta(tmp_path, {"dataset": "lip"})
    lip = ReleaseLayoutDataset.open(tmp_path)
    assert ATR.train_query_pool == 7500 and len(meta_train_pools(lip)[0]) == 14000
    lip.release_pools = True
    assert len(meta_train_pools(lip)[0]) == 7500


def test_coverage_rows_cover_every_foreground_class(atr_pairs):
    assert [r["class_id"] for r in atr_pairs["coverage"]] == list(ATR.foreground_ids)
    assert coverage([], released_support_index("atr", "test"), ATR)[0]["pairs"] == 0
