"""Box conventions of proposal files, and the conversion to PDSL's one.

PDSL's convention: x1y1x2y2, 0-based *continuous* pixel coordinates (width = x2 - x1). A file
states its own with two flags:

* ``box_format``: ``x1y1x2y2``, ``y1x1y2x2`` (MATLAB row/column order: MCG, Fast R-CNN) or
  ``xywh`` (corner + size: COCO, OpenCV's selective search);
* ``box_base``: ``0`` -- 0-based, corners taken as they are (continuous); ``1`` -- 1-based
  inclusive pixel indices (MATLAB): x1 = c1 - 1, x2 = c2 (a box over pixel columns 1..W is
  ``[0, W]``).
"""
from __future__ import annotations

import numpy as np

from ..errors import DataError

BOX_FORMATS = ("x1y1x2y2", "y1x1y2x2", "xywh")
BOX_BASES = (0, 1)

#: what the error of a box outside the image adds for a file reader
FLAGS_HINT = ("state the file's convention with --box-format x1y1x2y2|y1x1y2x2|xywh and "
              "--box-base 0|1 (workflow config: box_format, box_base)")


def check_convention(box_format, box_base, where: str) -> tuple[str, int]:
    if box_format not in BOX_FORMATS:
        raise DataError(f"{where}: box format {box_format!r}: choose one of "
                        f"{', '.join(BOX_FORMATS)}")
    try:
        base = int(box_base)
    except (TypeError, ValueError):
        base = None
    if base not in BOX_BASES:
        raise DataError(f"{where}: box base {box_base!r}: choose 0 or 1")
    return box_format, base


def describe_convention(box_format: str, box_base: int) -> str:
    """``"y1x1y2x2, 1-based inclusive"`` -- what the summary lines print."""
    return (f"{box_format}, " + ("1-based inclusive" if int(box_base) == 1
                                 else "0-based continuous"))


def to_xyxy(boxes, box_format: str, box_base: int) -> np.ndarray:
    """``float64 [N, 4]`` in ``box_format`` / ``box_base`` -> PDSL's 0-based continuous x1y1x2y2."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if box_format == "y1x1y2x2":
        b = b[:, [1, 0, 3, 2]]
    elif box_format == "xywh":
        b = np.concatenate([b[:, :2], b[:, :2] + b[:, 2:]], axis=1)
    else:
        b = b.copy()
    if int(box_base) == 1:
        b[:, :2] -= 1.0
        if box_format == "xywh":
            b[:, 2:] -= 1.0      # x2 = (x - 1) + w
    return b
