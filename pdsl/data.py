"""Training and test data: image + cached proposals + seed-mask bank, augmented consistently.

Frames (where weakly supervised code goes wrong):

* The cue cache stores boxes in ORIGINAL image pixels and bank masks ``uint8 [M, M]`` in the
  frame of their own bank box (pixel (i, j) covers x = x1 + (j + .5) w / M, ...).
* A training sample lives in the AUGMENTED image frame: original → crop (offset ``crop[:2]``)
  → resize by ``scale = (sx, sy)`` → optional horizontal flip of the resized image (width W).
  Proposals are clipped to the crop; bank boxes are NOT clipped (their mask is defined on the
  whole box), only shifted, scaled and flipped. A flip mirrors a bank box (x1, x2) → (W - x2,
  W - x1) *and* its mask (columns reversed), so the mask still covers its box.
* Every random draw of a sample comes from ``np.random.Generator(SeedSequence([seed, step,
  slot, index]))``: a run is reproducible for any ``num_workers`` and after ``--resume``.

Datasets return numpy only; :class:`Collate` and :func:`batch_to_device` make tensors.
"""
from __future__ import annotations

import math
import sys
import time

import numpy as np
import torch

from .cues.store import STATUS_EMPTY, STATUS_FULL
from .errors import DataError
from .io import read_image
from .sampling import sample_rng


ONLINE_MASK_SIZE = 28  # online GrabCut masks are M x M in their box frame (the mask head's size)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def check_kept(what: str, ids: list, manifest, skipped: str, empty: str, verbose: bool) -> None:
    """A training dataset's line ``WHAT: N images of M in MANIFEST`` + ``skipped`` (which images
    it left out and why), and a :class:`DataError` ``empty`` when it keeps none."""
    if verbose:
        log(f"{what}: {len(ids)} images of {len(manifest.images)} in {manifest.path}{skipped}")
    if not ids:
        raise DataError(empty)


# -- image helpers ---------------------------------------------------------------------------------
def normalize_image(image_bgr: np.ndarray, pixel_mean, pixel_std) -> np.ndarray:
    """``uint8 [H, W, 3]`` BGR → ``float32 [3, H, W]`` RGB, ``(x / 255 - mean) / std``."""
    x = image_bgr[:, :, ::-1].astype(np.float32) * (1.0 / 255.0)
    x -= np.asarray(pixel_mean, np.float32)
    x /= np.asarray(pixel_std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def scaled_size(height: int, width: int, short_side: float, max_size: float | None):
    """Size ``(h, w)`` after scaling the shorter side to ``short_side``, the longer side capped by
    ``max_size``."""
    s = short_side / min(height, width)
    if max_size and max(height, width) * s > max_size:
        s = max_size / max(height, width)
    return max(1, int(round(height * s))), max(1, int(round(width * s)))


def hsv_jitter(image_bgr: np.ndarray, sat: float, val: float) -> np.ndarray:
    """Scale saturation and value (exposure) of a ``uint8`` BGR image (paper §4.3)."""
    import cv2

    if sat == 1.0 and val == 1.0:
        return image_bgr
    hsv = cv2.cvtColor(image_bgr, cv2.COLOR_BGR2HSV)
    ramp = np.arange(256, dtype=np.float32)
    for ch, f in ((1, sat), (2, val)):
        lut = np.clip(np.rint(ramp * f), 0, 255).astype(np.uint8)
        hsv[:, :, ch] = cv2.LUT(hsv[:, :, ch], lut)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)


def _random_factor(rng: np.random.Generator, amount: float) -> float:
    """A factor in [1/amount, amount]: uniform magnitude in [1, amount], inverted half the time
    (darknet's ``rand_scale``, which the "up to a factor of 1.5" wording follows)."""
    f = rng.uniform(1.0, amount)
    return float(f if rng.random() < 0.5 else 1.0 / f)


def flip_boxes(boxes: np.ndarray, width: float) -> np.ndarray:
    """Mirror x1y1x2y2 boxes in an image of ``width`` pixels (continuous coordinates)."""
    out = boxes.copy()
    out[:, 0] = width - boxes[:, 2]
    out[:, 2] = width - boxes[:, 0]
    return out


def bank_valid_mask(status: np.ndarray, degenerate: str) -> np.ndarray:
    """``bool [B]``: which bank masks may be used as targets (``cues.degenerate``)."""
    if degenerate in ("keep", "box"):
        return np.ones(len(status), bool)
    return ~np.isin(status, (STATUS_EMPTY, STATUS_FULL))


