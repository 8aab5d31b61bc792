"""GrabCut for every proposal of an image at once: one seed mask per proposal, batched in torch.

``cv2.grabCut`` costs ~2 ms per box on a 64-px crop, most of it per-call work (k-means, the graph,
the max-flow) on a few thousand pixels; one mask for each of 2,000 proposals that way is ~4
core-s per image. :func:`batched_grabcut` runs GrabCut's model for all boxes of an image as a few
large tensor operations (``method: grabcut_batched``, :func:`.seeds.batched_seed_masks`):

1. every box with a ``margin`` on each side is resampled to a square grid, the box itself to
   ``box_px`` x ``box_px`` (bilinear, from the ``cv2.pyrDown`` level where the grid step is 1-2
   pixels, so large boxes are averaged rather than aliased); grid samples outside the image are
   marked invalid;
2. the initial labels are :func:`.grabcut.grabcut_masked`'s, the same for every box in this frame:
   outside the box sure background, inside it probable background, the inscribed ellipse probable
   foreground, its central ``core`` ellipse sure foreground;
3. per box, a foreground and a background Gaussian mixture of ``components`` full-covariance
   colour components (initialised from equal luminance bins, then GrabCut's step: each pixel
   takes its label's likeliest component and the mixtures are re-fitted), all boxes' log-
   densities evaluated by one batched matrix product on quadratic colour features; a pixel's
   log-likelihood under a mixture is that of its likeliest component;
4. GrabCut's energy (those log-likelihoods plus ``gamma`` times the contrast-sensitive
   8-neighbour Potts term, beta from each crop's mean squared neighbour difference) is minimised
   by ``mean_field`` damped mean-field sweeps instead of a max-flow; ``iterations`` rounds of
   3-4, as GrabCut's iterations.

Each box's mask depends on that box alone (not on the others in its batch). On coco-real
train2017 (the matched proposal of each GT instance, one mask each) it scores within 0.003 IoU of
``cv2.grabCut``'s mask-initialised pass on a 64-px crop, at about a quarter of the time
(pipeline/results/README.md, "Seed masks on real photos").
"""
from __future__ import annotations

import numpy as np

_CHUNK = 256  # boxes per tensor batch (~70 MB of tensors at the default 42-px grid)


def _pyramid(image: np.ndarray, top_step: float) -> list:
    """``image`` and its ``cv2.pyrDown`` halvings, as float32, down to a grid step of 1-2 pixels
    for the coarsest crop (``top_step``: its largest step in original pixels)."""
    import cv2

    out = [image.astype(np.float32)]
    while 2 ** len(out) <= top_step and min(out[-1].shape[:2]) >= 16:
        out.append(cv2.pyrDown(out[-1]))
    return out


def _extract(pyr: list, regions: np.ndarray, crop: int):
    """``float32 [N, 3, crop, crop]`` bilinear samples of each region (x1y1x2y2, original pixels:
    sample (i, j) at ``x = x1 + (j + .5) w / crop``) from the pyramid level where the grid step
    is 1-2 pixels, and the validity ``bool [N, crop, crop]`` of each sample (inside the image)."""
    import cv2
    import torch

    N = len(regions)
    H, W = pyr[0].shape[:2]
    rw = np.maximum(regions[:, 2] - regions[:, 0], 1e-3)
    rh = np.maximum(regions[:, 3] - regions[:, 1], 1e-3)
    level = np.clip(np.floor(np.log2(np.maximum(np.maximum(rw, rh) / crop, 1.0))), 0,
                    len(pyr) - 1).astype(int)
    out = np.empty((N, crop, crop, 3), np.float32)
    for k in range(N):
        s = 0.5 ** level[k]
        sx, sy = rw[k] / crop * s, rh[k] / crop * s
        # output pixel centre -> level pixel centre (pyrDown: level pixel c covers 2c .. 2c + 2)
        A = np.array([[sx, 0, regions[k, 0] * s + 0.5 * sx - 0.5],
                      [0, sy, regions[k, 1] * s + 0.5 * sy - 0.5]], np.float32)
        cv2.warpAffine(pyr[level[k]], A, (crop, crop), dst=out[k],
                       flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                       borderMode=cv2.BORDER_REPLICATE)
    t = (np.arange(crop) + 0.5) / crop
    xs = regions[:, 0:1] + t[None] * rw[:, None]
    ys = regions[:, 1:2] + t[None] * rh[:, None]
    vx = torch.from_numpy((xs >= 0) & (xs <= W))
    vy = torch.from_numpy((ys >= 0) & (ys <= H))
    return torch.from_numpy(out).permute(0, 3, 1, 2), vy[:, :, None] & vx[:, None, :]


def _frame_labels(crop: int, margin: float, core: float):
    """The initial labels in the crop frame: (box bool, ellipse bool, core bool) ``[crop, crop]``
    and the box's pixel slice."""
    b = crop / (1 + 2 * margin)
    a0 = (crop - b) / 2
    c = (np.arange(crop) + 0.5 - crop / 2) / (b / 2)
    d = c[None, :] ** 2 + c[:, None] ** 2
    inbox = (np.abs(c)[None, :] <= 1) & (np.abs(c)[:, None] <= 1)
    return inbox, d <= 1.0, d <= core ** 2, (a0, a0 + b)


