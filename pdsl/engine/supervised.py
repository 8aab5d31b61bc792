"""The fully supervised ceiling: Mask R-CNN with PDSL's backbone and budget (``cli.py
train-supervised``).

:func:`train_supervised` trains :func:`pdsl.model.maskrcnn.build_maskrcnn` -- the run config's
backbone, initialisation (``model.pretrained``) and ``model.freeze_at`` -- with the same solver
as a PDSL run of that config (``build_optimizer``, ``lr_factor``: optimizer, base_lr, warm-up,
steps, max_iter, images_per_step by accumulation over images_per_gpu), the same input scales,
flip and max_size, seed, threads and device, on instance targets: the training manifest's GT
boxes and masks (the ceiling), or ``annotations`` -- a COCO instances json of the same images,
e.g. PDSL's pseudo labels (:mod:`pdsl.engine.supervised_data`).

The run directory has PDSL's layout (``config.yaml``, ``metrics.jsonl``, ``checkpoints/``,
``last_checkpoint``, ``run.json``); ``run.json`` and every checkpoint record ``kind:
maskrcnn`` (and which targets), so ``cli.py eval`` / ``predict`` (``load_run``) build a Mask
R-CNN for it and score it with the same evaluator, and ``cli.py train --resume`` refuses it.
Resumable like PDSL: ``--resume`` continues from ``last_checkpoint`` (model, optimizer,
scheduler, step, RNG); the images, flips and scales of step t depend only on (seed, t).
One process (no torchrun): images_per_step is reached by gradient accumulation.
"""
from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path

import numpy as np
import torch

from ..amp import autocast, effective_amp, grad_scaler
from ..config import load_config, to_dict
from ..data import log
from ..errors import ConfigError
from ..model.maskrcnn import KIND, build_maskrcnn
from ..rundir import check_run_dir, run_record
from .checkpoint import (check_classes, last_checkpoint, load_checkpoint, restore_training_state,
                         save_checkpoint)
from .loop import (Progress, TrainingDiverged, build_optimizer, device_kind, diverged,
                   lr_factor, open_run_dir, optimizer_step, report_config_changes, step_seed,
                   train_loader, truncate_metrics)
from .supervised_data import InstanceDataset, annotations_identity, collate_instances


def train_supervised(config_path, manifest, out_dir, annotations=None, max_iter: int | None = None,
                     resume: bool = False, overrides=()) -> Path:
    """Train the supervised Mask R-CNN; return the path of the last checkpoint.

    Args:
        config_path: PDSL run config YAML (None: defaults) whose model/input/solver/train
            sections set the backbone and the budget.
        manifest: training manifest json (images, classes, and GT annotations unless
            ``annotations`` is given).
        out_dir: run directory (created; one run per directory, see :mod:`pdsl.rundir`).
        annotations: COCO instances json used as targets instead of the manifest's GT.
        max_iter: overrides ``solver.max_iter``.
        resume: continue from ``out_dir/last_checkpoint`` (same config and targets required).
        overrides: ``"section.key=value"`` strings.
    """
    from ..manifest import load_manifest

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("train-supervised runs as one process (no torchrun): "
                          "solver.images_per_step is reached by gradient accumulation")
    overrides = list(overrides) + ([("solver.max_iter", int(max_iter))] if max_iter else [])
    cfg = load_config(config_path, overrides)
    if cfg.train.threads:
        torch.set_num_threads(int(cfg.train.threads))
    device = torch.device(device_kind(cfg.train.device))
    return _train(cfg, load_manifest(manifest), annotations, Path(out_dir), resume, device)


def _check_targets(out_dir: Path, ident: dict) -> None:
    """A resumed run keeps its targets (the same annotations file content, or GT)."""
    rec = run_record(out_dir)
    if not rec or "targets" not in rec:
        return
    if rec.get("targets_sha1") != ident.get("targets_sha1") or (
            "targets_sha1" not in ident and rec["targets"] != ident["targets"]):
        raise ConfigError(f"run directory {out_dir} was trained on targets {rec['targets']} "
                          f"(sha1 {rec.get('targets_sha1', '-')}), not {ident['targets']} "
                          f"(sha1 {ident.get('targets_sha1', '-')}); --resume needs the same "
                          f"targets: train into a new --out (nothing was changed)")


