"""``cue-report``: how good are the cached cues, measured against GT boxes and masks."""
from __future__ import annotations

import time

import numpy as np

from ..boxes import box_iou
from ..errors import DataError
from ..io import read_image
from ..manifest import load_manifest
from .seeds import SeedParams, grabcut_box, grabcut_online, paste_mask
from .store import STATUS_NAMES, CueStore


def gt_instances(manifest, img: dict):
    """GT of one image: ``(boxes float32 [G,4] x1y1x2y2, masks bool [G,H,W], category ids [G])``,
    crowd regions left out."""
    from pycocotools import mask as mask_utils

    H, W = int(img["height"]), int(img["width"])
    boxes, masks, cats = [], [], []
    for a in manifest.annotations_of(img["id"]):
        if a.get("iscrowd", 0):
            continue
        seg = a["segmentation"]
        if isinstance(seg, list):
            rle = mask_utils.merge(mask_utils.frPyObjects(seg, H, W))
        elif isinstance(seg, dict) and isinstance(seg.get("counts"), list):
            rle = mask_utils.frPyObjects(seg, H, W)
        else:
            rle = dict(seg)
            if isinstance(rle["counts"], str):
                rle["counts"] = rle["counts"].encode()
        masks.append(mask_utils.decode(rle).astype(bool))
        x, y, w, h = a["bbox"]
        boxes.append([x, y, x + w, y + h])
        cats.append(a["category_id"])
    return (np.asarray(boxes, np.float32).reshape(-1, 4),
            np.asarray(masks, bool).reshape(-1, H, W), np.asarray(cats, np.int64))


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    u = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / u) if u else 0.0


def _box_mask(box, H, W):
    m = np.zeros((H, W), bool)
    m[int(np.floor(box[1])):int(np.ceil(box[3])), int(np.floor(box[0])):int(np.ceil(box[2]))] = True
    return m


def cue_report(manifest_path, cues_path, online: bool = True, max_images: int | None = None) -> dict:
    """Proposal recall, bank coverage, GrabCut status counts and seed-mask IoU vs GT.

    Seed-mask quality: for each GT instance, the proposal with the highest IoU to its box; the
    cached mask of that proposal's representative, pasted at the representative box and cut to the
    proposal's box (what the trainer's re-projection does); its IoU with the GT mask. Beside it the
    authors' online GrabCut (whole image at 400 px, 5 iterations) on the same proposal box, and the
    plain filled box as a floor. Seconds per box: offline GrabCut on the representative box with
    the cache's parameters vs the online setting.
    """
    manifest = load_manifest(manifest_path)
    store = CueStore(cues_path)
    store.check_manifest(manifest, require_bank=True)
    params = SeedParams(**(store.meta("seeds") or {}))
    rep = {"manifest": str(manifest.path), "cues": str(store.path), "images": len(store),
           "proposal_source": store.meta("proposal_source"), "seeds": params.to_dict()}

    counts = store.index["prop_count"]
    bank_counts = store.index["bank_count"]
    rep["proposals_per_image"] = {"mean": float(counts.mean()), "min": int(counts.min()),
                                  "max": int(counts.max())}
    rep["bank_per_image"] = {"mean": float(bank_counts.mean()), "min": int(bank_counts.min()),
                             "max": int(bank_counts.max())}
    cov, status = [], []
    best_ious, seed_rows = [], []
    t_cached = t_online = 0.0
    n_timed = 0
    evaluated = 0
    for img in manifest.images:
        c = store.get(img["id"])
        cov.append(c.coverage)
        status.append(c.bank_status)
        if not manifest.has_gt or (max_images is not None and evaluated >= max_images):
            continue
        gt_boxes, gt_masks, _ = gt_instances(manifest, img)
        if len(gt_boxes) == 0:
            continue
        evaluated += 1
        ious = box_iou(gt_boxes, c.boxes)  # [G, P]
        best = ious.argmax(1)
        best_ious.append(ious.max(1))
        H, W = c.height, c.width
        image = read_image(manifest.image_path(img), img["id"]) if online else None
        for g, p in enumerate(best):
            b = c.bank_row[p]
            cut = _box_mask(c.boxes[p], H, W)
            cached = paste_mask(c.bank_masks[b], c.bank_boxes[b], H, W) & cut
            row = {"iou_cached": _iou(cached, gt_masks[g]), "iou_box": _iou(cut, gt_masks[g]),
                   "status": int(c.bank_status[b]), "box_iou": float(ious[g, p])}
            if online:
                t = time.perf_counter()
                grabcut_box(image, c.bank_boxes[b], params)
                t_cached += time.perf_counter() - t
                t = time.perf_counter()
                m = grabcut_online(image, c.boxes[p], params.mask_size)
                t_online += time.perf_counter() - t
                n_timed += 1
                row["iou_online"] = _iou(paste_mask(m, c.boxes[p], H, W), gt_masks[g])
            seed_rows.append(row)
    cov = np.concatenate(cov) if cov else np.zeros(0)
    status = np.concatenate(status) if status else np.zeros(0, np.uint8)
    rep["coverage"] = {"mean_iou": float(cov.mean()) if len(cov) else None,
                       "frac_ge_0.5": float((cov >= 0.5).mean()) if len(cov) else None,
                       "frac_ge_0.7": float((cov >= 0.7).mean()) if len(cov) else None}
    rep["bank_status"] = {STATUS_NAMES[k]: float((status == k).mean()) if len(status) else 0.0
                          for k in STATUS_NAMES}
    if not manifest.has_gt:
        rep["gt"] = None
        return rep
    if not best_ious:
        raise DataError(f"manifest {manifest.path}: has annotations but no image with a "
                        f"non-crowd GT instance")
    bi = np.concatenate(best_ious)
    rep["gt"] = {"images": evaluated, "instances": int(len(bi))}
    rep["recall"] = {"iou_0.5": float((bi >= 0.5).mean()), "iou_0.7": float((bi >= 0.7).mean()),
                     "mean_best_iou": float(bi.mean())}
    sq = {"cached_mask_iou": float(np.mean([r["iou_cached"] for r in seed_rows])),
          "box_fill_iou": float(np.mean([r["iou_box"] for r in seed_rows]))}
    by_status = {}
    for k, name in STATUS_NAMES.items():
        rows = [r for r in seed_rows if r["status"] == k]
        if rows:
            by_status[name] = {"n": len(rows),
                               "cached_iou": float(np.mean([r["iou_cached"] for r in rows])),
                               "box_fill_iou": float(np.mean([r["iou_box"] for r in rows]))}
    sq["by_status"] = by_status
    if online:
        sq["online_mask_iou"] = float(np.mean([r["iou_online"] for r in seed_rows]))
        sq["cached_s_per_box"] = t_cached / max(n_timed, 1)
        sq["online_s_per_box"] = t_online / max(n_timed, 1)
        sq["speedup"] = sq["online_s_per_box"] / max(sq["cached_s_per_box"], 1e-9)
    rep["seed_masks"] = sq
    return rep


