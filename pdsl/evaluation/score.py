"""``cli.py score``: any COCO results json scored against a manifest's GT, under every protocol.

The file is what detectron2, mmdetection, wetectron or ``cli.py eval`` write
(``coco_instances_results.json``: a list of ``{"image_id", "category_id", "score", "bbox": [x, y,
w, h]}`` with an optional ``"segmentation"`` RLE or polygon), or ``cli.py predict``'s
``predictions.json`` (its ``annotations``). It goes through the same :class:`Evaluator` as
``eval``: COCO AP (101-point), VOC AP (area under PR), VOC07 11-point AP, at COCO's and the VOC
thresholds, CorLoc; masks only where every record has one. Records on images or categories the
manifest lacks are left out and counted.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..io import read_data_file
from ..manifest import load_manifest


def load_results(path) -> list[dict]:
    """The result records of a COCO results json (a list, or a dict with ``annotations``)."""
    d = read_data_file(Path(path), "predictions file")
    if isinstance(d, dict) and isinstance(d.get("annotations"), list):
        d = d["annotations"]
    if not isinstance(d, list):
        raise DataError(f"predictions file {path}: expected a COCO results list (or a dict with "
                        f"'annotations'), got {type(d).__name__}")
    for i, r in enumerate(d):
        if not isinstance(r, dict) or not {"image_id", "category_id", "score"} <= set(r) \
                or not ("bbox" in r or "segmentation" in r):
            raise DataError(f"predictions file {path}: record {i} needs image_id, category_id, "
                            f"score and bbox or segmentation")
    return d


def _prediction(records, img, index, with_masks, path):
    from pycocotools import mask as mask_utils

    from .coco import any_to_rle

    H, W = int(img["height"]), int(img["width"])
    boxes, masks = [], []
    for r in records:
        rle = None
        if with_masks:
            try:
                rle = any_to_rle(r["segmentation"], H, W)
            except Exception as e:  # noqa: BLE001 -- pycocotools raises several types
                raise DataError(f"predictions file {path}: image {img['id']}: unreadable "
                                f"segmentation ({type(e).__name__}: {e})") from None
            if [int(v) for v in rle["size"]] != [H, W]:
                raise DataError(f"predictions file {path}: image {img['id']}: mask size "
                                f"{rle['size']} is not the image's [{H}, {W}]")
            counts = rle["counts"]
            masks.append({"size": [H, W], "counts": counts.decode("ascii")
                          if isinstance(counts, bytes) else counts})
        bb = r["bbox"] if "bbox" in r else mask_utils.toBbox(rle).tolist()
        try:
            x, y, w, h = (float(v) for v in bb)
        except (TypeError, ValueError):
            raise DataError(f"predictions file {path}: image {img['id']}: bbox {bb!r} is not "
                            f"[x, y, w, h]") from None
        boxes.append([x, y, x + w, y + h])
    return {"boxes": np.asarray(boxes, np.float64).reshape(-1, 4),
            "scores": np.asarray([float(r["score"]) for r in records], np.float64),
            "labels": np.asarray([index[r["category_id"]] for r in records], np.int64),
            "masks": masks if with_masks else None}


def score_predictions(predictions, manifest, out=None) -> dict:
    """Score a results file against a manifest; write ``out`` (metrics json) if given.

    Returns the evaluator's metrics plus ``"predictions"``, ``"manifest"``, ``"records"`` (scored),
    ``"left_out"`` (records on unknown images / categories) and ``"protocols"``."""
    from . import PROTOCOLS
    from .evaluator import Evaluator

    results = load_results(predictions)
    m = load_manifest(manifest) if isinstance(manifest, (str, os.PathLike)) else manifest
    index = m.cat_id_to_index
    by_image: dict = {}
    unknown_img = unknown_cat = 0
    for r in results:
        if r["image_id"] not in m.image_by_id:
            unknown_img += 1
        elif r["category_id"] not in index:
            unknown_cat += 1
        else:
            by_image.setdefault(r["image_id"], []).append(r)
    kept = [r for rs in by_image.values() for r in rs]
    with_masks = bool(kept) and all(r.get("segmentation") for r in kept)
    ev = Evaluator(m, keep_results=False)
    for img in m.images:
        recs = sorted(by_image.get(img["id"], []), key=lambda r: -float(r["score"]))
        ev.process(img["id"], _prediction(recs, img, index, with_masks and bool(recs),
                                          predictions))
    metrics = ev.evaluate()
    ev.reset()
    metrics.update(predictions=str(predictions), manifest=str(m.path), records=len(kept),
                   left_out={"unknown_image": unknown_img, "unknown_category": unknown_cat},
                   protocols=dict(PROTOCOLS))
    if not with_masks and kept:
        metrics["masks"] = "none: not every record has a segmentation, so boxes only"
    if out is not None:
        from ..io import json_safe, write_json_atomic

        write_json_atomic(json_safe(metrics), out, indent=2)
    return metrics


def format_score(metrics: dict) -> str:
    """What ``cli.py score`` prints: counts, the metrics table, what was skipped."""
    from .report import metrics_table, skipped_line

    lo = metrics["left_out"]
    L = [f"score: {metrics['records']} records of {metrics['predictions']} on "
         f"{metrics['num_gt_images']} images of {metrics['manifest']}"
         + (f"; left out {lo['unknown_image']} on images and {lo['unknown_category']} on "
            f"categories the manifest lacks" if lo["unknown_image"] or lo["unknown_category"]
            else ""), "", metrics_table(metrics)]
    if metrics.get("mask_metrics_skipped"):
        L += ["", skipped_line(metrics["mask_metrics_skipped"])]
    if metrics.get("masks"):
        L += ["", f"masks: {metrics['masks']}"]
    return "\n".join(L)
