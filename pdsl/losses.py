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

* eq. 2: summed over classes as written (``reduction="sum"``), or averaged over them as the
  authors' code does (``WSL.MEAN_LOSS: True``, ``reduction="mean"``; the model's default).
* eq. 3: weighted CE and the weighted box loss are both divided by the number of proposals ``P``.
* eq. 5: BCE averaged over the ``M×M`` pixels of a mask, then over the proposals that take part.
* eq. 8: mean over the proposals that take part (as written, with ``n^p`` = those proposals).

Each function's keyword defaults are the paper's text; ``PDSLNet`` passes the authors' code's
choices (``pdsl/defaults.yaml``; the README's table lists both).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import box_iou

from .box_coder import encode_box_deltas

def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(msg)


# ----------------------------------------------------------------------------------------------
# Object detection branch (§3.2)
# ----------------------------------------------------------------------------------------------
def wsddn_mil_loss(image_scores: Tensor, labels: Tensor, eps: float = 1e-6,
                   reduction: str = "sum") -> Tensor:
    """Multi-label cross-entropy of WSDDN, eq. 2: ``-Σ_c t_c log y_c + (1-t_c) log(1-y_c)``.

    Args:
        image_scores (Tensor[C]): ``y_c = Σ_p S0_pc``, image-level class scores (may exceed 1 by
            rounding; clamped to ``[eps, 1-eps]``).
        labels (Tensor[C]): multi-hot image labels ``t`` (0/1, float).

        reduction: ``"sum"`` over classes (eq. 2 as written) or ``"mean"`` over the ``C`` classes
            (the authors' code, ``WSL.MEAN_LOSS: True``: 1/20 of the sum on VOC).

    Returns: scalar. An image without any present class is a legitimate negative for every class,
    so its loss is *not* zero.
    """
    _check(image_scores.dim() == 1 and image_scores.shape == labels.shape,
           f"wsddn_mil_loss: image_scores [C] and labels [C] expected, got "
           f"{tuple(image_scores.shape)} and {tuple(labels.shape)}")
    _check(reduction in ("sum", "mean"),
           f"wsddn_mil_loss: reduction must be 'sum' or 'mean', got {reduction!r}")
    y = image_scores.float().clamp(eps, 1.0 - eps)  # float32: 1 - 1e-6 is 1.0 in bf16/fp16
    t = labels.to(y.dtype)
    per_class = -(t * torch.log(y) + (1 - t) * torch.log(1 - y))
    return per_class.sum() if reduction == "sum" else per_class.mean()


@torch.no_grad()
def oicr_pseudo_labels(prev_scores: Tensor, proposals: Tensor, labels: Tensor,
                       fg_iou: float = 0.5, bg_iou: float = 0.0,
                       pseudo_boxes: Tensor | None = None, image_scores: Tensor | None = None):
    """Pseudo ground truth for one refinement head (OICR [35], the targets of eq. 3).

    For every present class ``c`` (``labels[c] > 0.5``) the proposal with the highest score of the
    previous head is that class's top box; its pseudo box is the proposal itself
    (``pseudo_boxes=None``, OICR) or the previous head's *regressed* box of that proposal for
    class ``c`` (``pseudo_boxes[top, c]``: the authors' code, ``WSL.REFINE_REG``). Every proposal
    is matched to the pseudo box it overlaps most: IoU ≥ ``fg_iou`` → class ``c + 1``; otherwise
    background (0). OICR treats every proposal below ``fg_iou`` as background; ``bg_iou > 0``
    instead ignores (weight 0) proposals whose IoU is below ``bg_iou`` (PCL-style); the default 0
    is OICR.

    Args:
        prev_scores (Tensor[P, C]): foreground class probabilities of the previous head (``S^0``
            for the first head, the softmax without the background column after). Detached here.
        proposals (Tensor[P, 4]): x1y1x2y2, pixels of the resized image.
        labels (Tensor[C]): multi-hot image labels.
        pseudo_boxes (Tensor[P, C, 4] or None): the previous head's class-specific boxes
            (deltas applied to the proposals), same frame; None = the proposals themselves.
        image_scores (Tensor[C] or None): WSDDN image scores ``y``. Given: each proposal's weight
            is ``y`` of its matched pseudo box's class (eq. 3 as written, and the authors' code's
            ``gt_weights``); None: the previous head's score of the matched top box (OICR).

    Returns:
        cls_targets (LongTensor[P]): ``t_p`` in ``0..C``, 0 = background.
        weights (Tensor[P]): loss weight of each proposal (see ``image_scores``).
        reg_targets (Tensor[P, 4]): Fast R-CNN deltas (weights 10,10,5,5) from each proposal to its
            matched pseudo box; only rows with ``cls_targets ≥ 1`` are meaningful.
        matched (LongTensor[P]): proposal index of the matched top box (-1 if the image has no
            present class); ``prev_scores[matched, cls_targets - 1]`` is that box's score.
    With no present class: all background, weights 0 (the loss is then exactly 0).
    """
    _check(prev_scores.dim() == 2 and proposals.shape == (prev_scores.shape[0], 4)
           and labels.shape == (prev_scores.shape[1],),
           f"oicr_pseudo_labels: prev_scores [P, C], proposals [P, 4], labels [C] expected, got "
           f"{tuple(prev_scores.shape)}, {tuple(proposals.shape)}, {tuple(labels.shape)}")
    _check(pseudo_boxes is None or pseudo_boxes.shape == (*prev_scores.shape, 4),
           f"oicr_pseudo_labels: pseudo_boxes [P, C, 4] = {(*prev_scores.shape, 4)} expected, got "
           f"{None if pseudo_boxes is None else tuple(pseudo_boxes.shape)}")
    _check(image_scores is None or image_scores.shape == labels.shape,
           f"oicr_pseudo_labels: image_scores [C] expected, got "
           f"{None if image_scores is None else tuple(image_scores.shape)}")
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
    if pseudo_boxes is None:
        top_boxes = proposals[top]                            # [G, 4]
    else:
        top_boxes = pseudo_boxes.detach()[top, present].to(proposals.dtype)
    iou = box_iou(proposals, top_boxes)                       # [P, G]
    best_iou, g = iou.max(dim=1)                              # first pseudo box on ties
    fg = best_iou >= fg_iou
    cls_targets[fg] = present[g[fg]] + 1
    if image_scores is None:
        weights = top_scores[g].clone()
    else:
        weights = image_scores.detach().to(prev_scores.dtype)[present[g]].clone()
    if bg_iou > 0:
        weights[best_iou < bg_iou] = 0
    matched = top[g]
    reg_targets = encode_box_deltas(proposals, top_boxes[g])
    reg_targets[~fg] = 0
    return cls_targets, weights, reg_targets, matched


def refinement_loss(cls_logits: Tensor, box_deltas: Tensor, cls_targets: Tensor,
                    weights: Tensor, reg_targets: Tensor, beta: float = 1.0,
                    box_loss: str = "smooth_l1") -> Tensor:
    """Loss of one detection refinement head, eq. 3.

    ``(1/P) Σ_p w_p CE(S_p, t_p) + (1/P) Σ_{p: t_p ≥ 1} w_p ℓ(B_{p,t_p}, B̂_p)``, ``ℓ`` summed over
    the 4 deltas:

    * ``box_loss="smooth_l1"``: smooth-L1 with ``beta`` (1 as in Fast R-CNN [64]; eq. 3 as written);
    * ``"weighted_l1"``: plain L1 (the authors' code: ``smooth_l1_weighted`` with detectron2's
      ``SMOOTH_L1_BETA: 0``), same ``w_p`` weights;
    * ``"none"``: no box term (the authors' ``REFINE_REG: False``, their COCO configs).

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
    _check(box_loss in ("smooth_l1", "weighted_l1", "none"),
           f"refinement_loss: box_loss must be smooth_l1, weighted_l1 or none, got {box_loss!r}")
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
    if fg.numel() > 0 and box_loss != "none":
        pred = deltas[fg, cls_targets[fg] - 1]                    # [F, 4]
        b = 0.0 if box_loss == "weighted_l1" else beta
        l1 = F.smooth_l1_loss(pred, reg_targets[fg], beta=b, reduction="none").sum(dim=1)
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


@torch.no_grad()
def binarize_mask_targets(probs: Tensor, threshold: float = 0.5, empty_to_box: bool = True) -> Tensor:
    """Hard self-training targets from a previous mask head (the authors' ``get_pgt_mask``): each
    mask is thresholded (``probs ≥ threshold`` → 1, else 0); a mask left with no foreground pixel
    becomes the filled box (all ones in its own box frame) when ``empty_to_box``, as the authors'
    ``binary_mask_to_polygon2`` turns an empty mask into its box's polygon.

    Args:
        probs (Tensor[K, M, M]): probabilities in [0, 1], each in its proposal's box frame.
    Returns: Tensor[K, M, M] of 0/1 (dtype of ``probs``), same frame; detached.
    """
    _check(probs.dim() == 3, f"binarize_mask_targets: probs [K, M, M] expected, got "
                             f"{tuple(probs.shape)}")
    hard = (probs.detach() >= threshold).to(probs.dtype)
    if empty_to_box and hard.shape[0]:
        empty = hard.flatten(1).amax(dim=1) == 0                          # [K]
        hard[empty] = 1
    return hard


def class_specific_mask_loss(logits_m: Tensor, prev_probs: Tensor,
                             weights: Tensor | None) -> Tensor:
    """One self-training term of eq. 5: ``y_{t_p} · BCE(M^m_{p,t_p}, M^{m-1}_{p(,t_p)})``.

    Args:
        logits_m (Tensor[K, M, M]): logits of head ``m`` at the channel of each proposal's
            assigned class ``t_p^{n_r}``; box frame of the proposal.
        prev_probs (Tensor[K, M, M]): the target: probabilities of the previous mask head (``M^0``
            for m = 1, ``M^{m-1}`` at the same class otherwise; eq. 5 as written) or their
            binarised version (:func:`binarize_mask_targets`, the authors' code); detached here.
        weights (Tensor[K] or None): image score ``y`` of each proposal's class (eq. 5); None =
            unweighted (the authors' ``mask_rcnn_loss``); detached here.
    Returns: ``(1/K) Σ_p w_p mean_ij BCE`` (divided by K, not by Σw); exactly 0 when K = 0.
    """
    _check(logits_m.dim() == 3 and prev_probs.shape == logits_m.shape
           and (weights is None or weights.shape == (logits_m.shape[0],)),
           f"class_specific_mask_loss: logits_m [K, M, M], prev_probs [K, M, M], weights [K] "
           f"expected, got {tuple(logits_m.shape)}, {tuple(prev_probs.shape)}, "
           f"{None if weights is None else tuple(weights.shape)}")
    if logits_m.shape[0] == 0:
        # No foreground proposal in this image: zero, but keep the graph.
        return logits_m.sum() * 0
    bce = F.binary_cross_entropy_with_logits(logits_m, prev_probs.detach().to(logits_m.dtype),
                                             reduction="none").flatten(1).mean(dim=1)
    return bce.mean() if weights is None else (weights.detach() * bce).mean()


def mask_self_training_loss(agnostic_logits: Tensor, agnostic_targets: Tensor, valid: Tensor,
                            specific_logits: list[Tensor], weights: Tensor | None,
                            targets: str = "soft", empty_to_box: bool = True):
    """Eq. 5 in full: the class-agnostic term plus the ``n_m`` chained class-specific terms.

    Args:
        agnostic_logits (Tensor[K, M, M]), agnostic_targets (Tensor[K, M, M]), valid (bool [K]):
            see :func:`class_agnostic_mask_loss`.
        specific_logits (list of n_m Tensor[K, M, M]): head m's logits at each proposal's
            assigned-class channel (m = 1..n_m); head 1 learns from ``sigmoid(M^0)``, head m from
            ``sigmoid(M^{m-1})``, both detached.
        weights (Tensor[K] or None): ``y_{t_p}`` (eq. 5) or None (unweighted, authors' code).
        targets: ``"soft"`` (the previous head's probabilities, eq. 5 as written) or ``"binary"``
            (thresholded at 0.5, an empty mask → filled box when ``empty_to_box``: the authors'
            ``get_pgt_mask``).
    Returns: (loss_agnostic, loss_specific) scalars, loss_specific summed over the heads (0 when
    n_m = 0).
    """
    _check(targets in ("soft", "binary"),
           f"mask_self_training_loss: targets must be soft or binary, got {targets!r}")
    loss_agnostic = class_agnostic_mask_loss(agnostic_logits, agnostic_targets, valid)
    loss_specific = agnostic_logits.sum() * 0  # n_m = 0: no class-specific head
    prev = torch.sigmoid(agnostic_logits).detach()
    for logits_m in specific_logits:
        target = binarize_mask_targets(prev, 0.5, empty_to_box) if targets == "binary" else prev
        loss_specific = loss_specific + class_specific_mask_loss(logits_m, target, weights)
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


@torch.no_grad()
def detection_activation(last_scores: Tensor, cls_targets: Tensor, matched: Tensor, idx: Tensor,
                         mode: str = "own") -> Tensor:
    """The target ``â_p`` of eq. 8 for the proposals ``idx``.

    * ``mode="own"``: ``S^{n_r}_{p, t_p}``, the proposal's own score (eq. 8 as written);
    * ``"matched_top"``: the score of the top box the proposal was matched to,
      ``S^{n_r}_{matched_p, t_p}`` (the authors' ``mask_rcnn_co_loss`` reads ``gt_scores``, the
      score of the matched pseudo box).

    Args:
        last_scores (Tensor[P, C]): the last refinement head's foreground probabilities (``S^0``
            when n_r = 0).
        cls_targets (LongTensor[P]), matched (LongTensor[P]): from :func:`oicr_pseudo_labels`.
        idx (LongTensor[K]): proposals with ``cls_targets ≥ 1``.
    Returns: Tensor[K], detached.
    """
    _check(mode in ("own", "matched_top"),
           f"detection_activation: mode must be own or matched_top, got {mode!r}")
    _check(last_scores.dim() == 2 and cls_targets.shape == (last_scores.shape[0],)
           and matched.shape == cls_targets.shape and idx.dim() == 1,
           f"detection_activation: last_scores [P, C], cls_targets [P], matched [P], idx [K] "
           f"expected, got {tuple(last_scores.shape)}, {tuple(cls_targets.shape)}, "
           f"{tuple(matched.shape)}, {tuple(idx.shape)}")
    c = cls_targets[idx] - 1
    _check(bool((c >= 0).all()), "detection_activation: idx must hold foreground proposals only")
    rows = matched[idx] if mode == "matched_top" else idx
    return last_scores.detach()[rows, c]


def activation_correlation_loss(a: Tensor, a_hat: Tensor, detach_target: bool = True) -> Tensor:
    """Instance-activation correlation loss of one mask head, eq. 8:
    ``(1/K) Σ_p ||a_p - â_p||_2`` = mean ``|a_p - â_p|`` (scalars).

    Args:
        a (Tensor[K]): mask activations (:func:`instance_activation`).
        a_hat (Tensor[K]): detection activations (:func:`detection_activation`: the proposal's
            own ``S^{n_r}_{p, t_p}`` or its matched top box's score). Detached by default: the
            detection score is the target the mask head is pulled towards (as in the authors'
            code), so ACL does not push detection scores toward the mask.
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
