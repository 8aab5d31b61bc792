"""Seed-bank cost and quality of the two sharing rules on the same images, in one run (a ratio,
robust to other jobs on the machine): facility (the default) vs threshold clustering.

    python pipeline/scripts/bench_sharing.py --manifest data/coco-real/val2017.json \\
        --cues data/coco-real/cues.h5 [--images 20]

The cache supplies each image's proposals; each image's bank is built with both rules,
alternating which goes first; prints core-seconds per image (time.process_time) and the mean
coverage (IoU of a proposal to its representative).
"""
import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from pdsl.cues.seeds import SeedParams, build_bank  # noqa: E402
from pdsl.cues.store import CueStore  # noqa: E402
from pdsl.io import read_image  # noqa: E402
from pdsl.manifest import load_manifest  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--manifest", required=True)
    ap.add_argument("--cues", required=True, help="a cue cache of that manifest (proposals)")
    ap.add_argument("--images", type=int, default=20)
    a = ap.parse_args()
    m, store = load_manifest(a.manifest), CueStore(a.cues)
    rules = {s: replace(SeedParams(), sharing=s) for s in ("facility", "threshold")}
    cost = {s: 0.0 for s in rules}
    cover = {s: [] for s in rules}
    n_props = []
    for k, img in enumerate(m.images[:a.images]):
        c = store.get(img["id"], with_bank=False)
        n_props.append(len(c.boxes))
        image = read_image(m.image_path(img), img["id"])
        for s in (list(rules) if k % 2 == 0 else list(rules)[::-1]):
            t = time.process_time()
            bank = build_bank(image, c.boxes, c.scores, rules[s])
            cost[s] += time.process_time() - t
            cover[s].append(float(np.mean(bank["coverage"])))
    n = min(a.images, len(m.images))
    for s in rules:
        print(f"{s:9s}: bank {cost[s] / n:.3f} core-s/image, mean coverage "
              f"{np.mean(cover[s]):.3f} ({n} images, {np.mean(n_props):.0f} proposals/image)")
    print(f"facility / threshold cost: {cost['facility'] / cost['threshold']:.2f}x")


if __name__ == "__main__":
    main()
