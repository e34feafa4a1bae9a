"""Fully supervised sanity check: is the synthetic data learnable, class by class?

Why: before asking a one-shot model to find a class from one example, a plain segmentation network
trained with all labels for a few CPU minutes must find every OSHP class far above chance; if it cannot,
the data (not the one-shot method) is at fault.

    python benchmarks/supervised_sanity.py --data data/synthetic --minutes 4 --out results.json

Chance IoU of a class is its pixel frequency in the test split: the IoU of labelling every pixel with it.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from oshp.data.layout import ReleaseLayoutDataset, read_dataset_meta
from oshp.data.synth.generate import generate_synthetic
from oshp.data.vocab import merge_labels


def conv(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, dilation, dilation, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class SmallSegNet(nn.Module):
    """A U-Net-like encoder-decoder (stride 16 context, skips at strides 8, 4 and 2), about 0.36 M parameters."""

    def __init__(self, classes: int):
        super().__init__()
        self.enc1 = nn.Sequential(conv(3, 16, 2), conv(16, 16))
        self.enc2 = nn.Sequential(conv(16, 32, 2), conv(32, 32))
        self.enc3 = nn.Sequential(conv(32, 64, 2), conv(64, 64))
        self.enc4 = nn.Sequential(conv(64, 96, 2), conv(96, 96, dilation=2))
        self.dec3, self.dec2, self.dec1 = conv(96 + 64, 64), conv(64 + 32, 48), conv(48 + 16, 32)
        self.head = nn.Conv2d(32, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(e1)
        e3 = self.enc3(e2)
        y = self.enc4(e3)
        for dec, skip in ((self.dec3, e3), (self.dec2, e2), (self.dec1, e1)):
            y = dec(torch.cat([F.interpolate(y, size=skip.shape[-2:], mode="bilinear", align_corners=False), skip], 1))
        return F.interpolate(self.head(y), size=x.shape[-2:], mode="bilinear", align_corners=False)


def load_split(ds: ReleaseLayoutDataset, split: str, res: int, limit: int | None) -> tuple[torch.Tensor, ...]:
    """Images resized to res (uint8), OSHP labels at res (for training) and at full size (for scoring)."""
    ids = ds.ids(split)[:limit]
    images, small, full = [], [], []
    for image_id in ids:
        image, label = ds.load_pair(image_id)
        label = merge_labels(label, ds.spec)
        images.append(np.asarray(Image.fromarray(image).resize((res, res), Image.BILINEAR)))
        small.append(np.asarray(Image.fromarray(label).resize((res, res), Image.NEAREST)))
        full.append(label)
    return (torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(np.stack(small)),
            torch.from_numpy(np.stack(full)))


def normalise(images: torch.Tensor) -> torch.Tensor:
    return images.float().div_(127.5).sub_(1.0)


def class_weights(labels: torch.Tensor, classes: int) -> torch.Tensor:
    """Inverse square-root frequency weights, so that hats and bags are learnt within a few CPU minutes too."""
    freq = torch.bincount(labels.flatten().long(), minlength=256)[:classes].double()
    present = freq > 0
    freq = freq / freq.sum()
    weights = torch.zeros(classes, dtype=torch.float64)
    weights[present] = (freq[present].median() / freq[present]).sqrt().clamp(0.1, 10)
    return weights.float()


def train(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, minutes: float, batch: int,
          lr: float, seed: int) -> int:
    """Train for a wall-clock budget with a cosine learning rate over that budget; returns the iterations."""
    gen = torch.Generator().manual_seed(seed)
    weights = class_weights(labels, model.head.out_channels)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    budget, start, it = minutes * 60, time.time(), 0
    model.train()
    while (elapsed := time.time() - start) < budget:
        for group in opt.param_groups:
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * elapsed / budget))
        idx = torch.randint(len(images), (batch,), generator=gen)
        x, y = normalise(images[idx]), labels[idx].long()
        flip = torch.rand(batch, generator=gen) < 0.5  # OSHP labels are merged, so no left/right swap is needed
        x[flip], y[flip] = x[flip].flip(-1), y[flip].flip(-1)
        loss = F.cross_entropy(model(x), y, weight=weights)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        it += 1
        if it % 100 == 0:
            print(f"  iteration {it:5d}  {elapsed / 60:4.1f} min  loss {loss.item():.3f}", flush=True)
    return it


@torch.no_grad()
def confusion(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, classes: int) -> np.ndarray:
    """Pooled confusion matrix (rows: truth, columns: prediction) at the labels' full resolution."""
    model.eval()
    cm = torch.zeros(classes * classes, dtype=torch.int64)
    for i in range(0, len(images), 32):
        logits = model(normalise(images[i:i + 32]))
        logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
        pred, truth = logits.argmax(1).flatten(), labels[i:i + 32].long().flatten()
        keep = truth < classes
        cm += torch.bincount(truth[keep] * classes + pred[keep], minlength=classes * classes)
    return cm.view(classes, classes).numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="data/synthetic", help="dataset root; generated there if it holds none")
    parser.add_argument("--minutes", type=float, default=4.0, help="training wall-clock budget")
    parser.add_argument("--res", type=int, default=128, help="training and inference resolution")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--test-images", type=int, default=None, help="score only the first N test images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="results.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    root = Path(args.data)
    if read_dataset_meta(root):
        ds = ReleaseLayoutDataset.open(root)
    else:
        t = time.time()
        ds = generate_synthetic(root)
        print(f"generated {root} in {time.time() - t:.1f} s")
    spec = ds.spec
    classes = spec.oshp_ids
    t = time.time()
    train_images, train_labels, _ = load_split(ds, "train", args.res, None)
    test_images, _, test_labels = load_split(ds, "test", args.res, args.test_images)
    print(f"loaded {len(train_images)} train and {len(test_images)} test images in {time.time() - t:.1f} s")

    model = SmallSegNet(spec.num_raw_classes)  # raw-id logits; targets are OSHP (merged) ids
    params = sum(p.numel() for p in model.parameters())
    print(f"training a {params / 1e6:.2f} M-parameter network for {args.minutes} min on {args.threads} threads")
    iterations = train(model, train_images, train_labels, args.minutes, args.batch, args.lr, args.seed)
    cm = confusion(model, test_images, test_labels, spec.num_raw_classes)

    total = cm.sum()
    rows = []
    for c in classes:
        inter, truth, pred = cm[c, c], cm[c].sum(), cm[:, c].sum()
        iou = inter / max(truth + pred - inter, 1)
        rows.append({"id": c, "class": spec.class_name(c), "iou": float(iou), "chance_iou": float(truth / total)})
    fg = [r for r in rows if r["id"] != 0]
    result = {
        "dataset": str(root), "meta": {k: ds.meta.get(k) for k in ("generator", "train", "test", "size", "seed")},
        "res": args.res, "minutes": args.minutes, "iterations": iterations, "batch": args.batch, "params": params,
        "threads": args.threads, "test_images": len(test_images), "classes": rows,
        "miou": float(np.mean([r["iou"] for r in rows])), "fg_miou": float(np.mean([r["iou"] for r in fg])),
        "confusion": cm[np.ix_(classes, classes)].tolist(),
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")

    print(f"\n{iterations} iterations of batch {args.batch} at {args.res} px, {len(test_images)} test images\n")
    print("| class | IoU | chance IoU (pixel share) | IoU / chance |")
    print("|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['class']} | {100 * r['iou']:.1f} | {100 * r['chance_iou']:.2f} | "
              f"{r['iou'] / max(r['chance_iou'], 1e-9):.1f}x |")
    print(f"| **mIoU** (foreground mIoU) | {100 * result['miou']:.1f} ({100 * result['fg_miou']:.1f}) | | |")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
