"""The seed-mask bank: GrabCut foreground masks for (representatives of) every proposal.

Paper §3.3 runs GrabCut online on ``n_seed`` proposals per class per step. Any proposal can become
a seed, so the offline cache covers all of them. MCG proposals are highly redundant, so proposals
are grouped into clusters of near-duplicates (:func:`cluster_proposals`) and GrabCut runs once per
cluster representative, on a crop around the box downscaled to ``crop_size``
(:func:`seed_mask`; the methods live in :mod:`.grabcut`). Each proposal records its representative
and the IoU between the two (its *coverage*). :func:`.grabcut.grabcut_online` is the authors'
setting (whole image at a 400-px long side, 5 iterations), kept as the reference that the cache
is measured against.

Frames: boxes are in original-image pixels; every returned mask is ``[M, M]`` in the frame of the
box it belongs to (see ``pdsl.cues.store``).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import numpy as np

from ..boxes import box_iou
from .cueformat import STATUS_EMPTY, STATUS_FALLBACK, STATUS_FULL, STATUS_OK, STATUS_TINY
from .grabcut import filled_box, grabcut_masked, grabcut_rect, inscribed_ellipse

SEED_METHODS = ("grabcut_batched", "grabcut", "grabcut_masked", "grabcut_rect", "ellipse", "box",
                "mcg", "mcg_grabcut")
SHARINGS = ("none", "facility", "threshold")
MASK_FORMATS = ("bits", "u8")
FALLBACKS = ("ellipse", "box", "none")


@dataclass
class SeedParams:
    """Seed-mask and bank parameters; stored in the cache attrs, so a cache knows how it was made.

    Defaults were chosen on the real photos of coco-real ``train2017`` and are reported on
    ``val2017`` (README, *Seed masks on real photos*)."""

    method: str = "grabcut_batched"  # grabcut_batched: GrabCut's model for every box of an image
    # at once in torch (:mod:`.batched`; sure-foreground core, mean-field instead of max-flow):
    # coco-real train2017, matched proposals, one mask each: 0.429 vs 0.431 for cv2 grabcut_masked
    # at 64 px, at ~0.7 instead of ~2.5 ms per box | grabcut_masked: mask-initialised cv2 GrabCut
    # (sure-foreground core) | grabcut: rectangle-initialised GrabCut, and where it
    # degenerates (keeps < rect_accept or > full_frac of the box) mask-initialised (better on clean
    # synthetic shapes) | grabcut_rect: rectangle only (earlier versions, the demo) |
    # ellipse | box (shapes) |
    # mcg: the proposal's MCG segment (MCG '-proposals' files) | mcg_grabcut: MCG segment AND GrabCut
    fallback: str = "ellipse"  # mask stored where the method degenerates (empty result, OpenCV
    # failure, no segment): ellipse | box (the authors' code) | none (keep it, flagged empty)
    mask_size: int = 28  # M: bank masks are M x M in their box frame (>= 28, the mask head's size)
    crop_size: int = 64  # long side (px) the box crop is resized to before cv2.grabCut
    margin: float = 0.25  # crop margin around the box, as a fraction of the box side (GrabCut
    # needs background outside the box to fit its background colour model)
    upscale: bool = False  # also enlarge crops smaller than crop_size (kept as a switch for
    # datasets with many tiny objects)
    iterations: int = 1  # cv2.grabCut iterations (the authors use 5 on the whole image; with the
    # sure-foreground core, 1 measured as good as 2 on coco-real val2017 at 2/3 of the time)
    core: float = 0.7  # grabcut: axes of the sure-foreground central ellipse, as a fraction of the
    # inscribed ellipse's
    rect_accept: float = 0.3  # grabcut: the rectangle pass's mask is kept only if it covers at least
    # this fraction of the box (on real photos it collapses to a sliver or nothing on 2/3 of boxes)
    cluster_iou: float = 0.8  # proposals with IoU >= this share a representative's mask
    # (lowered automatically, in 0.05 steps, when more than max_bank representatives result)
    sharing: str = "none"  # none: one mask per proposal (the cache's per-proposal layout) | how
    # representatives are chosen for a shared bank: facility (up to max_bank of
    # them maximising the proposals' summed IoU to their nearest one, until every proposal is
    # covered by >= cluster_iou; coco-real
    # val2017: mean coverage 0.52 vs 0.42, cached mask IoU 0.421 vs 0.407) | threshold (the
    # greedy clustering at cluster_iou, earlier versions and the demo)
    max_bank: int = 80  # at most this many masks per image (cost cap: ~0.5 core-s per image at
    # 2,000 proposals on real photos, see README)
    empty_frac: float = 0.02  # fg fraction inside the box below this -> degenerate (empty)
    full_frac: float = 0.98  # fg fraction inside the box above this -> STATUS_FULL
    min_box_px: int = 4  # boxes smaller than this (in crop pixels; grabcut_batched: image
    # pixels) are not segmented (STATUS_TINY)
    mask_format: str = "bits"  # bits: binary masks, bit-packed (98 bytes per 28 x 28 mask; the
    # authors binarise their targets) | u8: soft masks 0..255 (the demo's bank)
    batch_box: int = 28  # grabcut_batched: the box's side in its crop grid, pixels (margin added)
    batch_core: float = 0.5  # grabcut_batched: sure-foreground core (train2017: 0.5 / 0.7 gave
    # 0.429 / 0.425 on the matched proposals)

    def __post_init__(self):
        from ..errors import DataError

        if self.method not in SEED_METHODS:
            raise DataError(f"seed method {self.method!r}: expected one of {', '.join(SEED_METHODS)}")
        if self.fallback not in FALLBACKS:
            raise DataError(f"seed fallback {self.fallback!r}: expected one of {', '.join(FALLBACKS)}")
        if self.sharing not in SHARINGS:
            raise DataError(f"seed sharing {self.sharing!r}: expected one of {', '.join(SHARINGS)}")
        if self.mask_format not in MASK_FORMATS:
            raise DataError(f"seed mask_format {self.mask_format!r}: expected one of "
                            f"{', '.join(MASK_FORMATS)}")
        if self.mask_size < 28:
            raise DataError(f"seed mask_size {self.mask_size}: must be >= 28 (the mask head's size)")

    @classmethod
    def from_stored(cls, stored: dict | None) -> "SeedParams":
        """The settings a cache recorded (``store.meta("seeds")``); a field added since it was
        made takes its default (``mask_format`` the earlier ``u8``), a field since removed is
        ignored."""
        known = {f.name for f in fields(cls)}
        kept = {k: v for k, v in (stored or {}).items() if k in known}
        if stored:
            kept.setdefault("mask_format", "u8")
        return cls(**kept)

    @property
    def bank_layout(self) -> str:
        """The cache's bank layout for these settings (:mod:`.cueformat`)."""
        return "per_proposal" if self.sharing == "none" else "shared"

    @property
    def needs_segments(self) -> bool:
        return self.method in ("mcg", "mcg_grabcut")

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


