"""The CPU RoIAlign of pdsl.model.roi_ops against torchvision's ops, forward and backward
(float64, so that any difference is a different sampling, not rounding), at the edges: boxes beyond
the map, empty and degenerate boxes, images without boxes, both sampling-ratio modes, aligned and
not."""
from __future__ import annotations

import pytest
import torch
from torchvision.ops import roi_align as tv_align

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
