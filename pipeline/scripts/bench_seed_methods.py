#!/usr/bin/env python
"""Seed-mask settings compared on the proposal matched to each GT instance (a script, not a test).

    python pipeline/scripts/bench_seed_methods.py --manifest data/coco-real/train2017.json \\
        --cues data/coco-real/train2017-proposals.h5 [--images 98] \\
        --variant box='{"method": "box"}' --variant cv64='{"method": "grabcut_masked"}' \\
        --variant batched='{}' --variant core07='{"batch_core": 0.7}'

Each variant is ``NAME=JSON`` (SeedParams fields over the defaults). The cue file supplies each
image's proposals (``cli.py proposals-shard ... --shard 1-of-1`` makes one); for every non-crowd
GT instance the proposal with the highest box IoU gets a mask from every variant, in the same
loop (so the cost ratios hold on a shared machine): the mean IoU with the GT mask, and core-ms
per mask (``time.process_time``; ``grabcut_batched`` variants make all of an image's masks in one
call, as the cache does).
"""
import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from pdsl.boxes import box_iou, paste_mask  # noqa: E402
from pdsl.cues.report import gt_instances  # noqa: E402
from pdsl.cues.seeds import SeedParams, batched_seed_masks, seed_mask  # noqa: E402
from pdsl.cues.store import CueStore  # noqa: E402
from pdsl.io import read_image  # noqa: E402
from pdsl.manifest import load_manifest  # noqa: E402


def masks_of(image, boxes, p: SeedParams) -> list:
    if p.method == "grabcut_batched":
        return list(batched_seed_masks(image, boxes, p)[0])
    return [seed_mask(image, b, p)[0] for b in boxes]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--manifest", required=True)
    ap.add_argument("--cues", required=True, help="a cue file of that manifest (its proposals)")
    ap.add_argument("--images", type=int, default=None, help="the first N images (default all)")
    ap.add_argument("--variant", action="append", required=True, help="NAME=JSON of SeedParams")
    a = ap.parse_args()
    import cv2
    import torch

    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    variants = {}
    for v in a.variant:
        name, _, js = v.partition("=")
        variants[name] = SeedParams(**json.loads(js or "{}"))
    m, store = load_manifest(a.manifest), CueStore(a.cues)
    ious = {k: [] for k in variants}
    cost = {k: 0.0 for k in variants}
    for img in m.images[:a.images]:
        gt_boxes, gt_masks, _, _ = gt_instances(m, img)
        if not len(gt_boxes):
            continue
        c = store.get(img["id"], with_bank=False)
        boxes = c.boxes[box_iou(gt_boxes, c.boxes).argmax(1)]
        image = read_image(m.image_path(img), img["id"])
        for name, p in variants.items():
            t = time.process_time()
            ms = masks_of(image, boxes, p)
            cost[name] += time.process_time() - t
            for g, (b, mk) in enumerate(zip(boxes, ms)):
                pasted = paste_mask(mk, b, c.height, c.width)
                u = np.logical_or(pasted, gt_masks[g]).sum()
                ious[name].append(np.logical_and(pasted, gt_masks[g]).sum() / u if u else 0.0)
    n = len(next(iter(ious.values())))
    print(f"{a.manifest}: {n} GT instances, the matched proposal of each\n")
    print("| variant | settings | mean IoU | core-ms per mask |\n|---|---|---|---|")
    default = SeedParams().to_dict()
    for name, p in variants.items():
        diff = {k: v for k, v in p.to_dict().items() if v != default[k]}
        print(f"| {name} | {json.dumps(diff) if diff else 'defaults'} | "
              f"{np.mean(ious[name]):.4f} | {1e3 * cost[name] / max(n, 1):.2f} |")


if __name__ == "__main__":
    main()
