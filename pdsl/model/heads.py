"""The heads of PDSL on top of the backbone's feature map (paper §3.2–3.3, Fig. 2).

All proposal boxes are ``x1y1x2y2`` in pixels of the resized image the network sees; RoIPool /
RoIAlign map them to the feature map with ``spatial_scale = 1/stride`` (1/16, or 1/8 for
ResNet-WS). Proposals of a batch are
passed as a list (one ``[P_i, 4]`` tensor per image) and the outputs are concatenated in that
order (``ΣP_i`` rows).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .roi_ops import roi_align, roi_pool


def channels_last_on_cpu(x: Tensor) -> Tensor:
    """``x`` [N, C, H, W] in channels-last memory order on the CPU (oneDNN's convolutions run
    ~1.4x faster forward + backward on it; the values are the same tensor), as is elsewhere."""
    if x.device.type == "cpu" and x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x


class BoxHead(nn.Module):
    """RoIPool 7×7 → FC → ReLU → dropout → FC → ReLU → dropout (shared by WSDDN and the
    refinement heads). ``fc6_dim`` / ``hidden_dim`` are the two FC widths (the authors' code:
    4096 / 4096 for ResNet-18, 2048 / 4096 for ResNet-50/101; ``fc6_dim=None`` = ``hidden_dim``).
    ``pooler``: ``"roipool"`` (paper and authors' code) or ``"roialign"`` (sampling ratio 2,
    aligned).

    ``score_scaling``: the pooled RoI features are multiplied by ``(proposal score + 1)`` before
    the FCs (the authors' code, ``roi_heads_pdsl.py``, does this with the proposal objectness, so
    better proposals speak louder).
    """

    def __init__(self, in_channels: int, hidden_dim: int = 1024, dropout: float = 0.5,
                 pool_size: int = 7, spatial_scale: float = 1 / 16, score_scaling: bool = True,
                 fc6_dim: int | None = None, pooler: str = "roipool"):
        super().__init__()
        if pooler not in ("roipool", "roialign"):
            raise ValueError(f"BoxHead: pooler must be roipool or roialign, got {pooler!r}")
        self.pool_size = pool_size
        self.spatial_scale = spatial_scale
        self.score_scaling = score_scaling
        self.pooler = pooler
        fc6_dim = fc6_dim or hidden_dim
        self.fc6 = nn.Linear(in_channels * pool_size * pool_size, fc6_dim)
        self.fc7 = nn.Linear(fc6_dim, hidden_dim)
        self.drop = nn.Dropout(dropout)
        for fc in (self.fc6, self.fc7):
            nn.init.kaiming_uniform_(fc.weight, a=1)
            nn.init.zeros_(fc.bias)

    def forward(self, features: Tensor, proposals: list[Tensor],
                proposal_scores: list[Tensor] | None) -> Tensor:
        """features [B, Cf, h, w] (feature-map frame), proposals list of [P_i, 4] (resized-image
        frame), proposal_scores list of [P_i] or None → box features [ΣP_i, hidden_dim]."""
        scale = None
        if self.score_scaling and proposal_scores is not None:
            scale = torch.cat(proposal_scores).to(features.dtype) + 1
        if self.pooler == "roipool":  # the scaling in the pooling's last pass (see roi_ops)
            x = roi_pool(features, proposals, self.pool_size, self.spatial_scale, scale)
        else:
            x = roi_align(features, proposals, self.pool_size, self.spatial_scale,
                          sampling_ratio=2, aligned=True)
            x = x if scale is None else x * scale[:, None, None, None]
        x = self.fc6(x.flatten(1))
        x = self.drop(torch.relu(x))
        return self.drop(torch.relu(self.fc7(x)))


class WSDDNHead(nn.Module):
    """Two-stream WSDDN [24]: classification stream ``C`` and detection stream ``D`` (both
    ``[P, n_c]`` logits)."""

    def __init__(self, hidden_dim: int, num_classes: int):
        super().__init__()
        self.fc_c = nn.Linear(hidden_dim, num_classes)
        self.fc_d = nn.Linear(hidden_dim, num_classes)
        for fc in (self.fc_c, self.fc_d):
            nn.init.normal_(fc.weight, std=0.01)
            nn.init.zeros_(fc.bias)

    def forward(self, box_features: Tensor, counts: list[int]) -> list[Tensor]:
        """box_features [ΣP_i, hidden] → per image ``S0 = softmax_c(C) ⊙ softmax_p(D)``
        ``[P_i, n_c]`` (the softmax over proposals runs within each image)."""
        c = torch.softmax(self.fc_c(box_features), dim=1)
        d = self.fc_d(box_features)
        return [ci * torch.softmax(di, dim=0)
                for ci, di in zip(c.split(counts), d.split(counts))]


def wsddn_image_scores(s0: Tensor) -> Tensor:
    """``y_c = Σ_p S0_pc`` (sum pooling over proposals): [P, n_c] → [n_c]."""
    return s0.sum(dim=0)


class RefinementHead(nn.Module):
    """One OICR-style refinement head: ``Linear → n_c + 1`` logits (0 = background) and
    ``Linear → n_c·4`` class-specific Fast R-CNN deltas (see ``pdsl.box_coder.encode_box_deltas``)."""

    def __init__(self, hidden_dim: int, num_classes: int):
        super().__init__()
        self.cls = nn.Linear(hidden_dim, num_classes + 1)
        self.bbox = nn.Linear(hidden_dim, num_classes * 4)
        nn.init.normal_(self.cls.weight, std=0.01)
        nn.init.normal_(self.bbox.weight, std=0.001)
        nn.init.zeros_(self.cls.bias)
        nn.init.zeros_(self.bbox.bias)

    def forward(self, box_features: Tensor) -> tuple[Tensor, Tensor]:
        """[N, hidden] → (logits [N, n_c+1], deltas [N, n_c*4])."""
        return self.cls(box_features), self.bbox(box_features)


class MaskHead(nn.Module):
    """RoIAlign 14×14 (aligned; ``sampling_ratio`` samples per bin side, 0 = adaptive,
    ``ceil(bin size)``, detectron2's default) → 4 × (conv3×3 ``mask_dim`` + ReLU) → deconv 2×2
    stride 2 + ReLU → 1×1 predictors: ``M^0`` with ``agnostic_channels`` channels (1: one
    class-agnostic mask, the paper; ``n_c``: one per class, the authors' code) and ``n_mask``
    class-specific heads of ``n_c`` channels each (``M^1..M^{n_m}``), all 28×28 logits in the
    frame of their proposal box (paper §3.3; the tower is shared, the predictors are not)."""

    def __init__(self, in_channels: int, num_classes: int, n_mask: int, mask_dim: int = 256,
                 pool_size: int = 14, spatial_scale: float = 1 / 16, sampling_ratio: int = 2,
                 agnostic_channels: int = 1, detach_chain: bool = False):
        super().__init__()
        if agnostic_channels not in (1, num_classes):
            raise ValueError(f"MaskHead: agnostic_channels must be 1 or num_classes "
                             f"({num_classes}), got {agnostic_channels!r}")
        self.pool_size = pool_size
        self.spatial_scale = spatial_scale
        self.sampling_ratio = sampling_ratio
        self.detach_chain = bool(detach_chain)  # M^1..M^n read the tower's output detached
        layers = []
        cin = in_channels
        for _ in range(4):
            layers += [nn.Conv2d(cin, mask_dim, 3, padding=1), nn.ReLU(inplace=True)]
            cin = mask_dim
        self.tower = nn.Sequential(*layers)
        self.deconv = nn.ConvTranspose2d(mask_dim, mask_dim, 2, stride=2)
        self.agnostic = nn.Conv2d(mask_dim, agnostic_channels, 1)
        self.specific = nn.ModuleList(nn.Conv2d(mask_dim, num_classes, 1) for _ in range(n_mask))
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
        for m in [self.agnostic, *self.specific]:
            nn.init.normal_(m.weight, std=0.001)

    def pool(self, features: Tensor, boxes: list[Tensor]) -> Tensor:
        """RoIAlign of the mask branch: [ΣK_i, Cf, 14, 14]."""
        return roi_align(features, boxes, self.pool_size, self.spatial_scale,
                         sampling_ratio=self.sampling_ratio, aligned=True)

    def forward(self, features: Tensor, boxes: list[Tensor],
                labels: Tensor | None = None) -> tuple[Tensor, list[Tensor]]:
        """features [B, Cf, h, w], boxes list of [K_i, 4] (resized-image frame), labels
        LongTensor[ΣK_i] (0-based class of each box) → (``M^0`` logits [ΣK_i, 28, 28], at each
        box's class channel when it has one per class; n_mask × ``M^k`` logits [ΣK_i, 28, 28] at
        each box's class), box frame. Only the channels read are computed: each box's predictor
        rows (1×1 convolutions) gathered at its class and applied in one batched product.
        ``labels=None``: every channel ([ΣK_i, C0, 28, 28] and n_mask × [ΣK_i, n_c, 28, 28])."""
        x = torch.relu(self.deconv(self.tower(channels_last_on_cpu(self.pool(features, boxes)))))
        if labels is None:
            return self.agnostic(x), [head(x) for head in self.specific]
        K = x.shape[0]
        if labels.shape != (K,):
            raise ValueError(f"MaskHead: one label per box expected ([ΣK_i = {K}]), got "
                             f"{tuple(labels.shape)}")
        labels = labels.long().to(x.device)
        ag_rows = 0 if self.agnostic.out_channels == 1 else labels            # [K] or one row
        w = [self.agnostic.weight[:, :, 0, 0][ag_rows].expand(K, -1)]          # [K, D] each
        b = [self.agnostic.bias[ag_rows].expand(K)]
        for head in self.specific:
            w.append(head.weight[:, :, 0, 0][labels])
            b.append(head.bias[labels])
        flat = x.flatten(2)                                                    # [K, D, M·M]
        M = x.shape[-1]
        if self.detach_chain and self.specific:  # a diagnostic: the chain cannot shape the tower
            out = torch.cat([torch.baddbmm(b[0][:, None, None], w[0][:, None], flat),
                             torch.baddbmm(torch.stack(b[1:], 1)[..., None],
                                           torch.stack(w[1:], 1), flat.detach())], 1)
        else:
            out = torch.baddbmm(torch.stack(b, 1)[..., None], torch.stack(w, 1), flat)
        out = out.reshape(K, 1 + len(self.specific), M, M)                     # [K, 1 + n_m, M, M]
        return out[:, 0], [out[:, k] for k in range(1, out.shape[1])]
