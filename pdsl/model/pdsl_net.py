"""PDSLNet: backbone + WSDDN + ``n_r`` refinement heads + mask heads + correlation learning
(paper §3, eq. 1–8; Fig. 2).

Training: ``model.train(); losses = model(images, proposals, proposal_scores, targets)``.
Inference is three calls, so that masks are only computed for the boxes that survive NMS::

    model.eval()
    with torch.no_grad():
        feats = model.backbone(images)                         # [B, Cf, H/s, W/s], s = 16 or 8
        dets = model.detect(feats, proposals, proposal_scores)  # per image boxes/scores
        ...  # per class: NMS on dets[i]["boxes"][:, c], dets[i]["scores"][:, c]
        probs = model.predict_masks(feats, kept_boxes, kept_labels)  # [ΣK, 28, 28]

``model(images, proposals, proposal_scores)`` in eval mode is ``detect(backbone(images), ...)``.

Frames: ``images`` are the resized (augmented) images; every box in and out (proposals, bank
boxes, predicted boxes) is x1y1x2y2 in pixels of that resized image. Masks (bank masks, mask
logits) are ``[M, M]`` in the frame of their own box. The caller maps cached boxes into the
resized frame and, for a horizontal flip, flips the bank boxes *and* the bank masks.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from pdsl.config import CHOICES
from pdsl.errors import ConfigError
from pdsl.box_coder import decode_box_deltas
from pdsl.losses import (detection_activation, oicr_pseudo_labels, refinement_loss,
                         wsddn_mil_loss)
from pdsl.model.backbone import build_backbone
from pdsl.model.cascade import cascade_mask_inputs
from pdsl.model.heads import (BoxHead, MaskHead, RefinementHead, WSDDNHead, channels_last_on_cpu,
                              wsddn_image_scores)
from pdsl.model.inputs import check_inputs
from pdsl.model.mask_branch import mask_branch_losses
from pdsl.model.seeds import seed_mask_targets, select_seeds

LOSS_KEYS = ("loss_mil", "loss_refine", "loss_mask_agnostic", "loss_mask_specific", "loss_acl")


class PDSLNet(nn.Module):
    """Parallel detection-and-segmentation network.

    Args:
        num_classes: ``n_c`` foreground classes.
        backbone, pretrained, frozen_bn, freeze_at: see ``pdsl.model.backbone.build_backbone``.
        n_refine: ``n_r`` detection refinement heads (eq. 4; 0 = WSDDN only).
        n_mask: ``n_m`` class-specific mask heads (eq. 5; 0 = class-agnostic head only).
        n_seed: seed proposals per present class (§3.3).
        acl: instance-activation correlation loss on (eq. 6–8).
        tau: ``τ`` of eq. 7.
        hidden_dim: width of the two box FCs (paper VGG: 4096).
        mask_dim: channels of the mask tower convs (paper: 256).
        score_scaling: multiply box features by (proposal score + 1) (authors' code).
        dropout: after each box FC.
        mask_per_image: at most this many foreground proposals per image train the mask heads
            (random sample; speed cap).
        fg_iou: OICR foreground IoU for the refinement pseudo labels.
        seed_match_iou: a proposal takes its nearest seed's mask only at IoU ≥ this (0 = always,
            the authors' code).
        fc6_dim: width of the first box FC (None = hidden_dim).
        mil_reduction: eq. 2 over classes: ``mean`` (authors) | ``sum`` (paper).
        refine_pseudo_box: a refinement head's pseudo box is the previous head's ``regressed``
            box (authors, ``REFINE_REG``) | the ``raw`` top proposal (OICR).
        refine_weight: eq. 3 weight: WSDDN ``image_score`` y (paper and authors) | the previous
            head's ``top_score`` (OICR).
        refine_box_loss: ``weighted_l1`` (authors) | ``smooth_l1`` (paper, β = 1) | ``none``.
        mask_targets: class-specific self-training targets ``binary`` (thresholded at 0.5,
            authors; the GrabCut targets of M⁰ too) | ``soft`` (paper: probabilities).
        empty_mask_to_box: with binary targets, an empty mask becomes the filled box (authors).
        mask_specific_weight: class-specific BCE weight ``none`` (authors) | ``image_score`` y
            (paper eq. 5).
        acl_target: ``matched_top`` (the matched top box's score, authors) | ``own`` (the
            proposal's own score, paper eq. 8).
        acl_agnostic: ACL also on the class-agnostic head M⁰ (authors; eq. 6 sums m = 1..n_m).
        box_pooler: ``roipool`` (paper, authors) | ``roialign``.
        mask0_channels: ``per_class`` (``M^0`` has a channel per class and learns on the channel
            of the proposal's class: the authors' code, detectron2's class-specific mask loss) |
            ``single`` (one class-agnostic channel, the paper's text).
        seed_pool: the seeds are the ``n_seed`` proposals nearest each class's top box among the
            ``foreground`` proposals (authors) | among ``all`` proposals (the paper's text).
        mask_loss_mean: each mask BCE term is the mean over all pixels of all foreground RoIs of
            the ``batch`` (authors, detectron2) | each ``image``'s mean, then the mean over images.
        mask_sampling_ratio: RoIAlign samples per bin side in the mask branch (0 = adaptive, the
            authors' detectron2 default; 2 was this code's earlier value).
        chain_detach_tower: the class-specific heads read the mask tower's output detached, so
            only M^0 (and ACL on M^0) trains the shared tower (a diagnostic, not in the paper).
        learning: ``parallel`` (PDSL, §3) | ``cascade``: the detection-to-segmentation baseline
            of Fig. 3 (§4.4; ``pdsl.model.cascade``): the mask heads train on the last head's
            detected boxes and the proposals assigned to them, with pseudo masks derived from
            those boxes, on detached features; needs ``acl=False``.
    """

    def __init__(self, num_classes: int, backbone: str = "resnet18_trunc", n_refine: int = 4,
                 n_mask: int = 4, n_seed: int = 10, acl: bool = True, tau: float = 5.0,
                 hidden_dim: int = 1024, mask_dim: int = 256, score_scaling: bool = True,
                 pretrained=None, dropout: float = 0.5, frozen_bn: bool = True,
                 freeze_at: int = 0, mask_per_image: int = 64, fg_iou: float = 0.5,
                 seed_match_iou: float = 0.0, fc6_dim: int | None = None,
                 mil_reduction: str = "mean", refine_pseudo_box: str = "regressed",
                 refine_weight: str = "image_score", refine_box_loss: str = "weighted_l1",
                 mask_targets: str = "binary", empty_mask_to_box: bool = True,
                 mask_specific_weight: str = "none", acl_target: str = "matched_top",
                 acl_agnostic: bool = True, box_pooler: str = "roipool",
                 learning: str = "parallel", mask0_channels: str = "per_class",
                 seed_pool: str = "foreground", mask_loss_mean: str = "batch",
                 mask_sampling_ratio: int = 0, chain_detach_tower: bool = False):
        super().__init__()
        for name, v in (("mil_reduction", mil_reduction), ("refine_pseudo_box", refine_pseudo_box),
                        ("refine_weight", refine_weight), ("refine_box_loss", refine_box_loss),
                        ("mask_targets", mask_targets),
                        ("mask_specific_weight", mask_specific_weight),
                        ("acl_target", acl_target), ("box_pooler", box_pooler),
                        ("learning", learning), ("mask0_channels", mask0_channels),
                        ("seed_pool", seed_pool), ("mask_loss_mean", mask_loss_mean)):
            choices = CHOICES[f"model.{name}"]
            if v not in choices:
                raise ConfigError(f"PDSLNet: {name} must be one of {', '.join(choices)}, got {v!r}")
        if fc6_dim is not None and (not isinstance(fc6_dim, int) or fc6_dim < 1):
            raise ConfigError(f"PDSLNet: fc6_dim must be null or an integer ≥ 1, got {fc6_dim!r}")
        if not 0 <= seed_match_iou <= 1:
            raise ConfigError(f"PDSLNet: seed_match_iou must be in [0, 1], got {seed_match_iou!r}")
        self.mil_reduction, self.refine_pseudo_box = mil_reduction, refine_pseudo_box
        self.refine_weight, self.refine_box_loss = refine_weight, refine_box_loss
        self.mask_targets, self.empty_mask_to_box = mask_targets, bool(empty_mask_to_box)
        self.mask_specific_weight, self.acl_target = mask_specific_weight, acl_target
        self.acl_agnostic = bool(acl_agnostic)
        self.learning = learning
        self.mask0_channels, self.seed_pool = mask0_channels, seed_pool
        self.mask_loss_mean = mask_loss_mean
        if not isinstance(mask_sampling_ratio, int) or mask_sampling_ratio < 0:
            raise ConfigError(f"PDSLNet: mask_sampling_ratio must be an integer ≥ 0, got "
                              f"{mask_sampling_ratio!r}")
        if learning == "cascade" and acl:
            raise ConfigError("PDSLNet: learning=cascade needs acl=False (ACL, eq. 6-8, is the "
                              "parallel branches' coupling; the cascade has no feedback)")
        for name, v, lo in (("num_classes", num_classes, 1), ("n_refine", n_refine, 0),
                            ("n_mask", n_mask, 0), ("n_seed", n_seed, 1),
                            ("hidden_dim", hidden_dim, 1), ("mask_dim", mask_dim, 1),
                            ("mask_per_image", mask_per_image, 1)):
            if not isinstance(v, int) or v < lo:
                raise ConfigError(f"PDSLNet: {name} must be an integer ≥ {lo}, got {v!r}")
        if not tau > 0:
            raise ConfigError(f"PDSLNet: tau must be > 0, got {tau!r}")
        if not 0 <= dropout < 1:
            raise ConfigError(f"PDSLNet: dropout must be in [0, 1), got {dropout!r}")
        self.num_classes = num_classes
        self.n_refine, self.n_mask, self.n_seed = n_refine, n_mask, n_seed
        self.acl, self.tau = bool(acl), float(tau)
        self.mask_per_image = mask_per_image
        self.fg_iou, self.seed_match_iou = float(fg_iou), float(seed_match_iou)

        self.backbone = build_backbone(backbone, pretrained=pretrained, frozen_bn=frozen_bn,
                                       freeze_at=freeze_at)
        self._backbone_trains = any(p.requires_grad for p in self.backbone.parameters())
        cf = self.backbone.out_channels
        scale = 1.0 / self.backbone.stride
        self.box_head = BoxHead(cf, hidden_dim, dropout, spatial_scale=scale,
                                score_scaling=score_scaling, fc6_dim=fc6_dim, pooler=box_pooler)
        self.wsddn = WSDDNHead(hidden_dim, num_classes)
        self.refine = nn.ModuleList(RefinementHead(hidden_dim, num_classes)
                                    for _ in range(n_refine))
        self.mask_head = MaskHead(cf, num_classes, n_mask, mask_dim, spatial_scale=scale,
                                  sampling_ratio=mask_sampling_ratio,
                                  agnostic_channels=num_classes if mask0_channels == "per_class"
                                  else 1, detach_chain=chain_detach_tower)

    # ------------------------------------------------------------------------------------------
    def forward(self, images: Tensor, proposals: list[Tensor],
                proposal_scores: list[Tensor] | None = None, targets: list[dict] | None = None):
        """
        Args:
            images (Tensor[B, 3, H, W]): normalised resized images.
            proposals (list of B Tensor[P_i, 4]): x1y1x2y2, pixels of the resized image, P_i ≥ 1.
            proposal_scores (list of B Tensor[P_i] or None): proposal objectness (None = 0).
            targets (training only; list of B dicts):
                ``labels`` float [C] multi-hot; ``bank_masks`` float [B_i, M, M] in [0, 1] (or
                uint8 0..255), each in its bank box frame; ``bank_boxes`` [B_i, 4] resized-image
                frame; ``proposal_to_bank`` long [P_i]; optional ``bank_valid`` bool [B_i].
        Returns:
            training: ``{"loss_mil", "loss_refine", "loss_mask_agnostic", "loss_mask_specific",
            "loss_acl"}`` scalars, each the mean over the batch of the per-image loss
            (refine / mask_specific / acl summed over their heads, eq. 4–6).
            eval: see :meth:`detect`.
        """
        check_inputs(images, proposals, proposal_scores, targets, self.num_classes,
                     self.training)
        proposals = [p.to(images.dtype) for p in proposals]
        if not self._backbone_trains:  # frozen: channels-last convolutions (no gradient routes
            images = channels_last_on_cpu(images)  # through its features' rounding)
        features = self.backbone(images)
        if self.training:
            return self._losses(features, proposals, proposal_scores, targets,
                                image_size=images.shape[-2:])
        return self.detect(features, proposals, proposal_scores, image_size=images.shape[-2:])

    # ------------------------------------------------------------------------------------------
    def _heads(self, features, proposals, proposal_scores):
        counts = [p.shape[0] for p in proposals]
        x = self.box_head(features, proposals, proposal_scores)
        s0 = self.wsddn(x, counts)                                      # B × [P_i, C]
        refine = []                                                     # n_r × B × (logits, deltas)
        for head in self.refine:
            logits, deltas = head(x)
            refine.append(list(zip(logits.split(counts), deltas.split(counts))))
        return s0, refine

    def detect(self, features: Tensor, proposals: list[Tensor],
               proposal_scores: list[Tensor] | None = None, image_size=None) -> list[dict]:
        """Detection outputs per image (eq. 4: the mean of the refinement heads).

        Returns a list of B dicts:
            ``boxes`` Tensor[P_i, C, 4]: class-specific boxes, resized-image frame: each head's
            deltas applied to the proposal, averaged over heads, clipped to ``image_size``
            (H, W) if given; the proposal itself for every class when n_r = 0.
            ``scores`` Tensor[P_i, C]: mean of the heads' softmax foreground probabilities
            (``S^0`` when n_r = 0).
            ``proposals`` Tensor[P_i, 4]: the input proposals.
        """
        s0, refine = self._heads(features, proposals, proposal_scores)
        C = self.num_classes
        out = []
        for i, props in enumerate(proposals):
            if self.n_refine == 0:
                scores = s0[i]
                boxes = props[:, None, :].expand(-1, C, 4).clone()
            else:
                scores = torch.stack([torch.softmax(r[i][0], dim=1)[:, 1:] for r in refine]).mean(0)
                boxes = torch.stack([decode_box_deltas(r[i][1], props) for r in refine]).mean(0)
                if image_size is not None:
                    h, w = int(image_size[0]), int(image_size[1])
                    boxes[..., 0::2] = boxes[..., 0::2].clamp(0, w)
                    boxes[..., 1::2] = boxes[..., 1::2].clamp(0, h)
            out.append({"boxes": boxes, "scores": scores, "proposals": props})
        return out

    def predict_masks(self, features: Tensor, boxes: list[Tensor], labels: list[Tensor],
                      head="mean") -> Tensor:
        """Mask probabilities for final detections.

        Args:
            features (Tensor[B, Cf, h, w]): ``model.backbone(images)``.
            boxes (list of B Tensor[K_i, 4]): resized-image frame.
            labels (list of B LongTensor[K_i]): 0-based class index (column of ``scores``).
            head: "mean" (the model's masks), or for diagnostics "agnostic" (``M^0`` alone) or
                ``k`` in 1..n_m (``M^k`` alone).
        Returns: Tensor[ΣK_i, 28, 28] probabilities in each box's frame: sigmoid of the mean of
        the class-specific heads' logits at the box's class (the authors' code averages logits),
        or ``M^0`` when n_m = 0 (at the box's class channel when it has one per class).
        """
        if len(boxes) != features.shape[0] or len(labels) != len(boxes):
            raise ValueError(f"predict_masks: one boxes/labels entry per image expected: "
                             f"{features.shape[0]} images, {len(boxes)} boxes, "
                             f"{len(labels)} labels")
        if head not in ("mean", "agnostic") and head not in range(1, self.n_mask + 1):
            raise ValueError(f"predict_masks: head must be 'mean', 'agnostic' or 1..{self.n_mask}, "
                             f"got {head!r}")
        boxes = [b.to(features.dtype) for b in boxes]
        lab = torch.cat(labels).long() if labels else torch.zeros(0, dtype=torch.long)
        agnostic, specific = self.mask_head(features, boxes, lab.to(features.device))
        if self.n_mask == 0 or head == "agnostic":
            return torch.sigmoid(agnostic)
        chosen = specific if head == "mean" else specific[head - 1:head]
        return torch.sigmoid(torch.stack(chosen).mean(0))

    # ------------------------------------------------------------------------------------------
    def _losses(self, features, proposals, proposal_scores, targets, image_size=None) -> dict:
        s0, refine = self._heads(features, proposals, proposal_scores)
        losses = {k: [] for k in ("loss_mil", "loss_refine")}
        mask_boxes, mask_cls, mask_info = [], [], []
        image_w = (self.refine_weight == "image_score")
        for i, props in enumerate(proposals):
            tgt = targets[i]
            t = tgt["labels"].to(s0[i].dtype)
            y = wsddn_image_scores(s0[i])
            losses["loss_mil"].append(wsddn_mil_loss(y, t, reduction=self.mil_reduction))
            y_w = y.detach().clamp(0, 1) if image_w else None
            # eq. 3–4: each head learns from the previous head's top boxes (head 1 from S0, whose
            # pseudo boxes are the proposals; later heads from the previous head's regressed
            # boxes when refine_pseudo_box = regressed).
            prev = s0[i].detach()
            prev_boxes = None
            loss_ref = s0[i].sum() * 0  # n_r = 0: no refinement term (eq. 4)
            for r in refine:
                logits, deltas = r[i]
                cls_r, w, reg_t, _ = oicr_pseudo_labels(prev, props, t, self.fg_iou,
                                                        pseudo_boxes=prev_boxes, image_scores=y_w)
                loss_ref = loss_ref + refinement_loss(logits, deltas, cls_r, w, reg_t,
                                                      box_loss=self.refine_box_loss)
                prev = torch.softmax(logits, dim=1)[:, 1:].detach()
                if self.refine_pseudo_box == "regressed":
                    prev_boxes = decode_box_deltas(deltas.detach(), props)     # [P, C, 4]
            losses["loss_refine"].append(loss_ref)
            if self.learning == "cascade":  # the mask branch on the final detections (cascade.py)
                boxes_i, cls_fg, m_t, m_valid = cascade_mask_inputs(
                    prev, props, t, prev_boxes, self.fg_iou, self.mask_per_image,
                    tgt["bank_masks"], tgt["bank_boxes"], tgt["proposal_to_bank"],
                    tgt.get("bank_valid"), image_size)
                a_hat = None
            else:
                boxes_i, cls_fg, m_t, m_valid, a_hat = self._mask_targets(prev, props, t,
                                                                          prev_boxes, tgt)
            if self.mask_targets == "binary":
                m_t = (m_t >= 0.5).to(m_t.dtype)  # GrabCut masks binarised (authors' >= 0.5)
            mask_boxes.append(boxes_i)
            mask_cls.append(cls_fg)
            w_mask = y.detach()[cls_fg] if self.mask_specific_weight == "image_score" else None
            mask_info.append((m_t, m_valid, w_mask, a_hat))

        # One mask-head call for the whole batch (also when no image has a foreground proposal,
        # so that every parameter takes part in the graph).
        # Cascade: segmentation does not feed back into the backbone (nor detection).
        mask_features = features.detach() if self.learning == "cascade" else features
        agnostic, specific = self.mask_head(mask_features, mask_boxes, torch.cat(mask_cls))
        counts = [b.shape[0] for b in mask_boxes]
        agnostic = agnostic.split(counts)
        specific = [s.split(counts) for s in specific]
        spec = [[s[i] for s in specific] for i in range(len(mask_cls))]   # n_m × [K_i, 28, 28]
        mask_losses, self.last_diagnostics = mask_branch_losses(self, list(agnostic), spec,
                                                                mask_info)
        out = {k: torch.stack(v).mean() for k, v in losses.items()}
        out.update(mask_losses)
        return {k: out[k] for k in LOSS_KEYS}

    def _mask_targets(self, prev, props, t, prev_boxes, tgt):
        """One image's mask proposals and their targets (eq. 5, 7): ``t_p^{n_r}`` = class of the
        last head's top (pseudo) box that the proposal overlaps with IoU ≥ fg_iou (the authors'
        code: the last head's own output, the same top box the seeds are drawn around); S^0 when
        n_r = 0. Returns (boxes [K, 4], 0-based classes [K], M^0 targets [K, 28, 28], valid [K],
        â_p [K])."""
        cls_t, _, _, matched = oicr_pseudo_labels(prev, props, t, self.fg_iou,
                                                  pseudo_boxes=prev_boxes)
        fg_all = torch.nonzero(cls_t > 0).flatten()
        fg = fg_all
        if fg.numel() > self.mask_per_image:
            fg = fg[torch.randperm(fg.numel(), device=fg.device)[:self.mask_per_image]]
        cls_fg = cls_t[fg] - 1                                          # 0-based class
        # â_p (eq. 7–8): the matched top box's score or the proposal's own score.
        a_hat = detection_activation(prev, cls_t, matched, fg, self.acl_target)
        seeds = select_seeds(prev, props, t, self.n_seed, pseudo_boxes=prev_boxes,
                             candidates=fg_all if self.seed_pool == "foreground" else None)
        m_t, m_valid = seed_mask_targets(
            props, seeds, tgt["bank_masks"], tgt["bank_boxes"].to(props.dtype),
            tgt["proposal_to_bank"], self.seed_match_iou, tgt.get("bank_valid"), query_idx=fg)
        return props[fg], cls_fg, m_t, m_valid, a_hat
