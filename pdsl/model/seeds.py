"""Seed sample acquisition (paper §3.3), done online from the cached GrabCut mask bank.

The paper runs GrabCut on ``n_seed`` seed proposals per present class during training; here the
offline pipeline has cached a mask for every proposal (or for a representative box of each
cluster of near-duplicate proposals, ``proposal_to_bank``), so the trainer only *selects* the
seeds and looks their masks up. Every other proposal takes the mask of the seed it overlaps most,
re-projected from the seed's bank-box frame into its own box frame.

Frames: every box passed to these functions is ``x1y1x2y2`` in pixels of the *same* image (the
resized/augmented image the network sees; the caller maps cached boxes into it). A mask
``[M, M]`` covers exactly its box: pixel ``(i, j)`` spans ``x ∈ [x1 + j·w/M, x1 + (j+1)·w/M]``,
``y`` likewise.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import box_iou


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(msg)


@torch.no_grad()
def select_seeds(last_head_scores: Tensor, proposals: Tensor, labels: Tensor,
                 n_seed: int = 10, pseudo_boxes: Tensor | None = None,
                 candidates: Tensor | None = None) -> Tensor:
    """Seed proposals: for each present class the top-scoring proposal of the last detection
    head, then the ``n_seed`` proposals with the highest IoU to it (the top one included,
    IoU 1); union over classes. With ``pseudo_boxes`` (Tensor[P, C, 4], the last head's regressed
    class-specific boxes, same frame) the IoU is taken to the top proposal's *regressed* box of
    that class instead (the authors' code ranks proposals by IoU to the regressed pseudo box).

    Args:
        last_head_scores (Tensor[P, C]): foreground probabilities of the last refinement head
            (``S^0`` when there is none).
        proposals (Tensor[P, 4]): resized-image frame.
        labels (Tensor[C]): multi-hot image labels.
        candidates (LongTensor[F] or None): the seeds are drawn only from these proposals (the
            foreground proposals, IoU ≥ fg_iou to a top box: the authors' code ranks the
            foreground proposals by IoU to each class's top box, at most ``min(n_seed, F)`` per
            class); None: from all proposals (the paper's text).
    Returns: LongTensor[S] of unique proposal indices, ascending (S ≤ n_seed · #present classes;
    empty when no class is present or no candidate is given).
    """
    _check(last_head_scores.dim() == 2 and proposals.shape == (last_head_scores.shape[0], 4)
           and labels.shape == (last_head_scores.shape[1],),
           f"select_seeds: last_head_scores [P, C], proposals [P, 4], labels [C] expected, got "
           f"{tuple(last_head_scores.shape)}, {tuple(proposals.shape)}, {tuple(labels.shape)}")
    present = torch.nonzero(labels > 0.5).flatten()
    if present.numel() == 0 or proposals.shape[0] == 0:
        return torch.zeros(0, dtype=torch.long, device=proposals.device)
    top = last_head_scores[:, present].argmax(dim=0)                   # [G]
    if candidates is not None:
        return _seeds_among(proposals, top, present, n_seed, pseudo_boxes, candidates)
    if pseudo_boxes is None:
        iou = box_iou(proposals[top], proposals)                       # [G, P]
        iou[torch.arange(top.numel(), device=iou.device), top] = 2.0  # the top box comes first
    else:
        _check(pseudo_boxes.shape == (*last_head_scores.shape, 4),
               f"select_seeds: pseudo_boxes [P, C, 4] expected, got {tuple(pseudo_boxes.shape)}")
        iou = box_iou(pseudo_boxes[top, present].to(proposals.dtype), proposals)   # [G, P]
    k = min(n_seed, proposals.shape[0])
    order = torch.sort(iou, dim=1, descending=True, stable=True).indices[:, :k]
    return torch.unique(order.flatten())


def _seeds_among(proposals, top, present, n_seed, pseudo_boxes, candidates) -> Tensor:
    """:func:`select_seeds` restricted to ``candidates``: for each class the ``min(n_seed, F)``
    candidates with the highest IoU to its top box (the top proposal's regressed box with
    ``pseudo_boxes``, else the top proposal itself), ties to the lower proposal index."""
    if candidates.numel() == 0:
        return candidates.new_zeros(0)
    cand = torch.sort(candidates).values
    ref = proposals[top] if pseudo_boxes is None else pseudo_boxes[top, present].to(proposals.dtype)
    iou = box_iou(ref, proposals[cand])                                # [G, F]
    k = min(n_seed, cand.numel())
    order = torch.sort(iou, dim=1, descending=True, stable=True).indices[:, :k]
    return torch.unique(cand[order.flatten()])


def reproject_masks(src_masks: Tensor, src_boxes: Tensor, dst_boxes: Tensor,
                    out_size: int = 28, src_index: Tensor | None = None) -> Tensor:
    """Resample masks from their own box frame into other boxes' frames.

    Output pixel ``(i, j)`` of destination ``k`` takes the value of source mask ``src_index[k]`` at
    the image point of that pixel's centre, ``x = dx1 + (j + ½)·dw/out_size`` (bilinear). This is
    pasting the source mask into the image (0 outside its box) and cropping it with
    RoIAlign(aligned=True, sampling_ratio=1) — done in one ``grid_sample`` call
    (align_corners=False) without the image-sized paste; the two agree exactly when the mask
    pixels are image pixels (tested). One deliberate difference: within half a mask pixel of the
    source box edge, RoIAlign would blend with the zeros outside; here the mask is extended to
    its box edge (border padding), so a mask that is 1 up to its box edge stays 1 there. Outside
    the source box the value is exactly 0.

    Args:
        src_masks (Tensor[S, M, M]): float in [0, 1], each in the frame of ``src_boxes``.
        src_boxes (Tensor[S, 4]), dst_boxes (Tensor[K, 4]): same image frame.
        src_index (LongTensor[K] or None): source of each destination (None: ``S == K``, pairs).
    Returns: Tensor[K, out_size, out_size], each in its destination box frame.
    """
    _check(src_masks.dim() == 3 and src_boxes.shape == (src_masks.shape[0], 4)
           and dst_boxes.dim() == 2 and dst_boxes.shape[1] == 4,
           f"reproject_masks: src_masks [S, M, M], src_boxes [S, 4], dst_boxes [K, 4] expected, "
           f"got {tuple(src_masks.shape)}, {tuple(src_boxes.shape)}, {tuple(dst_boxes.shape)}")
    K = dst_boxes.shape[0]
    if src_index is None:
        _check(src_masks.shape[0] == K, f"reproject_masks: without src_index S must equal K, got "
                                        f"S={src_masks.shape[0]}, K={K}")
        src_index = torch.arange(K, device=dst_boxes.device)
    _check(src_index.shape == (K,), f"reproject_masks: src_index [K={K}] expected, got "
                                    f"{tuple(src_index.shape)}")
    if K == 0:
        return src_masks.new_zeros(0, out_size, out_size)
    masks = src_masks[src_index].to(torch.float32)[:, None]          # [K, 1, M, M]
    sb = src_boxes[src_index].to(torch.float32)
    db = dst_boxes.to(torch.float32)
    t = (torch.arange(out_size, device=db.device, dtype=torch.float32) + 0.5) / out_size
    xs = db[:, 0:1] + t[None] * (db[:, 2:3] - db[:, 0:1])           # [K, out] image x
    ys = db[:, 1:2] + t[None] * (db[:, 3:4] - db[:, 1:2])
    sw = (sb[:, 2:3] - sb[:, 0:1]).clamp(min=1e-6)
    sh = (sb[:, 3:4] - sb[:, 1:2]).clamp(min=1e-6)
    u = 2 * (xs - sb[:, 0:1]) / sw - 1                                # [-1, 1] = src box
    v = 2 * (ys - sb[:, 1:2]) / sh - 1
    grid = torch.stack([u[:, None, :].expand(K, out_size, out_size),
                        v[:, :, None].expand(K, out_size, out_size)], dim=3)
    out = F.grid_sample(masks, grid, mode="bilinear", padding_mode="border",
                        align_corners=False)[:, 0]
    inside = (u.abs() <= 1)[:, None, :] & (v.abs() <= 1)[:, :, None]
    return out * inside.to(out.dtype)


@torch.no_grad()
def seed_mask_targets(proposals: Tensor, seed_idx: Tensor, bank_masks: Tensor, bank_boxes: Tensor,
                      proposal_to_bank: Tensor, match_iou: float = 0.5,
                      bank_valid: Tensor | None = None, query_idx: Tensor | None = None,
                      out_size: int = 28) -> tuple[Tensor, Tensor]:
    """Pseudo masks ``M̂^0`` for proposals from the seeds' cached masks.

    Each (queried) proposal takes the mask of the seed proposal it overlaps most (box IoU, ties to
    the lower seed index); it is valid when that IoU ≥ ``match_iou`` and the seed's bank mask is
    valid. The seed's mask is the bank mask of its representative box
    (``bank_masks[proposal_to_bank[seed]]``, in the frame of ``bank_boxes[...]``), re-projected
    into the proposal's box frame (:func:`reproject_masks`).

    Args:
        proposals (Tensor[P, 4]), bank_boxes (Tensor[B, 4]): same image frame.
        seed_idx (LongTensor[S]): proposal indices from :func:`select_seeds`.
        bank_masks (Tensor[B, M, M]): float in [0, 1] (uint8 is read as 0..255), bank-box frame.
        proposal_to_bank (LongTensor[P]): bank row of each proposal.
        bank_valid (BoolTensor[B] or None): rows whose mask may be used (None: all).
        query_idx (LongTensor[K] or None): compute targets only for these proposals (None: all).
    Returns: (targets Tensor[K, out_size, out_size] in each proposal's box frame, valid bool [K]).
    """
    P = proposals.shape[0]
    _check(proposals.dim() == 2 and proposals.shape[1] == 4 and proposal_to_bank.shape == (P,)
           and bank_masks.dim() == 3 and bank_boxes.shape == (bank_masks.shape[0], 4),
           f"seed_mask_targets: proposals [P, 4], proposal_to_bank [P], bank_masks [B, M, M], "
           f"bank_boxes [B, 4] expected, got {tuple(proposals.shape)}, "
           f"{tuple(proposal_to_bank.shape)}, {tuple(bank_masks.shape)}, {tuple(bank_boxes.shape)}")
    dev = proposals.device
    query = torch.arange(P, device=dev) if query_idx is None else query_idx
    K = query.numel()
    targets = torch.zeros(K, out_size, out_size, device=dev)
    valid = torch.zeros(K, dtype=torch.bool, device=dev)
    if K == 0 or seed_idx.numel() == 0:
        return targets, valid
    iou = box_iou(proposals[query], proposals[seed_idx])               # [K, S]
    best, s = iou.max(dim=1)
    rows = proposal_to_bank[seed_idx[s]]                               # [K] bank row per query
    valid = best >= match_iou
    if bank_valid is not None:
        valid &= bank_valid[rows]
    if not bool(valid.any()):
        return targets, valid
    masks = bank_masks.float() / 255.0 if bank_masks.dtype == torch.uint8 else bank_masks.float()
    targets[valid] = reproject_masks(masks, bank_boxes, proposals[query][valid],
                                     src_index=rows[valid], out_size=out_size)
    return targets, valid
