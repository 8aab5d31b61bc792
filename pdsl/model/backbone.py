"""Backbones: images ``[B, 3, H, W]`` (normalised, resized-image frame) → one feature map at
stride ``s = backbone.stride`` ``[B, out_channels, ~H/s, ~W/s]`` (the RoIPool/RoIAlign input,
spatial scale 1/s): s = 16 for the DC5/C4/tiny layouts, 8 for ResNet-WS and ``tiny_ws``.

* ``resnet18`` / ``resnet50`` / ``resnet101``: torchvision ResNets in the DC5 layout (res5 keeps
  stride 16 and uses dilation 2), output = C5. ResNet-18's BasicBlock rejects torchvision's
  ``replace_stride_with_dilation``, so its res5 is dilated by hand with the same layout
  (first block stride 1, later blocks dilation 2).
* ``resnet18_trunc``: ResNet-18 stem + layer1..layer3 (C4, 256 channels, stride 16); standard
  widths, so ImageNet weights load. The fast CPU choice with pretrained weights.
* ``tiny``: a 6-conv CNN with max-pooling (128 channels, stride 16) for CPU runs, pretrained on
  the dataset's own image-level labels (``cli.py pretrain-backbone``).
* ``resnet18_ws`` / ``resnet50_ws`` / ``resnet101_ws``: ResNet-WS as in the authors' code
  (``wsl/modeling/backbone/resnet_wsl.py``), output stride **8**: every strided residual
  convolution becomes stride 1 and the resolution is reduced by 2×2 max-pooling at the *end* of
  the stage instead (res2 ends with a 2×2/2 pool → stride 8; res3 ends with a 2×2/1 pool, its
  input zero-padded right and bottom, so stride 8 stays); res4 and res5 keep stride 8 with all
  their 3×3 convolutions dilated by 2. Pooling adds no parameters, so torchvision's ImageNet state
  dicts load unchanged. One departure: the stem is torchvision's (7×7/2 conv + 3×3/2 max-pool)
  because its weights are the ones available; the authors' stem is three 3×3 convs (their
  ImageNet ResNet-WS weights, from DRN-WSOD, are not torchvision's).
* ``tiny_ws``: ``tiny`` with the same trick (its last 2×2/2 max-pool becomes 2×2/1, the convs
  after it dilated by 2): stride 8, same parameters, so a ``tiny`` pretrain file loads.

BatchNorm is frozen (``FrozenBatchNorm2d``) by default: the paper trains with 1 image per GPU.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor, nn
import torchvision
from torchvision.ops.misc import FrozenBatchNorm2d

from pdsl.errors import ConfigError

BACKBONES = ("resnet18", "resnet50", "resnet101", "resnet18_trunc", "resnet18_ws",
             "resnet50_ws", "resnet101_ws", "tiny", "tiny_ws")
_TV = {  # name -> (constructor, weights enum name)
    "resnet18": ("resnet18", "ResNet18_Weights"),
    "resnet18_trunc": ("resnet18", "ResNet18_Weights"),
    "resnet50": ("resnet50", "ResNet50_Weights"),
    "resnet101": ("resnet101", "ResNet101_Weights"),
    "resnet18_ws": ("resnet18", "ResNet18_Weights"),
    "resnet50_ws": ("resnet50", "ResNet50_Weights"),
    "resnet101_ws": ("resnet101", "ResNet101_Weights"),
}
_RESNET_PARTS = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")


class ResNetBackbone(nn.Module):
    """A torchvision ResNet without ``avgpool``/``fc`` (and without ``layer4`` when truncated).
    Parameter names equal torchvision's, so a torchvision state dict loads directly."""

    def __init__(self, resnet: nn.Module, truncate: bool, out_channels: int):
        super().__init__()
        parts = _RESNET_PARTS[:-1] if truncate else _RESNET_PARTS
        for name in parts:
            setattr(self, name, getattr(resnet, name))
        self._parts = parts
        self.out_channels = out_channels
        self.stride = 16

    def forward(self, images: Tensor) -> Tensor:
        x = images
        for name in self._parts:
            x = getattr(self, name)(x)
        return x


def _pool_same() -> nn.Module:
    """2×2 max-pool with stride 1 that keeps the size: zero-pad right and bottom by one pixel
    first (the authors' res3 pool; zero padding is harmless after a ReLU)."""
    return nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.MaxPool2d(2, stride=1))


def _unstride_dilate(stage: nn.Sequential, dilation: int) -> None:
    """Make a torchvision ResNet stage stride 1 (its first block's strided 3×3 conv (Bottleneck:
    conv2, BasicBlock: conv1) and its 1×1 shortcut) and dilate every 3×3 conv by ``dilation``."""
    for block in stage:
        for conv in block.modules():
            if isinstance(conv, nn.Conv2d):
                conv.stride = (1, 1)
                if conv.kernel_size == (3, 3):
                    conv.dilation, conv.padding = (dilation, dilation), (dilation, dilation)