def facility_representatives(boxes: np.ndarray, k: int, enough: float = 1.0):
    """At most ``k`` representatives chosen to maximise the summed coverage (each proposal's IoU
    to its nearest representative), greedily (facility location; lazy evaluation of the marginal
    gains, which only shrink); it stops early once every proposal is covered by at least
    ``enough``. Same return as :func:`cluster_proposals`."""
    import heapq

    P = len(boxes)
    if P == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int32), np.zeros(0, np.float32)
    ious = box_iou(boxes, boxes).astype(np.float32)
    cover = np.zeros(P, np.float32)
    heap = [(-float(g), j) for j, g in enumerate(ious.sum(0))]
    heapq.heapify(heap)
    reps = []
    while heap and len(reps) < k and not (reps and cover.min() >= enough):
        _, j = heapq.heappop(heap)
        gain = float(np.maximum(ious[j] - cover, 0).sum())  # a row: IoU is symmetric
        if heap and gain < -heap[0][0] - 1e-6:  # stale: another candidate may gain more now
            heapq.heappush(heap, (-gain, j))
            continue
        if gain <= 0 and reps:
            break
        reps.append(j)
        np.maximum(cover, ious[j], out=cover)
    reps = np.asarray(reps, np.int64)
    to_rep = ious[:, reps]
    bank_row = to_rep.argmax(1).astype(np.int32)
    return reps, bank_row, to_rep[np.arange(P), bank_row].astype(np.float32)


