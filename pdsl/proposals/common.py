"""Shared checks for every proposal source.

Convention (all sources): ``boxes`` float32 ``[N, 4]`` x1y1x2y2 in 0-based *continuous* pixel
coordinates of the original image (width = x2 - x1, a box covering pixel columns 0..W-1 is
``[0, W]``), ``scores`` float32 ``[N]``, sorted by score descending, at most ``max_proposals``.

:func:`sanitize_proposals` is the single gate every source passes its raw boxes through. It is
strict about things that mean *the coordinate convention is wrong* (inverted boxes, boxes far
outside the image) and lenient about harmless noise (a pixel or two beyond the border is clipped,
degenerate and duplicate boxes are dropped).
"""
from __future__ import annotations

import numpy as np

from ..errors import DataError

DEFAULT_MAX_PROPOSALS = 2000
#: Boxes may overshoot the border by ``px + frac * side`` before it is an error.
DEFAULT_TOLERANCE = (2.0, 0.01)
_INVERT_EPS = 1e-3


def _who(image_id, source) -> str:
    return f"image {image_id} ({source})"


def _fmt_box(b) -> str:
    return "[" + " ".join(f"{float(v):.6g}" for v in b) + "]"


def rank_scores(n: int) -> np.ndarray:
    """Scores ``1 - rank / n`` for a list that is already in priority order (no native score)."""
    return (1.0 - np.arange(n, dtype=np.float64) / max(n, 1)).astype(np.float32)


def sanitize_proposals(boxes, scores, height: int, width: int, *, image_id, source,
                       max_proposals: int = DEFAULT_MAX_PROPOSALS, min_size: float = 1.0,
                       tolerance=DEFAULT_TOLERANCE, dedupe: bool = True,
                       return_index: bool = False):
    """Validate, clip, dedupe, sort and truncate one image's proposals.

    ``tolerance`` is ``(pixels, fraction)``: a box may extend ``pixels + fraction * side`` beyond
    the image border (it is then clipped); further out is a :class:`DataError` because it means a
    wrong convention (swapped x/y, boxes of another or a resized image). A plain number means
    pixels only.

    ``dedupe``: drop exact duplicate boxes (after clipping), keeping the highest-scored one;
    sources whose proposals carry more than a box (MCG segments) turn it off.

    Returns ``(boxes float32 [K,4], scores float32 [K])`` sorted by score descending (stable, so
    ties keep the source's order); with ``return_index=True`` also ``keep int64 [K]``, the
    positions of the kept boxes in the input (for sources with per-proposal side data).
    """
    who = _who(image_id, source)
    height, width = int(height), int(width)
    b = np.asarray(boxes)
    if b.size == 0:
        raise DataError(f"{who}: no proposals (0 boxes)")
    if b.dtype == object or not np.issubdtype(b.dtype, np.number):
        raise DataError(f"{who}: boxes must be numeric, got dtype {b.dtype}")
    if b.ndim != 2 or b.shape[1] != 4:
        raise DataError(f"{who}: boxes must have shape [N, 4], got {list(b.shape)}")
    b = b.astype(np.float64)
    n = len(b)
    if scores is None:
        s = rank_scores(n).astype(np.float64)
    else:
        s = np.asarray(scores)
        if s.dtype == object or not np.issubdtype(s.dtype, np.number):
            raise DataError(f"{who}: scores must be numeric, got dtype {s.dtype}")
        s = s.astype(np.float64).reshape(-1)
        if len(s) != n:
            raise DataError(f"{who}: {n} boxes but {len(s)} scores")

    bad = ~np.isfinite(b).all(axis=1)
    if bad.any():
        raise DataError(f"{who}: {int(bad.sum())} boxes contain NaN/inf "
                        f"(first: {_fmt_box(b[np.argmax(bad)])})")
    bad = ~np.isfinite(s)
    if bad.any():
        raise DataError(f"{who}: {int(bad.sum())} scores are NaN/inf")

    inv = (b[:, 2] < b[:, 0] - _INVERT_EPS) | (b[:, 3] < b[:, 1] - _INVERT_EPS)
    if inv.any():
        first = b[np.argmax(inv)]
        which = "x2 < x1" if first[2] < first[0] - _INVERT_EPS else "y2 < y1"
        raise DataError(f"{who}: {int(inv.sum())} of {n} boxes are inverted ({which}, first: "
                        f"{_fmt_box(first)}) — are they [y1 x1 y2 x2] or [x y w h] instead of "
                        f"[x1 y1 x2 y2]?")

    if np.isscalar(tolerance):
        tol_px, tol_frac = float(tolerance), 0.0
    else:
        tol_px, tol_frac = (float(t) for t in tolerance)
    tx, ty = tol_px + tol_frac * width, tol_px + tol_frac * height
    out = ((b[:, 0] < -tx) | (b[:, 1] < -ty) | (b[:, 2] > width + tx) | (b[:, 3] > height + ty))
    if out.any():
        first = b[np.argmax(out)]
        raise DataError(f"{who}: {int(out.sum())} of {n} boxes lie outside the {width}x{height} "
                        f"(WxH) image beyond the {tx:.1f}/{ty:.1f} px tolerance (first: "
                        f"{_fmt_box(first)}; max x2 {b[:, 2].max():.6g}, max y2 "
                        f"{b[:, 3].max():.6g}) — swapped x/y, 1-based/0-based mix-up, or boxes "
                        f"of another (or resized) image?")

    b[:, 0::2] = np.clip(b[:, 0::2], 0, width)
    b[:, 1::2] = np.clip(b[:, 1::2], 0, height)
    b32 = b.astype(np.float32)
    ok = ((b32[:, 2] - b32[:, 0]) >= min_size) & ((b32[:, 3] - b32[:, 1]) >= min_size)
    idx = np.nonzero(ok)[0]
    if len(idx) == 0:
        raise DataError(f"{who}: none of the {n} boxes is at least {min_size:g} px wide and high "
                        f"after clipping to the {width}x{height} image")

    # Highest score first; stable so that ties keep the source's order.
    idx = idx[np.argsort(-s[idx], kind="stable")]
    # Exact duplicates (after clipping): keep the first = highest-scored occurrence.
    if dedupe:
        _, first = np.unique(b32[idx], axis=0, return_index=True)
        if len(first) < len(idx):
            idx = idx[np.sort(first)]
    idx = idx[:max_proposals]

    out_b = np.ascontiguousarray(b32[idx])
    out_s = s[idx].astype(np.float32)
    if return_index:
        return out_b, out_s, idx.astype(np.int64)
    return out_b, out_s


