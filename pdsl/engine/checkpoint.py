"""Checkpoints of a run: building the model a checkpoint belongs to, writing one (model, optimizer,
scheduler, scaler, step, RNG, config, class names; atomic, then the ``last_checkpoint`` pointer),
finding and loading one, and checking its classes against a manifest. Used by training and by
evaluation/prediction, so neither imports the other.
"""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from ..config import to_dict
from ..errors import ConfigError
from ..io import atomic_path

CHECKPOINT_FORMAT = 1


def build_model(cfg, num_classes: int, load_pretrained: bool = True):
    """PDSLNet from the ``model`` section (keys are the constructor's arguments).
    ``load_pretrained=False`` skips ``model.pretrained`` (the weights come from a checkpoint, so
    a run or release loads where its backbone initialisation file is absent)."""
    from ..model import PDSLNet

    kw = dict(cfg.model)
    if not load_pretrained:
        kw["pretrained"] = None
    return PDSLNet(num_classes, **kw)


def _rng_state() -> dict:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(),
             "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in state["python"]))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        n = min(len(state["cuda"]), torch.cuda.device_count())
        torch.cuda.set_rng_state_all(state["cuda"][:n])


def save_checkpoint(out_dir: Path, step: int, model, optimizer, scheduler, scaler, cfg,
                    class_names, extra: dict | None = None) -> Path:
    """``checkpoints/model_{step:07d}.pth`` then the ``last_checkpoint`` pointer, each atomic.
    ``extra``: more top-level keys (a Mask R-CNN run: ``kind`` and ``maskrcnn``)."""
    name = f"checkpoints/model_{step:07d}.pth"
    ckpt = {"format": CHECKPOINT_FORMAT, "step": step,
            "model": getattr(model, "module", model).state_dict(),
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(), "rng": _rng_state(), "config": to_dict(cfg),
            "class_names": list(class_names), **(extra or {})}
    with atomic_path(out_dir / name) as tmp:
        torch.save(ckpt, tmp)
    with atomic_path(out_dir / "last_checkpoint") as tmp:
        tmp.write_text(name + "\n")
    return out_dir / name


def restore_training_state(ckpt: dict, model, optimizer, scheduler, scaler) -> int:
    """Load a training checkpoint's model, optimizer, scheduler, loss scaler and RNG state (what
    ``--resume`` continues bit-exactly from); return its step."""
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    if ckpt.get("scaler"):
        scaler.load_state_dict(ckpt["scaler"])
    _set_rng_state(ckpt["rng"])
    return int(ckpt["step"])


def last_checkpoint(out_dir) -> Path | None:
    """The checkpoint ``RUN_DIR/last_checkpoint`` names, or None if there is none."""
    pointer = Path(out_dir) / "last_checkpoint"
    if not pointer.is_file():
        return None
    path = Path(out_dir) / pointer.read_text().strip()
    if not path.is_file():
        raise ConfigError(f"{pointer} names {path}, which does not exist")
    return path


def load_checkpoint(path) -> dict:
    """A checkpoint (or a bare state dict) on the CPU. Loaded with ``weights_only=True``: no
    pickled code runs."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ConfigError(f"checkpoint {path}: file not found") from None
    except Exception as e:  # noqa: BLE001 - torch raises many types for a bad file
        raise ConfigError(f"checkpoint {path}: not a readable PDSL/torch checkpoint "
                          f"({e})") from None


def check_classes(ckpt: dict, class_names, path) -> None:
    theirs = ckpt.get("class_names") if isinstance(ckpt, dict) else None
    if theirs is not None and list(theirs) != list(class_names):
        raise ConfigError(f"checkpoint {path} was trained on classes {list(theirs)}, but this "
                          f"manifest has {list(class_names)}")


def _model_state(ckpt: dict) -> dict:
    return ckpt["model"] if isinstance(ckpt, dict) and "model" in ckpt else ckpt
