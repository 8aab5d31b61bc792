"""COCO instance metrics with pycocotools, and the ground truth as pycocotools objects.

Paper §4.2: instance segmentation is scored with the COCO metrics (AP over IoU 0.5:0.95, AP50,
AP75, APs/m/l). pycocotools' ``COCOeval`` computes every COCO AP here (DESIGN.md: never
re-implement AP where ``COCOeval`` computes it); :mod:`.voc` reads the VOC protocol's
single-threshold numbers from the same kind of run.

The helpers that turn a manifest into a pycocotools ``COCO`` (:func:`gt_coco`), select the
results ``COCOeval`` can score (:func:`select_results`) and read AP out of an accumulated
``COCOeval`` (:func:`mean_precision`, :func:`per_class_ap`) serve :mod:`.voc`,
:mod:`.localization` and :mod:`.evaluator` too.

All APs are percentages (0–100). A metric with no ground truth to score against (for example APl
when no GT instance is large, or a class absent from the split) is ``nan`` and is left out of
means over classes, as detectron2 reports it.

Frames: every box and mask here lives in the **original image** (pixels of the image file, the
manifest's ``height`` × ``width``); COCO result boxes are ``[x, y, w, h]``.
"""
from __future__ import annotations

import copy
import os
import warnings
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..manifest import Manifest, load_manifest, validate_manifest_dict
from .coco_stream import quiet

#: COCO's ten IoU thresholds 0.50:0.05:0.95, exactly as ``COCOeval.Params`` builds them.
COCO_THRESHOLDS = np.linspace(0.5, 0.95, 10)


#: Detections kept per image and category (COCO's largest ``maxDets``).
MAX_DETS = 100


AREAS = {"all": [0, 1e10], "small": [0, 32 ** 2], "medium": [32 ** 2, 96 ** 2],
          "large": [96 ** 2, 1e10]}


def _gt_dict(gt) -> dict:
    """A manifest given as a :class:`Manifest`, a dict or a path → its dict (not copied)."""
    if isinstance(gt, Manifest):
        return gt.to_dict()
    if isinstance(gt, (str, os.PathLike)):
        return load_manifest(gt).to_dict()
    if isinstance(gt, dict):
        validate_manifest_dict(gt)
        return gt
    raise TypeError(f"ground truth must be a Manifest, a manifest dict or a path, "
                    f"got {type(gt).__name__}")


def manifest_of(gt) -> Manifest:
    if isinstance(gt, Manifest):
        return gt
    if isinstance(gt, (str, os.PathLike)):
        return load_manifest(gt)
    d = _gt_dict(gt)
    return Manifest(path=Path("<memory>"), info=d["info"], images=d["images"],
                    categories=d["categories"], annotations=d.get("annotations", []))


def gt_coco(gt, iou_type: str):
    """A pycocotools ``COCO`` of the manifest's images, categories and annotations.

    The annotations are copied and completed where COCOeval needs a field the manifest may omit:
    ``iscrowd`` (0), ``id`` (unique), ``bbox`` (from the mask) and ``area`` (mask area, else box
    area). A manifest without any annotation cannot be scored and raises :class:`DataError`.
    """
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO

    d = _gt_dict(gt)
    anns = d.get("annotations") or []
    where = d.get("info", {}).get("dataset", "manifest")
    if not anns:
        raise DataError(f"{where}: the manifest has no GT annotations; instance metrics need "
                        f"GT boxes and masks (prepare the split with annotations)")
    images = [{k: img[k] for k in ("id", "height", "width", "file_name")} for img in d["images"]]
    sizes = {img["id"]: (int(img["height"]), int(img["width"])) for img in images}
    used_ids = {a["id"] for a in anns if "id" in a}
    next_id = max(used_ids, default=0) + 1
    out = []
    for a in anns:
        a = dict(a)
        if a["image_id"] not in sizes:
            raise DataError(f"{where}: annotation {a.get('id', '?')} refers to image "
                            f"{a['image_id']}, which is not in the manifest")
        if "id" not in a:
            a["id"], next_id = next_id, next_id + 1
        a.setdefault("iscrowd", 0)
        seg = a.get("segmentation")
        if iou_type == "segm" and not seg:
            raise DataError(f"{where}: annotation {a['id']} (image {a['image_id']}) has no "
                            f"'segmentation'; mask metrics need GT masks")
        rle = None
        if seg and ("bbox" not in a or "area" not in a):
            h, w = sizes[a["image_id"]]
            rle = any_to_rle(seg, h, w)
            if "bbox" not in a:
                a["bbox"] = [float(v) for v in mask_utils.toBbox(rle)]
        if "bbox" not in a:
            raise DataError(f"{where}: annotation {a['id']} (image {a['image_id']}) has neither "
                            f"'bbox' nor 'segmentation'")
        if "area" not in a:
            a["area"] = (float(mask_utils.area(rle)) if rle is not None
                         else float(a["bbox"][2] * a["bbox"][3]))
        out.append(a)
    coco = COCO()
    coco.dataset = {"images": images, "categories": copy.deepcopy(d["categories"]),
                    "annotations": out}
    with quiet():
        coco.createIndex()
    return coco


