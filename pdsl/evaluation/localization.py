"""Localisation and classification: CorLoc (paper §4.2) and image-level mAP.

``COCOeval`` computes neither. Percentages; boxes in the original image, COCO ``[x, y, w, h]``.
"""
from __future__ import annotations

import numpy as np

from ..manifest import Manifest
from .coco import gt_coco, manifest_of, mean_defined, select_results

def corloc(gt, box_results: list[dict], iou: float = 0.5) -> dict:
    """Correct localisation (paper §4.2, the PASCAL criterion).

    For every (image, class) pair where the image has a non-crowd GT instance of the class, the
    top-scoring result box of that class in that image is correct if its IoU with some non-crowd
    GT box of the class is ≥ ``iou``; a pair with no box of its class is wrong. Per class,
    CorLoc = correct / pairs; the mean is over classes with at least one pair.

    Returns ``{"CorLoc": mean percent, "per_class": {class name: percent or nan}}``.
    Results on image or category ids the manifest lacks are ignored (with a warning).
    """
    coco_gt = gt_coco(gt, "bbox")
    by_image: dict[int, list] = {}
    for r in select_results(coco_gt, box_results, "bbox"):  # result order kept: ties resolve in it
        by_image.setdefault(r["image_id"], []).append(r)
    hits: dict[int, int] = {}
    for image_id, records in by_image.items():
        for cid, hit in corloc_image(coco_gt, image_id, records, iou).items():
            hits[cid] = hits.get(cid, 0) + hit
    return corloc_percent(hits, corloc_pairs(coco_gt), coco_gt.dataset["categories"])


def image_level_map(gt, image_scores, image_ids) -> dict:
    """Image classification mAP from image-level class scores (no ``COCOeval`` equivalent).

    Args:
        gt: the manifest; the positives of class ``c`` are the images whose ``labels`` hold it.
        image_scores (array [N_img, C]): score of each class (category index order, i.e. sorted
            category ids) for each image.
        image_ids (sequence [N_img]): manifest image id of each row.
    Returns:
        ``{"mAP": percent, "per_class": {class name: AP percent or nan}}``. Per class, images are
        ranked by descending score (a stable sort: equal scores keep the given row order) and AP
        is the mean of the precision at the rank of each positive (non-interpolated AP, as
        scikit-learn's ``average_precision_score`` without its tie grouping). Classes with no
        positive image are ``nan`` and left out of the mean.
    """
    m = gt if isinstance(gt, Manifest) else manifest_of(gt)
    scores = np.asarray(image_scores, dtype=np.float64)
    ids = list(image_ids)
    if scores.ndim != 2 or scores.shape != (len(ids), m.num_classes):
        raise ValueError(f"image_level_map: image_scores [N_img={len(ids)}, C={m.num_classes}] "
                         f"expected, got {scores.shape}")
    missing = [i for i in ids if i not in m.image_by_id]
    if missing:
        raise ValueError(f"image_level_map: image ids {missing[:5]} are not in the manifest")
    if len(set(ids)) != len(ids):
        raise ValueError("image_level_map: image_ids has duplicates")
    labels = np.stack([m.label_vector(i) for i in ids]) if ids else np.zeros((0, m.num_classes))
    per_class = {}
    for c, name in enumerate(m.class_names):
        order = np.argsort(-scores[:, c], kind="stable")
        pos = labels[order, c] > 0
        if not pos.any():
            per_class[name] = float("nan")
            continue
        ranks = np.nonzero(pos)[0] + 1                      # 1-based rank of each positive
        per_class[name] = float(np.mean(np.arange(1, len(ranks) + 1) / ranks) * 100)
    return {"mAP": mean_defined(per_class.values()), "per_class": per_class}


def corloc_image(coco_gt, image_id, records, iou: float = 0.5) -> dict[int, int]:
    """CorLoc hits of one image: ``{category id: 1 if the top box of that class hits a non-crowd
    GT box of it, else 0}`` over the classes with non-crowd GT in the image."""
    from pycocotools import mask as mask_utils

    top: dict[int, dict] = {}
    for r in records:  # first of equal scores wins
        if r["category_id"] not in top or r["score"] > top[r["category_id"]]["score"]:
            top[r["category_id"]] = r
    gt_boxes: dict[int, list] = {}
    for a in coco_gt.imgToAnns.get(image_id, []):
        if not a["iscrowd"]:
            gt_boxes.setdefault(a["category_id"], []).append(list(map(float, a["bbox"])))
    hits = {}
    for cid, boxes in gt_boxes.items():
        d = top.get(cid)
        hits[cid] = 0
        if d is not None:
            ious = mask_utils.iou([list(map(float, d["bbox"]))], boxes, [0] * len(boxes))
            hits[cid] = int(np.max(ious) >= iou)
    return hits


def corloc_pairs(coco_gt) -> dict[int, int]:
    """``{category id: number of images with a non-crowd GT instance of it}``."""
    pairs = {(a["image_id"], a["category_id"]) for a in coco_gt.dataset["annotations"]
             if not a["iscrowd"]}
    out: dict[int, int] = {}
    for _, cid in pairs:
        out[cid] = out.get(cid, 0) + 1
    return out


def corloc_percent(hits: dict[int, int], pairs: dict[int, int], categories) -> dict:
    """``{"CorLoc": mean percent, "per_class": {class name: percent, nan without a pair}}`` from
    the hits and (image, class) pairs counted per category id."""
    names = {c["id"]: c["name"] for c in categories}
    per_class = {names[c]: (100.0 * hits.get(c, 0) / pairs[c] if pairs.get(c) else float("nan"))
                 for c in sorted(names)}
    return {"CorLoc": mean_defined(per_class.values()), "per_class": per_class}
