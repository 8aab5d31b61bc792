"""The CPU RoIAlign of pdsl.model.roi_ops against torchvision's ops, forward and backward
(float64, so that any difference is a different sampling, not rounding), at the edges: boxes beyond
the map, empty and degenerate boxes, images without boxes, both sampling-ratio modes, aligned and
not."""
from __future__ import annotations

import pytest
import torch
from torchvision.ops import roi_align as tv_align
from torchvision.ops import roi_pool as tv_pool

from pdsl.model import roi_ops


def _case(H, W, seed=0, n=9):
    g = torch.Generator().manual_seed(seed)
    f = torch.relu(torch.randn(3, 4, H, W, generator=g, dtype=torch.float64)).requires_grad_()
    boxes = []
    for b in range(3):
        xy = torch.rand(n, 2, generator=g) * torch.tensor([W, H]) * 16 * 0.8 - 8
        wh = torch.rand(n, 2, generator=g) * 16 * 8 + 0.5
        bx = torch.cat([xy, xy + wh], 1).double()
        bx[0] = torch.tensor([-20.0, -20.0, W * 16 + 30.0, H * 16 + 40.0])   # beyond the map
        bx[1] = torch.tensor([5.0, 5.0, 5.0, 5.0])                           # a point
        bx[2] = torch.tensor([W * 16 + 40.0, 3.0, W * 16 + 60.0, 50.0])      # outside
        boxes.append(bx if b != 1 else bx[:0])                                # image 1: none
    return f, boxes


def _both(fa, fb, f):
    a, b = fa(), fb()
    g = torch.randn(a.shape, generator=torch.Generator().manual_seed(1), dtype=a.dtype)
    ga, = torch.autograd.grad(a, f, g)
    gb, = torch.autograd.grad(b, f, g)
    return a, b, ga, gb


@pytest.mark.parametrize("H,W", [(10, 12), (13, 7), (24, 20)])
@pytest.mark.parametrize("sampling_ratio", [0, 2])
@pytest.mark.parametrize("aligned", [True, False])
def test_roi_align_matrix_equals_torchvision(H, W, sampling_ratio, aligned):
    f, boxes = _case(H, W)
    a, b, ga, gb = _both(
        lambda: tv_align(f, boxes, 14, 1 / 16, sampling_ratio=sampling_ratio, aligned=aligned),
        lambda: roi_ops.roi_align_matrix(f, boxes, 14, 1 / 16, sampling_ratio, aligned), f)
    assert a.shape == b.shape and torch.allclose(a, b, atol=1e-12, rtol=0)
    assert torch.allclose(ga, gb, atol=1e-10, rtol=0)


def test_dispatch_keeps_torchvision_for_large_maps_low_precision_and_no_gradient(monkeypatch):
    calls = []
    monkeypatch.setattr(roi_ops, "roi_align_matrix", lambda *a: calls.append("matrix"))
    monkeypatch.setattr(roi_ops, "tv_roi_align", lambda *a, **k: calls.append("torchvision"))
    box = [torch.tensor([[0.0, 0.0, 32.0, 32.0]])]

    def f(*shape, dtype=torch.float32, grad=True):
        return torch.zeros(*shape, dtype=dtype).requires_grad_(grad)

    roi_ops.roi_align(f(1, 2, 8, 8), box, 14, 1 / 16, 0)
    roi_ops.roi_align(f(1, 2, 65, 64), box, 14, 1 / 16, 0)                # > MAX_CELLS
    roi_ops.roi_align(f(1, 2, 8, 8, dtype=torch.float64), box, 14, 1 / 16, 0)
    roi_ops.roi_align(f(1, 2, 8, 8, grad=False), box, 14, 1 / 16, 0)      # forward only
    with torch.autocast("cpu", dtype=torch.bfloat16):
        roi_ops.roi_align(f(1, 2, 8, 8), box, 14, 1 / 16, 0)
    assert calls == ["matrix"] + ["torchvision"] * 4


def _pool_case(seed):
    """Random maps with many ties (rows of zeros, ReLU), boxes beyond and outside the map, boxes
    on half cells (the corners' rounding), images without boxes, three scales."""
    g = torch.Generator().manual_seed(seed)
    H, W = (int(v) for v in torch.randint(3, 30, (2,), generator=g))
    f = torch.relu(torch.randn(3, 5, H, W, generator=g))
    f[:, :, ::3] = 0
    scale = (1 / 8, 1 / 16, 0.3)[seed % 3]
    boxes = []
    for b in range(3):
        n = 0 if b == 1 else int(torch.randint(1, 40, (1,), generator=g))
        xy = torch.rand(n, 2, generator=g) * torch.tensor([W, H]) / scale * 1.1 - 10
        wh = torch.rand(n, 2, generator=g) * torch.tensor([W, H]) / scale * 1.2
        bx = torch.cat([xy, xy + wh], 1)
        half = torch.round(bx * scale * 2) / (2 * scale)
        boxes.append(torch.where(torch.rand(bx.shape, generator=g) < 0.3, half, bx))
    return f, boxes, scale


