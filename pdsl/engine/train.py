"""The training loop: one function, :func:`train`, and one step, :func:`run_step`.

Run directory::

    RUN_DIR/config.yaml                       resolved config (defaults ← file ← overrides)
    RUN_DIR/metrics.jsonl                     one JSON line per optimiser step
    RUN_DIR/checkpoints/model_0005000.pth     model, optimizer, scheduler, scaler, step, RNG,
                                              config, class names
    RUN_DIR/last_checkpoint                   "checkpoints/model_0005000.pth" (written last)

Reproducibility: the images of step ``t``, their augmentation and the dropout of each forward
pass are pure functions of ``(train.seed, t, position in the step)`` (see
:class:`pdsl.sampling.TrainBatchSampler`, :func:`pdsl.sampling.sample_rng`,
:func:`pdsl.engine.loop.step_seed`), so a run
stopped and resumed from a checkpoint reaches the same weights as an uninterrupted one, with any
``num_workers``; and one process accumulating gradients over 4 passes sees the same images as 4
DDP processes (``torchrun --nproc_per_node 4 cli.py train ...``).
"""
from __future__ import annotations

import contextlib
import json
import os
import random
import time
from pathlib import Path

import numpy as np
import torch

from ..amp import autocast, effective_amp, grad_scaler
from ..config import load_config, to_dict
from ..data import Collate, TrainDataset, batch_to_device, log
from ..errors import ConfigError
from ..rundir import check_run_dir, recorded_config
from .checkpoint import (_model_state, build_model, check_classes,  # noqa: F401
                         last_checkpoint, load_checkpoint, restore_training_state,
                         save_checkpoint)
from .loop import (Progress, TrainingDiverged, add_diagnostics, build_optimizer, device_kind,
                   diagnostics_line, diverged, lr_factor, open_run_dir, optimizer_step,
                   report_config_changes, step_seed, train_loader, truncate_metrics)


# -- pieces ----------------------------------------------------------------------------------------
def loss_weights(cfg, step: int) -> dict:
    """Weights of the loss terms at optimiser step ``step`` (0-based): 1 for every term except
    ``loss_acl``, which ramps linearly from 0 at step 0 to 1 at ``solver.acl_warmup_iters`` (a
    warm-up of the correlation loss while the detector's scores are still low; 0 = off), and
    ``loss_mask_specific``, 0 before ``solver.chain_start_iter`` (the mask chain starts late)."""
    warm = cfg.solver.acl_warmup_iters
    return {"loss_acl": min(1.0, step / warm) if warm > 0 else 1.0,
            "loss_mask_specific": 1.0 if step >= cfg.solver.chain_start_iter else 0.0}


