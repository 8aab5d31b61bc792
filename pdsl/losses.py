"""The losses of PDSL (paper §3, eq. 1–8), one plain function per term.

Every function takes already-matched targets and returns a scalar (or the targets themselves for
``oicr_pseudo_labels``). Conventions used throughout:

* ``C`` foreground classes; class targets ``t_p`` are in ``0..C`` with ``0`` = background,
  so foreground class ``c`` (0-based column ``c`` of a ``[P, C]`` score matrix) is ``t_p = c + 1``.
* Boxes are ``x1y1x2y2`` in pixels of the resized image the network sees (one frame for all boxes
  of a call); masks ``[M, M]`` live in the frame of their own box.
* An image with nothing to learn from (no present class, no foreground proposal, no valid mask
  target) gives ``logits.sum() * 0``: exactly zero, but still attached to the graph so that
  backward works and every parameter receives a (zero) gradient (DDP needs that).

Normalisation (the paper writes plain sums; sums over 2,000 proposals and 784 pixels would make the
loss scale depend on the proposal count and the mask size, so we average, as the authors' code
(detectron2/OICR style) does):

* eq. 2: summed over classes (as written).
* eq. 3: weighted CE and weighted smooth-L1 are both divided by the number of proposals ``P``.
* eq. 5: BCE averaged over the ``M×M`` pixels of a mask, then over the proposals that take part.
* eq. 8: mean over the proposals that take part (as written, with ``n^p`` = those proposals).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import box_iou

# Fast R-CNN box-delta weights (wx, wy, ww, wh) [64]; detectron2/torchvision use the same.
BOX_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
# Largest log-scale change decode_box_deltas applies (torchvision's bbox_xform_clip).
_DELTA_CLAMP = math.log(1000.0 / 16)


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(msg)


# ----------------------------------------------------------------------------------------------
# Box parametrisation of the refinement heads (Fast R-CNN deltas).
# ----------------------------------------------------------------------------------------------
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


# ----------------------------------------------------------------------------------------------
# Object detection branch (§3.2)
# ----------------------------------------------------------------------------------------------
def wsddn_mil_loss(image_scores: Tensor, labels: Tensor, eps: float = 1e-6) -> Tensor:
    """Multi-label cross-entropy of WSDDN, eq. 2: ``-Σ_c t_c log y_c + (1-t_c) log(1-y_c)``.

    Args:
        image_scores (Tensor[C]): ``y_c = Σ_p S0_pc``, image-level class scores (may exceed 1 by
            rounding; clamped to ``[eps, 1-eps]``).
        labels (Tensor[C]): multi-hot image labels ``t`` (0/1, float).

    Returns: scalar, summed over classes (as in eq. 2). An image without any present class is a
    legitimate negative for every class, so its loss is *not* zero.
    """
    _check(image_scores.dim() == 1 and image_scores.shape == labels.shape,
           f"wsddn_mil_loss: image_scores [C] and labels [C] expected, got "
           f"{tuple(image_scores.shape)} and {tuple(labels.shape)}")
    y = image_scores.float().clamp(eps, 1.0 - eps)  # float32: 1 - 1e-6 is 1.0 in bf16/fp16
    t = labels.to(y.dtype)
    return -(t * torch.log(y) + (1 - t) * torch.log(1 - y)).sum()


@torch.no_grad()
def oicr_pseudo_labels(prev_scores: Tensor, proposals: Tensor, labels: Tensor,
                       fg_iou: float = 0.5, bg_iou: float = 0.0):
    """Pseudo ground truth for one refinement head (OICR [35], the targets of eq. 3).

    For every present class ``c`` (``labels[c] > 0.5``) the proposal with the highest score of the
    previous head is that class's pseudo box. Every proposal is matched to the pseudo box it
    overlaps most: IoU ≥ ``fg_iou`` → class ``c + 1``; otherwise background (0). OICR treats every
    proposal below ``fg_iou`` as background; ``bg_iou > 0`` instead ignores (weight 0) proposals
    whose IoU is below ``bg_iou`` (PCL-style); the default 0 is OICR.

    Args:
        prev_scores (Tensor[P, C]): foreground class probabilities of the previous head (``S^0``
            for the first head, the softmax without the background column after). Detached here.
        proposals (Tensor[P, 4]): x1y1x2y2, pixels of the resized image.
        labels (Tensor[C]): multi-hot image labels.

    Returns:
        cls_targets (LongTensor[P]): ``t_p`` in ``0..C``, 0 = background.
        weights (Tensor[P]): the previous head's score of the matched pseudo box (OICR's loss
            weight; the paper's eq. 3 writes ``y_{t_p}``, the authors' code and OICR use this).
        reg_targets (Tensor[P, 4]): Fast R-CNN deltas (weights 10,10,5,5) from each proposal to its
            matched pseudo box; only rows with ``cls_targets ≥ 1`` are meaningful.
        matched (LongTensor[P]): proposal index of the matched pseudo box (-1 if the image has no
            present class).
    With no present class: all background, weights 0 (the loss is then exactly 0).
    """
    _check(prev_scores.dim() == 2 and proposals.shape == (prev_scores.shape[0], 4)
           and labels.shape == (prev_scores.shape[1],),
           f"oicr_pseudo_labels: prev_scores [P, C], proposals [P, 4], labels [C] expected, got "
           f"{tuple(prev_scores.shape)}, {tuple(proposals.shape)}, {tuple(labels.shape)}")
    P = prev_scores.shape[0]
    dev = prev_scores.device
    prev_scores = prev_scores.detach()
    present = torch.nonzero(labels > 0.5).flatten()
    cls_targets = torch.zeros(P, dtype=torch.long, device=dev)
    weights = torch.zeros(P, dtype=prev_scores.dtype, device=dev)
    reg_targets = torch.zeros(P, 4, dtype=proposals.dtype, device=dev)
    matched = torch.full((P,), -1, dtype=torch.long, device=dev)
    if present.numel() == 0 or P == 0:
        return cls_targets, weights, reg_targets, matched
    top = prev_scores[:, present].argmax(dim=0)               # [G] proposal index per class
    top_scores = prev_scores[top, present]                    # [G]
    iou = box_iou(proposals, proposals[top])                  # [P, G]
    best_iou, g = iou.max(dim=1)                              # first pseudo box on ties
    fg = best_iou >= fg_iou
    cls_targets[fg] = present[g[fg]] + 1
    weights = top_scores[g].clone()
    if bg_iou > 0:
        weights[best_iou < bg_iou] = 0
    matched = top[g]
    reg_targets = encode_box_deltas(proposals, proposals[matched])
    reg_targets[~fg] = 0
    return cls_targets, weights, reg_targets, matched


def refinement_loss(cls_logits: Tensor, box_deltas: Tensor, cls_targets: Tensor,
                    weights: Tensor, reg_targets: Tensor, beta: float = 1.0) -> Tensor:
    """Loss of one detection refinement head, eq. 3.

    ``(1/P) Σ_p w_p CE(S_p, t_p) + (1/P) Σ_{p: t_p ≥ 1} w_p smoothL1(B_{p,t_p}, B̂_p)``
    (smooth-L1 summed over the 4 coordinates, ``beta`` = 1 as in Fast R-CNN [64]).

    Args:
        cls_logits (Tensor[P, C+1]): column 0 = background.
        box_deltas (Tensor[P, C, 4] or Tensor[P, C*4] or Tensor[P, (C+1)*4]): class-specific
            deltas (a background slot, if present, is skipped).
        cls_targets (LongTensor[P]), weights (Tensor[P]), reg_targets (Tensor[P, 4]): from
            :func:`oicr_pseudo_labels`.
    Returns: scalar; exactly 0 when every weight is 0 (no present class).
    """
    P, C1 = cls_logits.shape if cls_logits.dim() == 2 else (-1, -1)
    _check(cls_logits.dim() == 2 and cls_targets.shape == (P,) and weights.shape == (P,)
           and reg_targets.shape == (P, 4) and box_deltas.shape[0] == P,
           f"refinement_loss: cls_logits [P, C+1], cls_targets [P], weights [P], reg_targets [P, 4]"
           f" expected, got {tuple(cls_logits.shape)}, {tuple(cls_targets.shape)}, "
           f"{tuple(weights.shape)}, {tuple(reg_targets.shape)}")
    C = C1 - 1
    deltas = box_deltas.reshape(P, -1, 4)
    _check(deltas.shape[1] in (C, C + 1),
           f"refinement_loss: box_deltas must hold C={C} or C+1 boxes per proposal, got "
           f"{tuple(box_deltas.shape)}")
    if deltas.shape[1] == C + 1:
        deltas = deltas[:, 1:]
    if P == 0 or not bool((weights > 0).any()):
        # Nothing to learn from (no present class, or no proposal): zero, but keep the graph.
        return cls_logits.sum() * 0 + box_deltas.sum() * 0
    w = weights.detach()
    ce = F.cross_entropy(cls_logits, cls_targets, reduction="none")
    loss = (w * ce).sum() / P
    fg = torch.nonzero(cls_targets > 0).flatten()
    if fg.numel() > 0:
        pred = deltas[fg, cls_targets[fg] - 1]                    # [F, 4]
        l1 = F.smooth_l1_loss(pred, reg_targets[fg], beta=beta, reduction="none").sum(dim=1)
        loss = loss + (w[fg] * l1).sum() / P
    else:
        loss = loss + box_deltas.sum() * 0
    return loss


# ----------------------------------------------------------------------------------------------
# Image segmentation branch (§3.3)
# ----------------------------------------------------------------------------------------------
def class_agnostic_mask_loss(logits: Tensor, targets: Tensor, valid: Tensor) -> Tensor:
    """First term of eq. 5: BCE of the class-agnostic mask ``M^0`` against the cached GrabCut
    pseudo masks ``M̂^0``.

    Args:
        logits (Tensor[K, M, M]): class-agnostic mask logits, each in its proposal's box frame.
        targets (Tensor[K, M, M]): soft targets in [0, 1], same frame.
        valid (BoolTensor[K]): proposals with a target (matched to a seed with a valid mask).
    Returns: mean over pixels, then over valid proposals; exactly 0 when none is valid.
    """
    _check(logits.dim() == 3 and targets.shape == logits.shape
           and valid.shape == (logits.shape[0],) and valid.dtype == torch.bool,
           f"class_agnostic_mask_loss: logits [K, M, M], targets [K, M, M], valid bool [K] "
           f"expected, got {tuple(logits.shape)}, {tuple(targets.shape)}, "
           f"{tuple(valid.shape)} {valid.dtype}")
    if not bool(valid.any()):
        # No proposal has a pseudo mask: zero, but keep the graph.
        return logits.sum() * 0
    bce = F.binary_cross_entropy_with_logits(logits[valid], targets[valid].to(logits.dtype),
                                             reduction="none")
    return bce.flatten(1).mean(dim=1).mean()


def class_specific_mask_loss(logits_m: Tensor, prev_probs: Tensor, weights: Tensor) -> Tensor:
    """One self-training term of eq. 5: ``y_{t_p} · BCE(M^m_{p,t_p}, M^{m-1}_{p(,t_p)})``.

    Args:
        logits_m (Tensor[K, M, M]): logits of head ``m`` at the channel of each proposal's
            assigned class ``t_p^{n_r}``; box frame of the proposal.
        prev_probs (Tensor[K, M, M]): probabilities of the previous mask head (``M^0`` for m = 1,
            ``M^{m-1}`` at the same class otherwise); detached here (self-training target).
        weights (Tensor[K]): image score ``y`` of each proposal's class; detached here.
    Returns: ``(1/K) Σ_p w_p mean_ij BCE`` (divided by K, not by Σw); exactly 0 when K = 0.
    """
    _check(logits_m.dim() == 3 and prev_probs.shape == logits_m.shape
           and weights.shape == (logits_m.shape[0],),
           f"class_specific_mask_loss: logits_m [K, M, M], prev_probs [K, M, M], weights [K] "
           f"expected, got {tuple(logits_m.shape)}, {tuple(prev_probs.shape)}, "
           f"{tuple(weights.shape)}")
    if logits_m.shape[0] == 0:
        # No foreground proposal in this image: zero, but keep the graph.
        return logits_m.sum() * 0
    bce = F.binary_cross_entropy_with_logits(logits_m, prev_probs.detach().to(logits_m.dtype),
                                             reduction="none").flatten(1).mean(dim=1)
    return (weights.detach() * bce).mean()


def mask_self_training_loss(agnostic_logits: Tensor, agnostic_targets: Tensor, valid: Tensor,
                            specific_logits: list[Tensor], weights: Tensor):
    """Eq. 5 in full: the class-agnostic term plus the ``n_m`` chained class-specific terms.

    Args:
        agnostic_logits (Tensor[K, M, M]), agnostic_targets (Tensor[K, M, M]), valid (bool [K]):
            see :func:`class_agnostic_mask_loss`.
        specific_logits (list of n_m Tensor[K, M, M]): head m's logits at each proposal's
            assigned-class channel (m = 1..n_m); head 1 learns from ``sigmoid(M^0)``, head m from
            ``sigmoid(M^{m-1})``, both detached.
        weights (Tensor[K]): ``y_{t_p}``.
    Returns: (loss_agnostic, loss_specific) scalars, loss_specific summed over the heads (0 when
    n_m = 0).
    """
    loss_agnostic = class_agnostic_mask_loss(agnostic_logits, agnostic_targets, valid)
    loss_specific = agnostic_logits.sum() * 0  # n_m = 0: no class-specific head
    prev = torch.sigmoid(agnostic_logits).detach()
    for logits_m in specific_logits:
        loss_specific = loss_specific + class_specific_mask_loss(logits_m, prev, weights)
        prev = torch.sigmoid(logits_m).detach()
    return loss_agnostic, loss_specific


# ----------------------------------------------------------------------------------------------
# Correlation learning module (§3.4)
# ----------------------------------------------------------------------------------------------
def instance_activation(mask_probs: Tensor, tau: float = 5.0) -> Tensor:
    """Proposal activation of a mask, eq. 7: ``a = (1/τ) log((1/hw) Σ_ij exp(τ M_ij))``.

    Computed as ``(logsumexp(τ M) - log(hw)) / τ`` for stability; lies between mean(M) and max(M).

    Args:
        mask_probs (Tensor[K, h, w]): mask probabilities (after sigmoid) at the assigned class.
    Returns: Tensor[K].
    """
    _check(mask_probs.dim() == 3,
           f"instance_activation: mask_probs [K, h, w] expected, got {tuple(mask_probs.shape)}")
    hw = mask_probs.shape[1] * mask_probs.shape[2]
    return (torch.logsumexp(tau * mask_probs.flatten(1), dim=1) - math.log(hw)) / tau


def activation_correlation_loss(a: Tensor, a_hat: Tensor, detach_target: bool = True) -> Tensor:
    """Instance-activation correlation loss of one mask head, eq. 8:
    ``(1/K) Σ_p ||a_p - â_p||_2`` = mean ``|a_p - â_p|`` (scalars).

    Args:
        a (Tensor[K]): mask activations (:func:`instance_activation`).
        a_hat (Tensor[K]): detection activations ``S^{n_r}_{p, t_p}`` (last refinement head's
            softmax score of the assigned class). Detached by default: the detection score is the
            target the mask head is pulled towards (as in the authors' code), so ACL does not
            push detection scores toward the mask.
    Returns: scalar; exactly 0 when K = 0.
    """
    _check(a.dim() == 1 and a_hat.shape == a.shape,
           f"activation_correlation_loss: a [K] and a_hat [K] expected, got {tuple(a.shape)} "
           f"and {tuple(a_hat.shape)}")
    if a.shape[0] == 0:
        # No foreground proposal: zero, but keep the graph.
        return a.sum() * 0
    target = a_hat.detach() if detach_target else a_hat
    return (a - target).abs().mean()