def _status(m: np.ndarray, p: SeedParams) -> int:
    frac = float((m >= 0.5).mean())
    if frac < p.empty_frac:
        return STATUS_EMPTY
    if frac > p.full_frac:
        return STATUS_FULL
    return STATUS_OK


def _shape(name: str, M: int) -> np.ndarray:
    return inscribed_ellipse(M) if name == "ellipse" else filled_box(M)


def _to_uint8(m: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(m * 255), 0, 255).astype(np.uint8)


def _too_small(box, p: SeedParams) -> bool:
    """True where the box's shorter side is under ``min_box_px`` pixels of the GrabCut crop."""
    bw, bh = float(box[2] - box[0]), float(box[3] - box[1])
    s = p.crop_size / max(max(bw, bh) * (1 + 2 * p.margin), 1e-6)
    if not p.upscale:
        s = min(1.0, s)
    return min(bw, bh) * s < p.min_box_px


def seed_mask(image: np.ndarray, box, p: SeedParams, segment: np.ndarray | None = None):
    """The seed mask of one box by ``p.method``: ``(uint8 [M, M] in the box frame, status)``.

    ``segment`` (``uint8 [M, M]``, the box's MCG segment in its frame) is needed by the ``mcg``
    methods. A degenerate result (OpenCV failure, no segment, foreground under ``empty_frac`` of
    the box) is replaced by ``p.fallback`` with ``STATUS_FALLBACK``, so a bank mask is never empty
    unless ``fallback: none`` asks for the raw result (then flagged ``STATUS_EMPTY``). A box too
    small to segment gets the filled box (``STATUS_TINY``).
    """
    M = p.mask_size
    if p.method in ("box", "ellipse"):
        return _to_uint8(_shape(p.method, M)), STATUS_OK
    if p.method == "grabcut_batched":
        masks, status = batched_seed_masks(image, np.asarray(box, np.float64)[None], p)
        return masks[0], int(status[0])
    kw = dict(M=M, crop_size=p.crop_size, margin=p.margin, iterations=p.iterations,
              upscale=p.upscale, min_box_px=p.min_box_px)
    m = None
    if p.method != "mcg":
        if _too_small(box, p):
            return _to_uint8(filled_box(M)), STATUS_TINY
        if p.method in ("grabcut_rect", "grabcut"):
            m = grabcut_rect(image, box, **kw)
        if p.method == "grabcut" and (m is None or not p.rect_accept <= float((m >= 0.5).mean())
                                      <= p.full_frac):
            m = None  # the rectangle pass degenerated: start again from the sure core
        if p.method in ("grabcut", "grabcut_masked", "mcg_grabcut") and m is None:
            m = grabcut_masked(image, box, core=p.core, **kw)
    if p.needs_segments:
        if segment is None:
            from ..errors import CacheError
            raise CacheError(f"seed method {p.method!r} needs MCG segments, but the proposals have "
                             f"none (use MCG '-proposals' files, or method grabcut_masked)")
        seg = (segment.astype(np.float32) / 255.0 >= 0.5).astype(np.float32)
        if m is None:
            m = seg
        else:
            both = np.minimum(m, seg)
            # the intersection where it keeps something, else whichever of the two is not empty
            m = both if _status(both, p) != STATUS_EMPTY else (seg if _status(seg, p) != STATUS_EMPTY else m)
    if m is None or _status(m, p) == STATUS_EMPTY:
        if p.fallback == "none":
            return (np.zeros((M, M), np.uint8) if m is None else _to_uint8(m)), STATUS_EMPTY
        return _to_uint8(_shape(p.fallback, M)), STATUS_FALLBACK
    return _to_uint8(m), _status(m, p)


