"""The seed-mask bank: GrabCut foreground masks for (representatives of) every proposal.

Paper §3.3 runs GrabCut online on ``n_seed`` proposals per class per step. Any proposal can become
a seed, so the offline cache covers all of them. MCG proposals are highly redundant, so proposals
are grouped into clusters of near-duplicates (:func:`cluster_proposals`) and GrabCut runs once per
cluster representative, on a crop around the box downscaled to ``crop_size``
(:func:`grabcut_box`). Each proposal records its representative and the IoU between the two
(its *coverage*). :func:`grabcut_online` is the authors' setting (whole image at a 400-px long
side, 5 iterations), kept as the reference that the cache is measured against.

Frames: boxes are in original-image pixels; every returned mask is ``[M, M]`` in the frame of the
box it belongs to (see ``pdsl.cues.store``).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ..boxes import box_iou
from .store import STATUS_EMPTY, STATUS_FULL, STATUS_OK, STATUS_TINY


@dataclass
class SeedParams:
    """GrabCut and bank parameters; stored in the cache attrs, so a cache knows how it was made."""

    mask_size: int = 28  # M: bank masks are M x M in their box frame (>= 28, the mask head's size)
    crop_size: int = 72  # long side (px) the box crop is resized to before cv2.grabCut
    margin: float = 0.25  # crop margin around the box, as a fraction of the box side (GrabCut
    # needs background outside the rectangle to fit its background colour model)
    upscale: bool = False  # also enlarge crops smaller than crop_size (measured: no gain, +20-70 % time;
    # kept as a switch for datasets with many tiny objects)
    iterations: int = 3  # cv2.grabCut iterations (the authors use 5 on the whole image; on a crop
    # 3 measured within 0.001 IoU of 5 at 20 % less time, see README)
    cluster_iou: float = 0.8  # proposals with IoU >= this to a representative share its mask
    # (lowered automatically, in 0.05 steps, when more than max_bank representatives result)
    max_bank: int = 220  # at most this many GrabCut masks per image (cost cap, see README)
    empty_frac: float = 0.02  # fg fraction inside the box below this -> STATUS_EMPTY
    full_frac: float = 0.98  # fg fraction inside the box above this -> STATUS_FULL
    min_box_px: int = 4  # boxes smaller than this (in crop pixels) are not segmented (STATUS_TINY)

    def to_dict(self):
        return asdict(self)


def _greedy_reps(ious: np.ndarray, order: np.ndarray, iou: float) -> list:
    """Greedy NMS-like clustering in ``order``: each unassigned box becomes a representative and
    claims every unassigned box with IoU >= ``iou``."""
    assigned = np.zeros(len(order), bool)
    reps = []
    for i in order:
        if assigned[i]:
            continue
        reps.append(i)
        assigned |= ious[i] >= iou
        assigned[i] = True
    return reps


def cluster_proposals(boxes: np.ndarray, scores: np.ndarray, iou: float = 0.8,
                      max_bank: int = 220, min_iou: float = 0.3):
    """Group near-duplicate proposals; return ``(rep_index [B], bank_row [P], coverage [P])``.

    Greedy, in score order (like NMS): the best unassigned proposal becomes a representative and
    claims every unassigned proposal with IoU >= ``iou``. If that gives more than ``max_bank``
    representatives, the threshold is lowered in steps of 0.05 (not below ``min_iou``) until they
    fit, so the GrabCut budget is spread over ALL proposals instead of leaving low-scored ones
    without a nearby mask; only then is the list truncated. Every proposal is mapped to the kept
    representative it overlaps MOST, and ``coverage`` is that IoU.
    """
    P = len(boxes)
    if P == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int32), np.zeros(0, np.float32)
    order = np.argsort(-scores, kind="stable")
    ious = box_iou(boxes, boxes)
    t = iou
    reps = _greedy_reps(ious, order, t)
    while len(reps) > max_bank and t - 0.05 >= min_iou - 1e-9:
        t -= 0.05
        reps = _greedy_reps(ious, order, t)
    reps = np.asarray(reps[:max_bank], np.int64)
    to_rep = ious[:, reps]  # [P, B]
    bank_row = to_rep.argmax(1).astype(np.int32)
    coverage = to_rep[np.arange(P), bank_row].astype(np.float32)
    return reps, bank_row, coverage


def _resample_box(fg: np.ndarray, box_in: np.ndarray, M: int) -> np.ndarray:
    """Resample the region ``box_in`` (x1y1x2y2 in ``fg``'s pixel frame) of a float mask to M x M.

    Pixel (i, j) of the result samples fg at x = x1 + (j + .5) w / M - .5 (bilinear)."""
    import cv2

    x1, y1, x2, y2 = [float(v) for v in box_in]
    sx, sy = (x2 - x1) / M, (y2 - y1) / M
    # affine map from output pixel centres to input coordinates (pixel-centre convention)
    A = np.array([[sx, 0, x1 + 0.5 * sx - 0.5], [0, sy, y1 + 0.5 * sy - 0.5]], np.float32)
    return cv2.warpAffine(fg.astype(np.float32), A, (M, M),
                          flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)


def _status(m: np.ndarray, p: SeedParams) -> int:
    frac = float((m >= 0.5).mean())
    if frac < p.empty_frac:
        return STATUS_EMPTY
    if frac > p.full_frac:
        return STATUS_FULL
    return STATUS_OK


def _run_grabcut(img: np.ndarray, rect, iterations: int) -> np.ndarray:
    """cv2.grabCut with rectangle init; returns float32 {0,1} foreground (FGD or PR_FGD).

    GrabCut's k-means initialisation draws from OpenCV's global RNG, so the RNG is reset before
    every call: a mask depends only on (image, rect, iterations), not on what ran before it in the
    process (a resumed or re-sharded cache is bit-identical)."""
    import cv2

    cv2.setRNGSeed(0)
    mask = np.zeros(img.shape[:2], np.uint8)
    bgd = np.zeros((1, 65), np.float64)
    fgd = np.zeros((1, 65), np.float64)
    try:
        cv2.grabCut(img, mask, rect, bgd, fgd, iterations, cv2.GC_INIT_WITH_RECT)
    except cv2.error:
        # degenerate colour model (e.g. a flat region): treat as "nothing found"
        return np.zeros(img.shape[:2], np.float32)
    return ((mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)).astype(np.float32)


def grabcut_box(image: np.ndarray, box: np.ndarray, p: SeedParams):
    """GrabCut one box on a downscaled crop. Returns ``(mask uint8 [M, M] in the box frame, status)``.

    ``image`` is BGR ``uint8 [H, W, 3]``; ``box`` x1y1x2y2 in its pixels.
    """
    import cv2

    H, W = image.shape[:2]
    M = p.mask_size
    x1, y1, x2, y2 = [float(v) for v in box]
    bw, bh = max(x2 - x1, 1e-3), max(y2 - y1, 1e-3)
    # crop with a margin, clipped to the image
    cx1 = int(np.floor(max(0.0, x1 - p.margin * bw)))
    cy1 = int(np.floor(max(0.0, y1 - p.margin * bh)))
    cx2 = int(np.ceil(min(float(W), x2 + p.margin * bw)))
    cy2 = int(np.ceil(min(float(H), y2 + p.margin * bh)))
    crop = image[cy1:cy2, cx1:cx2]
    s = p.crop_size / max(crop.shape[:2])
    if not p.upscale:
        s = min(1.0, s)
    if s != 1.0:
        crop = cv2.resize(crop, (max(1, round(crop.shape[1] * s)), max(1, round(crop.shape[0] * s))),
                          interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
        s_x = crop.shape[1] / (cx2 - cx1)
        s_y = crop.shape[0] / (cy2 - cy1)
    else:
        s_x = s_y = 1.0
    # the box in crop pixels
    bx = np.array([(x1 - cx1) * s_x, (y1 - cy1) * s_y, (x2 - cx1) * s_x, (y2 - cy1) * s_y])
    rx1, ry1 = int(np.floor(bx[0])), int(np.floor(bx[1]))
    rx2, ry2 = int(np.ceil(bx[2])), int(np.ceil(bx[3]))
    rx1, ry1 = max(rx1, 0), max(ry1, 0)
    rx2, ry2 = min(rx2, crop.shape[1]), min(ry2, crop.shape[0])
    rw, rh = rx2 - rx1, ry2 - ry1
    if rw < p.min_box_px or rh < p.min_box_px:
        return np.full((M, M), 255, np.uint8), STATUS_TINY
    if rx1 == 0 and ry1 == 0 and rx2 == crop.shape[1] and ry2 == crop.shape[0]:
        # the box fills the image: GrabCut has no background sample; shrink the rect by 1 px
        rx1, ry1, rw, rh = rx1 + 1, ry1 + 1, rw - 2, rh - 2
    fg = _run_grabcut(np.ascontiguousarray(crop), (rx1, ry1, rw, rh), p.iterations)
    m = _resample_box(fg, bx, M)
    return np.clip(np.rint(m * 255), 0, 255).astype(np.uint8), _status(m, p)


def build_bank(image: np.ndarray, boxes: np.ndarray, scores: np.ndarray, p: SeedParams):
    """The seed bank of one image: cluster, then GrabCut each representative.

    Returns a dict with ``bank_boxes [B,4]``, ``bank_masks uint8 [B,M,M]``, ``bank_status [B]``,
    ``bank_row [P]``, ``coverage [P]``.
    """
    import cv2

    cv2.setNumThreads(1)
    reps, bank_row, coverage = cluster_proposals(boxes, scores, p.cluster_iou, p.max_bank)
    B, M = len(reps), p.mask_size
    masks = np.zeros((B, M, M), np.uint8)
    status = np.zeros(B, np.uint8)
    for k, r in enumerate(reps):
        masks[k], status[k] = grabcut_box(image, boxes[r], p)
    return dict(bank_boxes=boxes[reps].astype(np.float32), bank_masks=masks, bank_status=status,
                bank_row=bank_row, coverage=coverage)


def grabcut_online(image: np.ndarray, box: np.ndarray, mask_size: int = 28, long_side: int = 400,
                   iterations: int = 5) -> np.ndarray:
    """The authors' online setting: GrabCut on the WHOLE image resized to a ``long_side`` long
    side, rectangle = the box, ``iterations`` iterations. Returns ``uint8 [M, M]`` in the box frame.
    """
    import cv2

    H, W = image.shape[:2]
    s = long_side / max(H, W)
    small = cv2.resize(image, (max(1, round(W * s)), max(1, round(H * s))),
                       interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
    sx, sy = small.shape[1] / W, small.shape[0] / H
    bx = np.array([box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy])
    rx1, ry1 = max(int(np.floor(bx[0])), 0), max(int(np.floor(bx[1])), 0)
    rx2, ry2 = min(int(np.ceil(bx[2])), small.shape[1]), min(int(np.ceil(bx[3])), small.shape[0])
    if rx1 == 0 and ry1 == 0 and rx2 == small.shape[1] and ry2 == small.shape[0]:
        rx1, ry1, rx2, ry2 = 1, 1, rx2 - 1, ry2 - 1
    if rx2 - rx1 < 2 or ry2 - ry1 < 2:
        return np.full((mask_size, mask_size), 255, np.uint8)
    fg = _run_grabcut(small, (rx1, ry1, rx2 - rx1, ry2 - ry1), iterations)
    m = _resample_box(fg, bx, mask_size)
    return np.clip(np.rint(m * 255), 0, 255).astype(np.uint8)


def paste_mask(mask: np.ndarray, box: np.ndarray, height: int, width: int,
               threshold: float = 0.5) -> np.ndarray:
    """Paste a box-frame mask ``[M, M]`` (uint8 0..255 or float 0..1) into a ``bool [H, W]`` image
    mask: the inverse of the box-frame sampling, bilinear, thresholded."""
    import cv2

    m = mask.astype(np.float32)
    if mask.dtype == np.uint8:
        m /= 255.0
    M = m.shape[0]
    x1, y1, x2, y2 = [float(v) for v in box]
    sx, sy = (x2 - x1) / M, (y2 - y1) / M
    if sx <= 0 or sy <= 0:
        return np.zeros((height, width), bool)
    # image pixel centre (u, v) -> box-frame coordinate ((u + .5 - x1) / sx - .5, ...)
    A = np.array([[1 / sx, 0, (0.5 - x1) / sx - 0.5], [0, 1 / sy, (0.5 - y1) / sy - 0.5]],
                 np.float32)
    out = cv2.warpAffine(m, A, (width, height), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                         borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)
    # keep only the box itself (bilinear bleeds half a box-pixel outside)
    inside = np.zeros((height, width), bool)
    inside[max(0, int(np.floor(y1))):int(np.ceil(y2)), max(0, int(np.floor(x1))):int(np.ceil(x2))] = True
    return (out >= threshold) & inside
