"""``cues.source: online``: GrabCut inside the training step, the authors' way (paper §3.3).

The cache path (``cues.source: cache``) looks seed masks up in the offline bank; this path is the
reference it is measured against, for mask quality and for speed. Per step:

1. the dataset returns, besides the normalised tensor, the augmented image itself
   (``online_image``, uint8 BGR [H, W, 3], the frame of the proposals) and an empty bank;
2. seeds are picked from the model's last detection head (:func:`pdsl.model.seeds.select_seeds`:
   per present class the top box and the ``n_seed`` proposals overlapping it most);
3. GrabCut runs on each seed box over the WHOLE augmented image resized to a 400-px long side,
   5 iterations (:func:`pdsl.cues.seeds.grabcut_online`), in a pool of ``cues.online_workers``
   processes (:class:`OnlineGrabCut`);
4. the seed masks become the image's bank (``bank_boxes`` = the seed boxes, each mask in its
   box frame; ``proposal_to_bank`` maps every proposal to the seed it overlaps most), and the
   model's usual seed-mask lookup (re-projection into each proposal's frame) does the rest.

Until the model picks the seeds inside its own forward pass (a model that does sets
``handles_online_cues = True`` and reads ``targets[i]["online_image"]``), step 2 is a separate
no-grad pass of the model in eval mode just before the training forward
(:func:`fill_online_targets`): the seeds come from the same weights, without dropout.
"""
from __future__ import annotations

import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from .store import STATUS_EMPTY, STATUS_FULL, STATUS_OK
from ..data import degenerate_to_box

MASK_SIZE = 28  # online masks are M x M in their box frame (the mask head's output size)


def _grabcut_one(small: np.ndarray, box_small: np.ndarray, mask_size: int,
                 iterations: int) -> np.ndarray:
    """GrabCut one box on an image already at the online resolution (worker entry point)."""
    import cv2

    from .grabcut import grabcut_online

    cv2.setNumThreads(1)
    cv2.setRNGSeed(0)  # GrabCut's k-means init draws from OpenCV's RNG: same box, same mask
    return grabcut_online(small, box_small, mask_size=mask_size,
                          long_side=max(small.shape[:2]), iterations=iterations)


def _grabcut_chunk(small, boxes_small, mask_size, iterations):
    return [_grabcut_one(small, b, mask_size, iterations) for b in boxes_small]


def mask_status(masks: np.ndarray, empty_frac: float = 0.02, full_frac: float = 0.98) -> np.ndarray:
    """``uint8 [S]`` STATUS_* of float masks ``[S, M, M]`` in [0, 1] (same rule as the offline
    bank: foreground fraction below ``empty_frac`` → empty, above ``full_frac`` → full)."""
    frac = (masks >= 0.5).reshape(len(masks), -1).mean(1) if len(masks) else np.zeros(0)
    status = np.full(len(masks), STATUS_OK, np.uint8)
    status[frac < empty_frac] = STATUS_EMPTY
    status[frac > full_frac] = STATUS_FULL
    return status


class OnlineGrabCut:
    """A pool of GrabCut workers (``workers`` = 0: run in the calling process).

    Use as a context manager, or call :meth:`close`. Workers are spawned (not forked: the
    training process holds torch threads and possibly CUDA)."""

    def __init__(self, workers: int = 2, long_side: int = 400, iterations: int = 5,
                 mask_size: int = MASK_SIZE):
        self.workers, self.long_side = int(workers), int(long_side)
        self.iterations = int(iterations)
        self.mask_size = int(mask_size)
        self._pool = None

    def _executor(self):
        if self._pool is None and self.workers > 0:
            import multiprocessing

            self._pool = ProcessPoolExecutor(self.workers,
                                             mp_context=multiprocessing.get_context("spawn"))
        return self._pool

    def close(self):
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def __call__(self, images_uint8_list, seed_boxes_list):
        return online_bank(images_uint8_list, seed_boxes_list, self)