def batched_seed_masks(image: np.ndarray, boxes: np.ndarray, p: SeedParams):
    """``method: grabcut_batched`` for all ``boxes`` at once: ``(uint8 [N, M, M], status [N])``
    with :func:`seed_mask`'s rules (a box under ``min_box_px`` image pixels: the filled box,
    ``STATUS_TINY``; a result under ``empty_frac``: ``p.fallback``, ``STATUS_FALLBACK``)."""
    from .batched import batched_grabcut

    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    M = p.mask_size
    tiny = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) < p.min_box_px
    m = np.ones((len(boxes), M, M), np.float32)
    m[~tiny] = batched_grabcut(image, boxes[~tiny], M=M, box_px=p.batch_box, margin=p.margin,
                               core=p.batch_core, iterations=p.iterations)
    frac = (m >= 0.5).reshape(len(m), -1).mean(1)
    status = np.where(frac < p.empty_frac, STATUS_EMPTY,
                      np.where(frac > p.full_frac, STATUS_FULL, STATUS_OK)).astype(np.uint8)
    status[tiny] = STATUS_TINY
    empty = status == STATUS_EMPTY
    if empty.any() and p.fallback != "none":
        m[empty] = _shape(p.fallback, M)
        status[empty] = STATUS_FALLBACK
    return _to_uint8(m), status


def grabcut_box(image: np.ndarray, box, p: SeedParams):
    """Alias of :func:`seed_mask` without segments (the GrabCut methods)."""
    return seed_mask(image, box, p)


def build_bank(image: np.ndarray, boxes: np.ndarray, scores: np.ndarray, p: SeedParams,
               segments: np.ndarray | None = None):
    """The seed bank of one image: one seed mask per proposal (``sharing: none``), or cluster
    them and one mask per representative.

    ``segments`` (``uint8 [P, M, M]``, MCG) are needed by the ``mcg`` methods. Returns a dict with
    ``bank_boxes [B,4]``, ``bank_masks uint8 [B,M,M]``, ``bank_status [B]``, ``bank_row [P]``,
    ``coverage [P]``.
    """
    import cv2
    import torch

    cv2.setNumThreads(1)
    torch.set_num_threads(1)  # the cache stage runs one core per job; parallelism is across shards
    P = len(boxes)
    if p.sharing == "none":
        reps, bank_row, coverage = (np.arange(P), np.arange(P, dtype=np.int32),
                                    np.ones(P, np.float32))
    elif p.sharing == "facility":
        reps, bank_row, coverage = facility_representatives(boxes, p.max_bank, p.cluster_iou)
    else:
        reps, bank_row, coverage = cluster_proposals(boxes, scores, p.cluster_iou, p.max_bank)
    B, M = len(reps), p.mask_size
    if p.method == "grabcut_batched":
        masks, status = batched_seed_masks(image, boxes[reps], p)
    else:
        masks = np.zeros((B, M, M), np.uint8)
        status = np.zeros(B, np.uint8)
        for k, r in enumerate(reps):
            seg = segments[r] if segments is not None else None
            if seg is not None and seg.shape != (M, M):
                seg = cv2.resize(seg, (M, M), interpolation=cv2.INTER_LINEAR)
            masks[k], status[k] = seed_mask(image, boxes[r], p, seg)
    return dict(bank_boxes=boxes[reps].astype(np.float32), bank_masks=masks, bank_status=status,
                bank_row=bank_row, coverage=coverage)
