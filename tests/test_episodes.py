"""k-way and 1-way episodes for meta-training and meta-testing (paper section 3)."""

import numpy as np
import pytest
import torch

from oshp.data.episodes import MetaTestEpisodes, MetaTrainEpisodes, collate_episodes, make_episode
from oshp.core.errors import DatasetError
from oshp.data.vocab import ATR


def classes(t):
    return set(torch.unique(t).tolist()) - {0, 255}


def test_make_episode_kway_by_hand():
    # fold 1: skirt (5) is novel. Query: hair 2, skirt 5, arm 15 (right); support: hair 2, face 11, skirt 5
    query = np.array([[2, 5, 15, 0]], np.uint8)
    support = np.array([[2, 11, 5, 0]], np.uint8)
    img = torch.zeros(3, 1, 4)
    ep = make_episode(ATR, ATR.base_ids(1), img, query, img, support, way="k")
    assert ep["support_label"].tolist() == [[2, 11, 0, 0]]  # novel skirt -> background in training
    assert ep["query_label_full"].tolist() == [[2, 0, 14, 0]]  # right arm merged into arms (14)
    assert ep["query_label"].tolist() == [[2, 0, 0, 0]]  # arms are not in the support: restricted away
    assert ep["query_human"].tolist() == [[1, 1, 1, 0]]  # the coarse mask keeps the novel skirt as human
    assert torch.nonzero(ep["support_classes"]).flatten().tolist() == [2, 11]
    test_ep = make_episode(ATR, ATR.oshp_ids, img, query, img, support, way="k")
    assert test_ep["query_label"].tolist() == [[2, 5, 0, 0]]  # at test time the novel class is kept


def test_make_episode_one_way_by_hand():
    query = np.array([[2, 5, 255, 0]], np.uint8)
    support = np.array([[5, 5, 11, 0]], np.uint8)
    img = torch.zeros(3, 1, 4)
    ep = make_episode(ATR, ATR.oshp_ids, img, query, img, support, way="1", class_id=5)
    assert ep["query_label"].tolist() == [[0, 5, 255, 0]] and ep["support_label"].tolist() == [[5, 5, 0, 0]]
    assert ep["class_id"] == 5 and torch.nonzero(ep["support_classes"]).flatten().tolist() == [5]
    with pytest.raises(ValueError, match="needs the foreground class"):
        make_episode(ATR, ATR.oshp_ids, img, query, img, support, way="1")


@pytest.mark.parametrize("fold", [1, 2])
def test_kway_training_episodes(tiny_synthetic, fold):
    episodes = MetaTrainEpisodes(tiny_synthetic, fold, way="k", size=48, seed=0)
    assert len(episodes) == tiny_synthetic.train_query_pool
    novel = set(ATR.novel_ids(fold))
    for i in range(6):
        ep = episodes[i]
        assert ep["query_image"].shape == (3, 48, 48) and ep["support_label"].shape == (48, 48)
        support_classes = classes(ep["support_label"])
        assert support_classes and not support_classes & novel  # base classes only, never empty
        assert classes(ep["query_label"]) <= support_classes
        assert not classes(ep["query_label_full"]) & novel
        assert set(torch.unique(ep["query_human"]).tolist()) <= {0, 1, 255}
    batch = collate_episodes([episodes[0], episodes[1]])
    assert batch["query_image"].shape == (2, 3, 48, 48) and len(batch["query_id"]) == 2


def test_training_pairings_depend_on_seed_and_epoch(tiny_synthetic):
    a = MetaTrainEpisodes(tiny_synthetic, 1, size=32, seed=0)
    b = MetaTrainEpisodes(tiny_synthetic, 1, size=32, seed=0)
    assert a.refs == b.refs
    first = list(a.refs)
    a.set_epoch(1)
    assert a.refs != first and {r.query for r in a.refs} == {r.query for r in first}
    fixed = MetaTrainEpisodes(tiny_synthetic, 1, size=32, seed=0, fixed_supports=True)
    before = list(fixed.refs)
    fixed.set_epoch(5)
    assert fixed.refs == before  # the release draws supports once per run
    queries, supports = set(r.query for r in first), set(r.support for r in first)
    assert not queries & supports  # query and support pools are disjoint


def test_one_way_training_episodes(tiny_synthetic):
    episodes = MetaTrainEpisodes(tiny_synthetic, 1, way="1", size=32, seed=0, pairs_per_class=3)
    drawn = {r.class_id for r in episodes.refs}
    assert drawn == set(ATR.base_foreground_ids(1))
    for i in range(0, len(episodes), 5):
        ep = episodes[i]
        assert set(torch.unique(ep["support_label"]).tolist()) <= {0, ep["class_id"], 255}
        assert (ep["support_label"] == ep["class_id"]).any()  # the support shows its class
        assert ep["class_id"] in ATR.base_foreground_ids(1)
    first = MetaTrainEpisodes(tiny_synthetic, 1, way="1", size=32, seed=0, pairs_per_class=3,
                              one_way_selection="first")
    index = first.index
    ids = tiny_synthetic.ids("train")
    for c in ATR.base_foreground_ids(1):
        assert [r.query for r in first.refs if r.class_id == c] == [ids[q] for q in index.query[c][:3]]


def test_meta_test_episodes_native_resolution(tiny_synthetic):
    ids = tiny_synthetic.ids("test")
    pairs = [{"query": ids[0], "support": ids[20], "class_id": 2}, {"query": ids[1], "support": ids[21], "class_id": 5}]
    kway = MetaTestEpisodes(tiny_synthetic, pairs, way="k")
    ep = kway[0]
    assert ep["query_image"].shape == (3, 64, 64)
    q_raw = tiny_synthetic.load_label(ids[0])
    assert ep["query_label"].shape == q_raw.shape
    assert classes(ep["query_label"]) <= classes(ep["support_label"])
    oneway = MetaTestEpisodes(tiny_synthetic, pairs, way="1")
    assert set(torch.unique(oneway[1]["query_label"]).tolist()) <= {0, 5, 255} and oneway[1]["class_id"] == 5
    with pytest.raises(DatasetError, match="not in .*meta_test_id.txt"):
        MetaTestEpisodes(tiny_synthetic, [{"query": "nope", "support": ids[0], "class_id": 2}])
    with pytest.raises(ValueError, match="different sizes"):
        collate_episodes([ep, MetaTestEpisodes(tiny_synthetic, pairs, size=32)[0]])


def test_support_without_its_class_is_replaced(tiny_synthetic):
    episodes = MetaTrainEpisodes(tiny_synthetic, 1, way="1", size=32, seed=0, pairs_per_class=2)
    blank = next(i for i in tiny_synthetic.ids("train") if 1 not in set(
        np.unique(tiny_synthetic.load_label(i)).tolist()))  # an image without a hat
    i = next(n for n, r in enumerate(episodes.refs) if r.class_id == 1)
    episodes.refs[i] = episodes.refs[i].__class__(episodes.refs[i].query, blank, 1)
    ep = episodes[i]
    assert ep["support_id"] != blank and (ep["support_label"] == 1).any()
