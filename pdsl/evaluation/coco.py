"""Evaluation: COCO instance metrics, the VOC weakly supervised protocol, CorLoc, image-level mAP.

Paper §4.2: instance segmentation is scored with the COCO metrics (AP over IoU 0.5:0.95, AP50,
AP75, APs/m/l), the VOC 2012 tables with mAP at single IoU thresholds 0.25/0.5/0.7/0.75, and
detection on VOC with box mAP at IoU 0.5 and CorLoc.

pycocotools' ``COCOeval`` computes every COCO AP here (DESIGN.md: never re-implement AP where
``COCOeval`` computes it). The VOC protocol's single-threshold numbers are reported both ways,
labelled: ``mAP@t`` is read from the same ``COCOeval`` run with ``params.iouThrs`` set, i.e.
COCO's **101-point interpolated** AP (the PDSL paper's tables: pycocotools through detectron2);
``voc_mAP@t`` is **VOC AP**, the area under the monotone precision-recall curve with chainercv's
``eval_instance_segmentation_voc`` matching (:mod:`pdsl.evaluation.voc_ap`; IRN, BESTIE, CIM report it).
CorLoc, the image-level (classification) mAP and VOC AP, which ``COCOeval`` does not compute, are
implemented here.

:class:`Evaluator` streams: each image's detections are RLE-encoded and matched when they come
(:mod:`pdsl.evaluation.coco_stream`), so evaluation memory does not grow with the images' masks.

All APs are percentages (0–100). A metric with no ground truth to score against (for example APl
when no GT instance is large, or a class absent from the split) is ``nan`` and is left out of
means over classes, as detectron2 reports it.

Frames: every box and mask here lives in the **original image** (pixels of the image file, the
manifest's ``height`` × ``width``); COCO result boxes are ``[x, y, w, h]``, predictions given to
:class:`Evaluator` are x1y1x2y2.
"""
from __future__ import annotations

import contextlib
import copy
import io
import os
import warnings
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..manifest import Manifest, load_manifest, validate_manifest_dict

#: Paper Table 2 (VOC 2012 val): mAP at these single IoU thresholds.
VOC_THRESHOLDS = (0.25, 0.5, 0.7, 0.75)
#: COCO's ten IoU thresholds 0.50:0.05:0.95, exactly as ``COCOeval.Params`` builds them.
COCO_THRESHOLDS = np.linspace(0.5, 0.95, 10)
#: Detections kept per image and category (COCO's largest ``maxDets``).
MAX_DETS = 100
_AREAS = {"all": [0, 1e10], "small": [0, 32 ** 2], "medium": [32 ** 2, 96 ** 2],
          "large": [96 ** 2, 1e10]}


# ----------------------------------------------------------------------------------------------
# Ground truth and results as pycocotools objects
# ----------------------------------------------------------------------------------------------
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


@contextlib.contextmanager
def _quiet():
    """pycocotools prints progress lines on stdout; keep them out of the CLI's output."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def _coco_gt(gt, iou_type: str):
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
            rle = _any_to_rle(seg, h, w)
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
    with _quiet():
        coco.createIndex()
    return coco


def _any_to_rle(seg, h: int, w: int) -> dict:
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


def _select_results(coco_gt, results: list[dict], iou_type: str) -> list[dict]:
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


def _run_cocoeval(coco_gt, results: list[dict], iou_type: str, iou_thrs, areas):
    """Run ``COCOeval`` (evaluate + accumulate) over every manifest image; return it."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if iou_type not in ("segm", "bbox"):
        raise ValueError(f"iou_type must be 'segm' or 'bbox', got {iou_type!r}")
    dets = _select_results(coco_gt, results, iou_type)
    with _quiet():
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
        ev.params.areaRng = [_AREAS[a] for a in areas]
        ev.params.areaRngLbl = list(areas)
        ev.evaluate()
        ev.accumulate()
    return ev


def _thr_index(ev, t: float) -> int:
    idx = np.nonzero(np.isclose(ev.params.iouThrs, t))[0]
    assert len(idx) == 1, (t, ev.params.iouThrs)
    return int(idx[0])


def _mean_precision(ev, thrs, area: str = "all") -> float:
    """Mean of ``eval['precision'][T, R, K, A, M]`` over the given thresholds, all recall points
    and the classes with GT (entries > -1), at the largest maxDets; percent, ``nan`` if none.
    This is exactly how ``COCOeval.summarize`` forms its AP numbers."""
    t = [_thr_index(ev, x) for x in thrs]
    a = ev.params.areaRngLbl.index(area)
    p = ev.eval["precision"][t, :, :, a, -1]
    p = p[p > -1]
    return float(p.mean() * 100) if p.size else float("nan")


