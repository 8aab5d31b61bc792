"""RoIAlign on the CPU without torchvision's serial backward (same results).

torchvision's CPU ``roi_align`` backward is a serial loop over every RoI, bin and sample (117 ms a
call in the demo's step). RoIAlign's bilinear sampling is separable: for each RoI the pooled map
is ``A_y · V · A_xᵀ`` per channel, where ``A_y [P, H]`` holds, for each output row, the averaged
bilinear weights of its sample rows over the feature rows (``A_x`` likewise for columns), with
torchvision's rules (samples per bin side = ``sampling_ratio`` or ``ceil(bin size)`` when 0; a
sample beyond one pixel outside the map contributes 0 but counts; clamping at the border; the
``aligned`` half-pixel shift). Forward and backward are then dense batched matrix products,
multi-threaded, differentiable by autograd (no gradient to the boxes, as torchvision).

:func:`roi_align` uses this on the CPU in float32 without autocast, when the features need a
gradient (torchvision's forward alone is as fast) and the feature map is small
(``H·W <= MAX_CELLS``: the products cost ``K·C·P·(H·W + P·W)`` multiply-adds against the
sampling's ``K·C·P²·4·s²``), and torchvision's kernel otherwise (CUDA always). Tested against
torchvision's op, forward and backward (``tests/test_roi_ops.py``).
"""
from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import roi_align as tv_roi_align

MAX_CELLS = 4096  # feature-map cells (H·W) up to which the matrix form is used on the CPU


@torch.no_grad()
def _axis_weights(start: Tensor, size: Tensor, n_bins: int, n_cells: int,
                  sampling_ratio: int) -> Tensor:
    """[K, n_bins, n_cells]: the mean bilinear weight of each bin's samples on each cell, along
    one axis (torchvision's ``roi_align`` sampling). ``start``, ``size``: [K] in cells."""
    K = start.shape[0]
    bin_size = size / n_bins                                                # [K]
    if sampling_ratio > 0:
        grid = torch.full((K,), sampling_ratio, dtype=torch.long, device=start.device)
    else:
        grid = torch.ceil(size / n_bins).long()
    G = max(int(grid.max()) if K else 1, 1)
    g = torch.arange(G, device=start.device, dtype=start.dtype)
    p = torch.arange(n_bins, device=start.device, dtype=start.dtype)
    gf = grid.clamp(min=1).to(start.dtype)
    # sample coordinate of bin p, sample g: start + p·bin + (g + ½)·bin / grid     [K, P, G]
    y = (start[:, None, None] + p[None, :, None] * bin_size[:, None, None]
         + (g[None, None, :] + 0.5) * (bin_size / gf)[:, None, None])
    used = (g[None, None, :] < grid[:, None, None]) & (y >= -1.0) & (y <= n_cells)
    y = y.clamp(min=0)
    low = y.floor().long()
    top = low >= n_cells - 1
    low = torch.where(top, torch.full_like(low, n_cells - 1), low)
    high = torch.where(top, low, low + 1)
    y = torch.where(top, low.to(y.dtype), y)
    frac = y - low.to(y.dtype)
    w = used.to(y.dtype) / gf[:, None, None]
    out = torch.zeros(K, n_bins, n_cells, dtype=start.dtype, device=start.device)
    out.scatter_add_(2, low, w * (1 - frac))
    out.scatter_add_(2, high, w * frac)
    return out


def roi_align_matrix(features: Tensor, boxes: list[Tensor], output_size: int,
                     spatial_scale: float, sampling_ratio: int, aligned: bool) -> Tensor:
    """torchvision's ``roi_align(features, boxes, output_size, spatial_scale, sampling_ratio,
    aligned)`` for a list of per-image boxes, as ``A_y · V · A_xᵀ`` (see the module)."""
    B, C, H, W = features.shape
    P = int(output_size)
    outs = []
    for b, bx in enumerate(boxes):
        K = bx.shape[0]
        if K == 0:
            outs.append(features.new_zeros(0, C, P, P))
            continue
        bx = bx.to(features.dtype) * spatial_scale
        off = 0.5 if aligned else 0.0
        x0, y0 = bx[:, 0] - off, bx[:, 1] - off
        w, h = bx[:, 2] - bx[:, 0], bx[:, 3] - bx[:, 1]
        if not aligned:
            w, h = w.clamp(min=1.0), h.clamp(min=1.0)
        ay = _axis_weights(y0, h, P, H, sampling_ratio)                   # [K, P, H]
        ax = _axis_weights(x0, w, P, W, sampling_ratio)                   # [K, P, W]
        v = features[b].permute(1, 0, 2).reshape(H, C * W)                # [H, C·W]
        t = (ay.reshape(K * P, H) @ v).reshape(K, P * C, W)               # rows pooled
        o = torch.bmm(t, ax.transpose(1, 2))                              # [K, P·C, P]
        outs.append(o.reshape(K, P, C, P).permute(0, 2, 1, 3))
    return torch.cat(outs).contiguous()


def _fast_path(features: Tensor) -> bool:
    """The matrix form pays off for the backward (torchvision's forward is as fast): a small
    float32 CPU map that needs a gradient, without autocast."""
    H, W = features.shape[-2:]
    return (features.device.type == "cpu" and features.dtype == torch.float32
            and features.requires_grad and torch.is_grad_enabled()
            and H * W <= MAX_CELLS and not torch.is_autocast_enabled("cpu"))


def roi_align(features: Tensor, boxes: list[Tensor], output_size: int, spatial_scale: float,
              sampling_ratio: int, aligned: bool = True) -> Tensor:
    """RoIAlign of a list of per-image boxes: the matrix form on small float32 CPU feature maps
    (no autocast), torchvision's kernel otherwise."""
    if _fast_path(features):
        return roi_align_matrix(features, boxes, output_size, spatial_scale, sampling_ratio,
                                aligned)
    return tv_roi_align(features, boxes, output_size, spatial_scale,
                        sampling_ratio=sampling_ratio, aligned=aligned)


__all__ = ["MAX_CELLS", "roi_align", "roi_align_matrix"]
