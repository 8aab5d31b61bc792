"""The mask branch's losses for a batch (paper eq. 5-8), with the mask chain's diagnostics.

:func:`mask_branch_losses` takes, per image, the foreground proposals' ``M^0`` logits (at each
proposal's class channel when ``M^0`` has one per class), the class-specific heads' logits at that
class, the ``M^0`` targets and the ACL targets, and returns the three mask terms:

* ``mask_loss_mean="batch"`` (the authors' code: detectron2's ``mask_rcnn_loss``): each BCE term is
  the mean over all pixels of all the forward pass's foreground RoIs (valid ones for ``M^0``);
* ``"image"``: each image's mean, then the mean over images (this code's earlier choice).

ACL (eq. 8) is each image's mean over its RoIs, then the mean over images, in both modes.

The diagnostics are ``(sum, count)`` pairs of detached tensors (see
:func:`pdsl.losses.mask_self_training_loss`) plus ``acl_target`` (the ACL targets ``â_p``), so
that the trainer can add them up over accumulation passes and report each as one fraction or mean
of the step.
"""
from __future__ import annotations

import torch

from pdsl.losses import activation_correlation_loss, instance_activation, mask_self_training_loss


def mask_branch_losses(net, agnostic: list, specific: list, info: list) -> tuple[dict, dict]:
    """Args:
        net: the PDSLNet (its switches: mask_loss_mean, mask_targets, empty_mask_to_box, acl,
            acl_agnostic, tau).
        agnostic (list of B Tensor[K_i, M, M]): ``M^0`` logits of each image's foreground RoIs.
        specific (list of B lists of n_m Tensor[K_i, M, M]): ``M^1..M^{n_m}`` at the RoI's class.
        info (list of B tuples): ``(m_t [K_i, M, M], m_valid bool [K_i], w_mask [K_i] or None,
            a_hat [K_i] or None)``.
    Returns: ({"loss_mask_agnostic", "loss_mask_specific", "loss_acl"} scalars, diagnostics).
    """
    stats: dict = {}
    kw = dict(targets=net.mask_targets, empty_to_box=net.empty_mask_to_box, stats=stats)
    if net.mask_loss_mean == "batch":
        cat_w = None if info[0][2] is None else torch.cat([i[2] for i in info])
        l_ag, l_sp = mask_self_training_loss(
            torch.cat(agnostic), torch.cat([i[0] for i in info]), torch.cat([i[1] for i in info]),
            [torch.cat(heads) for heads in zip(*specific)] if specific[0] else [], cat_w, **kw)
    else:
        per = [mask_self_training_loss(ag, m_t, m_valid, spec, w, **kw)
               for ag, spec, (m_t, m_valid, w, _) in zip(agnostic, specific, info)]
        l_ag = torch.stack([p[0] for p in per]).mean()
        l_sp = torch.stack([p[1] for p in per]).mean()
    acl = []
    for ag, spec, (_, _, _, a_hat) in zip(agnostic, specific, info):
        # eq. 6-8: one ACL term per class-specific head (and on M^0 with acl_agnostic); none when
        # ACL is off.
        l_acl = ag.sum() * 0
        if net.acl and a_hat is not None:
            for logits_m in ([ag] if net.acl_agnostic else []) + list(spec):
                a = instance_activation(torch.sigmoid(logits_m), net.tau)
                l_acl = l_acl + activation_correlation_loss(a, a_hat)
            s, c = stats.get("acl_target", (0.0, 0.0))
            stats["acl_target"] = (s + a_hat.detach().float().sum(), c + float(a_hat.numel()))
        acl.append(l_acl)
    losses = {"loss_mask_agnostic": l_ag, "loss_mask_specific": l_sp,
              "loss_acl": torch.stack(acl).mean()}
    return losses, stats