def check_image_size(image: np.ndarray, img: dict, source) -> None:
    """Raise if a decoded image does not have the manifest's height/width."""
    h, w = image.shape[:2]
    if (h, w) != (int(img["height"]), int(img["width"])):
        raise DataError(f"image {img['id']} ({source}): decoded size {w}x{h} (WxH) differs from "
                        f"the manifest's {img['width']}x{img['height']} — stale manifest or "
                        f"EXIF-rotated image?")


class ProposalSource:
    """One way of obtaining proposals for manifest images. Subclasses must stay picklable
    (joblib workers get a copy): keep big data out of ``__init__`` and load it lazily."""

    kind = "abstract"
    name: str = "abstract"

    def __init__(self, max_proposals: int = DEFAULT_MAX_PROPOSALS, min_size: float = 1.0):
        self.max_proposals = int(max_proposals)
        self.min_size = float(min_size)
        if self.max_proposals <= 0:
            raise DataError(f"max_proposals must be positive, got {max_proposals}")

    #: the file's box convention (file readers set it; None: the source computes PDSL's own)
    box_format: str | None = None
    box_base: int | None = None

    def params(self) -> dict:
        p = {"max_proposals": self.max_proposals, "min_size": self.min_size}
        if self.box_format is not None:
            p.update(box_format=self.box_format, box_base=self.box_base)
        return p

    def convention(self) -> str:
        """How the source's boxes were read, for the summary lines."""
        if self.box_format is None:
            return "x1y1x2y2, 0-based continuous (computed)"
        from .convention import describe_convention

        return describe_convention(self.box_format, self.box_base)

    def _set_convention(self, box_format, box_base, default: tuple[str, int]) -> None:
        """A file reader's convention: the flags where given, else the file's published one."""
        from .convention import check_convention

        self.box_format, self.box_base = check_convention(
            default[0] if box_format is None else box_format,
            default[1] if box_base is None else box_base, f"proposal source {self.kind}")

    def _to_xyxy(self, boxes):
        from .convention import to_xyxy

        return to_xyxy(boxes, self.box_format, self.box_base)

    def describe(self) -> dict:
        """JSON-able metadata (source kind, path, params) for the cache file's attributes."""
        return {"kind": self.kind, "name": self.name, "params": self.params()}

    def get(self, img: dict, image_path=None, image=None) -> dict:
        """``{"boxes": float32 [N,4], "scores": float32 [N]}`` (+ ``"segments"`` where available)
        for manifest image ``img``; ``image`` is the decoded BGR array if the caller has it."""
        raise NotImplementedError

    def _sanitize(self, boxes, scores, img: dict, source, return_index=False, dedupe=True):
        try:
            return sanitize_proposals(boxes, scores, img["height"], img["width"],
                                      image_id=img["id"], source=source,
                                      max_proposals=self.max_proposals, min_size=self.min_size,
                                      dedupe=dedupe, return_index=return_index)
        except DataError as e:
            if self.box_format is None or "outside" not in str(e) and "inverted" not in str(e):
                raise
            from .convention import FLAGS_HINT

            raise DataError(f"{e} [read as {self.convention()}: {FLAGS_HINT}]") from None

    def __repr__(self):
        return f"<{type(self).__name__} {self.name}>"
