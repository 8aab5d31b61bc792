"""Mixed precision (``solver.amp: off | fp16 | bf16``), one policy for training and inference.

* ``fp16``: float16 autocast **and** loss scaling (:func:`grad_scaler`): float16 gradients
  underflow without it. CUDA only: on a CPU it runs in float32 (older configs said ``amp: true``,
  meaning "fp16 on the GPU, ignored on the CPU", and CPU float16 kernels are slow or emulated).
* ``bf16``: bfloat16 autocast, **no** loss scaling (bfloat16 has float32's exponent range). On
  CUDA it needs a GPU with bfloat16 (Ampere or newer: A100, H100, RTX 30xx+); a 1080 Ti / V100
  gets a clear error. On a CPU it runs (torch's CPU autocast supports bfloat16).
* ``off``: float32.

Usage::

    mode = effective_amp(cfg.solver.amp, device)        # "off" | "fp16" | "bf16"
    scaler = grad_scaler(mode, device)                  # enabled only for fp16
    with autocast(mode, device):
        losses = model(...)
"""
from __future__ import annotations

import contextlib

import torch

from .errors import ConfigError

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def why_not(mode: str, device) -> str | None:
    """Why ``mode`` cannot run on ``device`` (None if it can). ``"off"`` always can."""
    device = torch.device(device)
    if mode == "off":
        return None
    if mode not in DTYPES:
        raise ConfigError(f"solver.amp must be one of off, fp16, bf16, got {mode!r}")
    if device.type not in ("cpu", "cuda"):
        return f"AMP is not supported on device {device.type}"
    if device.type == "cpu" and mode == "fp16":
        return "fp16 AMP is CUDA-only (solver.amp=fp16 runs in float32 on a CPU; use bf16)"
    if device.type == "cuda" and mode == "bf16" and not _cuda_has_bf16():
        name = torch.cuda.get_device_name(device)
        return f"{name} has no bfloat16 (Ampere or newer needed; use solver.amp=fp16)"
    return None


def _cuda_has_bf16() -> bool:
    try:  # emulated bfloat16 (pre-Ampere) is slower than float32: it does not count
        return torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # torch < 2.3 has no such argument and reports native support only
        return torch.cuda.is_bf16_supported()


def effective_amp(mode: str, device) -> str:
    """The mode that runs on ``device``: ``fp16`` falls back to ``off`` on a CPU (documented
    default behaviour); ``bf16`` on a GPU without bfloat16 is a :class:`ConfigError`."""
    reason = why_not(mode, device)
    if reason is None:
        return mode
    if mode == "fp16" and torch.device(device).type == "cpu":
        return "off"
    raise ConfigError(f"solver.amp={mode}: {reason}")


def autocast(mode: str, device):
    """``torch.autocast`` for an effective mode (a null context for ``off``)."""
    if mode == "off":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=DTYPES[mode])


def grad_scaler(mode: str, device) -> torch.amp.GradScaler:
    """Loss scaling, enabled only for ``fp16`` (a disabled scaler is a pass-through)."""
    kind = torch.device(device).type
    return torch.amp.GradScaler(kind, enabled=mode == "fp16")
