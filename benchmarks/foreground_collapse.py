"""Does a 1-way method predict the foreground at all after a short training? (a script, not a test)

Trains one method 1-way on the synthetic data with the `quick` profile's settings for a few epochs, then scores 3
held-out meta-test episodes per class: the share of pixels predicted foreground (against the ground truth's share),
the foreground IoU, and the mean foreground probability on foreground pixels. A collapsed model predicts no
foreground at all while its foreground probability stays near the class prior. Prints one JSON line.

    .venv/bin/python benchmarks/foreground_collapse.py pfenet
    .venv/bin/python benchmarks/foreground_collapse.py pfenet --option class_balanced_loss=true
    .venv/bin/python benchmarks/foreground_collapse.py sgone --setting lr=2e-2
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from oshp.core.labels import IGNORE_INDEX
from oshp.data.episodes import MetaTestEpisodes, collate_episodes
from oshp.data.pairs import default_test_pairs, first_pairs_per_class
from oshp.engine.config import make_config
from oshp.engine.train import Trainer


def _value(text: str) -> tuple[str, object]:
    key, _, raw = text.partition("=")
    try:
        return key, json.loads(raw.lower() if raw.lower() in ("true", "false") else raw)
    except json.JSONDecodeError:
        return key, raw


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("method")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--pairs-per-epoch", type=int, default=300)
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="a model option")
    p.add_argument("--setting", action="append", default=[], metavar="KEY=VALUE", help="a training setting, e.g. lr")
    p.add_argument("--data-root", type=Path, default=Path("data/synthetic"))
    p.add_argument("--episodes-per-class", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(1)
    options, settings = dict(map(_value, args.option)), dict(map(_value, args.setting))
    cfg = make_config("quick", method=args.method, way="1", data_root=str(args.data_root), epochs=args.epochs,
                      pairs_per_epoch=args.pairs_per_epoch, val_pairs_per_class=0, model_options=options, **settings)
    started = time.time()
    trainer = Trainer(cfg, tempfile.mkdtemp(), progress=False)
    history = trainer.train()["history"]
    model = trainer.model.eval()
    episodes = MetaTestEpisodes(trainer.ds, first_pairs_per_class(default_test_pairs(trainer.ds),
                                                                  args.episodes_per_class), way="1",
                                size=cfg.image_size)
    inter = union = predicted = truth = total = 0
    probabilities = []
    with torch.no_grad():
        for batch in DataLoader(episodes, batch_size=1, collate_fn=collate_episodes):
            out = model(batch["query_image"], batch["support_image"], batch["support_label"])
            target = batch["query_label"]
            valid = target != IGNORE_INDEX
            foreground = (target == int(batch["class_id"][0])) & valid
            pred = (out["pred"].argmax(1) == 1) & valid
            inter += int((pred & foreground).sum())
            union += int((pred | foreground).sum())
            predicted += int(pred.sum())
            truth += int(foreground.sum())
            total += int(valid.sum())
            if foreground.any():
                probabilities.append(float(out["pred"].softmax(1)[:, 1][foreground].mean()))
    print(json.dumps({
        "method": args.method, "options": options, "settings": settings, "epochs": args.epochs,
        "pairs_per_epoch": args.pairs_per_epoch, "train_loss": [round(h["loss"], 3) for h in history],
        "predicted_foreground_share": round(predicted / total, 4), "true_foreground_share": round(truth / total, 4),
        "foreground_iou": round(inter / max(union, 1), 4),
        "mean_foreground_probability_on_foreground": round(sum(probabilities) / len(probabilities), 4),
        "episodes": len(episodes), "cpu_s": round(time.time() - started, 1)}))


if __name__ == "__main__":
    main()
