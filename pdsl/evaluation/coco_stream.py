"""``COCOeval`` one image at a time: memory that does not hold any image's masks.

``COCOeval.evaluate`` matches detections to GT image by image (``evaluateImg`` looks at one
image's GT and detections only) and ``accumulate`` then needs, per (category, area range), the
scores, match flags and ignore flags of the detections of every image, in image order, and the
number of non-ignored GT instances. :class:`StreamingCOCOeval` runs pycocotools' own
``evaluate`` on each image as it comes (a one-image ``COCO`` of GT and of results), keeps one
24-byte row per (detection, area range) in a :class:`~pdsl.evaluation.spool.RowSpool` (spilled to a
temporary file, so memory stays bounded) and drops everything else, masks included.
:meth:`StreamingCOCOeval.finish` gives pycocotools' own ``accumulate``, one category at a time,
those rows as one entry per area range (all images' detections concatenated in image order,
exactly what ``accumulate`` concatenates). The numbers equal those of one ``COCOeval`` run over
all images (a test checks it).
"""
from __future__ import annotations

import contextlib
import copy
import io

import numpy as np

from .spool import RowSpool


@contextlib.contextmanager
def quiet():
    """pycocotools prints progress lines on stdout; keep them out of the CLI's output."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def bytes_counts(seg: dict) -> dict:
    """A compressed RLE with ``bytes`` counts (what pycocotools' C functions take)."""
    if isinstance(seg.get("counts"), str):
        return dict(seg, counts=seg["counts"].encode("ascii"))
    return seg


def scoring_copies(records: list[dict], iou_type: str) -> list[dict]:
    """Copies of result records holding only the geometry scored for ``iou_type`` (with both,
    ``loadRes`` would take the box area as a mask's area)."""
    other = "segmentation" if iou_type == "bbox" else "bbox"
    out = []
    for r in records:
        r = {k: v for k, v in r.items() if k != other}
        if iou_type == "segm":
            r["segmentation"] = bytes_counts(r["segmentation"])
        out.append(r)
    return out


def set_params(ev, iou_thrs, areas: dict, max_dets: int, cat_ids, img_ids) -> None:
    p = ev.params
    p.imgIds = list(img_ids)
    p.catIds = list(cat_ids)
    p.iouThrs = np.asarray(iou_thrs, dtype=np.float64)
    p.maxDets = [int(max_dets)]
    p.areaRng = [list(v) for v in areas.values()]
    p.areaRngLbl = list(areas)


#: one row per (detection, area range): category index, area index, image index (sorted ids),
#: position in the image's score order, score, bit t = matched / ignored at IoU threshold t
ROW = np.dtype([("group", np.int32), ("img", np.int32), ("pos", np.int32), ("score", np.float64),
                ("match", np.uint32), ("ignore", np.uint32)])


def _bits(flags: np.ndarray) -> np.ndarray:
    """bool [T, D] -> uint32 [D] with bit t set where flags[t]."""
    weights = (np.uint32(1) << np.arange(flags.shape[0], dtype=np.uint32))[:, None]
    return (flags.astype(np.uint32) * weights).sum(0).astype(np.uint32)


def _unbits(bits: np.ndarray, T: int) -> np.ndarray:
    return ((bits[None, :] >> np.arange(T, dtype=np.uint32)[:, None]) & 1).astype(bool)


class StreamingCOCOeval:
    """Per-image ``COCOeval.evaluate`` now, ``accumulate`` at the end.

    Args:
        coco_gt: pycocotools ``COCO`` of the whole manifest (annotations completed with
            ``iscrowd``, ``bbox``, ``area``, ``id``), as :func:`pdsl.evaluation._coco_gt` builds.
        iou_type: ``"bbox"`` or ``"segm"``.
        iou_thrs (at most 32), areas (``{label: [lo, hi]}``), max_dets: ``COCOeval.params``.
    """

    def __init__(self, coco_gt, iou_type: str, iou_thrs, areas: dict, max_dets: int):
        self.gt = coco_gt
        self.iou_type = iou_type
        self.iou_thrs = np.asarray(iou_thrs, dtype=np.float64)
        if len(self.iou_thrs) > 32:
            raise ValueError(f"at most 32 IoU thresholds, got {len(self.iou_thrs)}")
        self.areas = dict(areas)
        self.max_dets = int(max_dets)
        self.cat_ids = sorted(coco_gt.getCatIds())
        self.img_ids = sorted(coco_gt.getImgIds())
        self._index = {i: n for n, i in enumerate(self.img_ids)}
        K, A = len(self.cat_ids), len(self.areas)
        self._rows = RowSpool(ROW, K * A)
        self._npig = np.zeros((K, A), np.int64)         # non-ignored GT per category and area
        self._present = np.zeros((K, A), bool)          # some image has GT or detections
        self._done: set = set()

    def _evaluate_image(self, image_id: int, records: list[dict]):
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        with quiet():
            gt = COCO()
            gt.dataset = {"images": [self.gt.imgs[image_id]],
                          "categories": self.gt.dataset["categories"],
                          "annotations": [dict(a) for a in self.gt.imgToAnns.get(image_id, [])]}
            gt.createIndex()
            if records:
                dt = gt.loadRes(scoring_copies(records, self.iou_type))
            else:  # loadRes cannot take an empty list
                dt = COCO()
                dt.dataset = {"images": gt.dataset["images"], "annotations": [],
                              "categories": gt.dataset["categories"]}
                dt.createIndex()
            ev = COCOeval(gt, dt, iouType=self.iou_type)
            set_params(ev, self.iou_thrs, self.areas, self.max_dets, self.cat_ids, [image_id])
            ev.evaluate()
        return ev.evalImgs                    # order: category, area range, image (one)

    def _add(self, image_id, records, npig, present, spool) -> None:
        A, i = len(self.areas), self._index[image_id]
        for n, e in enumerate(self._evaluate_image(image_id, records)):
            if e is None:
                continue
            k, a = divmod(n, A)
            present[k, a] = True
            npig[k, a] += int(np.count_nonzero(np.asarray(e["gtIgnore"]) == 0))
            D = len(e["dtScores"])
            if D and spool is not None:
                rows = np.zeros(D, ROW)
                rows["group"], rows["img"], rows["pos"] = n, i, np.arange(D)
                rows["score"] = e["dtScores"]
                rows["match"] = _bits(np.asarray(e["dtMatches"]) != 0)
                rows["ignore"] = _bits(np.asarray(e["dtIgnore"], bool))
                spool.append(rows)

    def add(self, image_id: int, records: list[dict]) -> None:
        """One image's COCO result records (all of them; an image is added once)."""
        image_id = int(image_id)
        self._add(image_id, records, self._npig, self._present, self._rows)
        self._done.add(image_id)

    def finish(self):
        """A ``COCOeval`` with ``eval`` accumulated over every manifest image (images never
        added count as having no detection). Does not change this object."""
        from pycocotools.cocoeval import COCOeval

        npig, present = self._npig.copy(), self._present.copy()
        for image_id in self.img_ids:       # unseen images: their GT only (no detection rows)
            if image_id not in self._done and self.gt.imgToAnns.get(image_id):
                self._add(image_id, [], npig, present, None)
        K, A, T = len(self.cat_ids), len(self.areas), len(self.iou_thrs)
        out = None
        for k, cat in enumerate(self.cat_ids):
            entries = []
            for a in range(A):
                if not present[k, a]:
                    entries.append(None)
                    continue
                rows = self._rows.group(k * A + a)
                rows = rows[np.lexsort((rows["pos"], rows["img"]))]   # image order, as COCOeval
                entries.append({"dtScores": rows["score"],
                                "dtMatches": _unbits(rows["match"], T),
                                "dtIgnore": _unbits(rows["ignore"], T),
                                "gtIgnore": np.zeros(npig[k, a], bool)})
            with quiet():  # one category, all images as one (maxDets was applied per image)
                ev = COCOeval(iouType=self.iou_type)
                set_params(ev, self.iou_thrs, self.areas, np.iinfo(np.int32).max, [cat], [0])
                ev._paramsEval = copy.deepcopy(ev.params)
                ev.evalImgs = entries
                if any(e is not None for e in entries):
                    ev.accumulate()
            if out is None:
                R, M = len(ev.params.recThrs), 1
                out = {"precision": -np.ones((T, R, K, A, M)), "recall": -np.ones((T, K, A, M)),
                       "scores": -np.ones((T, R, K, A, M))}
            if ev.eval:
                out["precision"][:, :, k] = ev.eval["precision"][:, :, 0]
                out["scores"][:, :, k] = ev.eval["scores"][:, :, 0]
                out["recall"][:, k] = ev.eval["recall"][:, 0]
        with quiet():
            ev = COCOeval(iouType=self.iou_type)
        set_params(ev, self.iou_thrs, self.areas, self.max_dets, self.cat_ids, self.img_ids)
        ev.eval = dict(out or {}, params=ev.params,
                       counts=[T, len(ev.params.recThrs), K, A, 1])
        return ev

    def close(self) -> None:
        self._rows.close()
