"""The cascade (detection-to-segmentation) baseline of the paper's Fig. 3, ``model.learning:
cascade`` (§4.4 "Parallel vs. cascade learning strategies"; §3.3 on WSJDS [10] / Label-PEnet [12]).

PDSL learns segmentation *in parallel* with detection (§3.1, §3.3): the class-agnostic head
``M^0`` learns the bottom-up GrabCut masks of ``n_seed`` seed proposals per present class, each
training proposal taking the cached mask of the seed it overlaps most (its own mask when it is a
seed), so a proposal's pseudo mask is a bottom-up cue of *its own box*: the detector only decides
which proposals train. The heads read the shared backbone and ACL (eq. 6–8) couples the branches.

The cascade puts the segmentation branch *after* the finished detector (the mask learns from the
detection branch's final outputs, in sequence), so that "the quality of pseudo masks heavily
relies on object detection". Here (``PDSLNet(learning="cascade")``), per training image:

* **detections** (:func:`final_detections`): for each present class the last refinement head's
  (head ``n_r``; WSDDN's ``S^0`` when ``n_r = 0``) top-scoring proposal, as its regressed box
  for that class (``refine_pseudo_box: regressed``) or as the proposal itself (``raw``) — the
  pseudo box eq. 3 would take from this head;
* **training boxes**: those detected boxes plus the proposals assigned to them (IoU ≥ ``fg_iou``,
  the same ``t^{n_r}`` assignment as eq. 5 in parallel mode; at most ``mask_per_image`` of them,
  random sample) — the segmentation trains only where the finished detector points;
* **pseudo masks** (:func:`detection_mask_targets`): one mask per detection, the cached
  bottom-up mask of the proposal nearest the detected box, cut to that box (0 outside it); every
  training box reads its detection's mask in its own frame. There is no sampling of ``n_seed``
  seeds and no per-proposal mask: where the detector's box is wrong (a part, a group), every
  pseudo mask of that class is wrong with it; ``n_seed`` and ``seed_match_iou`` are unused;
* **no feedback** (in ``PDSLNet._losses``): the mask heads read ``features.detach()``, so mask
  losses do not reach the backbone (nor, therefore, detection), and ACL must be off
  (``acl: true`` with ``learning: cascade`` is a ConfigError, so a saved config says what ran).

Everything else (eq. 5's self-training chain ``M^0 → M^1 → … → M^{n_m}``, its weights and
target binarisation, the detection losses, inference) is the same as in parallel mode, so the two
modes differ only in how segmentation learns from detection.
"""
from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import box_iou

from pdsl.losses import oicr_pseudo_labels
from pdsl.model.seeds import reproject_masks


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(msg)


