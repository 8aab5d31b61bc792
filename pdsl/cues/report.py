"""``cue-report``: how good are the cached cues, measured against GT boxes and masks."""
from __future__ import annotations

import time

import numpy as np

from ..boxes import box_iou, paste_mask
from ..errors import DataError
from ..io import read_image
from ..manifest import load_manifest
from .grabcut import grabcut_online
from .seeds import SeedParams, seed_mask
from .store import STATUS_NAMES, CueStore


def gt_instances(manifest, img: dict):
    """GT of one image: ``(boxes float32 [G,4] x1y1x2y2, masks bool [G,H,W], category ids [G],
    has_mask bool [G])``, crowd regions left out; a box-only instance (no ``segmentation``) has
    an empty mask and ``has_mask`` False."""
    from ..evaluation.coco import any_to_rle
    from pycocotools import mask as mask_utils

    H, W = int(img["height"]), int(img["width"])
    boxes, masks, cats, has = [], [], [], []
    for a in manifest.annotations_of(img["id"]):
        if a.get("iscrowd", 0):
            continue
        seg = a.get("segmentation")
        has.append(bool(seg))
        masks.append(mask_utils.decode(any_to_rle(seg, H, W)).astype(bool) if seg
                     else np.zeros((H, W), bool))
        x, y, w, h = a["bbox"]
        boxes.append([x, y, x + w, y + h])
        cats.append(a["category_id"])
    return (np.asarray(boxes, np.float32).reshape(-1, 4),
            np.asarray(masks, bool).reshape(-1, H, W), np.asarray(cats, np.int64),
            np.asarray(has, bool))


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    u = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / u) if u else 0.0


def _box_mask(box, H, W):
    m = np.zeros((H, W), bool)
    m[int(np.floor(box[1])):int(np.ceil(box[3])), int(np.floor(box[0])):int(np.ceil(box[2]))] = True
    return m


SIZES = (("small", 0, 32 ** 2), ("medium", 32 ** 2, 96 ** 2), ("large", 96 ** 2, float("inf")))
V1_PARAMS = dict(method="grabcut_rect", fallback="none", crop_size=72, iterations=3)


def method_specs(params: SeedParams, has_segments: bool, online: bool) -> dict:
    """The seed-mask methods a report compares: name -> (label, fn(image, box, segment) -> uint8
    [M, M] box-frame mask). The cache's own parameters are used for its method; ``grabcut_rect_v1``
    is the earlier versions' default bank (rectangle init, 72-px crop, 3 iterations, no fallback)."""
    M = params.mask_size
    base = {k: v for k, v in params.to_dict().items() if k not in ("method",)}

    def with_method(method, **over):
        p = SeedParams(**{**base, **over, "method": method})
        return lambda image, box, seg: seed_mask(image, box, p, seg)[0]

    specs = {"box": ("filled box", with_method("box")),
             "ellipse": ("inscribed ellipse", with_method("ellipse")),
             "grabcut": ("GrabCut: rectangle, sure-fg core where it degenerates",
                         with_method("grabcut")),
             "grabcut_masked": ("GrabCut, sure-fg core only (cv2, one box per call)",
                                with_method("grabcut_masked")),
             "grabcut_batched": ("GrabCut's model batched, sure-fg core (default)",
                                 with_method("grabcut_batched")),
             "grabcut_rect_v1": ("GrabCut, rectangle, 72-px crop, 3 it (earlier bank)",
                                 with_method(**V1_PARAMS))}
    if has_segments:
        specs["mcg"] = ("MCG segment", with_method("mcg"))
        specs["mcg_grabcut"] = ("MCG segment AND GrabCut", with_method("mcg_grabcut"))
    if online:
        specs["online"] = ("GrabCut online, authors' setting (400 px, 5 it)",
                           lambda image, box, seg: grabcut_online(image, box, M))
    return specs


def _summary(rows: list) -> dict:
    iou = np.array([r[0] for r in rows], np.float64)
    frac = np.array([r[1] for r in rows], np.float64)
    big = np.array([r[4] for r in rows], bool)
    return {"n": int(len(iou)), "mean_iou": float(iou.mean()), "median_iou": float(np.median(iou)),
            "empty": float((frac < 0.02).mean()), "full": float((frac > 0.98).mean()),
            "mean_iou_box_ge_32px": float(iou[big].mean()) if big.any() else None}