def online_bank(images_uint8_list, seed_boxes_list, grabcut: OnlineGrabCut | None = None):
    """GrabCut masks of seed boxes, the authors' online setting.

    Args:
        images_uint8_list: per image ``uint8 [H, W, 3]`` BGR, the augmented image the proposals
            live in.
        seed_boxes_list: per image ``[S_i, 4]`` x1y1x2y2 in that image's pixels (numpy or tensor).
        grabcut: the worker pool and parameters (None: in-process, 400 px, 5 iterations).
    Returns: per image ``(bank_masks float32 [S_i, M, M] in [0, 1], each in its box frame,
    bank_boxes float32 [S_i, 4] = the seed boxes)``.
    """
    import cv2

    g = grabcut or OnlineGrabCut(workers=0)
    M = g.mask_size
    jobs = []  # (image index, future or result)
    pool = g._executor()
    per_task = 4  # boxes per task: amortises sending the small image to a worker
    for i, (img, boxes) in enumerate(zip(images_uint8_list, seed_boxes_list)):
        boxes = np.asarray(boxes.detach().cpu() if hasattr(boxes, "detach") else boxes,
                           np.float32).reshape(-1, 4)
        H, W = img.shape[:2]
        s = g.long_side / max(H, W)
        small = cv2.resize(img, (max(1, round(W * s)), max(1, round(H * s))),
                           interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
        sx, sy = small.shape[1] / W, small.shape[0] / H
        boxes_small = boxes * np.array([sx, sy, sx, sy], np.float32)
        for k in range(0, len(boxes), per_task):
            args = (small, boxes_small[k:k + per_task], M, g.iterations)
            jobs.append((i, pool.submit(_grabcut_chunk, *args) if pool else _grabcut_chunk(*args)))
    masks = [[] for _ in images_uint8_list]
    for i, job in jobs:
        masks[i].extend(job.result() if pool else job)
    out = []
    for i, boxes in enumerate(seed_boxes_list):
        boxes = np.asarray(boxes.detach().cpu() if hasattr(boxes, "detach") else boxes,
                           np.float32).reshape(-1, 4)
        m = (np.stack(masks[i]).astype(np.float32) / 255.0 if masks[i]
             else np.zeros((0, M, M), np.float32))
        out.append((m, boxes))
    return out


def _last_head_scores(model, images, proposals, proposal_scores):
    """Per image ``[P, C]`` foreground probabilities of the model's last detection head (the
    seed selection input, §3.3), from a no-grad pass in eval mode."""
    import torch

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            features = model.backbone(images)
            if hasattr(model, "_heads"):  # PDSLNet: the last refinement head itself (S0 if none)
                s0, refine = model._heads(features, proposals, proposal_scores)
                if refine:
                    return [torch.softmax(r[0], dim=1)[:, 1:] for r in refine[-1]]
                return s0
            return [d["scores"] for d in model.detect(features, proposals, proposal_scores)]
    finally:
        model.train(was_training)


def fill_online_targets(model, images, proposals, proposal_scores, targets, grabcut: OnlineGrabCut,
                        n_seed: int, degenerate: str = "ignore", empty_frac: float = 0.02,
                        full_frac: float = 0.98) -> float:
    """Give every target a bank of online GrabCut masks of the model's current seeds.

    ``targets[i]["online_image"]`` (uint8 BGR, the augmented image) must be set. Fills
    ``bank_masks`` (float [S, M, M]), ``bank_boxes`` ([S, 4] = the seed boxes),
    ``proposal_to_bank`` (each proposal → the seed it overlaps most) and ``bank_valid``.
    Returns the seconds spent in GrabCut.
    """
    import torch
    from torchvision.ops import box_iou

    from ..model.seeds import select_seeds

    net = getattr(model, "module", model)  # DDP wrapper
    last = _last_head_scores(net, images, proposals, proposal_scores)
    seeds = [select_seeds(last[i].float(), proposals[i].float(), t["labels"], n_seed)
             for i, t in enumerate(targets)]
    t0 = time.perf_counter()
    banks = online_bank([t["online_image"] for t in targets],
                        [proposals[i][s] for i, s in enumerate(seeds)], grabcut)
    seconds = time.perf_counter() - t0
    for i, (t, (masks, boxes)) in enumerate(zip(targets, banks)):
        dev, P = proposals[i].device, proposals[i].shape[0]
        if len(boxes) == 0:  # no class present: one invalid row keeps the shapes legal
            masks = np.zeros((1, grabcut.mask_size, grabcut.mask_size), np.float32)
            boxes = proposals[i][:1].detach().cpu().numpy()
            valid = np.zeros(1, bool)
            to_bank = torch.zeros(P, dtype=torch.long, device=dev)
        else:
            status = mask_status(masks, empty_frac, full_frac)
            masks = degenerate_to_box(masks, status, degenerate)
            valid = (np.ones(len(status), bool) if degenerate in ("keep", "box")
                     else ~np.isin(status, (STATUS_EMPTY, STATUS_FULL)))
            to_bank = box_iou(proposals[i].float(), proposals[i][seeds[i]].float()).argmax(1)
        t["bank_masks"] = torch.from_numpy(masks).to(dev)
        t["bank_boxes"] = torch.from_numpy(np.ascontiguousarray(boxes)).to(dev)
        t["bank_valid"] = torch.from_numpy(valid).to(dev)
        t["proposal_to_bank"] = to_bank.to(dev)
    return seconds
