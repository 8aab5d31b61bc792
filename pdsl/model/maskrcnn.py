"""The fully supervised ceiling: torchvision's Mask R-CNN on the backbone of a PDSL run config.

:func:`build_maskrcnn` keeps what makes the comparison fair and takes the rest from the standard
Mask R-CNN (He et al. 2017, torchvision's defaults):

* **backbone**: ``pdsl.model.backbone.build_backbone`` with the config's ``model.backbone``,
  ``model.pretrained``, ``model.frozen_bn`` and ``model.freeze_at`` -- the same network and
  initialisation PDSL trains. One feature map (stride 8 or 16), so one anchor level and
  ``MultiScaleRoIAlign(["0"], 7 | 14)`` (torchvision wraps a tensor output as feature ``"0"``).
* **head widths**: the box head's two FCs are ``model.fc6_dim`` (or ``hidden_dim``) and
  ``model.hidden_dim`` wide, the mask head's four 3x3 convs ``model.mask_dim`` -- PDSL's own
  head widths, so the ceiling has no more head capacity than the weakly supervised model.
* **input**: ``GeneralizedRCNNTransform`` with ``input.train_scales`` (one drawn per image),
  ``input.max_size``, ``input.pixel_mean``/``pixel_std`` (RGB in [0, 1]) and
  ``input.size_divisibility``.
* **anchors**: sizes 16, 32, 64, ... up to the first >= the largest training scale (at most 512),
  ratios 0.5, 1, 2 (:func:`anchor_sizes`; the demo's 128-192 px images get 16..256).

At test time :meth:`SupervisedMaskRCNN.predict_full_image` returns what
``pdsl.engine.inference.predict_image`` returns for PDSL (boxes, scores, 0-based labels, full-image
bool masks, image-level class scores), so evaluation and prediction score it unchanged.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import MultiScaleRoIAlign

from ..amp import autocast, effective_amp
from .backbone import build_backbone

KIND = "maskrcnn"
ASPECT_RATIOS = (0.5, 1.0, 2.0)
#: test-time thresholds (torchvision's and detectron2's defaults for evaluation)
TEST_SCORE_THRESH = 0.05
TEST_NMS = 0.5
MASK_THRESHOLD = 0.5
#: RoIs sampled per training image for the box head (25 % foreground; the mask head takes the
#: foreground ones). torchvision's default is 512; on a CPU its RoIAlign backward is then most
#: of a step (demo data, 1 thread: 2.45 vs 1.18 s/step, pipeline/scripts/bench_ceiling.py).
#: PDSL's mask heads see at most model.mask_per_image (32 on the demo) proposals per image.
BOX_BATCH_PER_IMAGE = 128


def anchor_sizes(train_scales) -> tuple:
    """Powers of two from 16 up to the first one >= the largest training scale, at most 512."""
    top, sizes = max(int(s) for s in train_scales), [16]
    while sizes[-1] < min(top, 512):
        sizes.append(sizes[-1] * 2)
    return tuple(sizes)


class TwoFCHead(nn.Module):
    """torchvision's ``TwoMLPHead`` with PDSL's two widths (fc6, fc7)."""

    def __init__(self, in_features: int, fc6: int, fc7: int):
        super().__init__()
        self.fc6 = nn.Linear(in_features, fc6)
        self.fc7 = nn.Linear(fc6, fc7)

    def forward(self, x):
        return torch.relu(self.fc7(torch.relu(self.fc6(x.flatten(start_dim=1)))))


class SupervisedMaskRCNN(MaskRCNN):
    """torchvision Mask R-CNN that predicts like PDSL (see :meth:`predict_full_image`)."""

    kind = KIND
    uses_proposals = False  # evaluation / prediction need not compute proposals for it

    @torch.no_grad()
    def predict_full_image(self, image_bgr: np.ndarray, p, device="cpu",
                           with_masks: bool = True) -> dict:
        """Detections of one ``uint8 [H, W, 3]`` BGR image, in its frame, as
        ``pdsl.engine.inference.predict_image`` returns them: ``boxes [K, 4]`` x1y1x2y2,
        ``scores [K]`` (descending), ``labels [K]`` 0-based class indices, ``masks bool
        [K, H, W]`` (if ``with_masks``), ``class_scores [C]`` (best detection score per class).

        ``p`` (:class:`~pdsl.engine.inference.TestParams`): one pass per scale in ``p.scales``
        (shorter side, capped by ``p.max_size``), each also mirrored if ``p.flip``; several
        passes are merged by per-class NMS (IoU :data:`TEST_NMS`), at most ``p.max_det`` kept.
        """
        from torchvision.ops import batched_nms

        was_training = self.training
        self.eval()
        H, W = image_bgr.shape[:2]
        x = torch.from_numpy(np.ascontiguousarray(image_bgr[:, :, ::-1])).to(device)
        x = x.permute(2, 0, 1).float().div_(255.0)
        rh = self.roi_heads
        rh.score_thresh, rh.nms_thresh, rh.detections_per_img = (TEST_SCORE_THRESH, TEST_NMS,
                                                                  int(p.max_det))
        sizes = self.transform.min_size, self.transform.max_size  # the training scales
        self.transform.max_size = int(p.max_size)
        amp = effective_amp(p.amp, device)
        outs = []
        try:
            for scale in p.scales:
                for flip in ((False, True) if p.flip else (False,)):
                    self.transform.min_size = (int(scale),)
                    with autocast(amp, device):
                        o = self([x.flip(-1) if flip else x])[0]
                    boxes = o["boxes"].float()
                    masks = o["masks"][:, 0].float() if with_masks else None
                    if flip:
                        boxes = torch.stack([W - boxes[:, 2], boxes[:, 1], W - boxes[:, 0],
                                             boxes[:, 3]], 1)
                        masks = masks.flip(-1) if with_masks else None
                    outs.append((boxes, o["scores"].float(), o["labels"] - 1, masks))
        finally:
            self.transform.min_size, self.transform.max_size = sizes
        boxes, scores, labels = (torch.cat([o[i] for o in outs]) for i in range(3))
        keep = torch.argsort(scores, descending=True, stable=True)
        if len(outs) > 1:
            keep = batched_nms(boxes, scores, labels, TEST_NMS)
        keep = keep[:int(p.max_det)]
        C = rh.box_predictor.cls_score.out_features - 1
        scores_np, labels_np = scores[keep].cpu().numpy(), labels[keep].cpu().numpy()
        class_scores = np.zeros(C, np.float32)
        np.maximum.at(class_scores, labels_np, scores_np)
        out = {"boxes": boxes[keep].cpu().numpy().reshape(-1, 4), "scores": scores_np,
               "labels": labels_np.astype(np.int64), "class_scores": class_scores}
        if with_masks:
            masks = torch.cat([o[3] for o in outs])[keep]
            out["masks"] = (masks >= MASK_THRESHOLD).cpu().numpy().reshape(-1, H, W)
        if was_training:
            self.train()
        return out


def build_maskrcnn(cfg, num_classes: int, sizes=None, load_pretrained: bool = True):
    """Mask R-CNN for ``num_classes`` foreground classes (+ background) from a PDSL run config.

    ``sizes``: anchor sizes (default :func:`anchor_sizes` of ``input.train_scales``; a checkpoint
    records them). ``load_pretrained=False`` skips ``model.pretrained`` (weights come from a
    checkpoint)."""
    m, i = cfg.model, cfg.input
    backbone = build_backbone(m.backbone, pretrained=m.pretrained if load_pretrained else None,
                              frozen_bn=m.frozen_bn, freeze_at=m.freeze_at)
    ch = backbone.out_channels
    sizes = tuple(int(s) for s in (sizes or anchor_sizes(i.train_scales)))
    fc6 = int(m.fc6_dim or m.hidden_dim)
    model = SupervisedMaskRCNN(
        backbone, num_classes=None,
        rpn_anchor_generator=AnchorGenerator((sizes,), (ASPECT_RATIOS,)),
        box_roi_pool=MultiScaleRoIAlign(["0"], 7, sampling_ratio=2),
        box_head=TwoFCHead(ch * 7 * 7, fc6, int(m.hidden_dim)),
        box_predictor=FastRCNNPredictor(int(m.hidden_dim), num_classes + 1),
        mask_roi_pool=MultiScaleRoIAlign(["0"], 14, sampling_ratio=2),
        mask_head=MaskRCNNHeads(ch, (int(m.mask_dim),) * 4, 1),
        mask_predictor=MaskRCNNPredictor(int(m.mask_dim), int(m.mask_dim), num_classes + 1),
        box_detections_per_img=100, box_batch_size_per_image=BOX_BATCH_PER_IMAGE)
    model.transform = GeneralizedRCNNTransform(
        tuple(int(s) for s in i.train_scales), int(i.max_size), list(i.pixel_mean),
        list(i.pixel_std), size_divisible=int(i.size_divisibility))
    model.anchor_sizes = sizes
    return model
