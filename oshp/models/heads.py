"""The two heads of dual-metric learning (paper section 4.3), shared by EOP-Net and POPNet's stage networks.

Both read cosine maps between query features and class prototypes: the Nearest Prototype Module (NPM, eqs. 8-9)
with a few scalar parameters, and the Attention Guidance Module (AGM, eqs. 5-7) with a convolutional trunk.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from .backbone import SeparableConvBlock


def group_mean(x: torch.Tensor, group: torch.Tensor, n: int) -> torch.Tensor:
    """Mean of the P x h x w maps ``x`` within each of ``n`` groups (group[p] = sample of pair p)."""
    sums = x.new_zeros((n,) + tuple(x.shape[1:])).index_add(0, group, x)
    counts = torch.bincount(group, minlength=n).clamp_min(1).to(x.dtype)
    return sums / counts.view(-1, *([1] * (x.dim() - 1)))


def fixed_mean(x: torch.Tensor, group: torch.Tensor, n: int, num_ids: int,
               absent: torch.Tensor | float) -> torch.Tensor:
    """Mean over all ``num_ids`` class ids of each group, ids missing from a group counting as ``absent``.

    The release's background (its loop over every id 1..C-1, divided by C-1 whatever the support holds): x holds
    the P x h x w values of the ids a group has; ``absent`` (a number or n x h x w) stands for each one it lacks.
    """
    sums = x.new_zeros((n,) + tuple(x.shape[1:])).index_add(0, group, x)
    missing = (num_ids - torch.bincount(group, minlength=n)).to(x.dtype).view(-1, *([1] * (x.dim() - 1)))
    return (sums + missing * absent) / num_ids


def identity_affine(conv: nn.Conv2d) -> nn.Conv2d:
    nn.init.ones_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


class NPMHead(nn.Module):
    """Nearest Prototype Module (eqs. 8-9): scalar projections of the cosine maps, no spatial parameters.

    m_bg = omega_NPM(mean_c (1 - m_c)) (eq. 8); logits = [phi_NPM_bg(m_bg), phi_NPM(m_c) ...] (eq. 9), each times a
    learnable temperature. phi/omega are 1x1 "fully-connected" maps on one-channel maps, initialised to identity.
    """

    def __init__(self, scale_init: float = 10.0) -> None:
        super().__init__()
        self.phi = identity_affine(nn.Conv2d(1, 1, 1))
        self.phi_bg = identity_affine(nn.Conv2d(1, 1, 1))
        self.omega = identity_affine(nn.Conv2d(1, 1, 1))
        self.scale = nn.Parameter(torch.tensor(float(scale_init)))

    def background_similarity(self, sims: torch.Tensor, group: torch.Tensor, n: int,
                              num_ids: int | None = None) -> torch.Tensor:
        """m_bg of eq. 8: omega_NPM of the mean over each sample's classes of (1 - m_c); P x h x w -> n x h x w.

        ``num_ids``: the release's mean over all that many class ids instead, an absent id (cosine 0) adding 1.
        """
        dissim = 1.0 - sims
        mean = group_mean(dissim, group, n) if num_ids is None else fixed_mean(dissim, group, n, num_ids, 1.0)
        return self.omega(mean.unsqueeze(1)).squeeze(1)

    def forward(self, sims: torch.Tensor, group: torch.Tensor, n: int,
                num_ids: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """P x h x w cosine maps -> (P x h x w class logits, n x h x w background logits); ``num_ids`` as in
        :meth:`background_similarity`."""
        fg = self.scale * self.phi(sims.unsqueeze(1)).squeeze(1)
        bg = self.scale * self.phi_bg(self.background_similarity(sims, group, n, num_ids).unsqueeze(1)).squeeze(1)
        return fg, bg

    def absent_logit(self) -> torch.Tensor:
        """The logit of a class whose cosine map is 0 (the release's zero prototype)."""
        return self.scale * self.phi.bias[0]


class AGMHead(nn.Module):
    """Attention Guidance Module (eqs. 5-7).

    r_c = m_c * h^q + h^q (eq. 5); a shared trunk phi_AGM ends in a 1x1 conv with two outputs per class: the class
    score l_c (eq. 6, left) and that class's background score phi_AGM_bg(r_c); l_bg = omega_AGM(mean_c of the latter)
    (eq. 6, right). The softmax of eq. 7 is left to the loss / argmax.

    ``adds_features=False`` gives r_c = m_c * h^q, what the release's 1-way model computes (no weights change).
    """

    def __init__(self, dim: int = 256, trunk: Literal["release", "separable"] = "release",
                 adds_features: bool = True) -> None:
        super().__init__()
        self.adds_features = bool(adds_features)
        if trunk == "release":
            self.trunk = nn.Sequential(
                nn.Conv2d(dim, dim, 3, padding=1), nn.Conv2d(dim, dim, 3, padding=1), SeparableConvBlock(dim, dim)
            )
        elif trunk == "separable":
            self.trunk = nn.Sequential(*(SeparableConvBlock(dim, dim) for _ in range(3)))
        else:
            raise ValueError(f"AGM trunk must be 'release' or 'separable', not {trunk!r}")
        self.classifier = nn.Conv2d(dim, 2, 1)
        self.omega = identity_affine(nn.Conv2d(1, 1, 1))
        for m in self.trunk.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(
        self, feats: torch.Tensor, sims: torch.Tensor, group: torch.Tensor, n: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """P x D x h x w query features (one per pair), P x h x w cosine maps -> (P x h x w l_c, n x h x w l_bg)."""
        out = self.classifier(self.trunk(self.attend(feats, sims)))
        bg = self.omega(group_mean(out[:, 1], group, n).unsqueeze(1)).squeeze(1)
        return out[:, 0], bg

    def attend(self, feats: torch.Tensor, sims: torch.Tensor) -> torch.Tensor:
        """r_c of eq. 5."""
        r = feats * sims.unsqueeze(1)
        return r + feats if self.adds_features else r

    def forward_with_absent(self, query_feats: torch.Tensor, sims: torch.Tensor, group: torch.Tensor, n: int,
                            num_ids: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """As :meth:`forward` (``query_feats``: n x D x h x w, one per sample), plus the head on each sample's plain
        features (its cosine 0: an id absent from the support, r = h), whose class score is the n x h x w logit map
        of the absent ids (the release's, where it runs the head for every id). ``num_ids``: the background score is
        averaged over all that many ids, the absent ones contributing their plain-feature score (the release's)."""
        feats = query_feats.index_select(0, group)
        out = self.classifier(self.trunk(torch.cat([self.attend(feats, sims), query_feats], dim=0)))
        pairs, plain = out[: feats.shape[0]], out[feats.shape[0]:]
        if num_ids is None:
            mean = group_mean(pairs[:, 1], group, n)
        else:
            mean = fixed_mean(pairs[:, 1], group, n, num_ids, plain[:, 1])
        bg = self.omega(mean.unsqueeze(1)).squeeze(1)
        return pairs[:, 0], bg, plain[:, 0]

    def absent_logit(self) -> torch.Tensor:
        """A learned constant for classes absent from the support (only used with restrict_to_support=False)."""
        return self.classifier.bias[0]
