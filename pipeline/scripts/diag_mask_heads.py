#!/usr/bin/env python
"""Which mask head makes a trained run's masks? (a diagnostic script, not a test)

A PDSL run predicts masks with the mean of its ``n_m`` class-specific heads' logits (eq. 5's
chain M^1..M^n; the authors' code). This script scores the same run, same detections, with the
mask taken instead from the class-agnostic head M^0 alone and from each class-specific head M^k
alone, so one can see whether the chain improves on M^0 (Table 1's n_m direction) or degrades it:

    python pipeline/scripts/diag_mask_heads.py --run runs/grid-ablation/full/seed0 \\
        --manifest data/synthetic/val.json --cues data/cues/synthetic/val/cues.h5 --max-images 100

Prints one row per head (mask AP50, AP75, AP; box AP50 is the same in every row) and with
``--out F.json`` writes them. Evaluations go to a temporary directory: the run is not touched.
"""
from __future__ import annotations

import argparse
import functools
import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import pdsl.engine.evaluate as E  # noqa: E402


def head_choice(model, head):
    """Make ``model.predict_masks`` use ``head``: "agnostic" (M^0), an int k (M^k alone, 1-based)
    or "mean" (the model's own: mean of the class-specific logits)."""
    model.predict_masks = functools.partial(model.predict_masks, head=head)
    return model


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", required=True)
    ap.add_argument("--manifest", required=True)
    ap.add_argument("--cues", required=True)
    ap.add_argument("--max-images", type=int, default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    real_load = E.load_run
    n_mask = real_load(a.run, None, "cpu")[0].n_mask
    heads = ["mean", "agnostic"] + list(range(1, n_mask + 1)) if n_mask else ["agnostic"]
    rows = []
    for head in heads:
        E.load_run = lambda *x, **k: (lambda r: (head_choice(r[0], head), *r[1:]))(
            real_load(*x, **k))
        with tempfile.TemporaryDirectory() as tmp:
            m = E.evaluate_run(a.run, a.manifest, a.cues, out_dir=tmp, max_images=a.max_images,
                               device="cpu", report=False)
        name = {"mean": f"mean of M^1..M^{n_mask} (the run's own)",
                "agnostic": "M^0 (class-agnostic)"}.get(head, f"M^{head} alone")
        rows.append({"head": name, **{k: m["segm"][k] for k in ("AP50", "AP75", "AP")},
                     "box AP50": m["bbox"]["AP50"]})
        print(f"| {name} | {m['segm']['AP50']:.1f} | {m['segm']['AP75']:.1f} | "
              f"{m['segm']['AP']:.1f} | {m['bbox']['AP50']:.1f} |", flush=True)
    E.load_run = real_load
    if a.out:
        Path(a.out).write_text(json.dumps({"run": a.run, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