# -- distributed -----------------------------------------------------------------------------------
def _distributed(kind: str):
    """``(rank, world_size, local_rank, created)``; joins the torchrun group if WORLD_SIZE > 1."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0, False
    local = int(os.environ.get("LOCAL_RANK", "0"))
    created = False
    if not dist.is_initialized():
        if kind == "cuda":
            torch.cuda.set_device(local)
        dist.init_process_group("nccl" if kind == "cuda" else "gloo")
        created = True
    return dist.get_rank(), dist.get_world_size(), local, created


def _reduce_mean(values: torch.Tensor, world: int) -> torch.Tensor:
    if world > 1:
        import torch.distributed as dist

        dist.all_reduce(values)
        values /= world
    return values


# -- the step --------------------------------------------------------------------------------------
class StepContext:
    """What :func:`run_step` needs besides the model and the data (fixed for a run)."""

    def __init__(self, cfg, device, accum, rank, world, online=None):
        self.cfg, self.device, self.accum, self.rank, self.world = cfg, device, accum, rank, world
        self.seed = cfg.train.seed
        self.amp = effective_amp(cfg.solver.amp, device)  # off | fp16 | bf16 (pdsl/amp.py)
        self.online = online  # OnlineGrabCut pool in online cue mode, else None


def run_step(model, data_iter, optimizer, scheduler, scaler, step: int, ctx: StepContext) -> dict:
    """Optimiser step ``step`` (0-based): ``accum`` micro-batches of data → forward → losses →
    backward (accumulated) → loss check → SGD step → the metrics line (losses averaged over
    the step's images)."""
    t_start = time.perf_counter()
    data_time = cue_time = 0.0
    loss_sum = None
    diag: dict = {}  # the mask chain's diagnostics, (sum, count) over the step's passes
    for k in range(ctx.accum):
        t0 = time.perf_counter()
        batch = next(data_iter)
        images, proposals, scores, targets = batch_to_device(batch, ctx.device)
        data_time += time.perf_counter() - t0
        cue_time += batch["cue_time"]
        net = getattr(model, "module", model)  # under DDP
        if ctx.online is not None and not getattr(net, "handles_online_cues", False):
            from ..cues.online import fill_online_targets

            c = ctx.cfg.cues
            cue_time += fill_online_targets(model, images, proposals, scores, targets, ctx.online,
                                            ctx.cfg.model.n_seed, c.degenerate,
                                            c.online_empty_frac, c.online_full_frac)
        torch.manual_seed(step_seed(ctx.seed, step, k * ctx.world + ctx.rank))  # dropout etc.
        sync = ctx.world == 1 or k == ctx.accum - 1  # DDP all-reduces on the last pass only
        with (contextlib.nullcontext() if sync else model.no_sync()):
            with autocast(ctx.amp, ctx.device):
                losses = model(images, proposals, scores, targets)
            weights = loss_weights(ctx.cfg, step)
            total = sum(v * weights.get(k, 1.0) for k, v in losses.items())
            scaler.scale(total / ctx.accum).backward()
        vec = torch.stack([v.detach().float() for v in losses.values()])
        loss_sum = vec if loss_sum is None else loss_sum + vec
        add_diagnostics(diag, getattr(net, "last_diagnostics", None))
    loss_vec = _reduce_mean(loss_sum / ctx.accum, ctx.world).cpu()
    loss_dict = {name: float(v) for name, v in zip(losses, loss_vec)}
    lr = optimizer_step(model, optimizer, scheduler, scaler, loss_dict, step,
                        ctx.cfg.solver.clip_grad_norm)
    return {"step": step + 1, "lr": lr, **loss_dict, "total": sum(loss_dict.values()),
            **diagnostics_line(diag, ctx.world),
            "data_time": round(data_time, 4), "cue_time": round(cue_time, 4),
            "step_time": round(time.perf_counter() - t_start, 4)}


# -- the run ---------------------------------------------------------------------------------------
def train(config_path, manifest, cues, out_dir, max_iter: int | None = None, resume: bool = False,
          weights=None, overrides=()) -> Path:
    """Train PDSL; return the path of the last checkpoint.

    Args:
        config_path: run config YAML (None: defaults only).
        manifest: manifest json of the training split (class names and image labels).
        cues: cue cache of that split (``cues.h5``).
        out_dir: run directory (created).
        max_iter: overrides ``solver.max_iter``.
        resume: continue from ``out_dir/last_checkpoint`` (model, optimizer, scheduler, step, RNG);
            starts from scratch if there is none.
        weights: initialise the model only from this checkpoint (ignored when resuming).
        overrides: ``"section.key=value"`` strings.
    Launched by ``torchrun`` (WORLD_SIZE > 1), each process trains a DDP replica; rank 0 writes.
    """
    from ..cues.store import CueStore
    from ..manifest import load_manifest

    overrides = list(overrides) + ([("solver.max_iter", int(max_iter))] if max_iter else [])
    # resuming: keys the run's saved config predates keep the values it was trained with
    cfg = load_config(config_path, overrides, saved=recorded_config(out_dir) if resume else None)
    if cfg.train.threads:
        torch.set_num_threads(int(cfg.train.threads))
    kind = device_kind(cfg.train.device)
    rank, world, local_rank, created_group = _distributed(kind)
    device = torch.device(kind, local_rank) if kind == "cuda" else torch.device("cpu")
    try:
        return _train(cfg, load_manifest(manifest), CueStore(cues), Path(out_dir), resume, weights,
                      device, rank, world)
    finally:
        if created_group:
            import torch.distributed as dist

            dist.destroy_process_group()


def _train(cfg, manifest, store, out_dir: Path, resume, weights, device, rank, world) -> Path:
    s = cfg.solver
    main = rank == 0
    accum = s.images_per_step // (world * s.images_per_gpu)
    if accum * world * s.images_per_gpu != s.images_per_step:
        raise ConfigError(f"solver.images_per_step ({s.images_per_step}) must be a multiple of "
                          f"world size x solver.images_per_gpu ({world} x {s.images_per_gpu})")
    check_run_dir(out_dir, to_dict(cfg), resume)  # never overwrite another run
    seed = cfg.train.seed
    dataset = TrainDataset(manifest, store, cfg, seed=seed, verbose=main)  # checks the cache
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # same initial weights in every process
    class_names = manifest.class_names
    model = build_model(cfg, manifest.num_classes).to(device)
    model.train()
    optimizer = build_optimizer(cfg, model)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(cfg))
    scaler = grad_scaler(effective_amp(s.amp, device), device)  # loss scaling for fp16 only

    start = 0
    ckpt_path = last_checkpoint(out_dir) if resume else None
    if resume and ckpt_path is None and main:
        log(f"train: --resume but {out_dir}/last_checkpoint does not exist: starting from step 0")
    if ckpt_path is not None:
        ckpt = load_checkpoint(ckpt_path)
        check_classes(ckpt, class_names, ckpt_path)
        start = restore_training_state(ckpt, model, optimizer, scheduler, scaler)
        if main:
            report_config_changes(ckpt.get("config", {}), to_dict(cfg))
            log(f"train: resumed from {ckpt_path} at step {start}"
                + (f" (--weights {weights} ignored)" if weights else ""))
    elif weights:
        ckpt = load_checkpoint(weights)
        check_classes(ckpt, class_names, weights)
        try:
            model.load_state_dict(_model_state(ckpt))
        except RuntimeError as e:
            raise ConfigError(f"--weights {weights}: does not fit model {cfg.model.backbone} "
                              f"({str(e).splitlines()[0]} ...)") from None
        if main:
            log(f"train: model initialised from {weights}")

    if main:  # after the checks above: a refused resume leaves the run directory untouched
        open_run_dir(out_dir, cfg, manifest, "train",
                     f"{world} process(es) x {s.images_per_gpu} image(s) x {accum} accumulation "
                     f"pass(es) = {s.images_per_step} images per step, device {device}, AMP "
                     f"{effective_amp(s.amp, device)}")
    if start >= s.max_iter:
        if main:
            log(f"train: step {start} >= solver.max_iter {s.max_iter}: nothing to do")
        return ckpt_path

    ddp_model = model
    if world > 1:
        ddp_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=cfg.train.find_unused_parameters)

    loader = train_loader(dataset, cfg, start, Collate(cfg.input.size_divisibility), device, rank,
                          world)

    online = None
    if cfg.cues.source == "online":
        from ..cues.online import OnlineGrabCut

        c = cfg.cues
        online = OnlineGrabCut(c.online_workers, c.online_long_side, c.online_iterations)
    ctx = StepContext(cfg, device, accum, rank, world, online)

    metrics_path = out_dir / "metrics.jsonl"
    if main:
        truncate_metrics(metrics_path, start)
        metrics_file = open(metrics_path, "a")
        progress = Progress(start, s.max_iter, cfg.train.log_period)
    last_saved = ckpt_path
    try:
        data_iter = iter(loader)
        for step in range(start, s.max_iter):
            m = run_step(ddp_model, data_iter, optimizer, scheduler, scaler, step, ctx)
            if device.type == "cuda":
                m["mem_gb"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
            done = step + 1
            if main:
                metrics_file.write(json.dumps(m) + "\n")
                metrics_file.flush()
                progress.update(m)
                if done % cfg.train.checkpoint_period == 0 or done == s.max_iter:
                    last_saved = save_checkpoint(out_dir, done, model, optimizer, scheduler,
                                                 scaler, cfg, class_names)
    except TrainingDiverged as e:
        raise diverged(e, last_saved) from None
    finally:
        if online is not None:
            online.close()
        if main:
            metrics_file.close()
    if main:
        log(f"train: done, {s.max_iter - start} steps -> {last_saved}")
    return out_dir / f"checkpoints/model_{s.max_iter:07d}.pth"
