"""What limits a k-way run at a small budget: the embedding, the transfer across individuals, or the prototypes?

A script, not a test. For a trained k-way run it scores the same meta-test pairs four ways (pooled confusion matrix,
as `oshp evaluate`):
  * the real support (another individual) or the query itself as its own support (same individual, same colours);
  * base classes from the prototype memory (the paper's test rule, eq. 3) or every class from the support's static
    prototype (strict one-shot).
If even the query as its own support with static prototypes leaves base classes low, the embedding does not separate
the parts yet (faces, arms and legs share one skin tone per person: only shape and context tell them apart), and no
support or prototype rule can fix that. Optionally (``--probe-steps N``) it also trains the run's embedding network
(same backbone, same initial weights, optimiser, learning rate, batch and training crops) with a plain 1x1 classifier
on the base classes for N steps: what the backbone learns with full supervision at that budget, scored on the query
pool of the meta-test images against their base-class labels.

    .venv/bin/python benchmarks/kway_diagnosis.py --run runs/demo/eopnet_kway_f1 --max-pairs 110 --probe-steps 1000
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from oshp.data.episodes import MetaTestEpisodes, MetaTrainEpisodes, collate_episodes
from oshp.data.layout import ReleaseLayoutDataset
from oshp.data.pairs import balanced_subset, default_test_pairs
from oshp.engine.evaluate import evaluate_episodes
from oshp.engine.run import load_run_model
from oshp.metrics import ConfusionMatrix
from oshp.models.backbone import DeepLabFeatures
from oshp.models.weights import resolve_backbone_weights
from oshp.engine.run import config_from_run
from oshp.core.env import seed_everything
from oshp.core.schedule import poly_lr

KEYS = ("novel_miou", "base_miou", "human_miou")


def score_supports(run: Path, max_pairs: int) -> list[dict]:
    cfg = config_from_run(run)
    if cfg.way != "k" or cfg.method != "eopnet":
        raise SystemExit(f"{run} is a {cfg.way}-way {cfg.method} run; this diagnosis is for k-way EOP-Net runs")
    ds = ReleaseLayoutDataset.open(cfg.data_root, cfg.dataset)
    pairs = balanced_subset(default_test_pairs(ds), max_pairs)
    rows = []
    for rule in ("memory", "static"):
        _, model, dev, _ = load_run_model(run, device="cpu", options={"test_prototypes": rule})
        for support, chosen in (("other individual", pairs), ("the query itself", [dict(p, support=p["query"])
                                                                                     for p in pairs])):
            m = evaluate_episodes(model, MetaTestEpisodes(ds, chosen, way="k"), ds.spec, cfg.fold, "k", dev,
                                  progress=False)
            rows.append({"support": support, "test_prototypes": rule, **{k: m[k] for k in KEYS},
                         "per_class_iou": m["per_class_iou"], "num_pairs": len(chosen)})
            print(f"| {support} | {rule} | " + " | ".join(f"{m[k]:.1f}" for k in KEYS) + " |", flush=True)
    return rows


def supervised_probe(run: Path, steps: int, test_images: int) -> dict:
    cfg = config_from_run(run)
    seed_everything(cfg.seed)
    ds = ReleaseLayoutDataset.open(cfg.data_root, cfg.dataset)
    episodes = MetaTrainEpisodes(ds, cfg.fold, way="k", size=cfg.image_size, seed=cfg.seed)
    body = DeepLabFeatures(cfg.backbone, weights=resolve_backbone_weights(cfg.backbone_weights, cfg.backbone))
    head = torch.nn.Conv2d(body.out_channels, ds.spec.num_raw_classes, 1)
    params = list(body.parameters()) + list(head.parameters())
    opt = (torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay) if cfg.optimizer == "adamw"
           else torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay))
    loader = DataLoader(episodes, batch_size=cfg.batch_size, shuffle=True, collate_fn=collate_episodes,
                        generator=torch.Generator().manual_seed(cfg.seed))
    started, step = time.time(), 0
    body.train(), head.train()
    while step < steps:
        for batch in loader:
            for group in opt.param_groups:
                group["lr"] = poly_lr(cfg.lr, step, steps, cfg.poly_power)
            target = batch["query_label_full"]  # every base class of the query (novel classes are background)
            logits = F.interpolate(head(body(batch["query_image"])), size=target.shape[-2:], mode="bilinear")
            loss = F.cross_entropy(logits, target, ignore_index=255)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            if step >= steps:
                break
    body.eval(), head.eval()
    lut = ds.spec.keep_lut(ds.spec.base_ids(cfg.fold))
    conf = ConfusionMatrix(ds.spec.num_raw_classes)
    with torch.no_grad():
        for image_id in ds.ids("test")[:test_images]:
            image, raw = ds.load_pair(image_id)
            x = torch.from_numpy(image).permute(2, 0, 1).float().div(255).unsqueeze(0)
            target = torch.from_numpy(lut[raw]).long().unsqueeze(0)
            conf.update(F.interpolate(head(body(x)), size=target.shape[-2:], mode="bilinear").argmax(1), target)
    m = conf.matrix.astype(float)
    iou = np.diag(m) / np.maximum(m.sum(0) + m.sum(1) - np.diag(m), 1)
    base = ds.spec.base_ids(cfg.fold)
    result = {"steps": steps, "batch_size": cfg.batch_size, "lr": cfg.lr, "backbone": cfg.backbone,
              "backbone_weights": cfg.backbone_weights, "test_images": test_images,
              "base_miou": 100 * float(np.mean([iou[c] for c in base])),
              "per_class_iou": {ds.spec.class_name(c): 100 * float(iou[c]) for c in base},
              "train_s": round(time.time() - started, 1)}
    print(f"supervised probe, {steps} steps: base mIoU {result['base_miou']:.1f}", flush=True)
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, required=True, help="a trained k-way EOP-Net run folder")
    p.add_argument("--max-pairs", type=int, default=110)
    p.add_argument("--probe-steps", type=int, default=0, help="also train the supervised probe (0: skip)")
    p.add_argument("--probe-test-images", type=int, default=150)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/kway_diagnosis.json"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print("| support | test prototypes | novel mIoU | base mIoU | human mIoU |\n|---|---|---|---|---|")
    result = {"run": str(args.run), "supports": score_supports(args.run, args.max_pairs)}
    if args.probe_steps:
        result["supervised_probe"] = supervised_probe(args.run, args.probe_steps, args.probe_test_images)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
