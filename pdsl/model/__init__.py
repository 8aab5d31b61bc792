"""The PDSL network (paper §3): backbone, detection heads, mask heads, online seed selection.

``PDSLNet`` is the entry point; the losses it uses live in ``pdsl.losses``.
"""
from pdsl.model.backbone import build_backbone
from pdsl.model.pdsl_net import LOSS_KEYS, PDSLNet

__all__ = ["PDSLNet", "LOSS_KEYS", "build_backbone"]
