"""Why are the demo's masks imprecise? Measures on a trained run (a diagnosis of the authors' switches; not a test).

    python pipeline/scripts/diagnose_masks.py --run runs/demo --manifest data/synthetic/val.json \
        --cues data/cues/synthetic/val/cues.h5 --max-images 100 [--json out.json]

For the first N images of a split with GT masks, at the run's single test scale:

* detector confidence: per present GT class, the top score of the LAST refinement head
  (``S^{n_r}``, the ACL target the authors use) and of the eq. 4 head average;
* for every GT instance, the best detection of its class (box IoU): box IoU and the IoU of its
  pasted mask with the GT mask ("end to end");
* "oracle box": the mask heads run on the GT box itself, pasted and compared with the GT mask
  (mask quality when the box is perfect) for the class-specific average and for ``M^0``;
* on the GT-box frames: fraction of ``M^0`` pixels above 0.5, and the instance activation
  ``a`` (eq. 7) of ``M^0`` and of the class-specific average, which ACL pulls toward the score;
* the cached GrabCut seed of the best-overlapping proposal of each GT instance vs the GT mask
  (the ceiling of what ``M^0`` learns to imitate).

Frames: GT and predictions are compared in original-image pixels; the network sees the
single-scale resized view (``pdsl.data.inference_view``).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from pdsl.boxes import paste_mask  # noqa: E402
from pdsl.cues.store import CueStore  # noqa: E402
from pdsl.data import normalize_image  # noqa: E402
from pdsl.inference_data import inference_view  # noqa: E402
from pdsl.engine.inference import TestParams, predict_image  # noqa: E402
from pdsl.io import read_image  # noqa: E402
from pdsl.losses import instance_activation  # noqa: E402
from pdsl.manifest import load_manifest  # noqa: E402
from pdsl.engine.evaluate import load_run  # noqa: E402


def gt_mask(ann, h, w) -> np.ndarray:
    from pycocotools import mask as mu

    seg = ann["segmentation"]
    if isinstance(seg, str):
        import ast

        seg = ast.literal_eval(seg)
    if isinstance(seg, list):
        rle = mu.merge(mu.frPyObjects(seg, h, w))
    elif isinstance(seg.get("counts"), list):
        rle = mu.frPyObjects(seg, h, w)
    else:
        rle = dict(seg)
        if isinstance(rle["counts"], str):
            rle["counts"] = rle["counts"].encode()
    return mu.decode(rle).astype(bool)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    u = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / u) if u else 0.0


def box_iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    ua = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / ua if ua > 0 else 0.0


def summarise(xs):
    xs = np.asarray(xs, float)
    if not len(xs):
        return {}
    return {"n": int(len(xs)), "mean": round(float(xs.mean()), 4),
            "median": round(float(np.median(xs)), 4),
            "frac_ge_0.5": round(float((xs >= 0.5).mean()), 4),
            "frac_ge_0.75": round(float((xs >= 0.75).mean()), 4)}


@torch.no_grad()
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", required=True)
    ap.add_argument("--manifest", required=True)
    ap.add_argument("--cues", required=True)
    ap.add_argument("--max-images", type=int, default=100)
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    torch.set_num_threads(2)
    manifest = load_manifest(a.manifest)
    store = CueStore(a.cues)
    model, cfg, names, ckpt = load_run(a.run, manifest.class_names)
    p = TestParams.from_config(cfg, tta=False)
    scale = p.scales[0]
    rec = {k: [] for k in ("top_last", "top_avg", "box_iou", "mask_iou", "oracle_mask_iou",
                           "oracle_m0_iou", "m0_frac_gt_05", "a_m0", "a_spec", "seed_iou")}
    for img in manifest.images[:a.max_images]:
        iid = img["id"]
        image = read_image(manifest.image_path(img), iid)
        H, W = image.shape[:2]
        c = store.get(iid, with_bank=True)
        pred = predict_image(model, image, c.boxes, c.scores, p)
        order = np.argsort(-c.scores, kind="stable")[:p.max_proposals]
        view, props, sx, sy = inference_view(image, c.boxes[order], scale, p.max_size)
        x = torch.from_numpy(normalize_image(view, p.pixel_mean, p.pixel_std))[None]
        feats = model.backbone(x)
        pt = torch.from_numpy(props)
        s0, refine = model._heads(feats, [pt], [torch.from_numpy(c.scores[order])])
        last = (torch.softmax(refine[-1][0][0], 1)[:, 1:] if refine else s0[0]).numpy()
        avg = model.detect(feats, [pt], [torch.from_numpy(c.scores[order])])[0]["scores"].numpy()
        anns = manifest.annotations_of(iid)
        for cls in sorted({manifest.cat_id_to_index[an["category_id"]] for an in anns}):
            rec["top_last"].append(float(last[:, cls].max()))
            rec["top_avg"].append(float(avg[:, cls].max()))
        for an in anns:
            cls = manifest.cat_id_to_index[an["category_id"]]
            g = gt_mask(an, H, W)
            bx, by, bw, bh = an["bbox"]
            gbox = np.array([bx, by, bx + bw, by + bh], np.float32)
            same = np.nonzero(pred["labels"] == cls)[0]
            if len(same):
                ious = [box_iou(pred["boxes"][k], gbox) for k in same]
                k = same[int(np.argmax(ious))]
                rec["box_iou"].append(max(ious))
                rec["mask_iou"].append(iou(pred["masks"][k], g))
            else:
                rec["box_iou"].append(0.0)
                rec["mask_iou"].append(0.0)
            vb = torch.from_numpy(gbox * np.array([sx, sy, sx, sy], np.float32))[None]
            spec = model.predict_masks(feats, [vb], [torch.tensor([cls])])[0].numpy()
            m0 = model.predict_masks(feats, [vb], [torch.tensor([cls])], head="agnostic")[0].numpy()
            rec["oracle_mask_iou"].append(iou(paste_mask(spec, gbox, H, W), g))
            rec["oracle_m0_iou"].append(iou(paste_mask(m0, gbox, H, W), g))
            rec["m0_frac_gt_05"].append(float((m0 > 0.5).mean()))
            rec["a_m0"].append(float(instance_activation(torch.from_numpy(m0)[None])[0]))
            rec["a_spec"].append(float(instance_activation(torch.from_numpy(spec)[None])[0]))
            if len(c.bank_boxes):
                pi = int(np.argmax([box_iou(b, gbox) for b in c.boxes]))
                row = int(c.bank_row[pi])
                rec["seed_iou"].append(iou(paste_mask(c.bank_masks[row], c.bank_boxes[row], H, W),
                                           g))
    out = {"run": a.run, "checkpoint": str(ckpt), "images": min(a.max_images,
                                                                 len(manifest.images)),
           **{k: summarise(v) for k, v in rec.items()}}
    text = json.dumps(out, indent=1)
    print(text)
    if a.json:
        Path(a.json).write_text(text)


if __name__ == "__main__":
    main()
