"""Scoring a run: COCO metrics, the VOC protocol, CorLoc and image-level mAP, the report.

Paper §4.2. :mod:`.coco` runs pycocotools' ``COCOeval`` (never re-implemented here) and turns a
manifest into its ground truth; :mod:`.voc` reads the VOC protocol's single-threshold mAP from it
(COCO's 101-point AP, ``mAP@t``) and computes VOC AP (``voc_mAP@t``, :mod:`.voc_ap`);
:mod:`.localization` computes CorLoc and image-level mAP; :class:`Evaluator` streams all of them
image by image (:mod:`.coco_stream`, :mod:`.spool`); :mod:`.report` writes ``report.md``.

Works on a manifest and predictions; never imports :mod:`pdsl.engine`.
"""
from .coco import COCO_THRESHOLDS, MAX_DETS, coco_instance_metrics
from .evaluator import PROTOCOLS, Evaluator
from .localization import corloc, image_level_map
from .voc import VOC_THRESHOLDS, detection_map50, voc_ap_map, voc_wsis_map

__all__ = ["COCO_THRESHOLDS", "MAX_DETS", "PROTOCOLS", "VOC_THRESHOLDS", "Evaluator",
           "coco_instance_metrics", "corloc", "detection_map50", "image_level_map", "voc_ap_map",
           "voc_wsis_map"]