@pytest.mark.parametrize("seed", range(12))
def test_roi_pool_table_equals_torchvision(seed):
    f, boxes, scale = _pool_case(seed)
    got = roi_ops.roi_pool_table(f, boxes, 7, scale)
    assert got is not None and torch.equal(got, tv_pool(f, boxes, 7, scale))
    s = torch.rand(got.shape[0], generator=torch.Generator().manual_seed(seed)) + 1
    scaled = roi_ops.roi_pool(f, boxes, 7, scale, s)
    assert scaled.is_contiguous() and torch.equal(scaled, tv_pool(f, boxes, 7, scale)
                                                  * s[:, None, None, None])


def test_roi_pool_bins_round_half_away_from_zero():
    # corners at exactly .5 cells round away from zero (C's round), not to even (torch.round)
    (hs, he), (ws, we) = roi_ops.roi_pool_bins(torch.tensor([[4.0, 12.0, 20.0, 44.0]]), 2, 1 / 8,
                                               100, 100)
    # x: round(0.5) = 1 .. round(2.5) = 3: 3 cells, bins of 1.5: [1, 3), [2, 4)
    assert ws.tolist() == [[1, 2]] and we.tolist() == [[3, 4]]
    # y: round(1.5) = 2 .. round(5.5) = 6: 5 cells, bins of 2.5: [2, 5), [4, 7)
    assert hs.tolist() == [[2, 4]] and he.tolist() == [[5, 7]]


@pytest.mark.parametrize("seed", range(8))
def test_roi_pool_table_gradient_equals_torchvision(seed):
    """Each bin's gradient reaches the same cell as in torchvision's backward, also among equal
    maxima (rows of zeros, ReLU): float64, so any difference is a different cell, not rounding."""
    f, boxes, scale = _pool_case(seed)
    f = f.double().requires_grad_()
    boxes = [b.double() for b in boxes]
    a = tv_pool(f, boxes, 7, scale)
    b = roi_ops.roi_pool_table(f, boxes, 7, scale)
    assert torch.equal(a, b) and b.is_contiguous()
    # with a per-RoI factor (BoxHead's score scaling), applied in the same pass
    s = torch.rand(a.shape[0], generator=torch.Generator().manual_seed(seed), dtype=a.dtype) + 1
    g = torch.randn(a.shape, generator=torch.Generator().manual_seed(seed), dtype=a.dtype)
    ga, = torch.autograd.grad(tv_pool(f, boxes, 7, scale) * s[:, None, None, None], f, g)
    gb, = torch.autograd.grad(roi_ops.roi_pool_table(f, boxes, 7, scale, s), f, g)
    assert torch.allclose(ga, gb, atol=1e-12, rtol=0)
    g = torch.randn(a.shape, generator=torch.Generator().manual_seed(seed), dtype=a.dtype)
    ga, = torch.autograd.grad(a, f, g)
    gb, = torch.autograd.grad(b, f, g)
    assert torch.allclose(ga, gb, atol=1e-12, rtol=0)


def test_roi_pool_dispatch(monkeypatch):
    """The table form on CPU float32 (with or without a gradient); torchvision's kernel in float64
    and where the table would be too large."""
    calls = []
    real = roi_ops.roi_pool_table
    monkeypatch.setattr(roi_ops, "roi_pool_table",
                        lambda *a: calls.append("table") or real(*a))
    monkeypatch.setattr(roi_ops, "tv_roi_pool", lambda *a: calls.append("torchvision"))
    box = [torch.tensor([[0.0, 0.0, 32.0, 32.0]])]
    roi_ops.roi_pool(torch.zeros(1, 2, 8, 8), box, 7, 1 / 16)
    roi_ops.roi_pool(torch.zeros(1, 2, 8, 8, requires_grad=True), box, 7, 1 / 16)
    roi_ops.roi_pool(torch.zeros(1, 2, 8, 8, dtype=torch.float64), box, 7, 1 / 16)
    monkeypatch.setattr(roi_ops, "MAX_TABLE", 10)
    roi_ops.roi_pool(torch.zeros(1, 2, 8, 8), box, 7, 1 / 16)
    assert calls == ["table", "table", "torchvision", "table", "torchvision"]
