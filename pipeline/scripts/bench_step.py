#!/usr/bin/env python
"""Training-step time benchmark (a script, not a test). Prints, in one run, per optimiser step:
data (image read + augmentation), cue look-up (cache read + transform of proposals and bank),
seed-mask re-projection, forward, backward — and the cue time of the same steps with
``cues.source=online`` (GrabCut inside the step, the authors' way).

    python pipeline/scripts/bench_step.py [--config pipeline/configs/demo.yaml] [--steps 10]
        [--manifest M --cues C]   # default: 24 synthetic images generated and cached in a temp dir
        [--device cpu|cuda]

Data is loaded in the main process (num_workers 0) so that its cost is visible; in training the
DataLoader workers overlap it with compute.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from pdsl.config import load_config  # noqa: E402
from pdsl.cues.store import CueStore  # noqa: E402
from pdsl.data import Collate, TrainDataset, batch_to_device  # noqa: E402
from pdsl.manifest import load_manifest  # noqa: E402
from pdsl.model.seeds import seed_mask_targets, select_seeds  # noqa: E402
from pdsl.cues.online import OnlineGrabCut, fill_online_targets  # noqa: E402
from pdsl.engine.train import build_model  # noqa: E402


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="pipeline/configs/demo.yaml")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--manifest")
    ap.add_argument("--cues")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--online-workers", type=int, default=2)
    ap.add_argument("--no-online", action="store_true",
                    help="leave out the online GrabCut comparison (the cached step's parts only)")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    device = torch.device(args.device)
    cfg = load_config(args.config, args.overrides)
    torch.set_num_threads(int(cfg.train.threads or 2))
    tmp = tempfile.TemporaryDirectory()
    if not args.manifest:
        from pdsl.cues.cache import cache_cues
        from pdsl.datasets.synthetic import generate

        m = generate(Path(tmp.name) / "train.json", "train", 24, seed=0)
        args.manifest, args.cues = str(m.path), str(Path(tmp.name) / "cues.h5")
        cache_cues(args.manifest, "builtin", args.cues, workers=2, log=lambda s: None)
    manifest = load_manifest(args.manifest)
    store = CueStore(args.cues)
    ds = TrainDataset(manifest, store, cfg, seed=0, verbose=False)
    collate = Collate(cfg.input.size_divisibility)
    model = build_model(cfg, manifest.num_classes).to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)
    n_img = cfg.solver.images_per_gpu
    rows = []
    grabcut = OnlineGrabCut(args.online_workers, cfg.cues.online_long_side,
                            cfg.cues.online_iterations)
    for step in range(args.steps + 1):  # step 0 is a warm-up, not counted
        idx = [(step * n_img + k) % len(ds) for k in range(n_img)]
        t0 = time.perf_counter()
        items = [ds[(i, step, k)] for k, i in enumerate(idx)]
        batch = collate(items)
        images, proposals, scores, targets = batch_to_device(batch, device)
        t_data = time.perf_counter() - t0
        t_cue = float(batch["cue_time"])
        # re-projection of cached seed masks, timed on its own (the forward does the same work)
        _sync(device)
        t0 = time.perf_counter()
        for p, t in zip(proposals, targets):
            fake = torch.rand(len(p), manifest.num_classes, device=device)
            seeds = select_seeds(fake, p, t["labels"], cfg.model.n_seed)
            seed_mask_targets(p, seeds, t["bank_masks"], t["bank_boxes"], t["proposal_to_bank"],
                              cfg.model.seed_match_iou, t.get("bank_valid"))
        _sync(device)
        t_reproj = time.perf_counter() - t0
        t0 = time.perf_counter()
        losses = model(images, proposals, scores, targets)
        total = sum(losses.values())
        _sync(device)
        t_fwd = time.perf_counter() - t0
        t0 = time.perf_counter()
        total.backward()
        opt.step()
        opt.zero_grad()
        _sync(device)
        t_bwd = time.perf_counter() - t0
        t_online = float("nan")
        if args.no_online:
            if step:
                rows.append((t_data - t_cue, t_cue, t_reproj, t_fwd, t_bwd, t_online))
            continue
        # the same step's cues the authors' way: GrabCut on the seeds inside the step
        on_items = [dict(it) for it in items]
        for it in on_items:
            it["online_image"] = it.get("online_image", None)
        online_targets = [dict(t) for t in targets]
        imgs_u8 = []
        for it in items:
            img = it["image"].transpose(1, 2, 0) * np.asarray(cfg.input.pixel_std) + np.asarray(
                cfg.input.pixel_mean)
            imgs_u8.append(np.clip(img[:, :, ::-1] * 255, 0, 255).astype(np.uint8))
        for t, im in zip(online_targets, imgs_u8):
            t["online_image"] = im
        t0 = time.perf_counter()
        fill_online_targets(model, images, proposals, scores, online_targets, grabcut,
                            cfg.model.n_seed, cfg.cues.degenerate, cfg.cues.online_empty_frac,
                            cfg.cues.online_full_frac)
        t_online = time.perf_counter() - t0
        if step:
            rows.append((t_data - t_cue, t_cue, t_reproj, t_fwd, t_bwd, t_online))
    grabcut.close()
    r = np.mean(rows, 0)
    data, cue, reproj, fwd, bwd, online = r
    step_cached = data + cue + fwd + bwd  # re-projection happens inside the forward
    step_online = data + online + fwd + bwd
    print(f"{args.steps} steps of {n_img} images, config {args.config}, device {device}, "
          f"{torch.get_num_threads()} threads; mean seconds per step:")
    print("\n| part | s/step | share of the cached step |\n|---|---|---|")
    for name, v in (("data (read + augment)", data), ("cue look-up (cache)", cue),
                    ("seed-mask re-projection (inside forward)", reproj), ("forward", fwd),
                    ("backward + SGD step", bwd)):
        print(f"| {name} | {v:.4f} | {v / step_cached:.1%} |")
    print(f"| **step, cached cues** | {step_cached:.4f} | 100% |")
    cues_cached = cue + reproj
    if not args.no_online:
        print(f"| cues online (GrabCut in the step, {args.online_workers} workers) | {online:.4f} | "
              f"{online / step_cached:.0%} |")
        print(f"| **step, online cues** | {step_online:.4f} | {step_online / step_cached:.0%} |")
        print(f"\ncue cost: cached (look-up + re-projection) {cues_cached * 1e3:.1f} ms vs online "
              f"{online * 1e3:.0f} ms per step = {online / cues_cached:.0f}x less", end="; ")
    print(f"cue look-up + re-projection = {cues_cached / step_cached:.1%} of the cached step; "
          f"data + cue look-up = {(data + cue) / step_cached:.1%}")


if __name__ == "__main__":
    main()
