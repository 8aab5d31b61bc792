"""Box parametrisation of the refinement heads: Fast R-CNN deltas (dx, dy, dw, dh) between
proposals and target boxes, both x1y1x2y2 in the same frame. Used by the refinement loss (eq. 3)
and by inference (eq. 4)."""
from __future__ import annotations

import math

import torch
from torch import Tensor

# Fast R-CNN box-delta weights (wx, wy, ww, wh) [64]; detectron2/torchvision use the same.
BOX_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
# Largest log-scale change decode_box_deltas applies (torchvision's bbox_xform_clip).
_DELTA_CLAMP = math.log(1000.0 / 16)


def encode_box_deltas(proposals: Tensor, targets: Tensor, weights=BOX_WEIGHTS) -> Tensor:
    """Fast R-CNN regression targets ``[N, 4]`` (dx, dy, dw, dh) that move ``proposals [N, 4]``
    onto ``targets [N, 4]``; both x1y1x2y2 in the same frame (resized image)."""
    wx, wy, ww, wh = weights
    pw = (proposals[:, 2] - proposals[:, 0]).clamp(min=1e-3)
    ph = (proposals[:, 3] - proposals[:, 1]).clamp(min=1e-3)
    px = proposals[:, 0] + 0.5 * pw
    py = proposals[:, 1] + 0.5 * ph
    gw = (targets[:, 2] - targets[:, 0]).clamp(min=1e-3)
    gh = (targets[:, 3] - targets[:, 1]).clamp(min=1e-3)
    gx = targets[:, 0] + 0.5 * gw
    gy = targets[:, 1] + 0.5 * gh
    return torch.stack([wx * (gx - px) / pw, wy * (gy - py) / ph,
                        ww * torch.log(gw / pw), wh * torch.log(gh / ph)], dim=1)


def decode_box_deltas(deltas: Tensor, proposals: Tensor, weights=BOX_WEIGHTS) -> Tensor:
    """Inverse of :func:`encode_box_deltas`. ``deltas [N, K*4]`` (K boxes per proposal, e.g. one
    per class), ``proposals [N, 4]`` → boxes ``[N, K, 4]`` x1y1x2y2 in the proposals' frame."""
    n = deltas.shape[0]
    d = deltas.reshape(n, -1, 4)
    wx, wy, ww, wh = weights
    pw = (proposals[:, 2] - proposals[:, 0])[:, None]
    ph = (proposals[:, 3] - proposals[:, 1])[:, None]
    px = proposals[:, 0][:, None] + 0.5 * pw
    py = proposals[:, 1][:, None] + 0.5 * ph
    cx = d[..., 0] / wx * pw + px
    cy = d[..., 1] / wy * ph + py
    w = torch.exp((d[..., 2] / ww).clamp(max=_DELTA_CLAMP)) * pw
    h = torch.exp((d[..., 3] / wh).clamp(max=_DELTA_CLAMP)) * ph
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=2)