def _per_class_ap(ev, t: float) -> dict[int, float]:
    """``{category id: AP}`` at one IoU threshold, area 'all', percent (``nan`` without GT)."""
    p = ev.eval["precision"][_thr_index(ev, t), :, :, ev.params.areaRngLbl.index("all"), -1]
    out = {}
    for k, cid in enumerate(ev.params.catIds):
        col = p[:, k]
        out[cid] = float(col.mean() * 100) if (col > -1).all() else float("nan")
    return out


def _coco_six(ev) -> dict:
    return {"AP": _mean_precision(ev, COCO_THRESHOLDS),
            "AP50": _mean_precision(ev, [0.5]),
            "AP75": _mean_precision(ev, [0.75]),
            "APs": _mean_precision(ev, COCO_THRESHOLDS, "small"),
            "APm": _mean_precision(ev, COCO_THRESHOLDS, "medium"),
            "APl": _mean_precision(ev, COCO_THRESHOLDS, "large")}


def _voc_key(t: float) -> str:
    return f"mAP@{t:g}"


def _all_thresholds(voc_thresholds) -> np.ndarray:
    """COCO's ten thresholds plus the VOC ones, so one ``COCOeval`` run serves both protocols
    (``evaluateImg`` matches at each threshold independently, so adding thresholds changes
    nothing at the others)."""
    extra = [t for t in voc_thresholds if not np.isclose(COCO_THRESHOLDS, t).any()]
    return np.sort(np.concatenate([COCO_THRESHOLDS, np.asarray(extra, dtype=np.float64)]))


def _check_thresholds(thresholds) -> tuple:
    """Validate IoU thresholds; one that equals a COCO threshold up to rounding becomes COCO's
    own value (``np.linspace``'s 0.7 is 0.7000000000000001), so that ``voc_wsis_map`` and the
    COCO numbers of one :class:`Evaluator` run match detections identically."""
    thresholds = tuple(float(t) for t in thresholds)
    if not thresholds or any(not 0.0 < t < 1.0 for t in thresholds):
        raise ValueError(f"IoU thresholds must lie in (0, 1), got {thresholds}")
    return tuple(float(COCO_THRESHOLDS[np.isclose(COCO_THRESHOLDS, t)][0])
                 if np.isclose(COCO_THRESHOLDS, t).any() else t for t in thresholds)


# ----------------------------------------------------------------------------------------------
# Public metric functions (COCO-format results in, percentages out)
# ----------------------------------------------------------------------------------------------
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
    coco_gt = _coco_gt(gt, iou_type)
    ev = _run_cocoeval(coco_gt, results, iou_type, COCO_THRESHOLDS, tuple(_AREAS))
    return _coco_six(ev)


def voc_wsis_map(gt, results: list[dict], thresholds=VOC_THRESHOLDS, iou_type: str = "segm",
                 per_class: bool = False) -> dict:
    """The VOC 2012 WSIS protocol (paper Table 2): mean over classes of AP at single IoU
    thresholds, area 'all', maxDets 100, classes without GT left out of the mean.

    AP is ``COCOeval``'s 101-point interpolated AP at ``params.iouThrs = thresholds`` (not
    VOC's all-point interpolation; see the module docstring).
    Returns ``{"mAP@0.25": …, "mAP@0.5": …, …}`` in percent, plus, with ``per_class``,
    ``"per_class": {"mAP@0.5": {class name: AP}, …}``.
    """
    thresholds = _check_thresholds(thresholds)
    coco_gt = _coco_gt(gt, iou_type)
    ev = _run_cocoeval(coco_gt, results, iou_type, sorted(set(thresholds)), ("all",))
    return _voc_metrics(ev, coco_gt, thresholds, per_class)


def _voc_metrics(ev, coco_gt, thresholds, per_class: bool) -> dict:
    out = {_voc_key(t): _mean_precision(ev, [t]) for t in thresholds}
    if per_class:
        names = {c["id"]: c["name"] for c in coco_gt.dataset["categories"]}
        out["per_class"] = {
            _voc_key(t): {names[cid]: ap for cid, ap in _per_class_ap(ev, t).items()}
            for t in thresholds}
    return out


def detection_map50(gt, box_results: list[dict]) -> float:
    """PASCAL VOC detection mAP at box IoU 0.5 (paper §4.2), percent; via ``COCOeval`` (101-point
    interpolation, see the module docstring)."""
    return voc_wsis_map(gt, box_results, thresholds=(0.5,), iou_type="bbox")["mAP@0.5"]