def format_report(rep: dict) -> str:
    """A human-readable version of :func:`cue_report`'s dict."""
    L = [f"cue-report: {rep['cues']} ({rep['images']} images)",
         f"  proposals/image: mean {rep['proposals_per_image']['mean']:.0f} "
         f"(min {rep['proposals_per_image']['min']}, max {rep['proposals_per_image']['max']}); "
         f"GrabCut masks/image: mean {rep['bank_per_image']['mean']:.0f}",
         f"  coverage (IoU proposal -> representative): mean {rep['coverage']['mean_iou']:.3f}, "
         f">=0.5 {rep['coverage']['frac_ge_0.5']:.1%}, >=0.7 {rep['coverage']['frac_ge_0.7']:.1%}",
         "  bank status: " + ", ".join(f"{k} {v:.1%}" for k, v in rep["bank_status"].items())]
    if rep.get("gt"):
        r = rep["recall"]
        L.append(f"  recall vs {rep['gt']['instances']} GT boxes: @0.5 {r['iou_0.5']:.1%}, "
                 f"@0.7 {r['iou_0.7']:.1%}, mean best IoU {r['mean_best_iou']:.3f}")
        s = rep["seed_masks"]
        line = f"  seed-mask IoU vs GT: cached {s['cached_mask_iou']:.3f}"
        if "online_mask_iou" in s:
            line += (f", online (authors') {s['online_mask_iou']:.3f}; s/box cached "
                     f"{s['cached_s_per_box'] * 1e3:.1f} ms vs online {s['online_s_per_box'] * 1e3:.1f}"
                     f" ms ({s['speedup']:.0f}x)")
        L.append(line + f"; filled box {s['box_fill_iou']:.3f}")
        for k, v in s["by_status"].items():
            L.append(f"    status {k}: {v['n']} instances, cached IoU {v['cached_iou']:.3f}, "
                     f"filled box {v['box_fill_iou']:.3f}")
    return "\n".join(L)
