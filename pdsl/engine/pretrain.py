"""``cli.py pretrain-backbone``: initialise a backbone as an image-level classifier on the SAME
image-level labels PDSL trains on — the stand-in for the paper's ImageNet initialisation (§4.3)
where no ImageNet weights exist (the synthetic benchmark's ``tiny`` backbone, offline machines).

No extra supervision is used: a multi-label classifier (backbone → global max pool → linear, BCE)
sees exactly the labels of the training manifest. Measured on the synthetic benchmark: PDSL with a
from-scratch ``tiny`` backbone stays at the class-frequency prior, with this initialisation it
learns (README).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..io import atomic_path, read_image
from ..manifest import load_manifest


def _load(manifest, size: int):
    import cv2

    xs, ys = [], []
    for img in manifest.images:
        im = read_image(manifest.image_path(img), img["id"])
        if im.shape[:2] != (size, size):
            im = cv2.resize(im, (size, size), interpolation=cv2.INTER_AREA)
        xs.append(im[:, :, ::-1].transpose(2, 0, 1))  # RGB CHW uint8
        ys.append(manifest.label_vector(img["id"]))
    return torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys))


def pretrain_backbone(manifest_path, out, backbone: str = "tiny", epochs: int = 8,
                      batch_size: int = 32, lr: float = 3e-3, size: int = 160,
                      val_manifest=None, seed: int = 0, threads: int = 2,
                      pixel_mean=(0.485, 0.456, 0.406), pixel_std=(0.229, 0.224, 0.225),
                      device: str = "cpu") -> dict:
    """Train ``backbone`` + global max pool + linear on the manifest's image-level labels and
    save the backbone's state dict to ``out`` (atomically). Returns per-epoch val mAP if
    ``val_manifest`` is given. ``device``: cpu | cuda | auto (the images stay in CPU memory,
    batches move)."""
    import click

    from ..evaluation import image_level_map
    from ..model.backbone import build_backbone

    torch.set_num_threads(threads)
    device = torch.device("cuda" if device == "auto" and torch.cuda.is_available()
                          else "cpu" if device == "auto" else device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("pretrain-backbone: --device cuda but torch sees no CUDA device")
    torch.manual_seed(seed)
    manifest = load_manifest(manifest_path)
    xtr, ytr = _load(manifest, size)
    val = load_manifest(val_manifest) if val_manifest else None
    xva, yva = _load(val, size) if val else (None, None)
    net = build_backbone(backbone, None, frozen_bn=False)
    head = torch.nn.Linear(net.out_channels, manifest.num_classes)
    net, head = net.to(device), head.to(device)
    params = list(net.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    steps = max(1, len(xtr) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps,
                                                pct_start=0.15)
    mean = torch.tensor(pixel_mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(pixel_std, device=device).view(1, 3, 1, 1)
    gen = torch.Generator().manual_seed(seed)

    def prep(x):
        return (x.to(device).float() / 255.0 - mean) / std

    def scores(x):
        net.eval()
        with torch.no_grad():
            out = [torch.sigmoid(head(net(prep(x[i:i + 64])).amax((2, 3))))
                   for i in range(0, len(x), 64)]
        net.train()
        return torch.cat(out).cpu().numpy()

    history = []
    t0 = time.perf_counter()
    for ep in range(1, epochs + 1):
        perm = torch.randperm(len(xtr), generator=gen)
        tot = 0.0
        for s in range(steps):
            idx = perm[s * batch_size:(s + 1) * batch_size]
            xb, yb = prep(xtr[idx]), ytr[idx].to(device)
            flip = (torch.rand(len(idx), generator=gen) < 0.5).to(device)
            xb[flip] = xb[flip].flip(-1)
            loss = F.binary_cross_entropy_with_logits(head(net(xb).amax((2, 3))), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            tot += float(loss.detach())
        row = {"epoch": ep, "loss": tot / steps, "seconds": round(time.perf_counter() - t0, 1)}
        if val is not None:
            row["val_mAP"] = image_level_map(val, scores(xva), [i["id"] for i in val.images])["mAP"]
        history.append(row)
        click.echo(f"pretrain-backbone: epoch {ep}/{epochs} loss {row['loss']:.4f}"
                   + (f" val mAP {row['val_mAP']:.1f}" if val is not None else "")
                   + f" ({row['seconds']:.0f} s)", err=True)
    out = Path(out)
    with atomic_path(out) as tmp:
        torch.save({"model": {k: v.cpu() for k, v in net.state_dict().items()}, "backbone": backbone,
                    "class_names": manifest.class_names, "history": history}, tmp)
    print(f"pretrain-backbone: wrote {out}", file=sys.stderr)
    return {"out": str(out), "history": history}