def corloc(gt, box_results: list[dict], iou: float = 0.5) -> dict:
    """Correct localisation (paper §4.2, the PASCAL criterion).

    For every (image, class) pair where the image has a non-crowd GT instance of the class, the
    top-scoring result box of that class in that image is correct if its IoU with some non-crowd
    GT box of the class is ≥ ``iou``; a pair with no box of its class is wrong. Per class,
    CorLoc = correct / pairs; the mean is over classes with at least one pair.

    Returns ``{"CorLoc": mean percent, "per_class": {class name: percent or nan}}``.
    Results on image or category ids the manifest lacks are ignored (with a warning).
    """
    from pycocotools import mask as mask_utils

    coco_gt = _coco_gt(gt, "bbox")
    dets = _select_results(coco_gt, box_results, "bbox")
    top: dict[tuple, dict] = {}
    for r in dets:  # first of equal scores wins, so ties resolve in result order
        key = (r["image_id"], r["category_id"])
        if key not in top or r["score"] > top[key]["score"]:
            top[key] = r
    pairs: dict[tuple, list] = {}
    for a in coco_gt.dataset["annotations"]:
        if not a["iscrowd"]:
            pairs.setdefault((a["image_id"], a["category_id"]), []).append(a["bbox"])
    hits = {c: [0, 0] for c in coco_gt.getCatIds()}
    for (img_id, cid), gt_boxes in pairs.items():
        hits[cid][1] += 1
        d = top.get((img_id, cid))
        if d is not None:
            ious = mask_utils.iou([list(map(float, d["bbox"]))],
                                  [list(map(float, b)) for b in gt_boxes], [0] * len(gt_boxes))
            hits[cid][0] += int(np.max(ious) >= iou)
    names = {c["id"]: c["name"] for c in coco_gt.dataset["categories"]}
    per_class = {names[c]: (100.0 * h / n if n else float("nan")) for c, (h, n) in hits.items()}
    valid = [v for v in per_class.values() if not np.isnan(v)]
    return {"CorLoc": float(np.mean(valid)) if valid else float("nan"), "per_class": per_class}


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
    m = gt if isinstance(gt, Manifest) else _manifest_of(gt)
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
    valid = [v for v in per_class.values() if not np.isnan(v)]
    return {"mAP": float(np.mean(valid)) if valid else float("nan"), "per_class": per_class}


def _manifest_of(gt) -> Manifest:
    if isinstance(gt, Manifest):
        return gt
    if isinstance(gt, (str, os.PathLike)):
        return load_manifest(gt)
    d = _gt_dict(gt)
    return Manifest(path=Path("<memory>"), info=d["info"], images=d["images"],
                    categories=d["categories"], annotations=d.get("annotations", []))


# ----------------------------------------------------------------------------------------------
# The evaluator (detectron2's reset / process / evaluate)
# ----------------------------------------------------------------------------------------------
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
        self.manifest = _manifest_of(manifest)
        if not self.manifest.has_gt:
            raise DataError(f"manifest {self.manifest.path}: no GT annotations, so there is "
                            f"nothing to evaluate against (use `predict` to only write results)")
        self.mask_threshold = float(mask_threshold)
        self.voc_thresholds = _check_thresholds(voc_thresholds)
        self.keep_results = bool(keep_results)
        self._rank = {i: n for n, i in enumerate(sorted(self.manifest.image_by_id))}
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
            self._gt[iou_type] = _coco_gt(self.manifest, iou_type)
        return self._gt[iou_type]

    def _track(self, iou_type):
        if iou_type not in self._tracks:
            from .coco_stream import StreamingCOCOeval
            from .voc_ap import VOCAccumulator

            self._tracks[iou_type] = (
                StreamingCOCOeval(self._coco(iou_type), iou_type,
                                  _all_thresholds(self.voc_thresholds), _AREAS, MAX_DETS),
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
        for iou_type in ["bbox"] + (["segm"] if rles is not None else []):
            coco_stream, voc = self._track(iou_type)
            coco_stream.add(image_id, records)
            _voc_match_image(voc, self._coco(iou_type), image_id, records, iou_type,
                             self.manifest.cat_id_to_index, self._rank[image_id])
        for cid, hit in _corloc_image(self._coco("bbox"), image_id, records).items():
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
             "num_images": processed, "num_gt_images": manifest images}

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
        for iou_type in ["bbox"] + (["segm"] if self._with_masks else []):
            coco_stream, voc = self._track(iou_type)
            ev = coco_stream.finish()
            coco_gt = self._coco(iou_type)
            voc_ap = _voc_ap_metrics(voc, coco_gt, self.manifest, self.voc_thresholds)
            out[iou_type] = {**_coco_six(ev), **_voc_metrics(ev, coco_gt, self.voc_thresholds,
                                                              per_class=False),
                             **voc_ap["mean"]}
            per_class[f"{iou_type}_AP50"] = {names[c]: ap
                                             for c, ap in _per_class_ap(ev, 0.5).items()}
            if 0.5 in voc_ap["per_class"]:
                per_class[f"{iou_type}_voc_AP50"] = voc_ap["per_class"][0.5]
        pairs = _corloc_pairs(self._coco("bbox"))
        loc = {names[c]: (100.0 * self._corloc_hits.get(c, 0) / n if n else float("nan"))
               for c, n in ((c, pairs.get(c, 0)) for c in sorted(names))}
        valid = [v for v in loc.values() if not np.isnan(v)]
        out["bbox"]["CorLoc"] = float(np.mean(valid)) if valid else float("nan")
        per_class["CorLoc"] = loc
        if self._with_image_scores:
            ids = sorted(self._image_scores)
            cls = image_level_map(self.manifest, np.stack([self._image_scores[i] for i in ids]),
                                  ids)
            out["classification"] = {"mAP": cls["mAP"]}
            per_class["cls_AP"] = cls["per_class"]
        out["per_class"] = per_class
        return out


