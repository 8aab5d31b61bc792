"""The input checks of :class:`pdsl.model.PDSLNet`: shapes, dtypes and target keys, each error
naming the bad tensor and its shape."""
from __future__ import annotations

import torch


def check_inputs(images, proposals, proposal_scores, targets, num_classes: int,
                 training: bool) -> None:
    """What :meth:`PDSLNet.forward` takes, checked: a ``ValueError`` that prints the bad shape or
    dtype (``targets`` only in training; shapes as in its docstring)."""
    if not (torch.is_tensor(images) and images.dim() == 4 and images.shape[1] == 3
            and images.is_floating_point()):
        raise ValueError(f"PDSLNet: images must be float [B, 3, H, W], got "
                         f"{getattr(images, 'shape', type(images))} "
                         f"{getattr(images, 'dtype', '')}")
    B = images.shape[0]
    if len(proposals) != B:
        raise ValueError(f"PDSLNet: {B} images but {len(proposals)} proposal tensors")
    for i, p in enumerate(proposals):
        if p.dim() != 2 or p.shape[1] != 4 or p.shape[0] == 0:
            raise ValueError(f"PDSLNet: proposals[{i}] must be [P ≥ 1, 4], got "
                             f"{tuple(p.shape)}")
    if proposal_scores is not None:
        if len(proposal_scores) != B:
            raise ValueError(f"PDSLNet: {B} images but {len(proposal_scores)} score tensors")
        for i, (p, s) in enumerate(zip(proposals, proposal_scores)):
            if s.shape != (p.shape[0],):
                raise ValueError(f"PDSLNet: proposal_scores[{i}] must be [{p.shape[0]}], got "
                                 f"{tuple(s.shape)}")
    if not training:
        return
    if targets is None or len(targets) != B:
        raise ValueError(f"PDSLNet: training needs one target dict per image ({B}), got "
                         f"{None if targets is None else len(targets)}")
    C = num_classes
    for i, (p, t) in enumerate(zip(proposals, targets)):
        missing = {"labels", "bank_masks", "bank_boxes", "proposal_to_bank"} - set(t)
        if missing:
            raise ValueError(f"PDSLNet: targets[{i}] lacks {sorted(missing)}")
        nb = t["bank_masks"].shape[0] if t["bank_masks"].dim() == 3 else -1
        bad = []
        if t["labels"].shape != (C,):
            bad.append(f"labels {tuple(t['labels'].shape)} (want [{C}])")
        if t["bank_masks"].dim() != 3 or t["bank_masks"].shape[1] != t["bank_masks"].shape[2]:
            bad.append(f"bank_masks {tuple(t['bank_masks'].shape)} (want [B, M, M])")
        if t["bank_boxes"].shape != (nb, 4):
            bad.append(f"bank_boxes {tuple(t['bank_boxes'].shape)} (want [{nb}, 4])")
        ptb = t["proposal_to_bank"]
        if ptb.shape != (p.shape[0],) or ptb.is_floating_point():
            bad.append(f"proposal_to_bank {tuple(ptb.shape)} {ptb.dtype} "
                       f"(want long [{p.shape[0]}])")
        elif ptb.numel() and (int(ptb.min()) < 0 or int(ptb.max()) >= nb):
            bad.append(f"proposal_to_bank values in [{int(ptb.min())}, {int(ptb.max())}] "
                       f"outside the bank [0, {nb})")
        bv = t.get("bank_valid")
        if bv is not None and (bv.shape != (nb,) or bv.dtype != torch.bool):
            bad.append(f"bank_valid {tuple(bv.shape)} {bv.dtype} (want bool [{nb}])")
        if bad:
            raise ValueError(f"PDSLNet: targets[{i}]: " + "; ".join(bad))
