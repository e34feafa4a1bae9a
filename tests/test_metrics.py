"""Metrics against confusion matrices worked out by hand (every expected number shows its arithmetic)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from oshp.data.vocab import ATR, LIP
from oshp.metrics import (
    KWAY_POOLING,
    ConfusionMatrix,
    OneWayMeter,
    accuracy_per_class,
    format_metrics_table,
    iou_per_class,
    kway_metrics,
    oneway_metrics,
)

approx = pytest.approx


def _pixels(pairs: list[tuple[int, int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """(gt, pred, count) triples -> flat target and prediction arrays."""
    target = np.concatenate([np.full(n, g, dtype=np.uint8) for g, _, n in pairs])
    pred = np.concatenate([np.full(n, p, dtype=np.int64) for _, p, n in pairs])
    return pred, target


# ------------------------------------------------------------------------------ confusion matrix
def test_confusion_matrix_by_hand_with_ignore():
    target = np.array([[0, 0, 1], [1, 2, 255]], dtype=np.uint8)
    pred = np.array([[0, 1, 1], [1, 1, 0]], dtype=np.int64)
    cm = ConfusionMatrix(4).update(pred, target)
    # counted (gt, pred): (0,0) (0,1) (1,1) (1,1) (2,1); the 255 pixel is dropped
    expected = np.array([[1, 1, 0, 0], [0, 2, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0]])
    np.testing.assert_array_equal(cm.matrix, expected)
    assert cm.total == 5 and cm.num_pairs == 1

    iou = iou_per_class(cm)
    # class 0: 1 / (2 + 1 - 1) = 0.5; class 1: 2 / (2 + 4 - 2) = 0.5; class 2: 0 / (1 + 0 - 0) = 0
    assert iou[:3] == approx([0.5, 0.5, 0.0])
    assert math.isnan(iou[3])  # class 3: 0 / 0
    acc = accuracy_per_class(cm.matrix)
    # class 0: 1/2; class 1: 2/2; class 2: 0/1; class 3: no GT pixel -> NaN
    assert acc[:3] == approx([0.5, 1.0, 0.0])
    assert math.isnan(acc[3])


def test_false_positive_only_class_and_out_of_range_target():
    # class 3 is only predicted: IoU 0 / (0 + 1 + 0) = 0, accuracy 0/0 = NaN
    # target 7 >= num_classes is not counted (like 255)
    cm = ConfusionMatrix(4).update(np.array([3, 0, 2]), np.array([0, 0, 7]))
    assert cm.total == 2
    iou, acc = iou_per_class(cm), accuracy_per_class(cm)
    assert iou[3] == 0.0 and math.isnan(acc[3])
    assert iou[0] == approx(0.5)  # 1 / (2 + 1 - 1)


def test_torch_input_and_bad_inputs():
    t = torch.tensor([[0, 1], [1, 255]])
    cm = ConfusionMatrix(2).update(torch.tensor([[0, 1], [0, 1]]), t)
    np.testing.assert_array_equal(cm.matrix, [[1, 0], [1, 1]])
    with pytest.raises(ValueError, match="shape"):
        cm.update(np.zeros((2, 2), int), np.zeros((2, 3), int))
    with pytest.raises(TypeError, match="argmax"):
        cm.update(np.zeros(3, float), np.zeros(3, int))
    with pytest.raises(ValueError, match="outside"):
        cm.update(np.array([5]), np.array([0]))
    # a bad prediction on an ignored pixel is not an error: the pixel is not counted
    cm.update(np.array([5]), np.array([255]))


def test_pooling_differs_from_mean_of_per_pair_iou():
    # pair A: 8 pixels of class 1, all right -> per-pair IoU_1 = 8/8 = 1
    a_pred, a_gt = np.ones(8, int), np.ones(8, int)
    # pair B: one class-1 pixel missed -> per-pair IoU_1 = 0 / (1 + 0 + 0) = 0
    b_pred, b_gt = np.array([0, 0]), np.array([1, 0])
    per_pair = [iou_per_class(ConfusionMatrix(2).update(p, g))[1] for p, g in ((a_pred, a_gt), (b_pred, b_gt))]
    assert np.mean(per_pair) == approx(0.5)  # (1 + 0) / 2
    pooled = ConfusionMatrix(2).update(a_pred, a_gt).update(b_pred, b_gt)
    # pooled: TP = 8, FN = 1, FP = 0 -> 8 / 9
    assert iou_per_class(pooled)[1] == approx(8 / 9)
    assert iou_per_class(pooled)[1] != approx(np.mean(per_pair))


def test_merge_equals_single_accumulation():
    x = ConfusionMatrix(3).update(np.array([0, 1, 2]), np.array([0, 2, 2]))
    y = ConfusionMatrix(3).update(np.array([1, 1]), np.array([1, 255]))
    both = ConfusionMatrix(3).update(np.array([0, 1, 2]), np.array([0, 2, 2]))
    both.update(np.array([1, 1]), np.array([1, 255]))
    x += y
    np.testing.assert_array_equal(x.matrix, both.matrix)
    assert x.num_pairs == 2
    with pytest.raises(ValueError):
        x.merge(ConfusionMatrix(4))


# ------------------------------------------------------------------------------------------- k-way
def _atr_fold1_matrix() -> ConfusionMatrix:
    pred, target = _pixels([
        (0, 0, 10), (0, 2, 2),   # background: 10 right, 2 called hair
        (2, 2, 6), (2, 0, 2),    # hair: 6 right, 2 called background
        (5, 5, 3), (5, 7, 1),    # skirt: 3 right, 1 called dress
        (6, 6, 4),               # pants: 4 right
        (1, 3, 2),               # hat called sunglasses (id 3, not an OSHP class): an error
        (255, 9, 5),             # ignored pixels, whatever is predicted
    ])
    return ConfusionMatrix(ATR.num_raw_classes).update(pred, target)


def test_kway_metrics_atr_fold1_by_hand():
    assert ATR.novel_ids(1) == (5, 6, 7)  # skirt, pants, dress
    m = kway_metrics(_atr_fold1_matrix(), ATR, fold=1)
    assert m["pooling"] == KWAY_POOLING
    assert m["num_pixels"] == 30  # 10+2+6+2+3+1+4+2
    iou = m["per_class_iou"]
    assert iou["background"] == approx(100 * 10 / 14)  # 10 / (12 + 12 - 10)
    assert iou["hat"] == 0.0                           # 0 / (2 + 0 - 0)
    assert iou["hair"] == approx(60.0)                 # 6 / (8 + 8 - 6)
    assert iou["skirt"] == approx(75.0)                # 3 / (4 + 3 - 3)
    assert iou["pants"] == approx(100.0)               # 4 / 4
    assert iou["dress"] == 0.0                         # 0 / (0 + 1 - 0): a false positive only
    for never_seen in ("upper-clothes", "shoes", "face", "legs", "arms", "bag"):
        assert iou[never_seen] is None
    assert "sunglasses" not in iou and len(iou) == len(ATR.oshp_ids)

    # novel: (75 + 100 + 0) / 3
    assert m["novel_miou"] == approx(175 / 3)                       # 58.333
    # base incl. bg, NaN skipped: (71.4286 + 0 + 60) / 3
    assert m["base_miou"] == approx((100 * 10 / 14 + 0 + 60) / 3)  # 43.810
    # human: (71.4286 + 0 + 60 + 75 + 100 + 0) / 6
    assert m["human_miou"] == approx((100 * 10 / 14 + 60 + 75 + 100) / 6)  # 51.071
    # overall: trace / total = (10 + 6 + 3 + 4) / 30
    assert m["overall_acc"] == approx(100 * 23 / 30)  # 76.667

    acc = m["per_class_acc"]
    assert acc["background"] == approx(100 * 10 / 12) and acc["hat"] == 0.0 and acc["hair"] == approx(75.0)
    assert acc["skirt"] == approx(75.0) and acc["pants"] == approx(100.0) and acc["dress"] is None
    # base acc: (83.333 + 0 + 75) / 3; novel acc: dress has no GT -> (75 + 100) / 2
    assert m["mean_base_acc"] == approx((100 * 10 / 12 + 0 + 75) / 3)  # 52.778
    assert m["mean_novel_acc"] == approx(87.5)
    json.dumps(m, allow_nan=False)  # no NaN leaks into the result


def test_kway_all_nan_means_are_none_and_size_is_checked():
    m = kway_metrics(ConfusionMatrix(ATR.num_raw_classes), ATR, fold=2)
    for key in ("novel_miou", "base_miou", "human_miou", "overall_acc", "mean_base_acc", "mean_novel_acc"):
        assert m[key] is None
    assert set(m["per_class_iou"].values()) == {None}
    with pytest.raises(ValueError, match="ConfusionMatrix\\(spec.num_raw_classes\\)"):
        kway_metrics(ConfusionMatrix(LIP.num_raw_classes), ATR, fold=1)
    with pytest.raises(ValueError, match="fold"):
        kway_metrics(ConfusionMatrix(ATR.num_raw_classes), ATR, fold=3)


# ------------------------------------------------------------------------------------------- 1-way
def _oneway_meter(binary_every: int = 1) -> OneWayMeter:
    meter = OneWayMeter(ATR, binary_every=binary_every)
    # pair 0, hair (2): (gt,pred) (1,1) (1,0) (0,0) (0,0)          -> [[2,0],[1,1]]
    meter.update(2, np.array([1, 0, 0, 0]), np.array([1, 1, 0, 0]))
    # pair 1, hair: (1,1) (1,1) (255,-) (0,1)                       -> [[0,1],[0,2]]
    meter.update(2, torch.tensor([1, 1, 1, 1]), torch.tensor([1, 1, 255, 0]))
    # pair 2, skirt (5, novel in fold 1): (1,1) (0,1) (0,0) x3      -> [[3,1],[0,1]]
    meter.update(5, np.array([1, 1, 0, 0, 0]), np.array([1, 0, 0, 0, 0]))
    return meter


def test_oneway_metrics_by_hand():
    m = oneway_metrics(_oneway_meter(), fold=1)
    # hair pooled [[2,1],[1,3]]: fg 3 / (4 + 4 - 3) = 60%, bg 2 / (3 + 3 - 2) = 50%
    # skirt [[3,1],[0,1]]:        fg 1 / (1 + 2 - 1) = 50%, bg 3 / (4 + 3 - 3) = 75%
    assert m["per_class_iou"]["hair"] == approx(60.0)
    assert m["per_class_iou"]["skirt"] == approx(50.0)
    assert m["per_class_iou"]["pants"] is None
    assert m["per_class_bg_iou"]["hair"] == approx(50.0)
    assert m["background_iou"] == approx(62.5)          # (50 + 75) / 2
    assert m["human_miou"] == approx(57.5)              # (62.5 + 60 + 50) / 3
    assert m["base_miou"] == approx(61.25)              # (62.5 + 60) / 2
    assert m["novel_miou"] == approx(50.0)              # skirt only
    # Binary-IoU over all pairs: [[2,0],[1,1]] + [[0,1],[0,2]] + [[3,1],[0,1]] = [[5,2],[1,4]]
    # fg 4 / (5 + 6 - 4) = 4/7, bg 5 / (7 + 6 - 5) = 5/8, mean (57.143 + 62.5) / 2
    assert m["binary_fg_iou"] == approx(100 * 4 / 7)
    assert m["binary_bg_iou"] == approx(62.5)
    assert m["binary_miou"] == approx((100 * 4 / 7 + 62.5) / 2)  # 59.821
    assert m["overall_acc"] == approx(75.0)             # (5 + 4) / 12
    assert m["per_class_pairs"]["hair"] == 2 and m["per_class_pairs"]["skirt"] == 1
    assert m["per_class_pairs"]["pants"] == 0
    assert m["num_pixels"] == 12 and m["binary_pairs"] == 3
    assert "pooled" in m["pooling"] or "summed" in m["pooling"]
    json.dumps(m, allow_nan=False)


def test_oneway_binary_every_reproduces_release_subsampling():
    m = oneway_metrics(_oneway_meter(binary_every=2), fold=1)
    # pairs 0 and 2 only (ii % 2 == 0): [[2,0],[1,1]] + [[3,1],[0,1]] = [[5,1],[1,2]]
    # fg 2 / (3 + 3 - 2) = 50%, bg 5 / (6 + 6 - 5) = 5/7
    assert m["binary_pairs"] == 2
    assert m["binary_miou"] == approx((50 + 100 * 5 / 7) / 2)  # 60.714
    # per-class numbers still use every pair
    assert m["per_class_iou"]["hair"] == approx(60.0) and m["human_miou"] == approx(57.5)


def test_oneway_rejects_bad_episodes():
    meter = OneWayMeter(ATR)
    with pytest.raises(ValueError, match="foreground"):
        meter.update(0, np.zeros(2, int), np.zeros(2, int))   # background is not an episode class
    with pytest.raises(ValueError, match="foreground"):
        meter.update(3, np.zeros(2, int), np.zeros(2, int))   # sunglasses is merged away in ATR-OS
    with pytest.raises(ValueError, match="0 or 1"):
        meter.update(2, np.array([2, 0]), np.array([1, 0]))   # a k-way map passed by mistake
    with pytest.raises(ValueError):
        OneWayMeter(ATR, binary_every=0)
    empty = oneway_metrics(meter, fold=1)
    assert empty["human_miou"] is None and empty["binary_miou"] is None and empty["novel_miou"] is None


# ------------------------------------------------------------------------------------ JSON, tables
def test_json_round_trips():
    cm = _atr_fold1_matrix()
    cm2 = ConfusionMatrix.from_dict(json.loads(json.dumps(cm.to_dict())))
    np.testing.assert_array_equal(cm2.matrix, cm.matrix)
    assert cm2.num_pairs == cm.num_pairs
    assert kway_metrics(cm2, ATR, 1) == kway_metrics(cm, ATR, 1)

    meter = _oneway_meter(binary_every=2)
    meter2 = OneWayMeter.from_dict(json.loads(json.dumps(meter.to_dict())))
    assert meter2.binary_every == 2 and meter2.spec is ATR and meter2.num_pairs == 3
    assert oneway_metrics(meter2, 1) == oneway_metrics(meter, 1)
    # the pair counter survives, so a resumed meter subsamples the Binary-IoU at the same pairs
    meter.update(2, np.array([1]), np.array([1]))
    meter2.update(2, np.array([1]), np.array([1]))
    np.testing.assert_array_equal(meter2.binary.matrix, meter.binary.matrix)


def test_oneway_merge():
    a = OneWayMeter(ATR)
    a.update(2, np.array([1, 0]), np.array([1, 1]))
    b = OneWayMeter(ATR)
    b.update(5, np.array([1, 0]), np.array([1, 0]))
    a += b
    assert a.num_pairs == 2 and a.pair_counts == {2: 1, 5: 1}
    np.testing.assert_array_equal(a.binary.matrix, [[1, 0], [1, 2]])


def test_format_metrics_table():
    table = format_metrics_table(kway_metrics(_atr_fold1_matrix(), ATR, 1))
    assert table.splitlines()[0].startswith("| Metric (ATR k-way fold 1)")
    assert "| Novel mIoU | 58.3 |" in table
    assert "| Base mIoU | 43.8 |" in table
    assert "| Human mIoU | 51.1 |" in table
    assert "| Overall acc. | 76.7 |" in table
    assert "Binary-IoU" not in table
    empty = format_metrics_table(oneway_metrics(OneWayMeter(ATR), 1))
    assert "| Binary-IoU | n/a |" in empty


def test_mean_iou_of_one_prediction():
    from oshp.metrics import mean_iou

    target = np.array([[0, 0, 1, 1], [0, 0, 1, 255]])
    pred = np.array([[0, 1, 1, 1], [0, 0, 1, 1]])
    # background: 3 / 4; class 1: 3 / 4 (the ignored pixel counts for neither)
    assert mean_iou(pred, target) == pytest.approx(75.0)
    assert mean_iou(np.zeros((2, 2), int), np.full((2, 2), 255)) != mean_iou(np.zeros((2, 2), int), np.zeros((2, 2), int))
