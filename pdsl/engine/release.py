"""A released model: a trained run reduced to a weights-only directory that `cli.py predict`,
`cli.py eval` and :func:`pdsl.engine.evaluate.load_run` read like a run directory.

``OUT/model.pth`` (model weights, config, class names, step: no optimizer, scheduler or RNG),
``OUT/last_checkpoint`` (its pointer), ``OUT/run.json`` (the categories, so predictions keep the
training manifest's ids), ``OUT/config.yaml`` and, when the run was evaluated,
``OUT/metrics.json`` (the figures it reaches, with the split they were measured on)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from ..errors import ConfigError
from ..io import atomic_path, write_json_atomic
from ..rundir import RELEASED_DEMO  # noqa: F401  (the demo model committed with the repository)

#: checkpoint entries only a resumed training needs
TRAINING_STATE = ("optimizer", "scheduler", "scaler", "rng")


def export_model(run_dir, out_dir, half: bool = False, force: bool = False) -> Path:
    """Write the weights-only release of ``run_dir``'s last checkpoint to ``out_dir``.

    ``half`` stores floating-point weights as float16 (loaded back as float32). An existing
    release is never overwritten unless ``force``."""
    from ..config import dump_config
    from ..config import config_from_dict
    from .checkpoint import last_checkpoint, load_checkpoint

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    src = last_checkpoint(run_dir)
    if src is None:
        raise ConfigError(f"run {run_dir}: no checkpoint to export (no last_checkpoint)")
    if (out_dir / "model.pth").exists() and not force:
        raise ConfigError(f"{out_dir / 'model.pth'} exists: a release is never overwritten "
                          f"silently (pass --force, or another --out)")
    ckpt = load_checkpoint(src)
    state = {k: (v.half() if half and v.is_floating_point() else v)
             for k, v in ckpt["model"].items()}
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / "model.pth") as tmp:
        kept = {k: v for k, v in ckpt.items() if k not in TRAINING_STATE}
        torch.save({**kept, "model": state, "source": str(src)}, tmp)
    with atomic_path(out_dir / "config.yaml") as tmp:
        Path(tmp).write_text(dump_config(config_from_dict(ckpt["config"])))
    if (run_dir / "run.json").is_file():
        rec = json.loads((run_dir / "run.json").read_text())
        write_json_atomic({"categories": rec.get("categories"), "exported_from": str(run_dir)},
                          out_dir / "run.json", indent=2)
    evals = sorted((run_dir / "eval").glob("*/metrics.json")) if (run_dir / "eval").is_dir() else []
    if evals:
        shutil.copyfile(evals[0], out_dir / "metrics.json.tmp")
        (out_dir / "metrics.json.tmp").replace(out_dir / "metrics.json")
    with atomic_path(out_dir / "last_checkpoint") as tmp:
        Path(tmp).write_text("model.pth\n")
    return out_dir / "model.pth"
