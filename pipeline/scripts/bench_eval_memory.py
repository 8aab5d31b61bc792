#!/usr/bin/env python
"""Peak memory of streaming evaluation vs the number of images (a script, not a test).

    python pipeline/scripts/bench_eval_memory.py [--images 100 1000] [--dets 100]
        [--height 480] [--width 640] [--classes 20] [--gt 4]

For each image count, a fresh process builds a manifest of that many ``width x height`` images
with ``--gt`` GT instances each and runs :func:`pdsl.engine.evaluate.stream_evaluation` — the loop
``cli.py eval`` runs — with the model replaced by a generator of ``--dets`` detections per image,
each with a full-resolution ``bool [H, W]`` mask (what :func:`pdsl.engine.inference.predict_image`
returns); results json written, bbox + segm COCO metrics, VOC AP and CorLoc computed. Prints,
per count, the peak RSS of the process (``getrusage``), the RSS before evaluation started (Python,
numpy, torch, pycocotools and the manifest) and the time per image.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def child(n_images: int, dets: int, H: int, W: int, n_classes: int, n_gt: int, out: Path) -> dict:
    sys.path.insert(0, str(ROOT))
    import numpy as np
    import torch  # noqa: F401  (cli.py eval has it loaded; count it in the baseline)

    from pdsl.datasets.masks import mask_annotation
    from pdsl.manifest import Manifest
    from pdsl.engine.evaluate import stream_evaluation

    rng = np.random.default_rng(0)

    def box(r):
        w, h = r.integers(20, W // 2), r.integers(20, H // 2)
        x, y = r.integers(0, W - w), r.integers(0, H - h)
        return int(x), int(y), int(x + w), int(y + h)

    images, anns = [], []
    for i in range(1, n_images + 1):
        labels = set()
        for _ in range(n_gt):
            c = int(rng.integers(n_classes))
            m = np.zeros((H, W), np.uint8)
            x1, y1, x2, y2 = box(rng)
            m[y1:y2, x1:x2] = 1
            anns.append(dict(mask_annotation(m, i, c + 1), id=len(anns) + 1))
            labels.add(c + 1)
        images.append({"id": i, "file_name": f"{i}.jpg", "height": H, "width": W,
                       "labels": sorted(labels)})
    manifest = Manifest(path=out / "bench.json", info={"dataset": "bench", "split": "val"},
                        images=images, categories=[{"id": c + 1, "name": f"c{c}"}
                                                   for c in range(n_classes)],
                        annotations=anns)

    def predict(img):
        r = np.random.default_rng(img["id"])
        boxes = np.array([box(r) for _ in range(dets)], np.float32)
        masks = np.zeros((dets, H, W), bool)
        for k, (x1, y1, x2, y2) in enumerate(boxes.astype(int)):
            masks[k, y1:y2, x1:x2] = True
        return {"boxes": boxes, "scores": r.random(dets).astype(np.float32),
                "labels": r.integers(n_classes, size=dets), "masks": masks,
                "class_scores": r.random(n_classes).astype(np.float32)}

    base = _rss_mb()
    t0 = time.perf_counter()
    metrics, _ = stream_evaluation(manifest, predict, out / "coco_instances_results.json",
                                   keep=[images[0]["id"]])
    secs = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"images": n_images, "dets_per_image": dets, "size": f"{W}x{H}",
            "peak_rss_mb": round(peak, 1), "rss_before_eval_mb": round(base, 1),
            "s_per_image": round(secs / n_images, 3),
            "segm_AP50": round(metrics["segm"]["AP50"], 2),
            "results_mb": round((out / "coco_instances_results.json").stat().st_size / 2**20, 1)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, nargs="+", default=[100, 1000])
    ap.add_argument("--dets", type=int, default=100)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--classes", type=int, default=20)
    ap.add_argument("--gt", type=int, default=4)
    ap.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child is not None:
        print(json.dumps(child(a.child, a.dets, a.height, a.width, a.classes, a.gt,
                               Path(a.out))))
        return
    for n in a.images:  # one process per count: peak RSS is per process
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [sys.executable, __file__, "--child", str(n), "--dets", str(a.dets),
                   "--height", str(a.height), "--width", str(a.width), "--classes",
                   str(a.classes), "--gt", str(a.gt), "--out", tmp]
            res = subprocess.run(cmd, check=True, capture_output=True, text=True)
            print(res.stdout.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()