class ResNetWSBackbone(nn.Module):
    """ResNet-WS (authors' ``resnet_wsl.py``), output stride 8, built from a torchvision ResNet so
    that parameter names (``conv1``, ``layer1.0.conv1``, …) and shapes are torchvision's.

    Forward: stem (stride 4) → layer1 → 2×2/2 max-pool (stride 8) → layer2 (unstrided) → 2×2/1
    max-pool → layer3, layer4 (unstrided, 3×3 convs dilated by 2) → ``[B, C5, ~H/8, ~W/8]``.
    """

    def __init__(self, resnet: nn.Module, out_channels: int):
        super().__init__()
        for name in _RESNET_PARTS:
            setattr(self, name, getattr(resnet, name))
        _unstride_dilate(self.layer2, 1)
        _unstride_dilate(self.layer3, 2)
        _unstride_dilate(self.layer4, 2)
        self.pool2 = nn.MaxPool2d(2, stride=2)   # end of res2: stride 4 → 8
        self.pool3 = _pool_same()                # end of res3: stays at 8
        self.out_channels = out_channels
        self.stride = 8

    def forward(self, images: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(images))))
        x = self.pool2(self.layer1(x))
        x = self.pool3(self.layer2(x))
        return self.layer4(self.layer3(x))


class TinyBackbone(nn.Module):
    """Small CNN for CPU runs on the synthetic benchmark (the architecture of
    ``pipeline/scripts/probe_learnability.py``): conv5×5/2 (32), then conv3×3 blocks 32, 64, 128
    each followed by max-pool /2, then two conv3×3 blocks at 128 → stride 16, 128 channels;
    BatchNorm (or FrozenBatchNorm2d) + ReLU after every conv.

    Trained from scratch inside PDSL it stays at the class-frequency prior (measured); pretrain it
    as an image-level classifier on the same labels first (``cli.py pretrain-backbone``), the
    stand-in for the paper's ImageNet initialisation, and load that file as ``pretrained``.
    """

    def __init__(self, width: int = 32, norm=nn.BatchNorm2d, ws: bool = False):
        """``ws=True``: the ResNet-WS trick (``tiny_ws``): the last max-pool is 2×2/1 on a
        right/bottom zero-padded input and the two convs after it are dilated by 2 → stride 8,
        same parameters (module indices unchanged)."""
        super().__init__()
        w = width
        d = 2 if ws else 1

        def block(cin, cout, dil=1):
            return [nn.Conv2d(cin, cout, 3, padding=dil, dilation=dil, bias=False), norm(cout),
                    nn.ReLU(inplace=True)]

        layers = [nn.Conv2d(3, w, 5, stride=2, padding=2, bias=False), norm(w), nn.ReLU(inplace=True)]
        layers += block(w, w) + [nn.MaxPool2d(2)]
        layers += block(w, 2 * w) + [nn.MaxPool2d(2)]
        layers += block(2 * w, 4 * w) + [_pool_same() if ws else nn.MaxPool2d(2)]
        layers += block(4 * w, 4 * w, d) + block(4 * w, 4 * w, d)
        self.body = nn.Sequential(*layers)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        self.out_channels = 4 * w
        self.stride = 8 if ws else 16

    def forward(self, images: Tensor) -> Tensor:
        return self.body(images)


def _dilate_res5_basic(resnet: nn.Module) -> None:
    """DC5 for a BasicBlock ResNet: res5's first block stride 1 (its convs keep dilation 1, as
    torchvision does for the first dilated block), later blocks dilation 2."""
    first = resnet.layer4[0]
    first.conv1.stride = (1, 1)
    if first.downsample is not None:
        first.downsample[0].stride = (1, 1)
    for block in list(resnet.layer4)[1:]:
        for conv in (block.conv1, block.conv2):
            conv.dilation, conv.padding = (2, 2), (2, 2)


def torchvision_cached_weights(name: str) -> Path:
    """Path of torchvision's ImageNet checkpoint for ``name`` in the local torch hub cache;
    ConfigError if it is not there (this machine cannot download)."""
    ctor, enum_name = _TV[name]
    weights = getattr(torchvision.models, enum_name).IMAGENET1K_V1
    fname = os.path.basename(weights.url)
    path = Path(torch.hub.get_dir()) / "checkpoints" / fname
    if not path.is_file():
        raise ConfigError(
            f"pretrained='torchvision' needs {path} ({ctor} ImageNet weights, {weights.url}), "
            f"which is not in the torch hub cache, and nothing is downloaded here. Fetch that "
            f"file on a machine with network access and either copy it to {path} or pass its "
            f"path as pretrained=/path/to/{fname}.")
    return path


