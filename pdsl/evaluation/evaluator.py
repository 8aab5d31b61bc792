"""The streaming evaluator (detectron2's reset / process / evaluate) and what its keys mean.

:class:`Evaluator` streams: each image's detections are RLE-encoded and matched when they come
(:mod:`.coco_stream` for the COCO numbers, :mod:`.voc_ap` for VOC AP), so evaluation memory does
not grow with the images' masks. It reports everything :mod:`.coco`, :mod:`.voc` and
:mod:`.localization` compute from a result list, and the numbers are equal (tests check it).

Frames: predictions given to :class:`Evaluator` are x1y1x2y2 in original-image pixels; the result
records it returns are COCO's ``[x, y, w, h]``.
"""
from __future__ import annotations

import warnings

import numpy as np

from ..errors import DataError
from .coco import (AREAS, MAX_DETS, all_thresholds, check_thresholds, coco_six, gt_coco,
                   manifest_of, per_class_ap)
from .localization import corloc_image, corloc_pairs, corloc_percent, image_level_map
from .voc import VOC_THRESHOLDS, voc_ap_metrics, voc_match_image, voc_metrics

#: What each AP key means (``cli.py eval`` writes it into metrics.json next to the numbers).
PROTOCOLS = {
    "AP, AP50, AP75, APs/m/l": "COCO: pycocotools COCOeval, 101-point interpolation, maxDets 100",
    "mAP@t": "mean over classes of AP at IoU t with COCO's 101-point interpolation "
             "(pycocotools; the PDSL paper's tables)",
    "voc_mAP@t": "mean over classes of VOC AP at IoU t: area under the monotone "
                 "precision-recall curve, chainercv eval_instance_segmentation_voc matching "
                 "(IRN, BESTIE, CIM)",
    "voc07_mAP@t": "mean over classes of VOC 2007 11-point interpolated AP at IoU t (mean of "
                   "the highest precision at recall >= 0, 0.1, ..., 1), the same matching "
                   "(py-faster-rcnn voc_eval use_07_metric: wetectron, OICR, PCL)",
    "CorLoc": "PASCAL correct localisation of the top box per (image, class), IoU 0.5",
}


def _numpy(x, name: str, image_id) -> np.ndarray:
    if hasattr(x, "detach"):                                    # torch.Tensor
        x = x.detach().cpu().numpy()
    try:
        return np.asarray(x)
    except Exception:
        raise ValueError(f"image {image_id}: prediction[{name!r}] is not array-like "
                         f"({type(x).__name__})") from None


