#!/usr/bin/env python
"""Where should the pseudo labels' masks come from? (a benchmark script, not a test)

The second stage (``cli.py pseudo-label``) keeps a trained run's detections of each image's
labelled classes; this script scores the same kept detections with each mask source of
``--masks`` (``model``: the run's own masks; ``grabcut``: the cue cache's seed-mask method on the
kept box; ``refine``: GrabCut initialised from the model's mask) against the GT of a split:
precision and recall at mask IoU 0.5, mean mask IoU of matched pairs, and seconds per image for
the mask step alone:

    python pipeline/scripts/bench_label_masks.py --run runs/grid-ablation/full/seed0 \\
        --manifest data/synthetic/train.json --cues data/cues/synthetic/train/cues.h5 \\
        --max-images 200 --tta-flip

Nothing is written except ``--out F.json`` when given.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from pdsl.engine import pseudo_label as PL  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", required=True)
    ap.add_argument("--manifest", required=True)
    ap.add_argument("--cues", required=True)
    ap.add_argument("--max-images", type=int, default=200)
    ap.add_argument("--score-thresh", type=float, default=0.3)
    ap.add_argument("--per-class-cap", type=int, default=10)
    ap.add_argument("--tta-flip", action="store_true", help="label with the image + its mirror")
    ap.add_argument("--sources", default=",".join(PL.MASK_SOURCES))
    ap.add_argument("--out")
    a = ap.parse_args()
    unknown = set(a.sources.split(",")) - set(PL.MASK_SOURCES)
    if unknown:
        ap.error(f"--sources: unknown {sorted(unknown)}; choose from {', '.join(PL.MASK_SOURCES)}")

    import torch

    from pdsl.cues.seeds import SeedParams
    from pdsl.engine.evaluate import _device, _open_split, load_run
    from pdsl.engine.inference import TestParams

    torch.set_num_threads(1)
    device = _device("cpu")
    manifest, store = _open_split(a.manifest, a.cues)
    model, cfg, _, _ = load_run(a.run, manifest.class_names, device)
    params = PL.PseudoLabelParams(a.score_thresh, a.per_class_cap)
    test = replace(TestParams.from_config(cfg, False), flip=a.tta_flip)  # the middle test scale
    seeds = SeedParams.from_stored(store.meta("seeds"))
    cat_ids = [c["id"] for c in sorted(manifest.categories, key=lambda c: int(c["id"]))]
    index = {cid: k for k, cid in enumerate(cat_ids)}
    sources = a.sources.split(",")
    quality = {s: PL.QualityCounter() for s in sources}
    seconds = dict.fromkeys(sources, 0.0)
    images = manifest.images[:a.max_images]
    for n, img in enumerate(images):
        image, p, keep = PL.kept_detections(model, store, manifest, img, test, params, index,
                                            device)
        gts = manifest.annotations_of(img["id"])
        for s in sources:
            t = time.process_time()
            masks = PL.label_masks(image, p["boxes"][keep], p["masks"][keep], s, seeds)
            seconds[s] += time.process_time() - t
            q = dict(p, masks=p["masks"].copy())
            q["masks"][keep] = masks
            quality[s].add(PL._annotations(img, q, keep, cat_ids), gts, int(img["height"]),
                           int(img["width"]))
        print(f"\r{n + 1}/{len(images)}", end="", file=sys.stderr)
    print(file=sys.stderr)
    rows = {s: {**quality[s].result(), "mask_s_per_image": seconds[s] / len(images)}
            for s in sources}
    print(f"{a.run}: {len(images)} images of {a.manifest}")
    print("| masks | labels | precision | recall | matched mask IoU | mask step s/image |")
    print("|---|---|---|---|---|---|")
    for s, r in rows.items():
        print(f"| {s} | {r['labels']} | {r['precision']:.3f} | {r['recall']:.3f} | "
              f"{(r['matched_mask_iou'] or 0):.3f} | {r['mask_s_per_image']:.3f} |")
    if a.out:
        Path(a.out).write_text(json.dumps({"run": a.run, "images": len(images), "rows": rows},
                                          indent=2))


if __name__ == "__main__":
    main()
