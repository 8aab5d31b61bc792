"""NumPy box and mask helpers. Boxes are ``float32 [N, 4]`` x1y1x2y2 in pixels, x2/y2 exclusive-ish
(continuous coordinates, as torchvision uses): width = x2 - x1."""
from __future__ import annotations

import numpy as np


def box_area(b: np.ndarray) -> np.ndarray:
    return np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix ``float32 [len(a), len(b)]``; zero-area boxes give IoU 0. One 2-D array per
    coordinate and in-place operations: a 2,000 x 2,000 matrix (every seed bank computes one)
    takes a fraction of the time of [N, M, 2] broadcasting."""
    a = np.asarray(a, dtype=np.float32).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float32).reshape(-1, 4)
    iw = np.minimum(a[:, 2:3], b[None, :, 2])
    iw -= np.maximum(a[:, 0:1], b[None, :, 0])
    np.maximum(iw, 0, out=iw)
    ih = np.minimum(a[:, 3:4], b[None, :, 3])
    ih -= np.maximum(a[:, 1:2], b[None, :, 1])
    np.maximum(ih, 0, out=ih)
    inter = np.multiply(iw, ih, out=iw)
    union = np.add(box_area(a)[:, None], box_area(b)[None, :], out=ih)
    union -= inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def clip_box(box, height: int, width: int) -> list[float]:
    """One x1y1x2y2 box clipped to an image of ``height`` x ``width``, as Python floats."""
    return [min(max(float(v), 0.0), lim) for v, lim in zip(box, (width, height, width, height))]


def mask_to_box(mask: np.ndarray) -> np.ndarray | None:
    """Tight x1y1x2y2 box of a binary mask ``[H, W]`` (x2 = last column + 1), or None if empty."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float32)


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
