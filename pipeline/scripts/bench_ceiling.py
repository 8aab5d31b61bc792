"""Seconds per training step of the fully supervised Mask R-CNN ceiling on the demo data, with
torchvision's 512 sampled RoIs per image against the 128 used here (one run, same batches).

    python pipeline/scripts/bench_ceiling.py --manifest data/synthetic/train.json \\
        --config pipeline/configs/demo.yaml model.pretrained=runs/demo/backbone.pth
"""
import argparse
import statistics
import time

import torch

from pdsl.config import load_config, parse_override
from pdsl.engine.supervised_data import InstanceDataset, collate_instances
from pdsl.manifest import load_manifest
from pdsl.model.maskrcnn import build_maskrcnn


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--manifest", required=True)
    ap.add_argument("--config", default="pipeline/configs/demo.yaml")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("overrides", nargs="*")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    cfg = load_config(a.config, [parse_override(o) for o in a.overrides])
    m = load_manifest(a.manifest)
    ds = InstanceDataset(m, cfg, None, seed=0, verbose=False)
    n = cfg.solver.images_per_step
    batches = [collate_instances([ds[i] for i in range(j * n, (j + 1) * n)]) for j in range(a.steps)]
    times = {}
    for rois in (512, 128):
        torch.manual_seed(0)
        model = build_maskrcnn(cfg, len(m.class_names))
        model.roi_heads.fg_bg_sampler.batch_size_per_image = rois
        model.train()
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], 1e-3)
        ts = []
        for images, targets in batches:
            t = time.perf_counter()
            sum(model(list(images), list(targets)).values()).backward()
            opt.step()
            opt.zero_grad()
            ts.append(time.perf_counter() - t)
        times[rois] = statistics.median(ts[1:])
        print(f"{rois} RoIs per image: median {times[rois]:.2f} s/step over {a.steps - 1} steps "
              f"of {n} images ({a.threads} thread(s))")
    print(f"ratio 512/128: {times[512] / times[128]:.1f}x")


if __name__ == "__main__":
    main()
