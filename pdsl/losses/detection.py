"""The object detection branch's losses (paper §3.2, eq. 2-3): WSDDN's multi-label loss, the
OICR pseudo labels of a refinement head and its loss. Conventions: ``pdsl.losses``."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import box_iou

from ..box_coder import encode_box_deltas
from .common import check as _check


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