def any_to_rle(seg, h: int, w: int) -> dict:
    """A COCO segmentation (polygons, uncompressed or compressed RLE) → compressed RLE."""
    from pycocotools import mask as mask_utils

    if isinstance(seg, list):                                    # polygons
        return mask_utils.merge(mask_utils.frPyObjects(seg, h, w))
    if isinstance(seg["counts"], list):                          # uncompressed RLE
        return mask_utils.frPyObjects(seg, h, w)
    seg = dict(seg)
    if isinstance(seg["counts"], str):
        seg["counts"] = seg["counts"].encode("ascii")
    return seg


def select_results(coco_gt, results: list[dict], iou_type: str) -> list[dict]:
    """Copies of the results ``COCOeval`` can score for ``iou_type``.

    Results on an image id not in the manifest or with a category id not in it are dropped with
    one warning giving the counts (``loadRes`` would refuse the first kind). Each copy keeps only
    the geometry being scored: with both ``bbox`` and ``segmentation``, ``loadRes`` would take the
    box area as the instance area for mask AP (detectron2 drops the other field for this reason).
    """
    if not isinstance(results, list):
        raise TypeError(f"results must be a list of COCO result dicts, "
                        f"got {type(results).__name__}")
    img_ids, cat_ids = set(coco_gt.getImgIds()), set(coco_gt.getCatIds())
    key, other = ("segmentation", "bbox") if iou_type == "segm" else ("bbox", "segmentation")
    kept, bad_img, bad_cat = [], 0, 0
    for i, r in enumerate(results):
        if key not in r:
            raise ValueError(f"result {i} (image {r.get('image_id', '?')}) has no {key!r}, "
                             f"needed for {iou_type} evaluation")
        if r["image_id"] not in img_ids:
            bad_img += 1
            continue
        if r["category_id"] not in cat_ids:
            bad_cat += 1
            continue
        r = {k: v for k, v in r.items() if k != other}
        if iou_type == "segm" and isinstance(r["segmentation"].get("counts"), str):
            r["segmentation"] = dict(r["segmentation"],
                                     counts=r["segmentation"]["counts"].encode("ascii"))
        kept.append(r)
    if bad_img or bad_cat:
        warnings.warn(f"evaluation ignored {bad_img + bad_cat} of {len(results)} results: "
                      f"{bad_img} on image ids not in the manifest, {bad_cat} with category ids "
                      f"not in the manifest", stacklevel=3)
    return kept


