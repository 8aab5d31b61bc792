"""The VOC 2012 weakly supervised instance segmentation protocol: mAP at single IoU thresholds.

Paper Table 2 reports the VOC 2012 tables with mAP at IoU 0.25/0.5/0.7/0.75, and detection on
VOC with box mAP at IoU 0.5. The single-threshold numbers are reported both ways, labelled:
``mAP@t`` is read from a ``COCOeval`` run with ``params.iouThrs`` set, i.e. COCO's **101-point
interpolated** AP (the PDSL paper's tables: pycocotools through detectron2); ``voc_mAP@t`` is
**VOC AP**, the area under the monotone precision-recall curve with chainercv's
``eval_instance_segmentation_voc`` matching (:mod:`.voc_ap`; IRN, BESTIE, CIM report it).

Percentages; frames as in :mod:`.coco` (original image, COCO result boxes ``[x, y, w, h]``).
"""
from __future__ import annotations

import numpy as np

from .coco import (any_to_rle, check_thresholds, gt_coco, manifest_of, mean_defined,
                   mean_precision, per_class_ap, run_cocoeval, select_results)

#: Paper Table 2 (VOC 2012 val): mAP at these single IoU thresholds.
VOC_THRESHOLDS = (0.25, 0.5, 0.7, 0.75)


def _voc_key(t: float) -> str:
    return f"mAP@{t:g}"


def voc_wsis_map(gt, results: list[dict], thresholds=VOC_THRESHOLDS, iou_type: str = "segm",
                 per_class: bool = False) -> dict:
    """The VOC 2012 WSIS protocol (paper Table 2): mean over classes of AP at single IoU
    thresholds, area 'all', maxDets 100, classes without GT left out of the mean.

    AP is ``COCOeval``'s 101-point interpolated AP at ``params.iouThrs = thresholds`` (not
    VOC's all-point interpolation; see the module docstring).
    Returns ``{"mAP@0.25": …, "mAP@0.5": …, …}`` in percent, plus, with ``per_class``,
    ``"per_class": {"mAP@0.5": {class name: AP}, …}``.
    """
    thresholds = check_thresholds(thresholds)
    coco_gt = gt_coco(gt, iou_type)
    ev = run_cocoeval(coco_gt, results, iou_type, sorted(set(thresholds)), ("all",))
    return voc_metrics(ev, coco_gt, thresholds, per_class)


def voc_metrics(ev, coco_gt, thresholds, per_class: bool) -> dict:
    out = {_voc_key(t): mean_precision(ev, [t]) for t in thresholds}
    if per_class:
        names = {c["id"]: c["name"] for c in coco_gt.dataset["categories"]}
        out["per_class"] = {
            _voc_key(t): {names[cid]: ap for cid, ap in per_class_ap(ev, t).items()}
            for t in thresholds}
    return out


def detection_map50(gt, box_results: list[dict]) -> float:
    """PASCAL VOC detection mAP at box IoU 0.5 (paper §4.2), percent; via ``COCOeval`` (101-point
    interpolation, see the module docstring)."""
    return voc_wsis_map(gt, box_results, thresholds=(0.5,), iou_type="bbox")["mAP@0.5"]


def _voc_key_voc(t: float) -> str:
    return f"voc_mAP@{t:g}"


def _gt_geometry(coco_gt, ann, iou_type):
    if iou_type == "bbox":
        return [float(v) for v in ann["bbox"]]
    img = coco_gt.imgs[ann["image_id"]]
    from .coco_stream import bytes_counts

    return bytes_counts(any_to_rle(ann["segmentation"], int(img["height"]), int(img["width"])))