def _features(x):
    """Quadratic colour features ``[N, n, 10]`` of colours ``x [N, n, 3]``."""
    import torch

    r, g, b = x.unbind(-1)
    return torch.stack([r * r, g * g, b * b, r * g, r * b, g * b, r, g, b, torch.ones_like(r)], -1)


def _fit(phi, lab, K: int, reg: float):
    """The two Gaussian mixtures of every crop as weights ``[N, 10, 2K]`` (log-density of
    component k = ``phi @ W[:, :, k]``): components ``0..K-1`` the foreground's, ``K..2K-1`` the
    background's, each pixel in component ``lab`` (``long [N, n]``; ``2K``: in neither)."""
    import torch

    N = phi.shape[0]
    st = torch.zeros(N, 2 * K + 1, 10).scatter_add_(1, lab[..., None].expand(-1, -1, 10), phi)
    st = st[:, :2 * K]  # moments, sums and counts of each component
    n = st[..., 9].clamp(min=1e-6)
    mu = st[..., 6:9] / n[..., None]
    m2 = st[..., 0:6] / n[..., None]
    c = [m2[..., k] - mu[..., i] * mu[..., j]
         for k, (i, j) in enumerate(((0, 0), (1, 1), (2, 2), (0, 1), (0, 2), (1, 2)))]
    a, b, d = c[0] + reg, c[1] + reg, c[2] + reg
    e, f, g = c[3], c[4], c[5]  # [[a e f] [e b g] [f g d]]
    # the inverse of the symmetric 3x3 covariance by cofactors (all components at once)
    i00, i11, i22 = b * d - g * g, a * d - f * f, a * b - e * e
    i01, i02, i12 = f * g - e * d, e * g - f * b, e * f - a * g
    det = (a * i00 + e * i01 + f * i02).clamp(min=1e-6)
    A = torch.stack([i00, i11, i22, i01, i02, i12], -1) / det[..., None]
    Am = torch.stack([A[..., 0] * mu[..., 0] + A[..., 3] * mu[..., 1] + A[..., 4] * mu[..., 2],
                      A[..., 3] * mu[..., 0] + A[..., 1] * mu[..., 1] + A[..., 5] * mu[..., 2],
                      A[..., 4] * mu[..., 0] + A[..., 5] * mu[..., 1] + A[..., 2] * mu[..., 2]], -1)
    tot = torch.cat([n[:, :K].sum(1, keepdim=True).expand(-1, K),
                     n[:, K:].sum(1, keepdim=True).expand(-1, K)], 1)
    logw = torch.where(st[..., 9] > 0.5, torch.log(n / tot), torch.full_like(n, -1e4))
    W = torch.cat([A[..., :3], 2 * A[..., 3:], -2 * Am, (mu * Am).sum(-1, keepdim=True)], -1) * -0.5
    W[..., 9] += logw - 0.5 * torch.log(det) - 1.5 * np.log(2 * np.pi)
    return W.transpose(1, 2)


def _init_labels(x, member, K: int):
    """Initial component of every pixel (``long [N, n]``): ``K`` equal luminance bins between the
    darkest and brightest ``member`` pixel of its crop (GrabCut runs k-means; its first
    assign-and-refit step below does as well as k-means steps here on coco-real train2017)."""
    import torch

    lum = x.sum(-1)
    big = torch.finfo(lum.dtype).max / 4
    lo = torch.where(member, lum, torch.full_like(lum, big)).amin(1, keepdim=True)
    hi = torch.where(member, lum, torch.full_like(lum, -big)).amax(1, keepdim=True)
    lab = ((lum - lo) / (hi - lo).clamp(min=1e-6) * K).long().clamp(0, K - 1)
    return lab


_DIRS = (((slice(None), slice(None, -1)), (slice(None), slice(1, None)), 1.0),
         ((slice(None, -1), slice(None)), (slice(1, None), slice(None)), 1.0),
         ((slice(None, -1), slice(None, -1)), (slice(1, None), slice(1, None)), 2 ** -0.5),
         ((slice(None, -1), slice(1, None)), (slice(1, None), slice(None, -1)), 2 ** -0.5))


def _pairwise(img, valid, gamma: float):
    """Contrast-sensitive Potts weights ``gamma exp(-beta |z_i - z_j|^2) / dist`` of the four
    forward neighbour directions (``[(slice_i, slice_j, w [N, ...])]``), beta per crop from the
    mean squared difference of its valid neighbour pairs (GrabCut's)."""
    import torch

    diffs, tot, cnt = [], 0.0, 0.0
    for a, b, _ in _DIRS:
        d = ((img[(Ellipsis, *a)] - img[(Ellipsis, *b)]) ** 2).sum(1)
        ok = (valid[(Ellipsis, *a)] & valid[(Ellipsis, *b)]).float()
        diffs.append(d)
        tot = tot + (d * ok).sum((1, 2))
        cnt = cnt + ok.sum((1, 2))
    beta = 1.0 / (2 * tot / cnt.clamp(min=1)).clamp(min=1e-6)
    return [(a, b, gamma * dist * torch.exp(-beta[:, None, None] * d))
            for (a, b, dist), d in zip(_DIRS, diffs)]


