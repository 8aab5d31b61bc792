"""Test-time data: one view of an image (rescaled, optionally mirrored) with its cached
proposals, for inference and evaluation. Frames as in :mod:`pdsl.data`: proposals come in
original-image pixels and are mapped into the view's frame."""
from __future__ import annotations

import numpy as np
import torch

from .data import flip_boxes, normalize_image, scaled_size
from .io import read_image


def inference_view(image: np.ndarray, boxes: np.ndarray, scale: int, max_size: int | None,
              flip: bool = False):
    """One test-time view: ``image`` (uint8 [H, W, 3]) resized so its shorter side is ``scale``
    (longer side capped by ``max_size``), optionally mirrored, and ``boxes`` (float [P, 4],
    original-image pixels, clipped to the image) mapped into that frame.

    Returns ``(image uint8 [h, w, 3], boxes float32 [P, 4], sx, sy)`` with ``sx = w / W``; map
    boxes back with ``flip_boxes(b, w)`` (if flipped) then ``/ [sx, sy, sx, sy]``.
    """
    import cv2

    H, W = image.shape[:2]
    boxes = np.asarray(boxes, np.float32).copy()
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, W)
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, H)
    nh, nw = scaled_size(H, W, scale, max_size)
    sx, sy = nw / W, nh / H
    img = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR)
    boxes = boxes * np.array([sx, sy, sx, sy], np.float32)
    if flip:
        img = np.ascontiguousarray(img[:, ::-1])
        boxes = flip_boxes(boxes, nw)
    return img, boxes, sx, sy


def load_test_image(manifest, cues_store, image_id: int, scale: int, max_size: int | None,
                    pixel_mean, pixel_std, flip: bool = False, max_proposals: int | None = None):
    """One image at test scale ``scale`` (shorter side, capped by ``max_size``), optionally
    flipped, with its proposals in that frame.

    Returns a dict: ``image`` float32 [3, h, w]; ``proposals`` float32 [P, 4] (resized frame);
    ``proposal_scores`` [P]; ``image_id``; ``orig_size`` (H, W); ``scale`` (sx, sy) original →
    resized; ``flipped``. Map boxes back with ``flip_boxes(b, w)`` (if flipped) then ``/ scale``.
    """
    img_info = manifest.image_by_id[int(image_id)]
    image = read_image(manifest.image_path(img_info), image_id)
    H, W = image.shape[:2]
    cues = cues_store.get(int(image_id), with_bank=False)
    order = np.argsort(-cues.scores, kind="stable")[:max_proposals]
    img, boxes, sx, sy = inference_view(image, cues.boxes[order], scale, max_size, flip)
    return dict(image=normalize_image(img, pixel_mean, pixel_std), proposals=boxes,
                proposal_scores=cues.scores[order].astype(np.float32), image_id=int(image_id),
                orig_size=np.array([H, W], np.int64), scale=np.array([sx, sy], np.float32),
                flipped=bool(flip))


class TestDataset(torch.utils.data.Dataset):
    """Every image of a manifest at one test scale (and flip), for inference; see
    :func:`load_test_image`. Images without proposals are listed in ``skipped``."""

    __test__ = False  # not a pytest test class

    def __init__(self, manifest, cues_store, cfg, scale: int, flip: bool = False):
        cues_store.check_manifest(manifest, require_bank=False)
        self.manifest, self.store, self.cfg_input = manifest, cues_store, cfg.input
        self.scale, self.flip = int(scale), bool(flip)
        counts = dict(zip((int(i) for i in cues_store.ids),
                          (int(n) for n in cues_store.index["prop_count"])))
        self.ids = [int(m["id"]) for m in manifest.images if counts.get(int(m["id"]), 0) > 0]
        self.skipped = [int(m["id"]) for m in manifest.images if counts.get(int(m["id"]), 0) == 0]

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, index):
        c = self.cfg_input
        return load_test_image(self.manifest, self.store, self.ids[index], self.scale, c.max_size,
                               c.pixel_mean, c.pixel_std, self.flip, c.max_proposals)
