"""The GPU fast path (bf16 autocast, channels-last) checked against fp32 on the same episodes."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from ..engine.config import TrainConfig
from ..data.episodes import MetaTestEpisodes, collate_episodes
from ..data.layout import ReleaseLayoutDataset
from ..data.pairs import balanced_subset, default_test_pairs
from ..engine.run import load_run_model
from ..metrics import mean_iou
from .device import autocast_if, channels_last_inputs


FAST_PATH_TOLERANCE = {"min_pixel_agreement": 0.99, "max_miou_diff_points": 1.0, "tie_margin": 0.05,
                       "min_decided_fraction": 0.5}
"""The fast path passes when at least 99 % of the decided pixels get the fp32 label and the mIoU (all pixels) moves
by at most 1 point. A pixel is decided when its two best fp32 logits are more than ``tie_margin`` apart: bf16 moves
logits of order 10 by a few hundredths, so closer calls are coin tosses under any rounding. With fewer than half the
pixels decided (random weights: EOP-Net's cosines all lie near 1) the check is uninformative and ``passed`` is None."""


@torch.no_grad()
def fast_path_check(model: torch.nn.Module, episodes: list[dict[str, torch.Tensor]], device: torch.device | str, *,
                    amp: bool, channels_last: bool, compile: bool = False,
                    tolerance: dict[str, float] | None = None) -> dict[str, Any]:
    """Do the fast settings give the fp32 predictions and mIoU on the same episodes, within ``tolerance``?

    Runs every episode (a batch dict with ``query_image``, ``support_image``, ``support_label``, ``support_human``
    and ``query_label``) through the plain fp32 path and through the fast one (bf16 autocast, channels-last,
    compiled: each as asked), and compares the label maps and the mIoU against the query labels; see
    :data:`FAST_PATH_TOLERANCE` for the rule. With no fast setting asked there is nothing to compare: it passes.
    Meaningful on a trained model (``oshp benchmark --check-run RUN``): random weights leave most pixels as ties.
    """
    device = torch.device(device)
    tol = {**FAST_PATH_TOLERANCE, **(tolerance or {})}
    if not (amp or channels_last or compile):
        return {"applies": False, "passed": True, "informative": True, "tolerance": tol,
                "reason": f"on {device.type} the fast path is the fp32 path (bf16 autocast and channels-last are "
                          f"CUDA only, torch.compile is off), so its predictions equal fp32 by construction"}
    model.eval()

    def run(fast: bool) -> list[torch.Tensor]:
        net = torch.compile(model) if (fast and compile) else model
        if fast and channels_last:
            model.to(memory_format=torch.channels_last)
        logits = []
        try:
            for ep in episodes:
                batch = channels_last_inputs(ep, fast and channels_last)
                with autocast_if(device, fast and amp):
                    out = net(batch["query_image"], batch["support_image"], batch["support_label"],
                              support_human=batch.get("support_human"))
                logits.append(out["pred"].float())
        finally:
            if fast and channels_last:
                model.to(memory_format=torch.contiguous_format)
        return logits

    ref, fast = run(False), run(True)
    ref_pred = torch.cat([x.argmax(1).flatten() for x in ref])
    fast_pred = torch.cat([x.argmax(1).flatten() for x in fast])
    top2 = torch.cat([x.topk(2, dim=1).values.movedim(1, -1).reshape(-1, 2) for x in ref])
    decided = (top2[:, 0] - top2[:, 1]) > tol["tie_margin"]
    same = ref_pred == fast_pred
    targets = torch.cat([ep["query_label"].flatten() for ep in episodes]).to(ref_pred.device)
    miou_ref, miou_fast = mean_iou(ref_pred, targets), mean_iou(fast_pred, targets)
    miou_diff = abs(miou_fast - miou_ref) if math.isfinite(miou_ref) and math.isfinite(miou_fast) else 0.0
    decided_fraction = float(decided.float().mean())
    decided_agreement = float(same[decided].float().mean()) if bool(decided.any()) else float("nan")
    prob_diff = max(float((a.softmax(1) - b.softmax(1)).abs().max()) for a, b in zip(ref, fast))
    informative = decided_fraction >= tol["min_decided_fraction"]
    result: dict[str, Any] = {
        "applies": True, "informative": informative,
        "passed": (decided_agreement >= tol["min_pixel_agreement"] and miou_diff <= tol["max_miou_diff_points"])
        if informative else None,
        "tolerance": tol, "settings": {"amp_bf16": amp, "channels_last": channels_last, "compile": compile},
        "episodes": len(episodes), "pixels": int(same.numel()), "decided_fraction": decided_fraction,
        "decided_agreement": decided_agreement, "pixel_agreement": float(same.float().mean()),
        "miou_fp32": miou_ref, "miou_fast": miou_fast, "miou_diff_points": miou_diff, "max_prob_diff": prob_diff}
    if not informative:
        result["reason"] = (f"only {100 * decided_fraction:.1f} % of the pixels have fp32 logits more than "
                            f"{tol['tie_margin']} apart (random weights?): check a trained model with --check-run RUN")
    return result


def check_run_episodes(run: str | Path, count: int, device: torch.device | str
                       ) -> tuple[TrainConfig, torch.nn.Module, list[dict[str, torch.Tensor]]]:
    """A trained run's model (eval mode) and ``count`` of its meta-test episodes spread over the classes.

    ``run``: a run folder or its checkpoint file. The episodes are read at native resolution from the run's data
    root, as ``oshp evaluate`` reads them; they feed :func:`fast_path_check`.
    """

    path = Path(run)
    cfg, model, dev, _ = load_run_model(None if path.is_file() else path, checkpoint=path if path.is_file() else None,
                                        device=str(device))
    ds = ReleaseLayoutDataset.open(cfg.data_root, cfg.dataset)
    episodes = MetaTestEpisodes(ds, balanced_subset(default_test_pairs(ds), count), way=cfg.way)
    batches = []
    for i in range(len(episodes)):
        batch = collate_episodes([episodes[i]])
        batches.append({k: v.to(dev) for k, v in batch.items() if isinstance(v, torch.Tensor)})
    return cfg, model, batches
