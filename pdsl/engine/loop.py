"""What both trainers share (PDSL, :mod:`pdsl.engine.train`; the supervised Mask R-CNN,
:mod:`pdsl.engine.supervised`): the solver (optimizer, lr schedule, the optimiser step after the
accumulated passes), the seeds of the forward passes, the DataLoader of a run, the progress line,
and the metrics log and config report of a resumed run.
"""
from __future__ import annotations

import json
import math
import sys
import time
from bisect import bisect_right
from pathlib import Path

import numpy as np
import torch

from ..config import dump_config, save_config, to_dict
from ..data import log
from ..errors import ConfigError, PDSLError
from ..io import atomic_path
from ..rundir import record_run
from ..sampling import TrainBatchSampler, single_threaded_opencv, worker_init


class TrainingDiverged(PDSLError):
    """A loss became NaN or infinite; the run stopped before the optimiser step."""


def diverged(e: TrainingDiverged, last_saved) -> TrainingDiverged:
    """The error a diverged run stops with: where it can resume from and what to change."""
    where = f"last good checkpoint: {last_saved}" if last_saved else "no checkpoint was written"
    return TrainingDiverged(f"{e}; stopping ({where}; lower solver.base_lr or raise "
                            f"solver.warmup_iters, then --resume)")


def device_kind(kind: str) -> str:
    """``train.device`` → ``cuda`` | ``cpu`` (``auto``: cuda when there is one)."""
    if kind == "auto":
        kind = "cuda" if torch.cuda.is_available() else "cpu"
    if kind == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device is cuda but no CUDA device is available")
    return kind


# -- the solver ------------------------------------------------------------------------------------
def build_optimizer(cfg, model):
    """SGD (or AdamW) over the trainable parameters in two groups: weights (lr, weight_decay) and
    biases (lr × ``bias_lr_factor``, ``weight_decay_bias``), as detectron2 / the authors' code."""
    s = cfg.solver
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [{"params": [p for n, p in named if not n.endswith(".bias")],
               "lr": s.base_lr, "weight_decay": s.weight_decay},
              {"params": [p for n, p in named if n.endswith(".bias")],
               "lr": s.base_lr * s.bias_lr_factor, "weight_decay": s.weight_decay_bias}]
    groups = [g for g in groups if g["params"]]
    if s.optimizer == "adamw":
        # fused: one pass over each tensor instead of ~10 (an eighth of a 1-thread CPU step in the
        # authors' recipe); a resumed run keeps the mode its checkpoint was saved with
        fused = all(p.device.type in ("cpu", "cuda") and p.dtype in (torch.float32, torch.float64)
                    for _, p in named)
        return torch.optim.AdamW(groups, lr=s.base_lr, weight_decay=s.weight_decay,
                                 fused=fused or None)
    return torch.optim.SGD(groups, lr=s.base_lr, momentum=s.momentum, weight_decay=s.weight_decay)


def lr_factor(cfg):
    """``step -> lr / base_lr``: linear warm-up from ``warmup_factor``, then ×gamma at each of
    ``steps`` (a closure, so the scheduler's state dict holds only the step count and a resumed
    run takes the schedule from the current config)."""
    s = cfg.solver
    steps, gamma = list(s.steps), s.gamma
    warm, wf = s.warmup_iters, s.warmup_factor

    def factor(step: int) -> float:
        w = 1.0
        if step < warm:
            a = step / warm
            w = wf * (1 - a) + a
        return w * gamma ** bisect_right(steps, step)

    return factor


def optimizer_step(model, optimizer, scheduler, scaler, loss_dict: dict, step: int,
                   clip: float) -> float:
    """The end of optimiser step ``step`` (0-based), its passes' gradients accumulated: stop on a
    non-finite loss (before any weight changes), clip the gradient norm (``clip`` > 0), step the
    optimizer (through the AMP scaler) and the lr schedule; returns the lr the step used."""
    if not all(math.isfinite(v) for v in loss_dict.values()):
        raise TrainingDiverged(f"step {step + 1}: loss is not finite: {loss_dict}")
    if clip > 0:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    lr = optimizer.param_groups[0]["lr"]
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    scheduler.step()
    return lr


DIAG_PREFIX = "diag_"  # metrics.jsonl keys that are diagnostics, not loss terms (never summed)


def add_diagnostics(totals: dict, diag: dict | None) -> None:
    """Add one forward pass's ``{name: (sum, count)}`` diagnostics (PDSLNet.last_diagnostics)
    into ``totals``. The values come to the host in one transfer (one device sync per pass,
    not two per key)."""
    items = list((diag or {}).items())
    if not items:
        return
    parts = [x for _, sc in items for x in sc]
    dev = next((x.device for x in parts if torch.is_tensor(x)), "cpu")
    vals = torch.stack([torch.as_tensor(x, dtype=torch.float64, device=dev).reshape(())
                        for x in parts]).tolist()
    for i, (k, _) in enumerate(items):
        ts, tc = totals.get(k, (0.0, 0.0))
        totals[k] = (ts + vals[2 * i], tc + vals[2 * i + 1])


