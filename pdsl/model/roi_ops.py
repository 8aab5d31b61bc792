"""RoIAlign and RoIPool on the CPU, faster than torchvision's kernels there, with the same results.

RoIPool (:func:`roi_pool`): see :func:`roi_pool_table`.

RoIAlign:

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
from torchvision.ops import roi_pool as tv_roi_pool

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


# ---------------------------------------------------------------------------------------------
# RoIPool
#: table cells (extents² · B · H · W · C) up to which the table form is used on the CPU
MAX_TABLE = 1 << 24


def _round_half_away(v: Tensor) -> Tensor:
    """C's ``round`` (half away from zero), exactly (in float64), as long."""
    v = v.double()
    r = torch.trunc(v)
    return (r + torch.where((v - r).abs() >= 0.5, torch.sign(v), torch.zeros_like(v))).long()


@torch.no_grad()
def roi_pool_bins(rois: Tensor, output_size: int, spatial_scale: float, height: int,
                  width: int, dtype: torch.dtype = torch.float32):
    """torchvision's RoIPool bins of ``rois`` [K, 4] (float32, x1y1x2y2): (h_start, h_end) [K, P]
    and (w_start, w_end) [K, P], half-open cell ranges clipped to the map, computed in float32
    as its CPU kernel does for float32 maps (rounded box corners, ``floor``/``ceil`` of
    ``p · bin``; in ``dtype``, the map's, as its kernel computes in the map's type)."""
    P = int(output_size)
    corners = _round_half_away(rois.to(dtype) * torch.tensor(spatial_scale, dtype=dtype))
    x1, y1, x2, y2 = corners.unbind(1)
    p = torch.arange(P, dtype=dtype, device=rois.device)

    def axis(start, end, n):
        size = (end - start + 1).clamp(min=1).to(dtype) / torch.tensor(float(P), dtype=dtype)
        lo = torch.floor(p[None] * size[:, None]).long() + start[:, None]
        hi = torch.ceil((p[None] + 1) * size[:, None]).long() + start[:, None]
        return lo.clamp(0, n), hi.clamp(0, n)

    return axis(y1, y2, height), axis(x1, x2, width)


def _extent_table(x: Tensor, eh: int, ew: int, argmax: bool = False):
    """[eh·ew·B·H·W + 1, C]: row ((a·ew + b)·B + i)·H·W + h·W + w is the maximum of image i of
    ``x`` [B, H, W, C] over rows h..h+a and columns w..w+b; the last row is zeros (empty bins).
    Rows of ranges past the map's edge are left unset: no bin reads them. With ``argmax``, also
    the cell (h·W + w, int32) each maximum comes from: the first in row-major order among equal
    maxima, as torchvision's scan (a strict ``>`` over rows, then columns) picks it."""
    B, H, W, C = x.shape
    flat = x.new_empty(eh * ew * B * H * W + 1, C)
    flat[-1] = 0
    table = flat[:-1].view(eh, ew, B, H, W, C)
    table[0, 0] = x
    if argmax:
        iflat = torch.zeros(flat.shape, dtype=torch.int32, device=x.device)
        itab = iflat[:-1].view(eh, ew, B, H, W, C)
        itab[0, 0] = (torch.arange(H * W, dtype=torch.int32, device=x.device)
                      .view(1, H, W, 1).expand(B, H, W, C))
    for a in range(1, eh):  # one more row: the previous extent's maximum with row h + a
        old, new = table[a - 1, 0, :, :H - a], x[:, a:]
        if argmax:  # the later row wins only if larger (ties keep the earlier row)
            itab[a, 0, :, :H - a] = torch.where(new > old, itab[0, 0, :, a:], itab[a - 1, 0, :, :H - a])
        torch.maximum(old, new, out=table[a, 0, :, :H - a])
    for b in range(1, ew):  # one more column: ties take the smaller (row-major) cell
        old, new = table[:, b - 1, :, :, :W - b], table[:, 0, :, :, b:]
        if argmax:
            i_old, i_new = itab[:, b - 1, :, :, :W - b], itab[:, 0, :, :, b:]
            itab[:, b, :, :, :W - b] = torch.where(
                new > old, i_new, torch.where(new == old, torch.minimum(i_old, i_new), i_old))
        torch.maximum(old, new, out=table[:, b, :, :, :W - b])
    return (flat, iflat) if argmax else flat


def _bin_rows(features: Tensor, boxes: list[Tensor], P: int, spatial_scale: float):
    """Each bin's row of the extent table, [K, P, P] (the zero row for empty bins), and the
    table's extents (EH, EW); None where the table would exceed ``MAX_TABLE`` cells."""
    B, C, H, W = features.shape
    rois = torch.cat([b.to(features.dtype) for b in boxes])
    image = torch.repeat_interleave(torch.arange(B, device=rois.device),
                                    torch.tensor([b.shape[0] for b in boxes], device=rois.device))
    (hs, he), (ws, we) = roi_pool_bins(rois, P, spatial_scale, H, W, features.dtype)
    eh, ew = (he - hs).clamp(min=1), (we - ws).clamp(min=1)
    EH, EW = int(eh.max()), int(ew.max())
    if EH * EW * B * H * W * C > MAX_TABLE:
        return None
    row = ((((eh - 1)[:, :, None] * EW + (ew - 1)[:, None, :]) * B + image[:, None, None]) * H
           + hs.clamp(max=H - 1)[:, :, None]) * W + ws.clamp(max=W - 1)[:, None, :]
    empty = (he <= hs)[:, :, None] | (we <= ws)[:, None, :]
    return torch.where(empty, EH * EW * B * H * W, row), EH, EW