#: What each AP key means (``cli.py eval`` writes it into metrics.json next to the numbers).
PROTOCOLS = {
    "AP, AP50, AP75, APs/m/l": "COCO: pycocotools COCOeval, 101-point interpolation, maxDets 100",
    "mAP@t": "mean over classes of AP at IoU t with COCO's 101-point interpolation "
             "(pycocotools; the PDSL paper's tables)",
    "voc_mAP@t": "mean over classes of VOC AP at IoU t: area under the monotone "
                 "precision-recall curve, chainercv eval_instance_segmentation_voc matching "
                 "(IRN, BESTIE, CIM)",
    "CorLoc": "PASCAL correct localisation of the top box per (image, class), IoU 0.5",
}


def _voc_key_voc(t: float) -> str:
    return f"voc_mAP@{t:g}"


def _gt_geometry(coco_gt, ann, iou_type):
    if iou_type == "bbox":
        return [float(v) for v in ann["bbox"]]
    img = coco_gt.imgs[ann["image_id"]]
    from .coco_stream import bytes_counts

    return bytes_counts(_any_to_rle(ann["segmentation"], int(img["height"]), int(img["width"])))


def _voc_match_image(acc, coco_gt, image_id, records, iou_type, cat_index, rank) -> None:
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


def _voc_ap_metrics(acc, coco_gt, manifest, thresholds) -> dict:
    """``{"mean": {"voc_mAP@t": percent}, "per_class": {t: {name: percent}}}``."""
    n_pos = np.zeros(manifest.num_classes, np.int64)
    for a in coco_gt.dataset["annotations"]:
        if not a.get("iscrowd", 0):
            n_pos[manifest.cat_id_to_index[a["category_id"]]] += 1
    aps = acc.ap(n_pos)
    mean, per = {}, {}
    for t in thresholds:
        vals = np.asarray(aps[t], np.float64) * 100
        valid = vals[~np.isnan(vals)]
        mean[_voc_key_voc(t)] = float(valid.mean()) if valid.size else float("nan")
        per[t] = {n: float(v) for n, v in zip(manifest.class_names, vals)}
    return {"mean": mean, "per_class": per}


def voc_ap_map(gt, results: list[dict], thresholds=VOC_THRESHOLDS, iou_type: str = "segm",
               per_class: bool = False) -> dict:
    """The VOC protocol with VOC AP (area under the monotone PR curve, chainercv's matching;
    :mod:`pdsl.evaluation.voc_ap`) from a COCO result list: ``{"voc_mAP@0.25": …, …}`` in percent, plus
    ``"per_class": {"voc_mAP@0.5": {name: AP}}`` with ``per_class``. Every manifest image
    counts (an image without results has missed its GT)."""
    from .voc_ap import VOCAccumulator

    m = _manifest_of(gt)
    thresholds = _check_thresholds(thresholds)
    coco_gt = _coco_gt(m, iou_type)
    dets = _select_results(coco_gt, results, iou_type)
    acc = VOCAccumulator(m.num_classes, thresholds)
    by_img: dict[int, list] = {}
    for r in dets:
        by_img.setdefault(r["image_id"], []).append(r)
    rank = {i: n for n, i in enumerate(sorted(m.image_by_id))}
    for image_id, recs in by_img.items():
        _voc_match_image(acc, coco_gt, image_id, recs, iou_type, m.cat_id_to_index,
                         rank[image_id])
    res = _voc_ap_metrics(acc, coco_gt, m, thresholds)
    acc.close()
    out = dict(res["mean"])
    if per_class:
        out["per_class"] = {_voc_key_voc(t): v for t, v in res["per_class"].items()}
    return out


def _corloc_image(coco_gt, image_id, records, iou: float = 0.5) -> dict[int, int]:
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


def _corloc_pairs(coco_gt) -> dict[int, int]:
    """``{category id: number of images with a non-crowd GT instance of it}``."""
    pairs = {(a["image_id"], a["category_id"]) for a in coco_gt.dataset["annotations"]
             if not a["iscrowd"]}
    out: dict[int, int] = {}
    for _, cid in pairs:
        out[cid] = out.get(cid, 0) + 1
    return out