def degenerate_to_box(masks: np.ndarray, status: np.ndarray, degenerate: str) -> np.ndarray:
    """``cues.degenerate: box`` (the authors' code: ``binary_mask_to_polygon2`` turns a GrabCut
    result without foreground into its box's polygon): every EMPTY bank mask becomes the filled
    box (all foreground in its own box frame; 255 for uint8 masks, 1 for float). FULL masks are
    the filled box already and stay. Other modes return ``masks`` unchanged.

    Args: masks ``[B, M, M]`` (uint8 0..255 or float 0..1) in their bank-box frames; status
    ``uint8 [B]`` (``STATUS_*``). Returns a new array when anything changed.
    """
    if degenerate != "box" or not len(status):
        return masks
    empty = np.asarray(status) == STATUS_EMPTY
    if not empty.any():
        return masks
    out = np.array(masks, copy=True)
    out[empty] = 255 if out.dtype == np.uint8 else 1
    return out


# -- training --------------------------------------------------------------------------------------
class TrainDataset(torch.utils.data.Dataset):
    """Augmented training samples of the labelled images of a manifest.

    ``dataset[(index, step, slot)]`` (what :class:`pdsl.sampling.TrainBatchSampler` yields) or
    ``dataset[index]`` (step 0, slot 0) returns a dict of numpy arrays, all boxes in the
    augmented-image frame:

    ``image`` float32 [3, H, W] normalised RGB; ``proposals`` float32 [P, 4]; ``proposal_scores``
    float32 [P]; ``proposal_index`` int64 [P] (row of each proposal in the cache's list of the
    image); ``bank_boxes`` float32 [B, 4]; ``bank_masks`` uint8 [B, M, M] (bank-box frame);
    ``proposal_to_bank`` int64 [P] (rows of this sample's bank); ``bank_valid`` bool [B];
    ``labels`` float32 [C]; ``image_id``; ``orig_size`` (h, w); ``crop`` (x0, y0, x1, y1) in
    original pixels; ``scale`` (sx, sy) from crop to augmented pixels; ``flipped``;
    ``cue_time`` seconds spent reading cues. In online cue mode (``cues.source: online``) also
    ``online_image`` uint8 [H, W, 3] BGR (the augmented image, for GrabCut) and an empty bank
    (``proposal_to_bank`` = -1) that the trainer fills.
    """

    def __init__(self, manifest, cues_store, cfg, seed: int = 0, verbose: bool = True):
        self.manifest = manifest
        self.store = cues_store
        self.cfg_input = cfg.input
        self.online = cfg.cues.source == "online"
        self.degenerate = cfg.cues.degenerate
        self.reproject = cfg.cues.reproject
        self.reproject_iou = float(cfg.cues.reproject_iou)
        self.seed_source = cfg.cues.seed_source
        if self.seed_source == "mcg" and not cues_store.has_segments:
            from .errors import CacheError
            raise CacheError(f"cues.seed_source=mcg: {cues_store.path} has no MCG segments (cache "
                             f"it from MCG '-proposals' files, or use cues.seed_source=bank)")
        self.seed = int(seed)
        self._verified: set[int] = set()  # image ids whose file hash was checked (per process)
        cues_store.check_manifest(manifest, require_bank=not self.online)
        if not self.online and cues_store.mask_size < 1:
            raise DataError(f"cue cache {cues_store.path}: no mask size recorded")
        prop_count = dict(zip((int(i) for i in cues_store.ids),
                              (int(n) for n in cues_store.index["prop_count"])))
        unlabelled = [img["id"] for img in manifest.images if not img["labels"]]
        no_props = [img["id"] for img in manifest.images
                    if img["labels"] and prop_count.get(int(img["id"]), 0) == 0]
        self.ids = [int(img["id"]) for img in manifest.images
                    if img["labels"] and prop_count.get(int(img["id"]), 0) > 0]
        check_kept("train data", self.ids, manifest,
                   f" (skipped {len(unlabelled)} without image labels, {len(no_props)} without "
                   f"proposals)",
                   f"manifest {manifest.path}: no image with labels and proposals to train on",
                   verbose)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, key):
        index, step, slot = (key, 0, 0) if np.isscalar(key) else key
        return self.sample(int(index), sample_rng(self.seed, step, slot, index))

    def sample(self, index: int, rng: np.random.Generator) -> dict:
        import cv2

        c = self.cfg_input
        image_id = self.ids[index]
        img_info = self.manifest.image_by_id[image_id]
        t0 = time.perf_counter()
        cues = self.store.get(image_id, with_bank=not self.online,
                              with_segments=self.seed_source == "mcg")
        cue_time = time.perf_counter() - t0
        # the first read of an image in this process checks its bytes against the SHA-1 recorded
        # when it was cached (a changed image is refused, not trained on with stale cues)
        first = image_id not in self._verified
        image = read_image(self.manifest.image_path(img_info), image_id,
                           expect_sha1=cues.file_sha1 if first else None)
        self._verified.add(image_id)
        H, W = image.shape[:2]
        if (H, W) != (int(img_info["height"]), int(img_info["width"])):
            raise DataError(f"image {image_id} ({self.manifest.image_path(img_info)}) is {W}x{H} "
                            f"but the manifest says {img_info['width']}x{img_info['height']}")

        # All draws first, in a fixed order, so that a config change does not shift the others.
        do_crop = rng.random() < c.crop_prob and c.crop < 1.0
        u = rng.random(2)
        scale_short = c.train_scales[int(rng.integers(len(c.train_scales)))]
        do_flip = bool(rng.random() < 0.5) and c.flip
        sat = _random_factor(rng, c.hsv_jitter)
        val = _random_factor(rng, c.hsv_jitter)

        order = np.argsort(-cues.scores, kind="stable")[:c.max_proposals]
        boxes, scores = cues.boxes[order].astype(np.float32), cues.scores[order].astype(np.float32)
        crop = np.array([0, 0, W, H], np.int64)
        if do_crop:
            cw, ch = max(1, int(round(W * c.crop))), max(1, int(round(H * c.crop)))
            x0, y0 = int(u[0] * (W - cw + 1)), int(u[1] * (H - ch + 1))
            crop = np.array([x0, y0, x0 + cw, y0 + ch], np.int64)
        keep, props, size = self._place(boxes, crop, scale_short)
        if not keep.any() and do_crop:  # the crop cut every proposal away: use the whole image
            crop = np.array([0, 0, W, H], np.int64)
            keep, props, size = self._place(boxes, crop, scale_short)
        if not keep.any():  # every proposal is tiny: keep the largest rather than none
            keep[np.argmax((props[:, 2] - props[:, 0]) * (props[:, 3] - props[:, 1]))] = True
        nh, nw = size
        sx, sy = nw / float(crop[2] - crop[0]), nh / float(crop[3] - crop[1])
        props, scores, prop_index = props[keep], scores[keep], order[keep]

        img = image[crop[1]:crop[3], crop[0]:crop[2]]
        img = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LINEAR)
        if do_flip:
            img = np.ascontiguousarray(img[:, ::-1])
            props = flip_boxes(props, nw)
        img = hsv_jitter(img, sat, val)

        out = dict(image=normalize_image(img, c.pixel_mean, c.pixel_std),
                   proposals=props.astype(np.float32), proposal_scores=scores,
                   proposal_index=prop_index.astype(np.int64),
                   labels=self.manifest.label_vector(image_id), image_id=image_id,
                   orig_size=np.array([H, W], np.int64), crop=crop,
                   scale=np.array([sx, sy], np.float32), flipped=do_flip, cue_time=cue_time)
        if self.online:
            M = ONLINE_MASK_SIZE
            out.update(online_image=img, bank_boxes=np.zeros((0, 4), np.float32),
                       bank_masks=np.zeros((0, M, M), np.uint8),
                       proposal_to_bank=np.full(len(props), -1, np.int64),
                       bank_valid=np.zeros(0, bool))
            return out

        # The bank: only the rows the kept proposals use, renumbered.
        rows = cues.bank_row[prop_index].astype(np.int64)
        if self.seed_source == "mcg":  # each proposal's own MCG segment, in its own box
            frame, to_bank = cues.boxes[prop_index], np.arange(len(prop_index))
            bank_masks = cues.segments[prop_index]
            valid = (bank_masks >= 128).reshape(len(bank_masks), -1).any(1)
        elif len(cues.bank_boxes) == 0:  # a cache without masks for this image: one invalid row
            M = self.store.mask_size
            bank_boxes, bank_masks = props[:1].copy(), np.zeros((1, M, M), np.uint8)
            valid, to_bank = np.zeros(1, bool), np.zeros(len(props), np.int64)
            frame = None  # already in the augmented frame
        else:
            if self.reproject == "cut":  # the representative's mask stays at its own box
                used, to_bank = np.unique(rows, return_inverse=True)
                frame = cues.bank_boxes[used]
            else:  # one row per proposal: its representative's box-frame mask in ITS OWN box
                used, to_bank = rows, np.arange(len(rows))
                frame = cues.boxes[prop_index].copy()
                if self.reproject == "auto":  # ... unless the representative is a near-duplicate
                    near = cues.coverage[prop_index] >= self.reproject_iou
                    frame[near] = cues.bank_boxes[rows[near]]
            bank_masks = degenerate_to_box(cues.bank_masks[used], cues.bank_status[used],
                                           self.degenerate)
            valid = bank_valid_mask(cues.bank_status[used], self.degenerate)
        if frame is not None:  # original-image boxes -> the augmented frame (crop, scale, flip)
            off = np.array([crop[0], crop[1], crop[0], crop[1]], np.float32)
            bank_boxes = (frame - off) * np.array([sx, sy, sx, sy], np.float32)
            if do_flip:
                bank_boxes = flip_boxes(bank_boxes, nw)
                bank_masks = bank_masks[:, :, ::-1]
        out.update(bank_boxes=bank_boxes.astype(np.float32),
                   bank_masks=np.ascontiguousarray(bank_masks),
                   proposal_to_bank=to_bank.astype(np.int64).reshape(-1), bank_valid=valid)
        return out

    def _place(self, boxes, crop, short_side):
        """Proposals clipped to ``crop`` and scaled to the resized crop; ``keep`` marks the ones
        at least ``min_proposal_size`` px wide and high there."""
        c = self.cfg_input
        cw, ch = int(crop[2] - crop[0]), int(crop[3] - crop[1])
        nh, nw = scaled_size(ch, cw, short_side, c.max_size)
        b = boxes - np.array([crop[0], crop[1], crop[0], crop[1]], np.float32)
        b[:, 0::2] = b[:, 0::2].clip(0, cw)
        b[:, 1::2] = b[:, 1::2].clip(0, ch)
        b *= np.array([nw / cw, nh / ch, nw / cw, nh / ch], np.float32)
        m = c.min_proposal_size
        keep = ((b[:, 2] - b[:, 0]) >= m) & ((b[:, 3] - b[:, 1]) >= m)
        return keep, b, (nh, nw)