def cue_report(manifest_path, cues_path, online: bool = True, max_images: int | None = None,
               reproject_iou: float = 0.6) -> dict:
    """Proposal recall, bank coverage, bank status and seed-mask quality vs GT, by method and size.

    For every non-crowd GT instance two boxes are scored: the proposal with the highest IoU to its
    GT box (*matched*: what training sees) and the GT box itself (*gt*: each method's own ceiling).
    ``cached`` is the bank's mask of the matched proposal's representative as the trainer reads it
    by default (``cues.reproject=auto``, ``reproject_iou``): pasted at the representative's box and
    cut to the proposal's (``cached_cut``) where the two overlap with IoU >= ``reproject_iou``,
    else placed in the proposal's own box (``cached_warp``). The other
    methods (:func:`method_specs`: filled box, inscribed ellipse, the default GrabCut, the earlier
    rectangle GrabCut, MCG segments where the cache has them, and the authors' online GrabCut
    unless ``online`` is False) run on the box itself. For each: mean and median IoU with the GT
    mask, the fraction of empty (< 2 % of the box) and full (> 98 %) masks, ms per box, and the
    mean IoU by COCO size (small < 32^2 < medium < 96^2 < large, GT mask area) and over the
    instances whose GT box has at least 32^2 px. Box-only GT instances (no ``segmentation``)
    count in recall (sized by their box area) and not in the seed-mask rows;
    ``seed_masks_note`` says so (``seed_masks`` is None when no instance has a mask).
    """
    manifest = load_manifest(manifest_path)
    store = CueStore(cues_path)
    store.check_manifest(manifest, require_bank=True)
    params = SeedParams.from_stored(store.meta("seeds"))
    rep = {"manifest": str(manifest.path), "cues": str(store.path), "images": len(store),
           "proposal_source": store.meta("proposal_source"), "seeds": params.to_dict(),
           "bytes_per_image": store.bytes_per_image()}

    counts = store.index["prop_count"]
    bank_counts = store.index["bank_count"]
    rep["proposals_per_image"] = {"mean": float(counts.mean()), "min": int(counts.min()),
                                  "max": int(counts.max())}
    rep["bank_per_image"] = {"mean": float(bank_counts.mean()), "min": int(bank_counts.min()),
                             "max": int(bank_counts.max())}
    specs = method_specs(params, store.has_segments, online)
    cov, status, best_ious, areas = [], [], [], []
    names = ["cached", "cached_cut", "cached_warp", *specs]
    rows = {(name, on): [] for name in names for on in ("matched", "gt")}
    seconds = {name: 0.0 for name in names}
    timed = {name: 0 for name in names}
    evaluated, no_mask = 0, 0
    for img in manifest.images:
        c = store.get(img["id"], with_segments=store.has_segments)
        cov.append(c.coverage)
        status.append(c.bank_status)
        if not manifest.has_gt or (max_images is not None and evaluated >= max_images):
            continue
        gt_boxes, gt_masks, _, has_mask = gt_instances(manifest, img)
        if len(gt_boxes) == 0:
            continue
        evaluated += 1
        ious = box_iou(gt_boxes, c.boxes)  # [G, P]
        best = ious.argmax(1)
        best_ious.append(ious.max(1))
        H, W = c.height, c.width
        box_areas = (gt_boxes[:, 2] - gt_boxes[:, 0]) * (gt_boxes[:, 3] - gt_boxes[:, 1])
        areas += [int(gt_masks[g].sum()) if has_mask[g] else float(box_areas[g])
                  for g in range(len(gt_boxes))]
        no_mask += int((~has_mask).sum())
        if not has_mask.any():
            continue  # box-only GT: recall only, seed-mask IoU needs GT masks
        image = read_image(manifest.image_path(img), img["id"])
        for g, p in enumerate(best):
            if not has_mask[g]:
                continue
            area = int(gt_masks[g].sum())
            big = float(box_areas[g]) >= 32 ** 2
            b = c.bank_row[p]
            cut = _box_mask(c.boxes[p], H, W)
            # the trainer's ways (cues.reproject): cut = pasted at the representative's box, read
            # in p's box; warp = the representative's mask in p's own box; auto (default) = cut
            # where p's coverage >= reproject_iou, else warp
            views = {"cached_cut": paste_mask(c.bank_masks[b], c.bank_boxes[b], H, W) & cut,
                     "cached_warp": paste_mask(c.bank_masks[b], c.boxes[p], H, W)}
            views["cached"] = views["cached_cut" if c.coverage[p] >= reproject_iou else "cached_warp"]
            for name, view in views.items():
                rows[name, "matched"].append((_iou(view, gt_masks[g]), view.sum() / max(cut.sum(), 1),
                                              area, int(c.bank_status[b]), big))
            t = time.perf_counter()
            seed_mask(image, c.bank_boxes[b], params, _segment_for(c, p, params))
            seconds["cached"] += time.perf_counter() - t
            timed["cached"] += 1
            for name, (_, fn) in specs.items():
                for on, box, seg in (("matched", c.boxes[p], _segment_for(c, p, params, force=True)),
                                     ("gt", gt_boxes[g], None)):
                    if seg is None and name.startswith("mcg"):
                        continue  # MCG segments exist for proposals only
                    t = time.perf_counter()
                    m = fn(image, box, seg)
                    seconds[name] += time.perf_counter() - t
                    timed[name] += 1
                    pasted = paste_mask(m, box, H, W)
                    rows[name, on].append((_iou(pasted, gt_masks[g]), float((m >= 128).mean()),
                                           area, 0, big))
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
    areas = np.asarray(areas)
    rep["gt"] = {"images": evaluated, "instances": int(len(bi))}
    rep["recall"] = {"iou_0.5": float((bi >= 0.5).mean()), "iou_0.7": float((bi >= 0.7).mean()),
                     "mean_best_iou": float(bi.mean())}
    rep["recall_by_size"] = {
        name: {"n": int(sel.sum()), "iou_0.5": float((bi[sel] >= 0.5).mean()) if sel.any() else None}
        for name, lo, hi in SIZES for sel in [(areas >= lo) & (areas < hi)]}
    big = areas >= 32 ** 2
    rep["recall"]["iou_0.5_ge_32px"] = float((bi[big] >= 0.5).mean()) if big.any() else None
    rep["gt"]["instances_without_mask"] = no_mask
    if not rows["cached", "matched"]:
        rep["seed_masks"] = None
        rep["seed_masks_note"] = (f"seed-mask IoU needs GT masks: none of the {len(bi)} GT "
                                  f"instances has one (box-only annotations)")
        return rep
    if no_mask:
        rep["seed_masks_note"] = (f"seed-mask IoU over the {len(bi) - no_mask} of {len(bi)} GT "
                                  f"instances with GT masks ({no_mask} box-only)")
    table = {}
    for (name, on), rs in rows.items():
        if not rs:
            continue
        e = {**_summary(rs), "ms_per_box": 1e3 * seconds[name] / max(timed[name], 1)}
        e["by_size"] = {sz: float(np.mean([r[0] for r in rs if lo <= r[2] < hi]))
                        for sz, lo, hi in SIZES if any(lo <= r[2] < hi for r in rs)}
        e["label"] = {"cached": "cached bank (what training sees: cues.reproject=auto)",
                      "cached_cut": "cached bank, cues.reproject=cut",
                      "cached_warp": "cached bank, cues.reproject=warp"}.get(name) or specs[name][0]
        if name in ("cached_cut", "cached_warp"):
            e["ms_per_box"] = table["cached"]["matched"]["ms_per_box"]
        table.setdefault(name, {})[on] = e
    cached = rows["cached", "matched"]
    sq = {"cached_mask_iou": table["cached"]["matched"]["mean_iou"],
          "cached_s_per_box": seconds["cached"] / max(timed["cached"], 1), "methods": table}
    by_status = {}
    for k, name in STATUS_NAMES.items():
        rs = [r for r in cached if r[3] == k]
        if rs:
            by_status[name] = {"n": len(rs), "cached_iou": float(np.mean([r[0] for r in rs]))}
    sq["by_status"] = by_status
    if "box" in table:
        sq["box_fill_iou"] = table["box"]["matched"]["mean_iou"]
    if "online" in table:
        sq["online_mask_iou"] = table["online"]["matched"]["mean_iou"]
        sq["online_s_per_box"] = table["online"]["matched"]["ms_per_box"] / 1e3
        sq["speedup"] = sq["online_s_per_box"] / max(sq["cached_s_per_box"], 1e-9)
    rep["seed_masks"] = sq
    return rep