def load_backbone_weights(backbone: nn.Module, path: str | os.PathLike) -> dict:
    """Load a torchvision-format ResNet state dict (``.pth``) into ``backbone``.

    Accepts a plain state dict or one wrapped under ``state_dict``/``model``; a ``module.`` prefix
    is stripped; ``fc.*`` (and ``layer4.*`` for a truncated backbone) are ignored. Any other
    missing or unexpected key, or a shape mismatch, raises ConfigError listing them.
    Returns ``{"loaded": n, "ignored": [...]}``.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"pretrained weights file {path} does not exist")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - report any unpickling problem as one line
        raise ConfigError(f"cannot read pretrained weights {path}: {e}") from e
    for key in ("state_dict", "model"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    if not isinstance(sd, dict):
        raise ConfigError(f"{path} holds a {type(sd).__name__}, not a state dict")
    sd = {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}
    own = backbone.state_dict()
    ignore = ("fc.",) + (() if hasattr(backbone, "layer4") else ("layer4.",))
    ignored = sorted(k for k in sd if k.startswith(ignore))
    sd = {k: v for k, v in sd.items() if not k.startswith(ignore)}
    # FrozenBatchNorm2d has no num_batches_tracked; ignore it either way.
    sd = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    own_keys = {k for k in own if not k.endswith("num_batches_tracked")}
    missing = sorted(own_keys - set(sd))
    unexpected = sorted(set(sd) - own_keys)
    mismatched = sorted(f"{k}: file {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
                        for k in own_keys & set(sd) if sd[k].shape != own[k].shape)
    if missing or unexpected or mismatched:
        def show(xs):
            return ", ".join(xs[:8]) + (f", … ({len(xs)} in all)" if len(xs) > 8 else "") or "-"
        raise ConfigError(
            f"pretrained weights {path} do not fit the backbone: missing {show(missing)}; "
            f"unexpected {show(unexpected)}; shape mismatch {show(mismatched)}. A torchvision "
            f"ResNet state dict of the same depth (or a `cli.py pretrain-backbone` file for "
            f"'tiny') is expected.")
    backbone.load_state_dict(sd, strict=False)
    return {"loaded": len(sd), "ignored": ignored}


def freeze_backbone(backbone: nn.Module, freeze_at: int) -> None:
    """detectron2's ``FREEZE_AT``: 0 trains all, 1 freezes the stem, k ≥ 2 the stem and the first
    k - 1 residual stages; 5 freezes the whole ResNet (the authors' ``FREEZE_AT: 5``). Other
    backbones (``tiny``) accept 0 or 5 (nothing / everything)."""
    if not isinstance(freeze_at, int) or not 0 <= freeze_at <= 5:
        raise ConfigError(f"freeze_at must be an integer in 0..5, got {freeze_at!r}")
    if not hasattr(backbone, "layer1"):
        if freeze_at not in (0, 5):
            raise ConfigError(f"freeze_at={freeze_at}: a non-ResNet backbone freezes all (5) or "
                              f"nothing (0)")
        if freeze_at == 5:
            backbone.requires_grad_(False)
        return
    parts = [(backbone.conv1, backbone.bn1)] + [
        (getattr(backbone, f"layer{k}", None),) for k in range(1, 5)]
    for stage in parts[:freeze_at]:
        for m in stage:
            if m is not None:  # truncated backbones have no layer4
                m.requires_grad_(False)


def build_backbone(name: str, pretrained: str | os.PathLike | None = None,
                   frozen_bn: bool = True, freeze_at: int = 0) -> nn.Module:
    """Build a backbone with attributes ``out_channels`` and ``stride`` (16 or 8).

    Args:
        name: one of ``BACKBONES``.
        pretrained: None (random init), ``"torchvision"`` (ImageNet weights from the local torch
            hub cache; never downloads) or the path of a torchvision ResNet ``.pth`` state dict.
        frozen_bn: FrozenBatchNorm2d (statistics and affine fixed) instead of BatchNorm2d.
        freeze_at: see :func:`freeze_backbone` (0 trains everything, 5 freezes all).
    """
    if name not in BACKBONES:
        raise ConfigError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
    if name in ("tiny", "tiny_ws"):
        if pretrained == "torchvision":
            raise ConfigError(f"backbone {name!r} has no torchvision weights: pretrain it with "
                              "`cli.py pretrain-backbone` and pass that file")
        backbone = TinyBackbone(norm=FrozenBatchNorm2d if frozen_bn else nn.BatchNorm2d,
                                ws=name == "tiny_ws")
        if pretrained is not None:
            load_backbone_weights(backbone, pretrained)
        freeze_backbone(backbone, freeze_at)
        return backbone
    ctor, _ = _TV[name]
    norm = FrozenBatchNorm2d if frozen_bn else nn.BatchNorm2d
    kwargs = {"weights": None, "norm_layer": norm}
    ws = name.endswith("_ws")
    if ctor != "resnet18" and not ws:
        kwargs["replace_stride_with_dilation"] = [False, False, True]
    resnet = getattr(torchvision.models, ctor)(**kwargs)
    truncate = name == "resnet18_trunc"
    out_channels = 256 if truncate else (512 if ctor == "resnet18" else 2048)
    if ws:
        backbone = ResNetWSBackbone(resnet, out_channels)
    else:
        if ctor == "resnet18" and not truncate:
            _dilate_res5_basic(resnet)
        backbone = ResNetBackbone(resnet, truncate=truncate, out_channels=out_channels)
    if pretrained is not None:
        path = torchvision_cached_weights(name) if pretrained == "torchvision" else pretrained
        load_backbone_weights(backbone, path)
    freeze_backbone(backbone, freeze_at)
    return backbone
