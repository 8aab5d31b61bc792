"""VOC AP: the area under the monotone precision-recall curve (PASCAL VOC 2010+, all points).

This is the protocol of chainercv's ``eval_instance_segmentation_voc`` /
``eval_detection_voc`` (``use_07_metric=False``), which IRN and the WSIS papers that compare with
it (BESTIE, CIM, ...) report for VOC 2012. The PDSL paper's own tables use COCO's 101-point
interpolation instead (pycocotools through detectron2); :mod:`pdsl.evaluation` reports both,
labelled.

Matching, per image and class, exactly as chainercv does it: detections in descending score
order; each takes the GT instance of its class with the highest IoU (plain IoU, every GT
instance a candidate); if that IoU is below the threshold the detection is a false positive; if
that GT is *difficult* (here: a crowd region) the detection is ignored (neither TP nor FP);
else it is a true positive if that GT was not taken yet, a false positive (a duplicate) if it
was. A detection does not fall back to its second-best GT. Then, per class over all images:
detections sorted by descending score (stable: equal scores keep image order), precision
``tp / (tp + fp)``, recall ``tp / n_pos`` (``n_pos`` = non-difficult GT instances), and
``AP = sum over recall steps of (r[i+1] - r[i]) * max(precision at recall >= r[i+1])``.
A class without GT instances has AP ``nan`` and is left out of the mean.
"""
from __future__ import annotations

import numpy as np

#: per-detection match labels
TP, FP, IGNORED = 1, 0, -1


def voc_ap(precision, recall) -> float:
    """Area under the monotone (upper envelope) precision-recall curve, as a fraction in [0, 1].

    Args:
        precision, recall (array [D]): after each of the D ranked detections (recall
            non-decreasing). Empty: AP 0.
    """
    prec = np.nan_to_num(np.asarray(precision, dtype=np.float64))
    rec = np.asarray(recall, dtype=np.float64)
    mpre = np.concatenate(([0.0], prec, [0.0]))
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    i = np.nonzero(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def voc07_ap(precision, recall) -> float:
    """PASCAL VOC 2007's 11-point interpolated AP, as a fraction: the mean over recall levels
    t = 0, 0.1, ..., 1 of the highest precision at recall >= t (0 where recall never reaches t).
    py-faster-rcnn's ``voc_eval(use_07_metric=True)``, which wetectron, OICR and PCL report."""
    prec = np.nan_to_num(np.asarray(precision, dtype=np.float64))
    rec = np.asarray(recall, dtype=np.float64)
    out = 0.0
    for t in np.linspace(0.0, 1.0, 11):
        sel = rec >= t - 1e-12
        out += float(prec[sel].max()) if sel.any() else 0.0
    return out / 11.0


def match_detections(ious, gt_difficult, thresholds) -> np.ndarray:
    """chainercv's greedy matching of one image and class.

    Args:
        ious (array [D, G]): IoU of each detection (rows in descending score order) with each
            GT instance of the class.
        gt_difficult (bool array [G]): GT instances that are difficult/crowd (matches ignored).
        thresholds (sequence [T]): IoU thresholds.
    Returns:
        int8 [T, D]: TP (1), FP (0) or IGNORED (-1) per threshold and detection.
    """
    ious = np.asarray(ious, dtype=np.float64)
    D = ious.shape[0]
    out = np.full((len(thresholds), D), FP, np.int8)
    if D == 0 or ious.ndim != 2 or ious.shape[1] == 0:
        return out
    difficult = np.asarray(gt_difficult, bool)
    best = ious.argmax(axis=1)
    best_iou = ious.max(axis=1)
    for t, thr in enumerate(thresholds):
        taken = np.zeros(ious.shape[1], bool)
        for d in range(D):
            if best_iou[d] < thr:
                continue                                     # FP
            g = best[d]
            if difficult[g]:
                out[t, d] = IGNORED
            elif not taken[g]:
                out[t, d] = TP
            taken[g] = True
    return out


#: one row per detection: class, image (order of arrival), position in the image's score order,
#: score, bit t = TP / IGNORED at threshold t (neither = FP)
ROW = np.dtype([("group", np.int32), ("img", np.int32), ("pos", np.int32), ("score", np.float64),
                ("tp", np.uint32), ("ignored", np.uint32)])


def _bits(flags: np.ndarray) -> np.ndarray:
    weights = (np.uint32(1) << np.arange(flags.shape[0], dtype=np.uint32))[:, None]
    return (flags.astype(np.uint32) * weights).sum(0).astype(np.uint32)


class VOCAccumulator:
    """Collects per-image matches and gives per-class VOC AP at each threshold.

    Memory is bounded: one 32-byte row per detection goes to a :class:`~pdsl.evaluation.spool.RowSpool`
    (a temporary file); no mask is kept."""

    def __init__(self, num_classes: int, thresholds):
        from .spool import RowSpool

        self.thresholds = tuple(float(t) for t in thresholds)
        if len(self.thresholds) > 32:
            raise ValueError(f"at most 32 IoU thresholds, got {len(self.thresholds)}")
        self.num_classes = int(num_classes)
        self._rows = RowSpool(ROW, self.num_classes)

    def add(self, cls: int, scores, ious, gt_difficult, image: int) -> None:
        """One image, one class: ``scores`` [D] and ``ious`` [D, G] in any detection order;
        ``image``: the image's rank (equal scores of two images resolve in rank order)."""
        scores = np.asarray(scores, np.float64).reshape(-1)
        if not scores.size:
            return
        order = np.argsort(-scores, kind="stable")
        ious = np.asarray(ious, np.float64).reshape(len(scores), -1)[order]
        m = match_detections(ious, gt_difficult, self.thresholds)
        rows = np.zeros(len(scores), ROW)
        rows["group"], rows["img"], rows["pos"] = cls, image, np.arange(len(scores))
        rows["score"] = scores[order]
        rows["tp"], rows["ignored"] = _bits(m == TP), _bits(m == IGNORED)
        self._rows.append(rows)

    def ap(self, n_pos, metric: str = "area") -> dict[float, list[float]]:
        """``{threshold: [AP of class c (fraction, nan without GT)]}``; ``n_pos`` [C];
        ``metric``: ``"area"`` (:func:`voc_ap`) or ``"voc07"`` (:func:`voc07_ap`)."""
        return self.aps(n_pos, (metric,))[metric]

    def aps(self, n_pos, metrics=("area", "voc07")) -> dict[str, dict[float, list[float]]]:
        """:meth:`ap` for several metrics from one pass over the spooled rows:
        ``{metric: {threshold: [AP of class c]}}``."""
        ap_of = {m: {"area": voc_ap, "voc07": voc07_ap}[m] for m in metrics}
        out = {m: {t: [] for t in self.thresholds} for m in metrics}
        for c in range(self.num_classes):
            n = int(n_pos[c])
            rows = self._rows.group(c)
            rows = rows[np.lexsort((rows["pos"], rows["img"], -rows["score"]))]
            for t, thr in enumerate(self.thresholds):
                if n == 0:
                    for m in metrics:
                        out[m][thr].append(float("nan"))
                    continue
                tp_flag = (rows["tp"] >> np.uint32(t)) & 1 > 0
                fp_flag = ~tp_flag & ((rows["ignored"] >> np.uint32(t)) & 1 == 0)
                tp, fp = np.cumsum(tp_flag), np.cumsum(fp_flag)
                with np.errstate(invalid="ignore", divide="ignore"):
                    prec = tp / (tp + fp)
                for m in metrics:
                    out[m][thr].append(ap_of[m](prec, tp / n))
        return out

    def close(self) -> None:
        self._rows.close()