def run_cocoeval(coco_gt, results: list[dict], iou_type: str, iou_thrs, areas):
    """Run ``COCOeval`` (evaluate + accumulate) over every manifest image; return it."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if iou_type not in ("segm", "bbox"):
        raise ValueError(f"iou_type must be 'segm' or 'bbox', got {iou_type!r}")
    dets = select_results(coco_gt, results, iou_type)
    with quiet():
        if dets:
            coco_dt = coco_gt.loadRes(dets)
        else:  # loadRes cannot take an empty list; an empty result set scores 0 where GT exists
            coco_dt = COCO()
            coco_dt.dataset = {"images": list(coco_gt.dataset["images"]),
                               "categories": copy.deepcopy(coco_gt.dataset["categories"]),
                               "annotations": []}
            coco_dt.createIndex()
        ev = COCOeval(coco_gt, coco_dt, iouType=iou_type)
        ev.params.imgIds = sorted(coco_gt.getImgIds())
        ev.params.iouThrs = np.asarray(iou_thrs, dtype=np.float64)
        ev.params.maxDets = [MAX_DETS]
        ev.params.areaRng = [AREAS[a] for a in areas]
        ev.params.areaRngLbl = list(areas)
        ev.evaluate()
        ev.accumulate()
    return ev


def _thr_index(ev, t: float) -> int:
    idx = np.nonzero(np.isclose(ev.params.iouThrs, t))[0]
    assert len(idx) == 1, (t, ev.params.iouThrs)
    return int(idx[0])


def mean_precision(ev, thrs, area: str = "all") -> float:
    """Mean of ``eval['precision'][T, R, K, A, M]`` over the given thresholds, all recall points
    and the classes with GT (entries > -1), at the largest maxDets; percent, ``nan`` if none.
    This is exactly how ``COCOeval.summarize`` forms its AP numbers."""
    t = [_thr_index(ev, x) for x in thrs]
    a = ev.params.areaRngLbl.index(area)
    p = ev.eval["precision"][t, :, :, a, -1]
    p = p[p > -1]
    return float(p.mean() * 100) if p.size else float("nan")


def per_class_ap(ev, t: float) -> dict[int, float]:
    """``{category id: AP}`` at one IoU threshold, area 'all', percent (``nan`` without GT)."""
    p = ev.eval["precision"][_thr_index(ev, t), :, :, ev.params.areaRngLbl.index("all"), -1]
    out = {}
    for k, cid in enumerate(ev.params.catIds):
        col = p[:, k]
        out[cid] = float(col.mean() * 100) if (col > -1).all() else float("nan")
    return out


def coco_six(ev) -> dict:
    return {"AP": mean_precision(ev, COCO_THRESHOLDS),
            "AP50": mean_precision(ev, [0.5]),
            "AP75": mean_precision(ev, [0.75]),
            "APs": mean_precision(ev, COCO_THRESHOLDS, "small"),
            "APm": mean_precision(ev, COCO_THRESHOLDS, "medium"),
            "APl": mean_precision(ev, COCO_THRESHOLDS, "large")}


def all_thresholds(voc_thresholds) -> np.ndarray:
    """COCO's ten thresholds plus the VOC ones, so one ``COCOeval`` run serves both protocols
    (``evaluateImg`` matches at each threshold independently, so adding thresholds changes
    nothing at the others)."""
    extra = [t for t in voc_thresholds if not np.isclose(COCO_THRESHOLDS, t).any()]
    return np.sort(np.concatenate([COCO_THRESHOLDS, np.asarray(extra, dtype=np.float64)]))


def check_thresholds(thresholds) -> tuple:
    """Validate IoU thresholds; one that equals a COCO threshold up to rounding becomes COCO's
    own value (``np.linspace``'s 0.7 is 0.7000000000000001), so that ``voc_wsis_map`` and the
    COCO numbers of one :class:`Evaluator` run match detections identically."""
    thresholds = tuple(float(t) for t in thresholds)
    if not thresholds or any(not 0.0 < t < 1.0 for t in thresholds):
        raise ValueError(f"IoU thresholds must lie in (0, 1), got {thresholds}")
    return tuple(float(COCO_THRESHOLDS[np.isclose(COCO_THRESHOLDS, t)][0])
                 if np.isclose(COCO_THRESHOLDS, t).any() else t for t in thresholds)


def coco_instance_metrics(gt, results: list[dict], iou_type: str = "segm") -> dict:
    """COCO metrics of instance results on every image of a manifest.

    Args:
        gt: the manifest (path, dict or :class:`Manifest`) with GT annotations; images without
            annotations take part (their detections are false positives), crowd GT is
            ignored-region GT as in COCO.
        results (list[dict]): COCO results ``{"image_id", "category_id", "score",
            "bbox": [x, y, w, h], "segmentation": RLE}`` in original-image pixels. Results on
            image or category ids the manifest lacks are ignored with a warning.
        iou_type: ``"segm"`` (mask IoU) or ``"bbox"`` (box IoU).
    Returns:
        ``{"AP", "AP50", "AP75", "APs", "APm", "APl"}`` in percent, maxDets 100; 0 for an empty
        result list, ``nan`` where the manifest has no GT to score (e.g. no large instance).
    """
    coco_gt = gt_coco(gt, iou_type)
    ev = run_cocoeval(coco_gt, results, iou_type, COCO_THRESHOLDS, tuple(AREAS))
    return coco_six(ev)


def mean_defined(values) -> float:
    """Mean of the values that are not ``nan`` (classes with something to score); ``nan`` if
    none is."""
    valid = [v for v in values if not np.isnan(v)]
    return float(np.mean(valid)) if valid else float("nan")
