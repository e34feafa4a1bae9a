"""Toy episodes for the tests: coloured boxes as classes, an image with its mirror image, random shape episodes, and
the overfitting loop of the method contract (tests/test_methods_contract.py).

    from toy import box_episode, overfit
"""

from __future__ import annotations

import torch

BOXES: dict[int, tuple[slice, slice]] = {
    2: (slice(8, 40), slice(16, 48)),
    4: (slice(40, 60), slice(20, 44)),
    11: (slice(20, 32), slice(24, 40)),
}
"""Where each class id of a toy episode sits on the 64 x 64 grid (later ids are drawn over earlier ones)."""


def box_episode(generator: torch.Generator, classes: tuple[int, ...] = (2, 4, 11), *, noise: float = 0.3,
                clamp: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """A 1 x 3 x 64 x 64 noisy image with class i's box brightened in colour channel i, and its 1 x 64 x 64 labels."""
    img = noise * torch.randn(1, 3, 64, 64, generator=generator)
    lab = torch.zeros(1, 64, 64, dtype=torch.long)
    for c in classes:
        rows, cols = BOXES[c]
        lab[:, rows, cols] = c
    for channel, c in enumerate(classes):
        img[:, channel][lab == c] += 1.0
    return (img.clamp(0, 1) if clamp else img), lab


def overfit(model: torch.nn.Module, query: torch.Tensor, support: torch.Tensor, support_label: torch.Tensor,
            query_label: torch.Tensor, *, steps: int, lr: float, loss_key: str = "loss",
            **forward_kwargs) -> tuple[list[float], dict]:
    """Train ``model`` on one episode with Adam (trainable parameters only); the ``loss_key`` values and the last
    output."""
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    losses: list[float] = []
    out: dict = {}
    for _ in range(steps):
        out = model(query, support, support_label, query_label=query_label, **forward_kwargs)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(out[loss_key].item())
    return losses, out


def flat_episode(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A 1 x 3 x 64 x 64 image of uniform noise with one reddish box of class 5, and its labels (1-way models that
    pair an image with its own mirror image)."""
    g = torch.Generator().manual_seed(seed)
    img = 0.2 * torch.rand(1, 3, 64, 64, generator=g)
    lab = torch.zeros(1, 64, 64, dtype=torch.long)
    lab[:, 16:48, 20:44] = 5
    img[:, 0][lab == 5] += 0.8
    return img, lab


def random_episode(size: int = 64, batch: int = 2, seed: int = 0, *, normal: bool = False, second_class: bool = True,
                   query_second_class: bool = False) -> tuple[torch.Tensor, ...]:
    """Shape tests' episode: random images (uniform, or normal with ``normal``) and rectangles of classes.

    Every support holds class 2 and a 3 x 3 ignore corner; ``second_class`` adds class 4 to sample 0's support (a
    k-way episode with two different class sets). The query labels copy the support's and add class 11 (a class no
    support shows); ``query_second_class`` also puts class 4 into sample 1's query. Returns (query, support,
    support_label, query_label).
    """
    g = torch.Generator().manual_seed(seed)
    draw = torch.randn if normal else torch.rand
    q = draw(batch, 3, size, size, generator=g)
    s = draw(batch, 3, size, size, generator=g)
    sl = torch.zeros(batch, size, size, dtype=torch.long)
    sl[:, 8:30, 10:40] = 2
    if second_class:
        sl[0, 36:60, 8:30] = 4
    sl[:, 0:3, 0:3] = 255
    ql = sl.clone()
    ql[:, 40:50, 40:60] = 11
    if query_second_class:
        ql[1, 36:60, 8:30] = 4
    return q, s, sl, ql


def box_of_five_episode(size: int = 64, batch: int = 2, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """1-way shape tests' episode: random uniform images, class 5 in the same box of support and query, the top two
    rows ignored. Returns (query, support, support_label, query_label)."""
    g = torch.Generator().manual_seed(seed)
    q = torch.rand(batch, 3, size, size, generator=g)
    s = torch.rand(batch, 3, size, size, generator=g)
    sl = torch.zeros(batch, size, size, dtype=torch.long)
    sl[:, 10:40, 12:44] = 5
    sl[:, 0:2] = 255
    return q, s, sl, sl.clone()