class Collate:
    """Stack images into one zero-padded ``float32 [B, 3, H, W]`` tensor (zero = the mean colour
    after normalisation; padded at the bottom/right to a multiple of ``size_divisibility``, so
    boxes keep their coordinates) and keep everything else as per-image lists (numpy)."""

    def __init__(self, size_divisibility: int = 32):
        self.div = max(1, int(size_divisibility))

    def __call__(self, samples: list[dict]) -> dict:
        H = max(s["image"].shape[1] for s in samples)
        W = max(s["image"].shape[2] for s in samples)
        H, W = int(math.ceil(H / self.div) * self.div), int(math.ceil(W / self.div) * self.div)
        images = np.zeros((len(samples), 3, H, W), np.float32)
        for i, s in enumerate(samples):
            images[i, :, :s["image"].shape[1], :s["image"].shape[2]] = s["image"]
        batch = {"images": torch.from_numpy(images),
                 "image_sizes": [tuple(s["image"].shape[1:]) for s in samples],
                 "cue_time": float(sum(s.get("cue_time", 0.0) for s in samples))}
        for key in samples[0]:
            if key not in ("image", "cue_time"):
                batch[key] = [s[key] for s in samples]
        return batch


collate = Collate()


def batch_to_device(batch: dict, device) -> tuple:
    """``(images, proposals, proposal_scores, targets)`` as PDSLNet takes them. Bank masks travel
    as uint8 and become float in [0, 1] on the device. ``targets[i]["online_image"]`` (numpy)
    is added in online cue mode."""
    nb = device.type == "cuda"
    images = batch["images"].to(device, non_blocking=nb)
    proposals = [torch.from_numpy(p).to(device, non_blocking=nb) for p in batch["proposals"]]
    scores = [torch.from_numpy(s).to(device, non_blocking=nb) for s in batch["proposal_scores"]]
    targets = []
    for i in range(len(proposals)):
        t = {"labels": torch.from_numpy(batch["labels"][i]).to(device),
             "bank_masks": torch.from_numpy(batch["bank_masks"][i]).to(device).float() / 255.0,
             "bank_boxes": torch.from_numpy(batch["bank_boxes"][i]).to(device),
             "proposal_to_bank": torch.from_numpy(batch["proposal_to_bank"][i]).to(device),
             "bank_valid": torch.from_numpy(batch["bank_valid"][i]).to(device)}
        if "online_image" in batch:
            t["online_image"] = batch["online_image"][i]
        targets.append(t)
    return images, proposals, scores, targets