def _laid_out(pooled: Tensor, row_scale: Tensor | None) -> Tensor:
    """[K, P·P, C] bins (the gather's order) → [K, C, P, P] contiguous, times ``row_scale`` [K]
    when given: the transpose and the product in one pass."""
    K, PP, C = pooled.shape
    P = int(round(PP ** 0.5))
    out = pooled.new_empty(K, C, PP)
    if row_scale is None:
        out.copy_(pooled.transpose(1, 2))
    else:
        torch.mul(pooled.transpose(1, 2), row_scale.view(-1, 1, 1), out=out)
    return out.view(K, C, P, P)


class _RoIPoolTable(torch.autograd.Function):
    """The table form with a gradient: each bin's gradient goes to its maximum's cell (the cell
    torchvision's backward gives it), summed per table row first, then scattered to the map."""

    @staticmethod
    def forward(ctx, features, row, EH, EW, row_scale):
        B, C, H, W = features.shape
        table, cell = _extent_table(features.detach().permute(0, 2, 3, 1), EH, EW, argmax=True)
        ctx.save_for_backward(row, cell, row_scale)
        ctx.shape = (B, C, H, W)
        K, P = row.shape[0], row.shape[1]
        return _laid_out(table.index_select(0, row.reshape(-1)).view(K, P * P, C), row_scale)

    @staticmethod
    def backward(ctx, grad):
        row, cell, row_scale = ctx.saved_tensors
        B, C, H, W = ctx.shape
        K, P = row.shape[0], row.shape[1]
        used, inv = torch.unique(row.reshape(-1), return_inverse=True)
        g = grad.new_empty(K, P * P, C)  # the bins' gradients in the table's layout (one pass)
        gt = grad.reshape(K, C, P * P).transpose(1, 2)
        if row_scale is not None:
            torch.mul(gt, row_scale.view(-1, 1, 1), out=g)
        else:
            g.copy_(gt)
        per_row = g.new_zeros(used.shape[0], C).index_add_(0, inv, g.view(K * P * P, C))
        keep = used < cell.shape[0] - 1                                   # not the zero row
        used, per_row = used[keep], per_row[keep]
        image = (used // (H * W)) % B
        target = cell.index_select(0, used).long() + (image * H * W)[:, None]
        out = grad.new_zeros(B * H * W, C).scatter_add_(0, target, per_row)
        return out.view(B, H, W, C).permute(0, 3, 1, 2), None, None, None, None


def roi_pool_table(features: Tensor, boxes: list[Tensor], output_size: int,
                   spatial_scale: float, row_scale: Tensor | None = None) -> Tensor | None:
    """torchvision's ``roi_pool(features, boxes, output_size, spatial_scale)`` (times
    ``row_scale`` [K] per RoI when given), contiguous; None where the table would be too large
    (``MAX_TABLE``).

    Every bin is a rectangle of whole feature cells (:func:`roi_pool_bins`) whose height and width
    are at most a few cells. The maxima of every rectangle of each height and width that occurs
    are tabulated once per batch (:func:`_extent_table`, channels last) and each bin reads its
    row: one gather instead of torchvision's serial scan of every bin's cells for every RoI and
    channel. Maxima are exact, so the values equal torchvision's; empty bins are 0 as there.
    The gather's channels-last rows are laid out and scaled in one pass. With a gradient
    (:class:`_RoIPoolTable`), each bin's gradient reaches the cell of its maximum, the first in
    row-major order among equal ones, as in torchvision's backward."""
    B, C, H, W = features.shape
    P = int(output_size)
    if sum(b.shape[0] for b in boxes) == 0:
        return features.new_zeros(0, C, P, P) * features.sum()  # in the graph when it needs one
    bins = _bin_rows(features, boxes, P, spatial_scale)
    if bins is None:
        return None
    row, EH, EW = bins
    if features.requires_grad and torch.is_grad_enabled():
        return _RoIPoolTable.apply(features, row, EH, EW,
                                   None if row_scale is None else row_scale.detach())
    table = _extent_table(features.detach().permute(0, 2, 3, 1), EH, EW)
    return _laid_out(table.index_select(0, row.reshape(-1)).view(row.shape[0], P * P, C),
                     row_scale)


def roi_pool(features: Tensor, boxes: list[Tensor], output_size: int, spatial_scale: float,
             row_scale: Tensor | None = None) -> Tensor:
    """RoIPool of a list of per-image boxes, times ``row_scale`` [ΣK] per RoI when given (no
    gradient to it): the table form (:func:`roi_pool_table`) on CPU float32 features,
    torchvision's kernel otherwise (CUDA, other dtypes, maps too large)."""
    if features.device.type == "cpu" and features.dtype == torch.float32:
        out = roi_pool_table(features, boxes, output_size, spatial_scale, row_scale)
        if out is not None:
            return out
    out = tv_roi_pool(features, boxes, output_size, spatial_scale)
    return out if row_scale is None else out * row_scale.detach().view(-1, 1, 1, 1)


__all__ = ["MAX_CELLS", "MAX_TABLE", "roi_align", "roi_align_matrix", "roi_pool",
           "roi_pool_bins", "roi_pool_table"]
