"""Losses of EOP-Net: beta schedule (sec. 4.3.3), dual-metric loss (eq. 10), prototype contrastive loss (eq. 12)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from oshp.losses import beta_schedule, cross_entropy, dual_metric_loss, prototype_contrastive_loss


def test_beta_schedule_weight_shifting():
    assert beta_schedule(0, 50) == 1.0
    assert beta_schedule(25, 50) == pytest.approx(0.5)
    assert beta_schedule(49, 50) == pytest.approx(0.02)
    assert beta_schedule(50, 50) == 0.0
    assert beta_schedule(70, 50) == 0.0  # clamped
    assert beta_schedule(12.5, 50) == pytest.approx(0.75)  # fractional epochs work


def test_beta_schedule_without_weight_shifting_is_half():
    assert beta_schedule(0, 50, weight_shifting=False) == 0.5
    assert beta_schedule(49, 50, weight_shifting=False) == 0.5


def test_beta_schedule_rejects_bad_max_epoch():
    with pytest.raises(ValueError, match="max_epoch"):
        beta_schedule(0, 0)


def test_cross_entropy_ignores_255_and_never_nans():
    logits = torch.tensor([[[[2.0, 0.0]], [[0.0, 1.0]]]])  # 1 x 2 x 1 x 2
    target = torch.tensor([[[0, 255]]])
    expected = -F.log_softmax(torch.tensor([2.0, 0.0]), 0)[0]
    assert cross_entropy(logits, target).item() == pytest.approx(expected.item())
    assert cross_entropy(logits, torch.full((1, 1, 2), 255)).item() == 0.0
    with pytest.raises(ValueError, match="outside"):
        cross_entropy(logits, torch.tensor([[[0, 5]]]))
    with pytest.raises(ValueError, match="B x C x H x W"):
        cross_entropy(logits, torch.zeros(1, 2, 2, dtype=torch.long))


def test_dual_metric_loss_matches_eq10_by_hand():
    agm = torch.tensor([[[[1.0]], [[3.0]]]])  # 1 x 2 x 1 x 1
    npm = torch.tensor([[[[2.0]], [[0.0]]]])
    target = torch.tensor([[[1]]])
    ce_agm = -math.log(math.exp(3) / (math.exp(1) + math.exp(3)))
    ce_npm = -math.log(math.exp(0) / (math.exp(2) + math.exp(0)))
    assert dual_metric_loss(agm, npm, target, 0.3).item() == pytest.approx(0.3 * ce_agm + 0.7 * ce_npm, rel=1e-5)
    assert dual_metric_loss(agm, npm, target, 1.0).item() == pytest.approx(ce_agm, rel=1e-5)
    assert dual_metric_loss(agm, npm, target, 0.0).item() == pytest.approx(ce_npm, rel=1e-5)
    # a missing branch takes no weight: the AGM-only / NPM-only rows of Table 4 are plain CE
    assert dual_metric_loss(None, npm, target, 0.3).item() == pytest.approx(ce_npm, rel=1e-5)
    assert dual_metric_loss(agm, None, target, 0.3).item() == pytest.approx(ce_agm, rel=1e-5)
    with pytest.raises(ValueError):
        dual_metric_loss(None, None, target, 0.5)


def test_contrastive_loss_hand_computed():
    # one sample, two classes; cosines: row0 (1, 1/sqrt2), row1 (0, 1/sqrt2)
    q = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    s = torch.tensor([[[2.0, 0.0], [1.0, 1.0]]])  # norms do not matter (cosine)
    present = torch.ones(1, 2, dtype=torch.bool)
    tau = 0.1
    c = 1 / math.sqrt(2)
    row0 = -math.log(math.exp(1 / tau) / (math.exp(1 / tau) + math.exp(c / tau)))
    row1 = -math.log(math.exp(c / tau) / (math.exp(0 / tau) + math.exp(c / tau)))
    got = prototype_contrastive_loss(q, s, present, present, tau)
    assert got.item() == pytest.approx((row0 + row1) / 2, rel=1e-5)


def test_contrastive_loss_edge_cases():
    q = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [5.0, 5.0]]], requires_grad=True)
    s = torch.tensor([[[2.0, 0.0], [1.0, 1.0], [-1.0, 0.0]]])
    tau = 0.5
    c = 1 / math.sqrt(2)
    # class 2 absent from the support: not a row and not a negative column
    sp = torch.tensor([[True, True, False]])
    qp = torch.tensor([[True, True, True]])
    row0 = -math.log(math.exp(1 / tau) / (math.exp(1 / tau) + math.exp(c / tau)))
    row1 = -math.log(math.exp(c / tau) / (1 + math.exp(c / tau)))
    assert prototype_contrastive_loss(q, s, qp, sp, tau).item() == pytest.approx((row0 + row1) / 2, rel=1e-5)
    # class 1 absent from the query: skipped as a row, still a negative column
    qp = torch.tensor([[True, False, False]])
    assert prototype_contrastive_loss(q, s, qp, sp, tau).item() == pytest.approx(row0, rel=1e-5)
    # a single support class gives -log 1 = 0
    one = torch.tensor([[True, False, False]])
    assert prototype_contrastive_loss(q, s, one, one, tau).item() == pytest.approx(0.0, abs=1e-7)
    # no row anywhere: a zero that still backpropagates
    none = torch.zeros(1, 3, dtype=torch.bool)
    loss = prototype_contrastive_loss(q, s, none, sp, tau)
    loss.backward()
    assert loss.item() == 0.0 and q.grad is not None


def test_contrastive_loss_batch_mean_over_samples_with_rows():
    q = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [0.0, 1.0]]])
    s = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [0.0, 1.0]]])
    p0 = torch.tensor([[True, True], [False, False]])  # second sample has no rows: excluded from the mean
    tau = 1.0
    expected = -math.log(math.e / (math.e + 1))
    got = prototype_contrastive_loss(q, s, p0, torch.ones(2, 2, dtype=torch.bool), tau)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="tau"):
        prototype_contrastive_loss(q, s, p0, p0, 0.0)
    with pytest.raises(ValueError, match="B x K x D"):
        prototype_contrastive_loss(q[0], s[0], p0, p0)


def test_contrastive_loss_release_rows():
    """absent_rows='zero' (the release): a query class the support lacks is a row scoring 0 that counts in the mean."""
    q = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [5.0, 5.0]]])
    s = torch.tensor([[[2.0, 0.0], [1.0, 1.0], [-1.0, 0.0]]])
    tau = 0.5
    c = 1 / math.sqrt(2)
    sp = torch.tensor([[True, True, False]])
    qp = torch.tensor([[True, True, True]])
    row0 = -math.log(math.exp(1 / tau) / (math.exp(1 / tau) + math.exp(c / tau)))
    row1 = -math.log(math.exp(c / tau) / (1 + math.exp(c / tau)))
    got = prototype_contrastive_loss(q, s, qp, sp, tau, absent_rows="zero")
    assert got.item() == pytest.approx((row0 + row1) / 3, rel=1e-5)
    only_absent = torch.tensor([[False, False, True]])
    assert prototype_contrastive_loss(q, s, only_absent, sp, tau, absent_rows="zero").item() == 0.0
    with pytest.raises(ValueError, match="absent_rows"):
        prototype_contrastive_loss(q, s, qp, sp, tau, absent_rows="drop")


def test_dual_metric_loss_can_weigh_classes_instead_of_pixels():
    from oshp.losses import class_balanced_cross_entropy, dual_metric_loss

    target = torch.tensor([[[0, 0, 0, 1], [0, 0, 0, 0]]])  # one part pixel among eight
    agm = torch.zeros(1, 2, 2, 4)
    npm = torch.tensor([[[[2.0] * 4] * 2, [[0.0] * 4] * 2]])  # confident background everywhere
    plain = dual_metric_loss(agm, npm, target, 0.25)
    balanced = dual_metric_loss(agm, npm, target, 0.25, class_balanced=True)
    assert torch.isclose(balanced, 0.25 * class_balanced_cross_entropy(agm, target)
                         + 0.75 * class_balanced_cross_entropy(npm, target))
    assert balanced > plain  # the missed part counts as much as the seven background pixels