def _segment_for(c, p: int, params: SeedParams, force: bool = False):
    """The MCG segment of proposal ``p`` when the cache has segments (and the method needs them,
    unless ``force``)."""
    if c.segments is None or not (force or params.needs_segments):
        return None
    return c.segments[p]


def methods_table(rep: dict) -> str:
    """The seed-mask table of a report as Markdown: one row per method, matched proposal and GT box."""
    t = rep["seed_masks"]["methods"]
    L = ["| seed mask | on | mean IoU | median | empty | full | ms/box | small | medium | large | "
         "GT box ≥ 32² |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, v in t.items():
        for on, e in v.items():
            sz = [f"{e['by_size'][k]:.3f}" if k in e["by_size"] else "—" for k, _, _ in SIZES]
            L.append(f"| {e['label']} | {'matched proposal' if on == 'matched' else 'GT box'} | "
                     f"{e['mean_iou']:.3f} | {e['median_iou']:.3f} | {e['empty']:.1%} | "
                     f"{e['full']:.1%} | {e['ms_per_box']:.1f} | " + " | ".join(sz) + " | " +
                     (f"{e['mean_iou_box_ge_32px']:.3f}" if e["mean_iou_box_ge_32px"] is not None
                      else "—") + " |")
    return "\n".join(L)


def format_report(rep: dict) -> str:
    """A human-readable version of :func:`cue_report`'s dict."""
    L = [f"cue-report: {rep['cues']} ({rep['images']} images)",
         f"  proposals/image: mean {rep['proposals_per_image']['mean']:.0f} "
         f"(min {rep['proposals_per_image']['min']}, max {rep['proposals_per_image']['max']}); "
         f"seed masks/image: mean {rep['bank_per_image']['mean']:.0f} ({rep['seeds']['method']}); "
         f"{rep['bytes_per_image'] / 1e3:.0f} KB per image on disk",
         f"  coverage (IoU proposal -> representative): mean {rep['coverage']['mean_iou']:.3f}, "
         f">=0.5 {rep['coverage']['frac_ge_0.5']:.1%}, >=0.7 {rep['coverage']['frac_ge_0.7']:.1%}",
         "  bank status: " + ", ".join(f"{k} {v:.1%}" for k, v in rep["bank_status"].items())]
    if rep.get("gt"):
        r = rep["recall"]
        L.append(f"  recall vs {rep['gt']['instances']} GT boxes: @0.5 {r['iou_0.5']:.1%}, "
                 f"@0.7 {r['iou_0.7']:.1%}, mean best IoU {r['mean_best_iou']:.3f}; @0.5 by size: "
                 + ", ".join(f"{k} {v['iou_0.5']:.1%} ({v['n']})"
                             for k, v in rep["recall_by_size"].items() if v["n"]))
        if rep.get("seed_masks_note"):
            L.append(f"  {rep['seed_masks_note']}")
        s = rep["seed_masks"]
        if s is None:
            return "\n".join(L)
        line = f"  seed-mask IoU vs GT (matched proposal): cached {s['cached_mask_iou']:.3f}"
        if "online_mask_iou" in s:
            line += (f", online (authors') {s['online_mask_iou']:.3f}; ms/box cached "
                     f"{s['cached_s_per_box'] * 1e3:.1f} vs online {s['online_s_per_box'] * 1e3:.1f}"
                     f" ({s['speedup']:.0f}x)")
        if "box_fill_iou" in s:
            line += f"; filled box {s['box_fill_iou']:.3f}"
        L.append(line)
        for k, v in s["by_status"].items():
            L.append(f"    bank status {k}: {v['n']} instances, cached IoU {v['cached_iou']:.3f}")
        if len(s["methods"]) > 1:
            L.append("")
            L.append(methods_table(rep))
    return "\n".join(L)
