"""Checks a COCO export needs before its boxes feed recall, CorLoc and box AP.

* Roboflow's placeholder category: ``supercategory "none"``, used by no annotation, named after
  the dataset -- which is also the supercategory (or the name) of the real classes. Dropped.
* Two *used* categories with one name: an error naming both ids (the classes would be ambiguous).
* A ``bbox`` that leaves the image is clipped to it.
* A ``bbox`` that clearly disagrees with its own segmentation (IoU < 0.5 with the segmentation's
  exact extent: the polygon vertices' or the RLE's pixel extent, never a rasterised box) is
  replaced by that extent. COCO's own boxes are that extent already, so they come through as
  they are.
"""
from __future__ import annotations

import numpy as np

from ..boxes import box_iou, clip_box
from ..errors import DataError

#: below this IoU with its segmentation's extent a bbox is replaced by that extent
BBOX_SEGM_MIN_IOU = 0.5


def drop_placeholders(categories: list, used: set, where: str) -> tuple[list, list]:
    """``(kept categories, dropped ones)``: Roboflow's placeholder dropped (see the module
    docstring); two used categories of one name are a :class:`DataError`."""
    kept, dropped = [], []
    for c in categories:
        others = [o for o in categories if o is not c]
        placeholder = (c.get("supercategory") == "none" and c["id"] not in used
                       and (c["name"] in {o["name"] for o in others}
                            or c["name"] in {o.get("supercategory") for o in others}))
        (dropped if placeholder else kept).append(c)
    seen: dict = {}
    for c in kept:
        if c["id"] in used:
            if c["name"] in seen:
                raise DataError(f"{where}: categories {seen[c['name']]} and {c['id']} are both "
                                f"named {c['name']!r} and both used by annotations; merge or "
                                f"rename one")
            seen[c["name"]] = c["id"]
    return kept, dropped


def segmentation_extent(seg, h: int, w: int):
    """``[x1, y1, x2, y2]`` of a segmentation (polygons: the vertices' extent; RLE: the pixel
    extent), clipped to the image; None for an empty or unreadable one."""
    if isinstance(seg, list):
        pts = [np.asarray(p, np.float64).reshape(-1, 2) for p in seg
               if isinstance(p, (list, tuple)) and len(p) >= 6]
        if not pts:
            return None
        xy = np.concatenate(pts)
        if not np.isfinite(xy).all():
            return None
        x1, y1 = xy.min(0)
        x2, y2 = xy.max(0)
    elif isinstance(seg, dict) and "counts" in seg:
        from pycocotools import mask as mask_utils

        from ..evaluation.coco import any_to_rle

        rle = any_to_rle(seg, h, w)
        if float(mask_utils.area(rle)) == 0:
            return None
        x1, y1, bw, bh = (float(v) for v in mask_utils.toBbox(rle))
        x2, y2 = x1 + bw, y1 + bh
    else:
        return None
    return clip_box((x1, y1, x2, y2), h, w)


def check_bbox(a: dict, h: int, w: int, where: str) -> str | None:
    """Fix one annotation's ``bbox`` in place: ``"replaced"`` (by its segmentation's extent),
    ``"clipped"`` (to the image), or None (unchanged). An empty ``segmentation`` is removed (a
    box-only annotation)."""
    seg = a.get("segmentation")
    if "segmentation" in a and not seg:
        del a["segmentation"]
        seg = None
    ext = segmentation_extent(seg, h, w) if seg else None
    bb = a.get("bbox")
    if bb is None:
        if ext is None:
            raise DataError(f"{where}: annotation {a.get('id', '?')} (image {a['image_id']}) has "
                            f"neither a bbox nor a segmentation")
        a["bbox"] = [ext[0], ext[1], ext[2] - ext[0], ext[3] - ext[1]]
        return None
    try:
        x, y, bw, bh = (float(v) for v in bb)
    except (TypeError, ValueError):
        raise DataError(f"{where}: annotation {a.get('id', '?')} (image {a['image_id']}): bbox "
                        f"{bb!r} is not [x, y, width, height]") from None
    if not all(np.isfinite([x, y, bw, bh])) or bw < 0 or bh < 0:
        raise DataError(f"{where}: annotation {a.get('id', '?')} (image {a['image_id']}): bbox "
                        f"{bb!r} is not [x, y, width, height] with width, height >= 0")
    box = [x, y, x + bw, y + bh]
    clipped = clip_box(box, h, w)
    if ext is not None and box_iou(clipped, ext)[0, 0] < BBOX_SEGM_MIN_IOU:
        a["bbox"] = [ext[0], ext[1], ext[2] - ext[0], ext[3] - ext[1]]
        return "replaced"
    if clipped != box:
        if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
            raise DataError(f"{where}: annotation {a.get('id', '?')} (image {a['image_id']}): "
                            f"bbox {bb!r} lies outside the {w}x{h} image")
        a["bbox"] = [clipped[0], clipped[1], clipped[2] - clipped[0], clipped[3] - clipped[1]]
        return "clipped"
    return None
