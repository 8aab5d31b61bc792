#!/usr/bin/env python
"""Learnability probe for the synthetic benchmark.

Trains a plain small CNN image-level multi-label classifier from scratch (BCE, horizontal-flip
augmentation) on a generated train split and prints the val mAP after every epoch, plus wall time.
If the synthetic classes are learnable from image labels at all, this should exceed 0.9 mAP within
a few minutes on 2 CPU cores.

Example::

    python pipeline/scripts/probe_learnability.py --train-images 1200 --val-images 300 --epochs 12
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import click
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
    """Non-interpolated AP of one class: mean precision at the rank of each positive."""
    order = np.argsort(-scores, kind="stable")
    t = targets[order] > 0.5
    npos = int(t.sum())
    if npos == 0:
        return float("nan")
    tp = np.cumsum(t)
    precision = tp / np.arange(1, len(t) + 1)
    return float(precision[t].sum() / npos)


def mean_average_precision(scores: np.ndarray, targets: np.ndarray) -> tuple[float, np.ndarray]:
    aps = np.array([average_precision(scores[:, c], targets[:, c]) for c in range(scores.shape[1])])
    return float(np.nanmean(aps)), aps


def load_split(manifest):
    from pdsl.io import read_image

    x = np.stack([read_image(manifest.image_path(img), img["id"])[:, :, ::-1] for img in manifest.images])
    y = np.stack([manifest.label_vector(img["id"]) for img in manifest.images])
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2)), y


def build_model(num_classes: int, width: int = 32):
    import torch.nn as nn

    def block(cin, cout):
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

    w = width
    layers = [nn.Conv2d(3, w, 5, stride=2, padding=2, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
    layers += block(w, w) + [nn.MaxPool2d(2)]                   # /4
    layers += block(w, 2 * w) + [nn.MaxPool2d(2)]               # /8
    layers += block(2 * w, 4 * w) + [nn.MaxPool2d(2)]           # /16
    layers += block(4 * w, 4 * w) + block(4 * w, 4 * w)         # /16
    return nn.Sequential(*layers, nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(4 * w, num_classes))


@click.command()
@click.option("--train-images", default=1200, show_default=True)
@click.option("--val-images", default=300, show_default=True)
@click.option("--epochs", default=12, show_default=True)
@click.option("--threads", default=2, show_default=True)
@click.option("--batch-size", default=32, show_default=True)
@click.option("--lr", default=3e-3, show_default=True)
@click.option("--width", default=32, show_default=True, help="channels of the first conv block")
@click.option("--image-size", default=None, type=int, help="synthetic image side (default: generator's)")
@click.option("--seed", default=0, show_default=True)
@click.option("--out-dir", default=None, type=click.Path(), help="where to generate (default: temp dir)")
def main(train_images, val_images, epochs, threads, batch_size, lr, width, image_size, seed, out_dir):
    import torch
    import torch.nn.functional as F

    from pdsl.datasets import synthetic

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    t0 = time.time()
    tmp = None
    if out_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="pdsl_probe_")
        out_dir = tmp.name
    out_dir = Path(out_dir)
    kw = {} if image_size is None else {"image_size": image_size}
    tr = synthetic.generate(out_dir / "train.json", "train", train_images, seed, **kw)
    va = synthetic.generate(out_dir / "val.json", "val", val_images, seed, **kw)
    xtr, ytr = load_split(tr)
    xva, yva = load_split(va)
    t_gen = time.time() - t0
    print(f"generated+loaded {train_images} train / {val_images} val images "
          f"({xtr.shape[-1]} px, {tr.num_classes} classes) in {t_gen:.1f}s", flush=True)

    xtr_t, ytr_t = torch.from_numpy(xtr), torch.from_numpy(ytr)
    xva_t = torch.from_numpy(xva)
    model = build_model(tr.num_classes, width)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps_per_epoch = (len(xtr) + batch_size - 1) // batch_size
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch,
                                                pct_start=0.15)
    mean = torch.tensor([0.5, 0.5, 0.5]).view(1, 3, 1, 1)
    gen = torch.Generator().manual_seed(seed)

    def prep(xb):
        return (xb.float() / 255.0 - mean) / 0.25

    t_train0 = time.time()
    best = 0.0
    for ep in range(1, epochs + 1):
        model.train()
        perm = torch.randperm(len(xtr), generator=gen)
        tot = 0.0
        for s in range(steps_per_epoch):
            idx = perm[s * batch_size:(s + 1) * batch_size]
            xb, yb = prep(xtr_t[idx]), ytr_t[idx]
            flip = torch.rand(len(idx), generator=gen) < 0.5
            xb[flip] = xb[flip].flip(-1)
            loss = F.binary_cross_entropy_with_logits(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            tot += loss.item() * len(idx)
        model.eval()
        with torch.no_grad():
            scores = torch.cat([model(prep(xva_t[i:i + 128])) for i in range(0, len(xva), 128)]).numpy()
        m_ap, aps = mean_average_precision(scores, yva)
        best = max(best, m_ap)
        print(f"epoch {ep:2d}  loss {tot / len(xtr):.4f}  val mAP {m_ap:.4f}  "
              f"[{' '.join(f'{a:.2f}' for a in aps)}]  train time {time.time() - t_train0:.0f}s", flush=True)
    print(f"classes: {', '.join(tr.class_names)}")
    print(f"final val mAP {m_ap:.4f} (best {best:.4f}); train wall {time.time() - t_train0:.0f}s, "
          f"total wall {time.time() - t0:.0f}s", flush=True)
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