def voc_match_image(acc, coco_gt, image_id, records, iou_type, cat_index, rank) -> None:
    """chainercv's matching of one image's records, every class, into ``acc``."""
    from pycocotools import mask as mask_utils

    from .coco_stream import bytes_counts

    by_cat: dict[int, list] = {}
    for r in records:
        by_cat.setdefault(r["category_id"], []).append(r)
    gts: dict[int, list] = {}
    for a in coco_gt.imgToAnns.get(image_id, []):
        gts.setdefault(a["category_id"], []).append(a)
    for cid, dets in by_cat.items():
        g = gts.get(cid, [])
        scores = [d["score"] for d in dets]
        if g:
            if iou_type == "bbox":
                dg = [list(map(float, d["bbox"])) for d in dets]
            else:
                dg = [bytes_counts(d["segmentation"]) for d in dets]
            ious = np.asarray(mask_utils.iou(dg, [_gt_geometry(coco_gt, a, iou_type) for a in g],
                                             [0] * len(g)), np.float64).reshape(len(dets), len(g))
        else:
            ious = np.zeros((len(dets), 0))
        acc.add(cat_index[cid], scores, ious, [bool(a.get("iscrowd", 0)) for a in g], rank)


def voc_ap_metrics(acc, coco_gt, manifest, thresholds) -> dict:
    """``{"mean": {"voc_mAP@t": percent, "voc07_mAP@t": percent}, "per_class": {t: {name:
    percent}}, "per_class_voc07": {t: {name: percent}}}``: VOC AP as the area under the PR curve
    and as VOC 2007's 11-point interpolation."""
    n_pos = np.zeros(manifest.num_classes, np.int64)
    for a in coco_gt.dataset["annotations"]:
        if not a.get("iscrowd", 0):
            n_pos[manifest.cat_id_to_index[a["category_id"]]] += 1
    mean, out = {}, {}
    by_metric = acc.aps(n_pos, ("area", "voc07"))
    for metric, prefix, key in (("area", "voc_", "per_class"),
                                ("voc07", "voc07_", "per_class_voc07")):
        aps = by_metric[metric]
        out[key] = {}
        for t in thresholds:
            vals = np.asarray(aps[t], np.float64) * 100
            mean[f"{prefix}mAP@{t:g}"] = mean_defined(vals)
            out[key][t] = {n: float(v) for n, v in zip(manifest.class_names, vals)}
    return {"mean": mean, **out}


def voc_ap_map(gt, results: list[dict], thresholds=VOC_THRESHOLDS, iou_type: str = "segm",
               per_class: bool = False) -> dict:
    """The VOC protocol with VOC AP (chainercv's matching; :mod:`pdsl.evaluation.voc_ap`) from a
    COCO result list: ``{"voc_mAP@0.25": …, "voc07_mAP@0.25": …}`` in percent (area under the
    monotone PR curve; VOC 2007's 11-point interpolation), plus ``"per_class": {"voc_mAP@0.5":
    {name: AP}, "voc07_mAP@0.5": …}`` with ``per_class``. Every manifest image
    counts (an image without results has missed its GT)."""
    from .voc_ap import VOCAccumulator

    m = manifest_of(gt)
    thresholds = check_thresholds(thresholds)
    coco_gt = gt_coco(m, iou_type)
    dets = select_results(coco_gt, results, iou_type)
    acc = VOCAccumulator(m.num_classes, thresholds)
    by_img: dict[int, list] = {}
    for r in dets:
        by_img.setdefault(r["image_id"], []).append(r)
    rank = {i: n for n, i in enumerate(sorted(m.image_by_id))}
    for image_id, recs in by_img.items():
        voc_match_image(acc, coco_gt, image_id, recs, iou_type, m.cat_id_to_index,
                         rank[image_id])
    res = voc_ap_metrics(acc, coco_gt, m, thresholds)
    acc.close()
    out = dict(res["mean"])
    if per_class:
        out["per_class"] = {**{_voc_key_voc(t): v for t, v in res["per_class"].items()},
                            **{f"voc07_mAP@{t:g}": v for t, v in res["per_class_voc07"].items()}}
    return out
