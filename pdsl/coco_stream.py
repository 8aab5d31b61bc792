"""``COCOeval`` one image at a time: memory that does not hold any image's masks.

``COCOeval.evaluate`` matches detections to GT image by image (``evaluateImg`` looks at one
image's GT and detections only) and ``accumulate`` then needs, per (category, area range, image),
four small arrays: detection scores, match flags, detection-ignore flags and GT-ignore flags.
:class:`StreamingCOCOeval` runs pycocotools' own ``evaluate`` on each image as it comes (a
one-image ``COCO`` of GT and of results), keeps those four arrays (flags as ``bool``) and drops
everything else, including the masks; :meth:`StreamingCOCOeval.finish` hands them to pycocotools'
own ``accumulate``. The numbers are those of one ``COCOeval`` run over all images (a test checks
equality); memory per image is ~1 byte per (detection, IoU threshold, area range) plus a score.
"""
from __future__ import annotations

import contextlib
import copy
import io

import numpy as np


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


class StreamingCOCOeval:
    """Per-image ``COCOeval.evaluate`` now, one ``accumulate`` at the end.

    Args:
        coco_gt: pycocotools ``COCO`` of the whole manifest (annotations completed with
            ``iscrowd``, ``bbox``, ``area``, ``id``), as :func:`pdsl.evaluation._coco_gt` builds.
        iou_type: ``"bbox"`` or ``"segm"``.
        iou_thrs, areas (``{label: [lo, hi]}``), max_dets: ``COCOeval.params``.
    """

    def __init__(self, coco_gt, iou_type: str, iou_thrs, areas: dict, max_dets: int):
        self.gt = coco_gt
        self.iou_type = iou_type
        self.iou_thrs = np.asarray(iou_thrs, dtype=np.float64)
        self.areas = dict(areas)
        self.max_dets = int(max_dets)
        self.cat_ids = sorted(coco_gt.getCatIds())
        self.img_ids = sorted(coco_gt.getImgIds())
        self._index = {i: n for n, i in enumerate(self.img_ids)}
        self._entries: dict[tuple[int, int, int], dict] = {}
        self._done: set = set()

    def _image_entries(self, image_id: int, records: list[dict]) -> dict:
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
        A, i = len(self.areas), self._index[image_id]
        out = {}
        for n, e in enumerate(ev.evalImgs):        # order: category, area range, image (one)
            if e is None:
                continue
            k, a = divmod(n, A)
            out[(k, a, i)] = {"dtScores": np.asarray(e["dtScores"], np.float64),
                              "dtMatches": np.asarray(e["dtMatches"]) != 0,
                              "dtIgnore": np.asarray(e["dtIgnore"], bool),
                              "gtIgnore": np.asarray(e["gtIgnore"], bool)}
        return out

    def add(self, image_id: int, records: list[dict]) -> None:
        """One image's COCO result records (all of them; an image is added once)."""
        image_id = int(image_id)
        self._entries.update(self._image_entries(image_id, records))
        self._done.add(image_id)

    def finish(self):
        """A ``COCOeval`` with ``eval`` accumulated over every manifest image (images never
        added count as having no detection). Does not change this object."""
        from pycocotools.cocoeval import COCOeval

        entries = dict(self._entries)
        for image_id in self.img_ids:
            if image_id not in self._done:
                entries.update(self._image_entries(image_id, []))
        with quiet():
            ev = COCOeval(iouType=self.iou_type)
            set_params(ev, self.iou_thrs, self.areas, self.max_dets, self.cat_ids, self.img_ids)
            ev._paramsEval = copy.deepcopy(ev.params)
            A, I = len(self.areas), len(self.img_ids)
            ev.evalImgs = [None] * (len(self.cat_ids) * A * I)
            for (k, a, i), e in entries.items():
                ev.evalImgs[(k * A + a) * I + i] = e
            if not entries:  # accumulate needs a non-empty list to run; every class then has -1
                ev.evalImgs.append(None)
            ev.accumulate()
        return ev
