"""The image segmentation branch's losses (paper §3.3, eq. 5) and the correlation learning
module (§3.4, eq. 6-8). Conventions: ``pdsl.losses``."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .common import check as _check


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
                            targets: str = "soft", empty_to_box: bool = True,
                            stats: dict | None = None):
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
        stats (dict or None): if given, the mask chain's diagnostics are added to it, each a
            ``(sum, count)`` pair of detached 0-d tensors (so that several calls add up), for head
            ``m`` = 0..n_m: ``m{m}_bce`` (the head's term), ``m{m}_empty_before_fallback`` (its
            target has no pixel >= 0.5: for m >= 1 before the filled-box fallback) and
            ``m{m}_fallback_box`` (the target is the filled box: for M^0 a target with every
            pixel >= 0.5, e.g. the cache's box for a degenerate GrabCut mask; for m >= 1 the
            fallback of an empty binarised mask).
    Returns: (loss_agnostic, loss_specific) scalars, loss_specific summed over the heads (0 when
    n_m = 0).
    """
    _check(targets in ("soft", "binary"),
           f"mask_self_training_loss: targets must be soft or binary, got {targets!r}")
    loss_agnostic = class_agnostic_mask_loss(agnostic_logits, agnostic_targets, valid)
    if stats is not None:
        t0 = agnostic_targets[valid].detach().flatten(1)
        _add_stats(stats, 0, loss_agnostic, t0.amax(dim=1) < 0.5, t0.amin(dim=1) >= 0.5)
    loss_specific = agnostic_logits.sum() * 0  # n_m = 0: no class-specific head
    prev = torch.sigmoid(agnostic_logits).detach()
    for m, logits_m in enumerate(specific_logits, 1):
        target = binarize_mask_targets(prev, 0.5, empty_to_box) if targets == "binary" else prev
        loss_m = class_specific_mask_loss(logits_m, target, weights)
        loss_specific = loss_specific + loss_m
        if stats is not None:
            empty = prev.flatten(1).amax(dim=1) < 0.5
            _add_stats(stats, m, loss_m, empty, empty & (targets == "binary" and empty_to_box))
        prev = torch.sigmoid(logits_m).detach()
    return loss_agnostic, loss_specific


@torch.no_grad()
def _add_stats(stats: dict, m: int, loss: Tensor, empty: Tensor, filled: Tensor) -> None:
    n = torch.tensor(float(empty.numel()), device=loss.device)
    for key, value in ((f"m{m}_bce", loss.detach().float() * n),
                       (f"m{m}_empty_before_fallback", empty.sum().float()),
                       (f"m{m}_fallback_box", filled.sum().float())):
        s, c = stats.get(key, (0.0, 0.0))
        stats[key] = (s + value, c + n)


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
