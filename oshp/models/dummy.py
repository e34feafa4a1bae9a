"""The one fake episode every measurement uses (speed, FLOP counts): no dataset needed, classes in vertical bands.

Speed and FLOPs do not depend on the pixels, but the number of support classes does (a prototype per class), so the
episode holds exactly the classes asked for: ATR's, commonest first.
"""

from __future__ import annotations

import torch

from ..data.vocab import get_dataset

ATR = get_dataset("atr")


# ----------------------------------------------------------------------------------------------- inputs
def band_episode(batch_size: int, image_size: int, ways: int, num_classes: int = ATR.num_raw_classes, way: str = "k",
                    seed: int = 0, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """Episodes with ``ways`` classes in vertical bands, each class in its own colour (plus noise) in both images.

    Speed does not depend on the content; the colours only keep the images from being pure noise. Keys follow the
    data layer's batches: ``query_image``, ``support_image`` (B x 3 x S x S in [0, 1]), ``support_label``,
    ``query_label`` (B x S x S raw ids; the query's bands are shifted so that they overlap the support's only in
    part), ``support_human``, ``query_human`` (0/1).
    """
    k = 1 if way == "1" else ways
    ids = [c for c in reversed(ATR.rarest_first) if c < num_classes][:k]
    if len(ids) < k:
        ids = list(range(1, min(num_classes, k + 1)))
    g = torch.Generator().manual_seed(seed)
    s = image_size
    query = torch.rand(batch_size, 3, s, s, generator=g)
    support = torch.rand(batch_size, 3, s, s, generator=g)
    support_label = torch.zeros(batch_size, s, s, dtype=torch.long)
    query_label = torch.zeros(batch_size, s, s, dtype=torch.long)
    band = max(1, s // (len(ids) + 1))
    shift = band // 3
    for i, c in enumerate(ids):
        lo, hi = (i + 1) * band - band // 2, (i + 1) * band + band // 2
        support_label[:, s // 8: s - s // 8, lo:hi] = c
        query_label[:, s // 6: s - s // 10, min(s - 1, lo + shift): min(s, hi + shift)] = c
    palette = torch.rand(num_classes, 3, generator=g)
    palette[0] = 0.5  # background grey
    query = 0.5 * query + 0.5 * palette[query_label].permute(0, 3, 1, 2)
    support = 0.5 * support + 0.5 * palette[support_label].permute(0, 3, 1, 2)
    batch = {"query_image": query, "support_image": support, "support_label": support_label,
             "query_label": query_label, "support_human": (support_label > 0).long(),
             "query_human": (query_label > 0).long()}
    return {key: value.to(device) for key, value in batch.items()}