@torch.no_grad()
def final_detections(last_scores: Tensor, proposals: Tensor, labels: Tensor,
                     pseudo_boxes: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The detection branch's final output on a training image (§3.2, the top boxes of eq. 3).

    For every present class ``c`` (``labels[c] > 0.5``) the proposal with the highest score
    ``last_scores[:, c]`` (first on ties), as its regressed box for class ``c``
    (``pseudo_boxes[top, c]``) or, without ``pseudo_boxes``, as the proposal itself. These are
    the boxes :func:`pdsl.losses.oicr_pseudo_labels` assigns proposals to.

    Args:
        last_scores (Tensor[P, C]): the last refinement head's foreground probabilities (``S^0``
            when n_r = 0).
        proposals (Tensor[P, 4]): x1y1x2y2, resized-image frame.
        labels (Tensor[C]): multi-hot image labels.
        pseudo_boxes (Tensor[P, C, 4] or None): that head's class-specific regressed boxes.
    Returns: (classes LongTensor[G], 0-based, ascending; boxes Tensor[G, 4]); G = 0 when no class
    is present.
    """
    _check(last_scores.dim() == 2 and proposals.shape == (last_scores.shape[0], 4)
           and labels.shape == (last_scores.shape[1],)
           and (pseudo_boxes is None or pseudo_boxes.shape == (*last_scores.shape, 4)),
           f"final_detections: last_scores [P, C], proposals [P, 4], labels [C], pseudo_boxes "
           f"[P, C, 4] or None expected, got {tuple(last_scores.shape)}, "
           f"{tuple(proposals.shape)}, {tuple(labels.shape)}, "
           f"{None if pseudo_boxes is None else tuple(pseudo_boxes.shape)}")
    present = torch.nonzero(labels > 0.5).flatten()
    if present.numel() == 0 or proposals.shape[0] == 0:
        return present, proposals.new_zeros(0, 4)
    top = last_scores.detach()[:, present].argmax(dim=0)               # [G]
    if pseudo_boxes is None:
        return present, proposals[top].clone()
    return present, pseudo_boxes.detach()[top, present].to(proposals.dtype)


@torch.no_grad()
def detection_mask_targets(boxes: Tensor, det_index: Tensor, det_boxes: Tensor,
                           proposals: Tensor, bank_masks: Tensor, bank_boxes: Tensor,
                           proposal_to_bank: Tensor, bank_valid: Tensor | None = None,
                           out_size: int = 28) -> tuple[Tensor, Tensor]:
    """Cascade pseudo masks ``M̂^0``: derived from the detected boxes (Fig. 3 cascade baseline).

    The mask of detection ``g`` is the cached mask of the proposal nearest its box ``D_g``
    (highest IoU, first on ties): bank row ``r_g = proposal_to_bank[q_g]``, cut to ``D_g``. Box
    ``k`` of detection ``g = det_index[k]`` takes that mask in its own frame::

        target_k(x) = bank_{r_g}(x) · [x ∈ D_g]     at the centre x of each output pixel

    computed with one resampling (:func:`pdsl.model.seeds.reproject_masks` of the bank mask,
    times that of an all-ones mask of ``D_g``, which is ``D_g``'s 0/1 indicator) rather than two
    (bank → ``D_g`` → box ``k``), which would blur twice. ``valid_k = bank_valid[r_g]``.

    Args:
        boxes (Tensor[K, 4]): the training boxes; det_index (LongTensor[K]): each one's detection.
        det_boxes (Tensor[G, 4]), proposals (Tensor[P, 4]), bank_boxes (Tensor[B, 4]): same frame.
        bank_masks (Tensor[B, M, M]): float in [0, 1] (uint8 read as 0..255), bank-box frame.
        proposal_to_bank (LongTensor[P]); bank_valid (BoolTensor[B] or None: all valid).
    Returns: (targets Tensor[K, out_size, out_size] in each box's frame, valid bool [K]).
    """
    K, G = boxes.shape[0], det_boxes.shape[0]
    _check(boxes.dim() == 2 and boxes.shape[1] == 4 and det_index.shape == (K,)
           and det_boxes.dim() == 2 and det_boxes.shape[1] == 4
           and proposal_to_bank.shape == (proposals.shape[0],)
           and bank_boxes.shape == (bank_masks.shape[0], 4),
           f"detection_mask_targets: boxes [K, 4], det_index [K], det_boxes [G, 4], "
           f"proposal_to_bank [P], bank_boxes [B, 4] expected, got {tuple(boxes.shape)}, "
           f"{tuple(det_index.shape)}, {tuple(det_boxes.shape)}, "
           f"{tuple(proposal_to_bank.shape)}, {tuple(bank_boxes.shape)}")
    targets = torch.zeros(K, out_size, out_size, device=boxes.device)
    if K == 0 or G == 0:
        return targets, torch.zeros(K, dtype=torch.bool, device=boxes.device)
    _check(bool((det_index >= 0).all() and (det_index < G).all()),
           f"detection_mask_targets: det_index must lie in [0, {G})")
    nearest = box_iou(det_boxes.to(proposals.dtype), proposals).argmax(dim=1)   # [G]
    rows = proposal_to_bank[nearest][det_index]                                 # [K]
    valid = torch.ones(K, dtype=torch.bool, device=boxes.device)
    if bank_valid is not None:
        valid &= bank_valid[rows]
    masks = bank_masks.float() / 255.0 if bank_masks.dtype == torch.uint8 else bank_masks.float()
    cut = reproject_masks(masks, bank_boxes, boxes, out_size=out_size, src_index=rows)
    inside = reproject_masks(torch.ones(G, 1, 1, device=boxes.device), det_boxes, boxes,
                             out_size=out_size, src_index=det_index)
    targets = cut * inside
    targets[~valid] = 0
    return targets, valid


def cascade_mask_inputs(last_scores: Tensor, proposals: Tensor, labels: Tensor,
                        pseudo_boxes: Tensor | None, fg_iou: float, mask_per_image: int,
                        bank_masks: Tensor, bank_boxes: Tensor, proposal_to_bank: Tensor,
                        bank_valid: Tensor | None = None, image_size=None):
    """The mask branch's training inputs on one image in cascade mode (eq. 5's first term on
    the detector's output; see the module docstring).

    Training boxes: the detected boxes (:func:`final_detections`, clipped to ``image_size`` (H, W)
    if given), then the proposals assigned to them (``t^{n_r}_p ≥ 1`` of
    :func:`pdsl.losses.oicr_pseudo_labels` at ``fg_iou``, ascending; a random sample of
    ``mask_per_image`` when there are more). Their pseudo masks: :func:`detection_mask_targets`.

    Returns: (boxes Tensor[K, 4], classes LongTensor[K] 0-based, targets Tensor[K, 28, 28] soft,
    valid bool [K]).
    """
    classes, det = final_detections(last_scores, proposals, labels, pseudo_boxes)
    if image_size is not None and det.numel():
        h, w = int(image_size[0]), int(image_size[1])
        det[:, 0::2] = det[:, 0::2].clamp(0, w)
        det[:, 1::2] = det[:, 1::2].clamp(0, h)
    cls_t, _, _, _ = oicr_pseudo_labels(last_scores, proposals, labels, fg_iou,
                                        pseudo_boxes=pseudo_boxes)
    fg = torch.nonzero(cls_t > 0).flatten()
    if fg.numel() > mask_per_image:
        fg = fg[torch.randperm(fg.numel(), device=fg.device)[:mask_per_image]]
    cls_fg = cls_t[fg] - 1
    slot = torch.full((last_scores.shape[1],), -1, dtype=torch.long, device=cls_t.device)
    slot[classes] = torch.arange(classes.numel(), device=cls_t.device)
    det_index = torch.cat([torch.arange(classes.numel(), device=cls_t.device), slot[cls_fg]])
    boxes = torch.cat([det, proposals[fg]])
    m_t, m_valid = detection_mask_targets(boxes, det_index, det, proposals, bank_masks,
                                          bank_boxes.to(proposals.dtype), proposal_to_bank,
                                          bank_valid)
    return boxes, torch.cat([classes, cls_fg]), m_t, m_valid