def _train(cfg, manifest, annotations, out_dir: Path, resume, device) -> Path:
    s, seed = cfg.solver, cfg.train.seed
    accum = s.images_per_step // s.images_per_gpu
    cfg_dict = to_dict(cfg)
    ident = {"kind": KIND, **annotations_identity(annotations)}
    check_run_dir(out_dir, cfg_dict, resume, kind=KIND)  # never overwrite another run
    if resume:
        _check_targets(out_dir, ident)
    dataset = InstanceDataset(manifest, cfg, annotations, seed=seed)
    ckpt_path = last_checkpoint(out_dir) if resume else None
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    model = build_maskrcnn(cfg, manifest.num_classes, load_pretrained=ckpt_path is None)
    model.to(device).train()
    optimizer = build_optimizer(cfg, model)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(cfg))
    amp = effective_amp(s.amp, device)
    scaler = grad_scaler(amp, device)
    start = 0
    if resume and ckpt_path is None:
        log(f"train-supervised: --resume but {out_dir}/last_checkpoint does not exist: starting "
            f"from step 0")
    if ckpt_path is not None:
        ckpt = load_checkpoint(ckpt_path)
        if ckpt.get("kind") != KIND:
            raise ConfigError(f"checkpoint {ckpt_path} is not a Mask R-CNN checkpoint of "
                              f"`cli.py train-supervised`")
        check_classes(ckpt, manifest.class_names, ckpt_path)
        start = restore_training_state(ckpt, model, optimizer, scheduler, scaler)
        report_config_changes(ckpt.get("config", {}), cfg_dict)
        log(f"train-supervised: resumed from {ckpt_path} at step {start}")

    open_run_dir(out_dir, cfg, manifest, "train-supervised",
                 f"Mask R-CNN on {cfg.model.backbone} (anchors {model.anchor_sizes}), "
                 f"{s.images_per_gpu} image(s) x {accum} accumulation pass(es) = "
                 f"{s.images_per_step} images per step, device {device}, AMP {amp}", extra=ident)
    if start >= s.max_iter:
        log(f"train-supervised: step {start} >= solver.max_iter {s.max_iter}: nothing to do")
        return ckpt_path

    loader = train_loader(dataset, cfg, start, collate_instances, device)
    extra = {"kind": KIND, "maskrcnn": {"anchor_sizes": list(model.anchor_sizes), **ident}}
    metrics_path = out_dir / "metrics.jsonl"
    truncate_metrics(metrics_path, start)
    progress = Progress(start, s.max_iter, cfg.train.log_period)
    last_saved = ckpt_path
    try:
        with open(metrics_path, "a") as metrics_file:
            data_iter = iter(loader)
            for step in range(start, s.max_iter):
                m = supervised_step(model, data_iter, optimizer, scheduler, scaler, step,
                                    accum, seed, amp, cfg.solver.clip_grad_norm, device)
                if device.type == "cuda":
                    m["mem_gb"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
                metrics_file.write(json.dumps(m) + "\n")
                metrics_file.flush()
                progress.update(m)
                done = step + 1
                if done % cfg.train.checkpoint_period == 0 or done == s.max_iter:
                    last_saved = save_checkpoint(out_dir, done, model, optimizer, scheduler,
                                                 scaler, cfg, manifest.class_names, extra=extra)
    except TrainingDiverged as e:
        raise diverged(e, last_saved) from None
    log(f"train-supervised: done, {s.max_iter - start} steps -> {last_saved}")
    return last_saved


def supervised_step(model, data_iter, optimizer, scheduler, scaler, step: int, accum: int,
                    seed: int, amp: str, clip: float, device) -> dict:
    """Optimiser step ``step`` (0-based): ``accum`` micro-batches → Mask R-CNN losses
    (``loss_classifier``, ``loss_box_reg``, ``loss_mask``, ``loss_objectness``,
    ``loss_rpn_box_reg``) → backward (accumulated) → finite check → optimizer step; returns the
    metrics line (losses averaged over the step's micro-batches)."""
    t_start = time.perf_counter()
    data_time, loss_sum, names = 0.0, None, None
    for k in range(accum):
        t0 = time.perf_counter()
        images, targets = next(data_iter)
        images = [im.to(device) for im in images]
        targets = [{key: (v.to(device) if torch.is_tensor(v) else v) for key, v in t.items()}
                   for t in targets]
        data_time += time.perf_counter() - t0
        torch.manual_seed(step_seed(seed, step, k))  # the transform's scale draw, RoI sampling
        with autocast(amp, device):
            losses = model(images, targets)
        names = list(losses)
        total = sum(losses.values())
        scaler.scale(total / accum).backward()
        vec = torch.stack([v.detach().float() for v in losses.values()])
        loss_sum = vec if loss_sum is None else loss_sum + vec
    loss_dict = {n: float(v) for n, v in zip(names, (loss_sum / accum).cpu())}
    lr = optimizer_step(model, optimizer, scheduler, scaler, loss_dict, step, clip)
    return {"step": step + 1, "lr": lr, **loss_dict, "total": sum(loss_dict.values()),
            "data_time": round(data_time, 4), "step_time": round(time.perf_counter() - t_start, 4)}