class Evaluator:
    """Scores per-image predictions against a manifest's GT as they come (streaming).

    Usage (under ``torch.no_grad()``)::

        ev = Evaluator(manifest, keep_results=False)
        with JsonListWriter(run_dir / "eval/val/coco_instances_results.json") as out:
            for image_id, pred in predictions:  # pred from inference, original-image frame
                out.extend(ev.process(image_id, pred))
        metrics = ev.evaluate()

    :meth:`process` RLE-encodes the image's masks, matches its detections to its GT (pycocotools'
    per-image ``evaluateImg`` for the COCO numbers, chainercv's matching for VOC AP) and keeps
    only scores and match flags (:mod:`pdsl.evaluation.coco_stream`, :mod:`pdsl.evaluation.voc_ap`): memory does not
    grow with the images' masks. It returns the image's COCO result records; with
    ``keep_results`` (the default) they are also kept for :meth:`results`.

    Every manifest image is scored; an image that was never processed counts as one with no
    detection (a warning says how many), so partial runs give lower numbers, never flattering ones.
    """

    def __init__(self, manifest, mask_threshold: float = 0.5, voc_thresholds=VOC_THRESHOLDS,
                 keep_results: bool = True):
        self.manifest = manifest_of(manifest)
        if not self.manifest.has_gt:
            raise DataError(f"manifest {self.manifest.path}: no GT annotations, so there is "
                            f"nothing to evaluate against (use `predict` to only write results)")
        self.mask_threshold = float(mask_threshold)
        self.voc_thresholds = check_thresholds(voc_thresholds)
        self.keep_results = bool(keep_results)
        self._rank = {i: n for n, i in enumerate(sorted(self.manifest.image_by_id))}
        cov = self.manifest.mask_coverage()
        self._mask_images = cov["images"]
        #: mask metrics skip box-only GT: {"instances": n, "images": m} (None when nothing skipped)
        self.mask_skipped = ({"instances": cov["skipped_instances"],
                              "images": cov["skipped_images"],
                              "reason": "no GT masks"} if cov["skipped_instances"] else None)
        self._gt: dict = {}                      # iou type -> COCO of the manifest (built once)
        self.reset()

    def reset(self) -> None:
        for coco_stream, voc in getattr(self, "_tracks", {}).values():
            coco_stream.close()
            voc.close()
        self._results: list[dict] = []
        self._image_scores: dict[int, np.ndarray] = {}
        self._seen: set = set()
        self._with_masks: bool | None = None
        self._with_image_scores: bool | None = None
        self._tracks: dict = {}                  # iou type -> (StreamingCOCOeval, VOCAccumulator)
        self._corloc_hits: dict[int, int] = {}

    def _coco(self, iou_type):
        if iou_type not in self._gt:
            gt = self.manifest
            if iou_type == "segm" and self.mask_skipped:   # the images with masks only
                gt = gt.subset([i for i in gt.images if i["id"] in self._mask_images])
            self._gt[iou_type] = gt_coco(gt, iou_type)
        return self._gt[iou_type]

    def _track(self, iou_type):
        if iou_type not in self._tracks:
            from .coco_stream import StreamingCOCOeval
            from .voc_ap import VOCAccumulator

            self._tracks[iou_type] = (
                StreamingCOCOeval(self._coco(iou_type), iou_type,
                                  all_thresholds(self.voc_thresholds), AREAS, MAX_DETS),
                VOCAccumulator(self.manifest.num_classes, self.voc_thresholds))
        return self._tracks[iou_type]

    def process(self, image_id: int, prediction: dict) -> list[dict]:
        """Score one image's predictions; return its COCO result records.

        Args:
            image_id: manifest image id.
            prediction: ``boxes`` (Tensor/array[K, 4]): x1y1x2y2, original-image pixels;
                ``scores`` ([K]); ``labels`` ([K]): category index 0..C-1 (sorted category ids);
                optional ``masks``: bool/uint8 ``[K, H, W]`` full-image masks (float
                probabilities are thresholded at ``mask_threshold``) or a list of K COCO RLEs;
                optional ``image_scores`` ([C]): image-level class scores for classification mAP.
                Either every image carries ``masks`` (and ``image_scores``) or none does.
        Returns:
            ``[{"image_id", "category_id", "score", "bbox": [x, y, w, h], "segmentation": RLE
            with str counts (when masks are given)}]``.
        """
        image_id = int(image_id)
        img = self.manifest.image_by_id.get(image_id)
        if img is None:
            raise ValueError(f"Evaluator.process: image id {image_id} is not in the manifest")
        if image_id in self._seen:
            raise ValueError(f"Evaluator.process: image {image_id} was already processed")
        boxes = _numpy(prediction["boxes"], "boxes", image_id).astype(np.float64)
        scores = _numpy(prediction["scores"], "scores", image_id).astype(np.float64)
        labels = _numpy(prediction["labels"], "labels", image_id)
        K = boxes.shape[0] if boxes.ndim == 2 else -1
        if boxes.ndim != 2 or boxes.shape[1] != 4 or scores.shape != (K,) or labels.shape != (K,):
            raise ValueError(f"image {image_id}: boxes [K, 4], scores [K], labels [K] expected, "
                             f"got {boxes.shape}, {scores.shape}, {labels.shape}")
        C = self.manifest.num_classes
        if K and (not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0
                  or labels.max() >= C):
            raise ValueError(f"image {image_id}: labels must be integer category indices in "
                             f"0..{C - 1}, got dtype {labels.dtype}, values "
                             f"{np.unique(labels)[:10].tolist()}")
        rles = self._masks_to_rles(image_id, img, prediction, K)
        self._image_scores_of(image_id, prediction, C)
        self._seen.add(image_id)
        cat_ids = [c["id"] for c in self.manifest.categories]
        records = []
        for k in range(K):
            x1, y1, x2, y2 = (float(v) for v in boxes[k])
            r = {"image_id": image_id, "category_id": cat_ids[int(labels[k])],
                 "score": float(scores[k]), "bbox": [x1, y1, x2 - x1, y2 - y1]}
            if rles is not None:
                r["segmentation"] = rles[k]
            records.append(r)
        for iou_type in ["bbox"] + (["segm"] if rles is not None
                                    and image_id in self._mask_images else []):
            coco_stream, voc = self._track(iou_type)
            coco_stream.add(image_id, records)
            voc_match_image(voc, self._coco(iou_type), image_id, records, iou_type,
                             self.manifest.cat_id_to_index, self._rank[image_id])
        for cid, hit in corloc_image(self._coco("bbox"), image_id, records).items():
            self._corloc_hits[cid] = self._corloc_hits.get(cid, 0) + hit
        if self.keep_results:
            self._results.extend(records)
        return records

    def _masks_to_rles(self, image_id, img, prediction, K) -> list[dict] | None:
        from pycocotools import mask as mask_utils

        given = "masks" in prediction and prediction["masks"] is not None
        if K or given:
            if self._with_masks is None:
                self._with_masks = given
            elif self._with_masks != given:
                raise ValueError(f"image {image_id}: 'masks' given for some images and not for "
                                 f"others; give them for every image or for none")
        if not given:
            return None
        masks = prediction["masks"]
        H, W = int(img["height"]), int(img["width"])
        if isinstance(masks, (list, tuple)) and (not masks or isinstance(masks[0], dict)):
            if len(masks) != K:
                raise ValueError(f"image {image_id}: {K} boxes but {len(masks)} RLE masks")
            out = []
            for r in masks:
                if [int(s) for s in r["size"]] != [H, W]:
                    raise ValueError(f"image {image_id}: RLE size {r['size']} is not the "
                                     f"image size [{H}, {W}] (masks must be in the original "
                                     f"image frame)")
                counts = r["counts"]
                if isinstance(counts, list):             # uncompressed RLE → compressed
                    rr = mask_utils.frPyObjects(dict(r), H, W)
                    counts = rr["counts"]
                if isinstance(counts, bytes):
                    counts = counts.decode("ascii")
                out.append({"size": [H, W], "counts": counts})
            return out
        m = _numpy(masks, "masks", image_id)
        if m.shape != (K, H, W):
            raise ValueError(f"image {image_id}: masks [K={K}, H={H}, W={W}] in the original "
                             f"image frame expected, got {m.shape} {m.dtype}")
        if m.dtype.kind == "f":
            m = m >= self.mask_threshold
        m = np.asfortranarray(m.astype(np.uint8).transpose(1, 2, 0))   # [H, W, K]
        rles = mask_utils.encode(m) if K else []
        return [{"size": [H, W], "counts": r["counts"].decode("ascii")} for r in rles]

    def _image_scores_of(self, image_id, prediction, C) -> None:
        given = prediction.get("image_scores") is not None
        if self._with_image_scores is None:
            self._with_image_scores = given
        elif self._with_image_scores != given:
            raise ValueError(f"image {image_id}: 'image_scores' given for some images and not "
                             f"for others")
        if given:
            s = _numpy(prediction["image_scores"], "image_scores", image_id).astype(np.float64)
            if s.shape != (C,):
                raise ValueError(f"image {image_id}: image_scores [C={C}] expected, "
                                 f"got {s.shape}")
            self._image_scores[image_id] = s

    def results(self) -> list[dict]:
        """The COCO result list (``bbox`` xywh, ``segmentation`` RLE with str counts when masks
        were given) of every processed image; only with ``keep_results``."""
        if not self.keep_results:
            raise RuntimeError("Evaluator(keep_results=False) keeps no results: write the "
                               "records process() returns")
        return self._results

    def evaluate(self) -> dict:
        """Score everything processed since :meth:`reset`.

        Returns (percentages; ``nan`` where there is no GT to score)::

            {"bbox": {"AP", "AP50", "AP75", "APs", "APm", "APl", "mAP@0.25", …,
                      "voc_mAP@0.25", …, "CorLoc"},
             "segm": {… the same without CorLoc},          # only if masks were given
             "classification": {"mAP"},                       # only if image_scores were given
             "per_class": {"bbox_AP50": {name: AP}, "bbox_voc_AP50": …, "segm_AP50": …,
                           "CorLoc": …, "cls_AP": …},
             "num_images": processed, "num_gt_images": manifest images,
             "mask_metrics_skipped": {"instances", "images", "reason"}}  # box-only GT only

        Mask metrics are scored on the images whose every GT annotation has a mask; box-only
        annotations (VOC XML, Roboflow boxes) leave their images out of them, and a split with
        no GT mask at all gets no ``segm`` entry. Box metrics, CorLoc and image-level mAP use
        every image.

        ``mAP@t`` is COCO's 101-point interpolated AP at IoU ``t`` (the PDSL paper's tables);
        ``voc_mAP@t`` is VOC AP, the area under the monotone precision-recall curve with
        chainercv's matching (IRN, BESTIE, CIM; :mod:`pdsl.evaluation.voc_ap`).
        """
        n_all = len(self.manifest.images)
        if len(self._seen) < n_all:
            warnings.warn(f"Evaluator: {len(self._seen)} of {n_all} manifest images were "
                          f"processed; the other {n_all - len(self._seen)} count as having no "
                          f"detection", stacklevel=2)
        out: dict = {"num_images": len(self._seen), "num_gt_images": n_all}
        per_class: dict = {}
        names = {c["id"]: c["name"] for c in self.manifest.categories}
        with_segm = self._with_masks and bool(self._mask_images)
        if self._with_masks and self.mask_skipped:
            out["mask_metrics_skipped"] = dict(self.mask_skipped)
        for iou_type in ["bbox"] + (["segm"] if with_segm else []):
            coco_stream, voc = self._track(iou_type)
            ev = coco_stream.finish()
            coco_gt = self._coco(iou_type)
            voc_ap = voc_ap_metrics(voc, coco_gt, self.manifest, self.voc_thresholds)
            out[iou_type] = {**coco_six(ev), **voc_metrics(ev, coco_gt, self.voc_thresholds,
                                                              per_class=False),
                             **voc_ap["mean"]}
            per_class[f"{iou_type}_AP50"] = {names[c]: ap
                                             for c, ap in per_class_ap(ev, 0.5).items()}
            if 0.5 in voc_ap["per_class"]:
                per_class[f"{iou_type}_voc_AP50"] = voc_ap["per_class"][0.5]
                per_class[f"{iou_type}_voc07_AP50"] = voc_ap["per_class_voc07"][0.5]
        loc = corloc_percent(self._corloc_hits, corloc_pairs(self._coco("bbox")),
                             self.manifest.categories)
        out["bbox"]["CorLoc"], per_class["CorLoc"] = loc["CorLoc"], loc["per_class"]
        if self._with_image_scores:
            ids = sorted(self._image_scores)
            cls = image_level_map(self.manifest, np.stack([self._image_scores[i] for i in ids]),
                                  ids)
            out["classification"] = {"mAP": cls["mAP"]}
            per_class["cls_AP"] = cls["per_class"]
        out["per_class"] = per_class
        return out
