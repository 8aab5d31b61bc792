"""Inference: detections and instance masks for one image (paper §3.2 eq. 4, §4.3 test protocol).

Test-time augmentation runs the network at every scale in ``scales`` (shorter side, px), each
optionally also flipped; the refinement heads' mean scores (eq. 4) and class-specific boxes are
mapped back to the ORIGINAL image frame and averaged over passes, then per-class NMS (``nms``) keeps at
most ``max_det`` detections. Masks of the kept boxes come from the class-specific mask heads
(mean of their logits), averaged over the same passes in each box's frame, and are pasted at image
resolution.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..amp import autocast, effective_amp
from ..boxes import paste_mask
from ..data import flip_boxes, normalize_image
from ..inference_data import inference_view


@dataclass
class TestParams:
    scales: tuple = (480,)  # shorter side(s), px
    flip: bool = False  # also run the mirrored image
    max_size: int = 2000  # cap on the longer side, px
    nms: float = 0.5  # per-class NMS IoU (§4.3: 0.5; config input.test_nms, authors: 0.3)
    score_thresh: float = 1e-4  # drop detections below this score before NMS
    max_det: int = 100  # detections per image
    max_proposals: int = 2000
    pixel_mean: tuple = (0.485, 0.456, 0.406)
    pixel_std: tuple = (0.229, 0.224, 0.225)
    amp: str = "off"  # solver.amp of the run: off | fp16 | bf16 (pdsl/amp.py)

    @classmethod
    def from_config(cls, cfg, tta: bool):
        i = cfg.input
        scales = tuple(i.test_scales) if tta else (int(i.test_scales[len(i.test_scales) // 2]),)
        return cls(scales=scales, flip=bool(i.test_flip) and tta, max_size=i.max_size,
                   nms=float(i.test_nms),
                   max_proposals=i.max_proposals, pixel_mean=tuple(i.pixel_mean),
                   pixel_std=tuple(i.pixel_std), amp=cfg.solver.amp)


def _passes(p: TestParams):
    return [(s, f) for s in p.scales for f in ((False, True) if p.flip else (False,))]


@torch.no_grad()
def predict_image(model, image_bgr: np.ndarray, proposals: np.ndarray, proposal_scores: np.ndarray,
                  p: TestParams, device="cpu", with_masks: bool = True) -> dict:
    """Detections of one image.

    Args:
        image_bgr: ``uint8 [H, W, 3]``.
        proposals: ``float32 [P, 4]`` x1y1x2y2 in original-image pixels; ``proposal_scores [P]``.
    Returns dict (numpy, original-image frame): ``boxes [K, 4]``, ``scores [K]``, ``labels [K]``
    (0-based class index), ``masks bool [K, H, W]`` (if ``with_masks``), ``class_scores [C]``
    (image-level: max over proposals of the averaged detection scores).
    A Mask R-CNN of ``cli.py train-supervised`` ignores the proposals and returns the same keys.
    """
    from torchvision.ops import batched_nms

    if hasattr(model, "predict_full_image"):  # the supervised Mask R-CNN (pdsl/model/maskrcnn.py)
        return model.predict_full_image(image_bgr, p, device, with_masks)
    was_training = model.training
    model.eval()
    amp = effective_amp(p.amp, device)  # fp16 runs in float32 on a CPU
    H, W = image_bgr.shape[:2]
    order = np.argsort(-proposal_scores, kind="stable")[:p.max_proposals]
    props = np.asarray(proposals, np.float32)[order]
    pscores = np.asarray(proposal_scores, np.float32)[order]
    sum_scores, sum_boxes, kept = None, None, []
    for scale, flip in _passes(p):
        img, b, sx, sy = inference_view(image_bgr, props, scale, p.max_size, flip)
        nh, nw = img.shape[:2]
        x = torch.from_numpy(normalize_image(img, p.pixel_mean, p.pixel_std))[None].to(device)
        with autocast(amp, device):
            feats = model.backbone(x)
            det = model.detect(feats, [torch.from_numpy(b).to(device)],
                               [torch.from_numpy(pscores).to(device)], image_size=(nh, nw))[0]
        boxes = det["boxes"].float().cpu().numpy()  # [P, C, 4], this pass's frame
        if flip:
            boxes = flip_boxes(boxes.reshape(-1, 4), nw).reshape(boxes.shape)
        boxes = boxes / np.array([sx, sy, sx, sy], np.float32)
        scores = det["scores"].float().cpu().numpy()
        sum_scores = scores if sum_scores is None else sum_scores + scores
        sum_boxes = boxes if sum_boxes is None else sum_boxes + boxes
        if with_masks:
            kept.append((feats, sx, sy, flip, nw))
    n = len(_passes(p))
    scores, boxes = sum_scores / n, sum_boxes / n  # [P, C], [P, C, 4]
    P, C = scores.shape
    cand = np.nonzero(scores > p.score_thresh)
    cb = torch.from_numpy(boxes[cand[0], cand[1]])
    cs = torch.from_numpy(scores[cand])
    cl = torch.from_numpy(cand[1]).long()
    keep = batched_nms(cb, cs, cl, p.nms)[:p.max_det].numpy()
    out = {"boxes": cb.numpy()[keep].reshape(-1, 4), "scores": cs.numpy()[keep],
           "labels": cl.numpy()[keep], "class_scores": scores.max(0) if P else np.zeros(C)}
    if with_masks:
        with autocast(amp, device):
            out["masks"] = _masks(model, out["boxes"], out["labels"], kept, H, W, device)
    if was_training:
        model.train()
    return out


def _masks(model, boxes, labels, passes, H, W, device):
    K = len(boxes)
    if K == 0:
        return np.zeros((0, H, W), bool)
    acc = None
    lab = torch.from_numpy(labels).long().to(device)
    for feats, sx, sy, flip, nw in passes:
        b = boxes * np.array([sx, sy, sx, sy], np.float32)
        if flip:
            b = flip_boxes(b, nw)
        m = model.predict_masks(feats, [torch.from_numpy(b.astype(np.float32)).to(device)], [lab])
        m = m.float().cpu().numpy()
        if flip:  # a box frame mirrors with its box
            m = m[:, :, ::-1]
        acc = m if acc is None else acc + m
    acc /= len(passes)
    return np.stack([paste_mask(acc[k], boxes[k], H, W) for k in range(K)])