def diagnostics_line(totals: dict, world: int = 1) -> dict:
    """``{"diag_" + name: sum / count}`` over the step's passes (and processes); a name whose
    count is 0 (e.g. no foreground RoI in the step) is left out."""
    keys = sorted(totals)
    if world > 1 and keys:
        import torch.distributed as dist

        dev = "cuda" if dist.get_backend() == "nccl" else "cpu"
        t = torch.tensor([[totals[k][0], totals[k][1]] for k in keys], dtype=torch.float64,
                         device=dev)
        dist.all_reduce(t)
        totals = {k: (float(t[i, 0]), float(t[i, 1])) for i, k in enumerate(keys)}
    return {DIAG_PREFIX + k: round(s / c, 6) for k in keys for s, c in [totals[k]] if c > 0}


def step_seed(seed: int, step: int, slot: int) -> int:
    """torch seed of forward pass ``slot`` (= micro-batch × world + rank) of step ``step``."""
    return int(np.random.SeedSequence([int(seed), int(step), int(slot), 7]).generate_state(1)[0])


# -- data ------------------------------------------------------------------------------------------
def train_loader(dataset, cfg, start: int, collate_fn, device, rank: int = 0, world: int = 1,
                 stop: int | None = None):
    """The DataLoader of a run from step ``start`` to ``stop`` (default ``solver.max_iter``):
    :class:`pdsl.sampling.TrainBatchSampler` micro-batches of process ``rank`` of ``world``."""
    s, seed = cfg.solver, cfg.train.seed
    sampler = TrainBatchSampler(len(dataset), seed, s.images_per_step, s.images_per_gpu, start,
                                s.max_iter if stop is None else stop, rank, world)
    single_threaded_opencv()  # before the workers fork (see pdsl.sampling.worker_init)
    return torch.utils.data.DataLoader(
        dataset, batch_sampler=sampler, collate_fn=collate_fn,
        num_workers=cfg.train.num_workers, worker_init_fn=worker_init,
        pin_memory=device.type == "cuda",
        generator=torch.Generator().manual_seed(seed))  # not the global RNG: resume stays exact


# -- the run directory, progress and the metrics log -----------------------------------------------
def open_run_dir(out_dir: Path, cfg, manifest, name: str, setup: str, extra=None) -> None:
    """Create the run directory and record the run: ``run.json`` (with ``extra``), the resolved
    config (logged, and ``config.yaml``), then ``NAME: setup``, the line saying how it trains."""
    out_dir.mkdir(parents=True, exist_ok=True)
    record_run(out_dir, to_dict(cfg), manifest, extra=extra)
    log(f"{name}: resolved config\n{dump_config(cfg)}")
    save_config(cfg, out_dir / "config.yaml")
    log(f"{name}: {setup}")


def _fmt_time(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class Progress:
    """A one-line progress display on stderr (redrawn with \\r on a terminal) plus a full log line
    every ``log_period`` steps."""

    def __init__(self, start: int, stop: int, log_period: int):
        self.start, self.stop, self.period = start, stop, log_period
        self.t0 = time.perf_counter()
        self.tty = sys.stderr.isatty()

    def update(self, m: dict) -> None:
        done = m["step"] - self.start
        rate = (time.perf_counter() - self.t0) / max(done, 1)
        losses = " ".join(f"{k[5:]} {v:.3f}" for k, v in m.items() if k.startswith("loss_"))
        line = (f"step {m['step']}/{self.stop} loss {m['total']:.4f} ({losses}) lr {m['lr']:.2e} "
                f"{rate:.2f} s/step data {m['data_time']:.2f}s ETA "
                f"{_fmt_time(rate * (self.stop - m['step']))}")
        if "mem_gb" in m:
            line += f" mem {m['mem_gb']:.1f}G"
        if m["step"] % self.period == 0 or m["step"] == self.stop:
            print(("\r" if self.tty else "") + line, file=sys.stderr, flush=True)
        elif self.tty:
            print("\r" + line[:200], end="", file=sys.stderr, flush=True)


def truncate_metrics(path: Path, start: int) -> None:
    """Drop lines of steps after ``start`` (left by a run that died after its last checkpoint)."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= start:
                keep.append(line)
        except (ValueError, KeyError, TypeError):
            continue
    with atomic_path(path) as tmp:
        tmp.write_text("".join(line + "\n" for line in keep))


def report_config_changes(old: dict, new: dict, prefix="") -> None:
    """Log every key whose value differs from the checkpoint's config (e.g. a longer max_iter)."""
    for k, v in new.items():
        ov = old.get(k) if isinstance(old, dict) else None
        if isinstance(v, dict):
            report_config_changes(ov or {}, v, f"{prefix}{k}.")
        elif ov != v:
            log(f"train: resume: {prefix}{k} changed from {ov!r} to {v!r}")