def _neighbour_sum(s, pw):
    """``sum_j w_ij s_j`` over the 8-neighbourhood, for ``s [N, S, S]``."""
    import torch

    acc = torch.zeros_like(s)
    for a, b, w in pw:
        acc[(Ellipsis, *a)] += w * s[(Ellipsis, *b)]
        acc[(Ellipsis, *b)] += w * s[(Ellipsis, *a)]
    return acc


def _segment(img, valid, inbox, ell, core, K: int, iterations: int, gamma: float,
             mean_field: int, reg: float):
    """Foreground probability ``[N, S, S]`` minimising GrabCut's energy in every crop."""
    import torch

    N, _, S, _ = img.shape
    x = img.flatten(2).transpose(1, 2)  # [N, n, 3]
    x = x - x.mean(1, keepdim=True)  # centred: smaller terms in the quadratic form
    phi = _features(x)
    inbox_f = torch.from_numpy(inbox.reshape(-1))
    lock_fg = torch.from_numpy(core & inbox)
    lock_bg = torch.from_numpy(~inbox)
    out_bg = valid.reshape(N, -1) & ~inbox_f
    fg = torch.from_numpy((ell & inbox).reshape(-1)).expand(N, -1)
    bg = out_bg | (inbox_f & ~fg)
    pw = _pairwise(img, valid, gamma)
    none = torch.full_like(inbox_f.expand(N, -1), 2 * K, dtype=torch.long)

    def labels(f_comp, b_comp):  # fg pixels in 0..K-1, bg pixels in K..2K-1, others 2K
        return torch.where(fg, f_comp, torch.where(bg, K + b_comp, none))

    W = _fit(phi, labels(_init_labels(x, fg, K), _init_labels(x, bg, K)), K, reg)
    q = None
    for _ in range(iterations):
        # GrabCut's iteration: each pixel takes the likeliest component of its label's mixture,
        # the mixtures are re-fitted, then the labels re-estimated
        L = phi @ W
        W = _fit(phi, labels(L[..., :K].argmax(-1), L[..., K:].argmax(-1)), K, reg)
        L = phi @ W
        # each mixture's log-density by its likeliest component (GrabCut sums them)
        u = (L[..., :K].amax(-1) - L[..., K:].amax(-1)).reshape(N, S, S).clamp(-30, 30)
        q = torch.sigmoid(u)
        for _ in range(mean_field):
            q = torch.where(lock_fg, 1.0, torch.where(lock_bg, 0.0, q))
            q = 0.5 * q + 0.5 * torch.sigmoid(u + _neighbour_sum(2 * q - 1, pw))
        q = torch.where(lock_fg, 1.0, torch.where(lock_bg, 0.0, q))
        fg = (q >= 0.5).reshape(N, -1)
        bg = out_bg | (inbox_f & ~fg)
    return q


def batched_grabcut(image: np.ndarray, boxes: np.ndarray, M: int = 28, box_px: int = 28,
                    margin: float = 0.25, core: float = 0.7, components: int = 5,
                    iterations: int = 1, gamma: float = 50.0, mean_field: int = 5,
                    reg: float = 1.0, chunk: int = _CHUNK) -> np.ndarray:
    """Foreground masks ``float32 [N, M, M]`` in [0, 1] (each in its box's frame, see
    ``pdsl.cues.cueformat``) of every box (x1y1x2y2, original pixels) of the BGR ``image``."""
    import torch
    import torch.nn.functional as F

    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    N = len(boxes)
    out = np.zeros((N, M, M), np.float32)
    if N == 0:
        return out
    pad = int(round(margin * box_px))
    crop, margin = box_px + 2 * pad, pad / box_px
    inbox, ell, cor, (a0, a1) = _frame_labels(crop, margin, core)
    wh = np.stack([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], 1)
    regions = np.concatenate([boxes[:, :2] - margin * wh, boxes[:, 2:] + margin * wh], 1)
    step = np.maximum(wh[:, 0], wh[:, 1]) * (1 + 2 * margin) / crop
    pyr = _pyramid(image, float(step.max()))
    with torch.no_grad():
        for s in range(0, N, chunk):
            img, valid = _extract(pyr, regions[s:s + chunk], crop)
            q = _segment(img, valid, inbox, ell, cor, components, iterations, gamma, mean_field,
                         reg)
            i0, i1 = int(round(a0)), int(round(a1))
            box = (q[:, i0:i1, i0:i1] >= 0.5).float()[:, None]
            if box.shape[-1] != M:
                box = F.interpolate(box, size=(M, M), mode="area")
            out[s:s + chunk] = box[:, 0].numpy()
    return out
