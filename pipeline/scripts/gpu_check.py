#!/usr/bin/env python
"""GPU check (a script, not a test; at most ~5 minutes on one GPU). In one run it:

1. builds a small synthetic cue cache at the paper's sizes (VOC-sized 500-px images, exactly
   ``--proposals`` MCG-like proposals per image, one default seed mask each) with the real cache
   stage (``pdsl.cues.cache.cache_cues``);
2. trains PDSL with ResNet-50 (the paper's backbone variant, random init: speed does not depend on
   the weights) through the trainer's own step (:func:`pdsl.engine.train.run_step`, DataLoader as in
   ``pdsl.engine.train``) and measures per optimiser step the wall time, the share spent waiting for data
   and cues, peak GPU memory and images per second, for ``solver.amp`` = off (fp32), fp16 and bf16
   with cached cues, and fp32 with online GrabCut in the step (``cues.source=online``, the
   authors' way);
3. times inference (``pdsl.engine.inference.predict_image``, masks included) per image, single scale and
   with the 8 test scales + flip (``input.test_scales``, ``input.test_flip``), per precision;
4. prints a table and writes everything as JSON (``--out``).

    python pipeline/scripts/gpu_check.py --device cuda --out gpu_check.json     # paper sizes
    python pipeline/scripts/gpu_check.py --device cpu --out cpu_check.json      # tiny sizes

``--size`` is ``paper`` by default on CUDA and ``tiny`` on a CPU (small images, few proposals and
steps, the same code path, for CI). A precision the device cannot run (fp16 AMP on a CPU, bf16 on
a GPU older than Ampere) is a row with the reason instead of figures.

Timings are synchronised (``torch.cuda.synchronize`` before every clock read). "Data + cues" is
the exposed part: the time a step waits for its batch (image read, augmentation and the cached cue
look-up, in ``train.num_workers`` DataLoader workers) plus GrabCut inside the step (online cues).
"""
from __future__ import annotations

import argparse
import json
import math
import pickle
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from pdsl.amp import effective_amp, grad_scaler, why_not  # noqa: E402
from pdsl.config import load_config  # noqa: E402
from pdsl.errors import PDSLError  # noqa: E402

AMPS = ("off", "fp16", "bf16")

# Sizes: "paper" = §4.3 (train scales 480-1216, 8 test scales + flip, 2,000 proposals, 4 images per
# step as 4 accumulated passes of 1 image); "tiny" = the same code path in seconds on a CPU.
SIZES = {
    "paper": {"images": 16, "image_size": 500, "proposals": 2000, "steps": 8, "warmup": 2,
              "online_steps": 3, "infer_images": 8, "tta_images": 4, "max_det": 100, "workers": 4,
              "cache_workers": 8, "seeds": {},
              "overrides": []},
    "tiny": {"images": 4, "image_size": 80, "proposals": 40, "steps": 2, "warmup": 1,
             "online_steps": 1, "infer_images": 2, "tta_images": 1, "max_det": 10, "workers": 0,
             "cache_workers": 1, "seeds": {},
             "overrides": ["input.train_scales=[64,72]", "input.max_size=128",
                           "input.test_scales=[40,48,56,64,72,80,88,96]",
                           "input.max_proposals=40", "model.hidden_dim=128", "model.mask_dim=32",
                           "model.mask_per_image=8", "model.n_seed=3", "solver.images_per_step=2",
                           "cues.online_long_side=96", "cues.online_iterations=2",
                           "cues.online_workers=0"]},
}
PAPER = {"train_s_per_iter": "about 1 s per iteration (4 x 1080 Ti, 1 image each) plus several "
                             "seconds of CPU GrabCut", "tta_ms_per_image": 539}
TARGETS = {"data_cue_share_max": 0.05, "online_over_cached_min": 10.0, "single_ms_max": 15.0,
           "tta_ms_max": 100.0}


def fail(msg: str) -> None:
    print(f"Error: {msg}", file=sys.stderr)
    raise SystemExit(2)


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_gb(device):
    if device.type != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 2)


# -- 1. the cache ----------------------------------------------------------------------------------
def mcg_like_proposals(manifest, n: int, seed: int = 0) -> dict:
    """``n`` proposals per image: jittered copies of each GT box (MCG's redundancy around objects)
    and random boxes of all sizes, in Detectron's pickle layout (inclusive corners)."""
    rng = np.random.default_rng(seed)
    by_image = {}
    for a in manifest.annotations:
        by_image.setdefault(a["image_id"], []).append(a["bbox"])
    out = {"boxes": [], "scores": [], "indexes": []}
    for img in manifest.images:
        H, W = int(img["height"]), int(img["width"])
        gt = np.array([[x, y, x + w, y + h] for x, y, w, h in by_image.get(img["id"], [])],
                      np.float32).reshape(-1, 4)
        k = min(len(gt) * 20, n // 2)
        src = gt[rng.integers(0, len(gt), k)] if len(gt) else np.zeros((0, 4), np.float32)
        wh = np.concatenate([src[:, 2:] - src[:, :2]] * 2, 1)
        near = src + rng.uniform(-0.25, 0.25, (k, 4)) * wh
        xy = rng.uniform(0, [W - 4, H - 4], (n - k, 2))
        far = np.concatenate([xy, xy + rng.uniform(4, [W, H], (n - k, 2))], 1)
        b = np.concatenate([near, far]).astype(np.float32)
        b[:, [0, 2]] = b[:, [0, 2]].clip(0, W - 1)
        b[:, [1, 3]] = b[:, [1, 3]].clip(0, H - 1)
        b[:, 2:] = np.maximum(b[:, 2:], b[:, :2] + 2).clip(max=[W - 1, H - 1])
        b[:, :2] = np.minimum(b[:, :2], b[:, 2:] - 2)
        out["boxes"].append(b)
        out["scores"].append(np.linspace(1.0, 0.01, n, dtype=np.float32))
        out["indexes"].append(int(img["id"]))
    return out


def build_cache(tmp: Path, size: dict) -> dict:
    from pdsl.cues.cache import cache_cues
    from pdsl.cues.seeds import SeedParams
    from pdsl.datasets.synthetic import generate
    from pdsl.manifest import load_manifest

    t0 = time.perf_counter()
    generate(tmp / "train.json", "train", size["images"], seed=11, image_size=size["image_size"])
    manifest = load_manifest(tmp / "train.json")
    with open(tmp / "proposals.pkl", "wb") as f:
        pickle.dump(mcg_like_proposals(manifest, size["proposals"]), f)
    cache_cues(manifest.path, f"pickle:{tmp / 'proposals.pkl'}", tmp / "cues.h5",
               workers=size["cache_workers"], shard_size=2, params=SeedParams(**size["seeds"]),
               log=lambda s: None)
    from pdsl.cues.store import CueStore

    store = CueStore(tmp / "cues.h5")
    return {"manifest": str(manifest.path), "cues": str(tmp / "cues.h5"),
            "images": len(store), "image_size": size["image_size"],
            "proposals_per_image": float(store.index["prop_count"].mean()),
            "bank_masks_per_image": float(store.index["bank_count"].mean()),
            "build_s": round(time.perf_counter() - t0, 2)}


# -- 2. training steps -----------------------------------------------------------------------------
def make_loader(cfg, dataset, device, steps: int):
    """The DataLoader ``pdsl.engine.train`` builds (same sampler, collate, workers)."""
    from pdsl.data import Collate
    from pdsl.engine.loop import train_loader

    return train_loader(dataset, cfg, 0, Collate(cfg.input.size_divisibility), device, stop=steps)


def measure_training(cfg, manifest, store, device, steps: int, warmup: int):
    """Mean figures of ``steps`` optimiser steps after ``warmup`` untimed ones; the model trained
    (for the inference timing)."""
    import pdsl.engine.train as T
    from pdsl.data import TrainDataset
    from pdsl.cues.online import OnlineGrabCut

    torch.manual_seed(0)
    mode = effective_amp(cfg.solver.amp, device)
    model = T.build_model(cfg, manifest.num_classes).to(device).train()
    optimizer = T.build_optimizer(cfg, model)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, T.lr_factor(cfg))
    scaler = grad_scaler(mode, device)
    dataset = TrainDataset(manifest, store, cfg, seed=0, verbose=False)
    s, c = cfg.solver, cfg.cues
    accum = s.images_per_step // s.images_per_gpu
    online = (OnlineGrabCut(c.online_workers, c.online_long_side, c.online_iterations)
              if c.source == "online" else None)
    ctx = T.StepContext(cfg, device, accum, 0, 1, online)
    data_iter = iter(make_loader(cfg, dataset, device, warmup + steps))
    rows = []
    try:
        for step in range(warmup + steps):
            if step == warmup:
                reset_peak(device)
            sync(device)
            t0 = time.perf_counter()
            m = T.run_step(model, data_iter, optimizer, scheduler, scaler, step, ctx)
            sync(device)
            if step >= warmup:
                rows.append((time.perf_counter() - t0, m["data_time"], m["cue_time"]))
    finally:
        if online is not None:
            online.close()
    step_s, data_s, cue_s = (float(v) for v in np.mean(rows, 0))
    # exposed data + cues: the wait for the batch (which holds the cached look-up) plus, online,
    # GrabCut inside the step (cue_time then is almost all GrabCut)
    exposed = data_s + (cue_s if c.source == "online" else 0.0)
    return model, {"step_s": step_s, "s_per_image": step_s / s.images_per_step,
                   "images_per_s": s.images_per_step / step_s, "data_wait_s": data_s,
                   "cue_s": cue_s, "data_cue_share": exposed / step_s,
                   "peak_mem_gb": peak_gb(device), "steps": steps}


# -- 3. inference ----------------------------------------------------------------------------------
def measure_inference(model, cfg, manifest, store, device, size: dict) -> dict:
    """ms per image (masks of up to ``max_det`` detections included), single scale and TTA."""
    import dataclasses

    from pdsl.engine.inference import TestParams, _passes, predict_image
    from pdsl.io import read_image

    model.eval()
    n_single, n_tta = size["infer_images"], size["tta_images"]
    images = manifest.images[:max(n_single, n_tta) + 1]
    data = [(read_image(manifest.image_path(img)), store.get(img["id"], with_bank=False))
            for img in images]
    out = {}
    reset_peak(device)
    for tta, n in ((False, n_single), (True, n_tta)):
        p = dataclasses.replace(TestParams.from_config(cfg, tta), max_det=size["max_det"])
        times = []
        for k, (image, c) in enumerate(data[:n + 1]):  # the first image is a warm-up
            sync(device)
            t0 = time.perf_counter()
            predict_image(model, image, c.boxes, c.scores, p, device)
            sync(device)
            if k:
                times.append(time.perf_counter() - t0)
        key = "tta" if tta else "single"
        out[f"{key}_ms"] = 1e3 * float(np.mean(times))
        out[f"{key}_passes"] = len(_passes(p))
        out[f"{key}_images"] = len(times)
    out["images_per_s"] = 1e3 / out["single_ms"]
    out["max_det"] = size["max_det"]
    out["peak_mem_gb"] = peak_gb(device)
    return out


# -- the run ---------------------------------------------------------------------------------------
def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda", help="cuda | cuda:N | cpu (default cuda)")
    ap.add_argument("--size", choices=sorted(SIZES), help="paper (default on CUDA) | tiny "
                    "(default on a CPU)")
    ap.add_argument("--backbone", default="resnet50", help="model.backbone (default resnet50)")
    ap.add_argument("--steps", type=int, help="timed optimiser steps per row")
    ap.add_argument("--out", default="gpu_check.json", help="JSON results (default %(default)s)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    return ap.parse_args(argv)


def check_device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError:
        fail(f"--device {name!r}: expected cuda, cuda:N or cpu")
    if device.type not in ("cuda", "cpu"):
        fail(f"--device {name!r}: expected cuda, cuda:N or cpu")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            fail("--device cuda: torch sees no CUDA device (torch.cuda.is_available() is False; "
                 f"torch {torch.__version__}, CUDA build {torch.version.cuda}); use --device cpu "
                 "for the tiny CPU check")
        if (device.index or 0) >= torch.cuda.device_count():
            fail(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s)")
        device = torch.device("cuda", device.index or 0)
        torch.cuda.set_device(device)
    return device


def run(args) -> dict:
    from pdsl.cues.store import CueStore
    from pdsl.manifest import load_manifest

    device = check_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    size_name = args.size or ("paper" if device.type == "cuda" else "tiny")
    size = dict(SIZES[size_name])
    if args.steps is not None:
        if args.steps < 1:
            fail(f"--steps must be >= 1, got {args.steps}")
        size["steps"] = args.steps
    t_start = time.perf_counter()
    res = {"device": str(device), "device_name": (torch.cuda.get_device_name(device)
                                                  if device.type == "cuda" else platform.processor()
                                                  or platform.machine()),
           "torch": torch.__version__, "size": size_name, "backbone": args.backbone,
           "cpu_threads": torch.get_num_threads(), "paper": PAPER, "targets": TARGETS,
           "train": [], "inference": []}
    with tempfile.TemporaryDirectory() as tmp:
        res["cache"] = build_cache(Path(tmp), size)
        print(f"cache: {res['cache']['images']} images {size['image_size']} px, "
              f"{res['cache']['proposals_per_image']:.0f} proposals and "
              f"{res['cache']['bank_masks_per_image']:.0f} GrabCut masks per image, built in "
              f"{res['cache']['build_s']:.1f} s", flush=True)
        manifest, store = load_manifest(res["cache"]["manifest"]), CueStore(res["cache"]["cues"])
        # a low learning rate: random-init weights must not diverge in the few timed steps
        base = ["model.pretrained=null", f"model.backbone={args.backbone}", "solver.base_lr=0.0001",
                f"train.num_workers={size['workers']}", f"train.device={device.type}",
                *size["overrides"]]
        for source, amp in [("cache", a) for a in AMPS] + [("online", "off")]:
            row = {"cues": source, "amp": amp}
            res["train"].append(row)
            reason = why_not(amp, device)  # fp16 on a CPU, bf16 on a pre-Ampere GPU
            if reason:
                row["skipped"] = reason
                if source == "cache":
                    res["inference"].append({"amp": amp, "skipped": reason})
                continue
            cfg = load_config(None, base + [f"solver.amp={amp}", f"cues.source={source}"])
            steps = size["steps"] if source == "cache" else size["online_steps"]
            try:
                model, figures = measure_training(cfg, manifest, store, device, steps,
                                                  size["warmup"])
            except PDSLError as e:  # e.g. a non-finite fp16 loss: a row, not a crash
                row["skipped"] = f"failed: {e}"
                continue
            row.update(figures)
            print(f"train {source:6s} {amp:4s}: {row['step_s']:.3f} s/step", flush=True)
            if source == "cache":
                inf = {"amp": amp, **measure_inference(model, cfg, manifest, store, device, size)}
                res["inference"].append(inf)
                print(f"infer        {amp:4s}: {inf['single_ms']:.1f} ms single, "
                      f"{inf['tta_ms']:.1f} ms TTA", flush=True)
            del model
            if device.type == "cuda":
                torch.cuda.empty_cache()
        store.close()
    res["summary"] = summarize(res)
    res["wall_s"] = round(time.perf_counter() - t_start, 1)
    return res


def summarize(res: dict) -> dict:
    rows = {(r["cues"], r["amp"]): r for r in res["train"] if "step_s" in r}
    inf = [r for r in res["inference"] if "single_ms" in r]
    out = {}
    cached = rows.get(("cache", "off"))
    online = rows.get(("online", "off"))
    if cached and online:
        out["online_over_cached_step"] = online["step_s"] / cached["step_s"]
    cached_rows = [r for (src, _), r in rows.items() if src == "cache"]
    if cached_rows:
        best = min(cached_rows, key=lambda r: r["step_s"])
        out["fastest_train_amp"] = best["amp"]
        out["data_cue_share_cached"] = max(r["data_cue_share"] for r in cached_rows)
    if inf:
        best = min(inf, key=lambda r: r["single_ms"])
        out["fastest_infer_amp"], out["single_ms_best"] = best["amp"], best["single_ms"]
        best = min(inf, key=lambda r: r["tta_ms"])
        out["fastest_tta_amp"], out["tta_ms_best"] = best["amp"], best["tta_ms"]
    if res["device"].startswith("cuda") and res["size"] == "paper":
        met = {"data_cue_share": out.get("data_cue_share_cached", math.inf)
               <= TARGETS["data_cue_share_max"],
               "online_over_cached": out.get("online_over_cached_step", 0)
               >= TARGETS["online_over_cached_min"],
               "single_ms": out.get("single_ms_best", math.inf) <= TARGETS["single_ms_max"],
               "tta_ms": out.get("tta_ms_best", math.inf) <= TARGETS["tta_ms_max"]}
        out["targets_met"] = met
    return out


def _f(v, fmt):
    return "—" if v is None else format(v, fmt)


def _rows(records, measured: str, lead, cells, n_cells: int) -> list[str]:
    """One markdown table row per record: ``lead(r) + cells(r)``, or ``lead(r)`` and the reason
    it was skipped where ``measured`` is missing (the other ``n_cells - 1`` cells left empty)."""
    out = []
    for r in records:
        if measured in r:
            tail = cells(r)
        else:  # a skipped measurement: no numbers to format
            tail = [f"skipped: {r['skipped']}"] + [""] * (n_cells - 1)
        out.append("|" + "|".join(f" {c} " if c else " " for c in lead(r) + tail) + "|")
    return out


def table(res: dict) -> str:
    lines = [f"device {res['device']} ({res['device_name']}), torch {res['torch']}, "
             f"{res['backbone']}, size {res['size']}, {res['cpu_threads']} CPU threads; cache "
             f"{res['cache']['images']} images, {res['cache']['proposals_per_image']:.0f} "
             f"proposals/image", "",
             "| train | amp | s/step | s/image | images/s | data + cues (share) | peak GB |",
             "|---|---|---|---|---|---|---|"]
    lines += _rows(res["train"], "step_s", lambda r: [r["cues"], r["amp"]], lambda r: [
        f"{r['step_s']:.3f}", f"{r['s_per_image']:.3f}", f"{r['images_per_s']:.2f}",
        f"{r['data_cue_share']:.1%}", _f(r["peak_mem_gb"], ".2f")], 5)
    lines += ["", "| inference | amp | ms/image single scale | ms/image TTA (passes) | images/s "
              "| peak GB |", "|---|---|---|---|---|---|"]
    lines += _rows(res["inference"], "single_ms", lambda r: ["", r["amp"]], lambda r: [
        f"{r['single_ms']:.1f}", f"{r['tta_ms']:.1f} ({r['tta_passes']})",
        f"{r['images_per_s']:.2f}", _f(r["peak_mem_gb"], ".2f")], 4)
    s = res["summary"]
    lines.append("")
    if "online_over_cached_step" in s:
        lines.append(f"online-GrabCut step / cached-cue step (fp32): "
                     f"{s['online_over_cached_step']:.1f}x (target >= "
                     f"{TARGETS['online_over_cached_min']:.0f}x on the GPU)")
    if "data_cue_share_cached" in s:
        lines.append(f"data + cues, cached (worst precision): {s['data_cue_share_cached']:.1%} of "
                     f"a step (target <= {TARGETS['data_cue_share_max']:.0%} on the GPU)")
    if "single_ms_best" in s:
        lines.append(f"inference, fastest precision: {s['single_ms_best']:.1f} ms single scale "
                     f"({s['fastest_infer_amp']}), {s['tta_ms_best']:.1f} ms TTA "
                     f"({s['fastest_tta_amp']}) "
                     f"(targets <= {TARGETS['single_ms_max']:.0f} / {TARGETS['tta_ms_max']:.0f} ms "
                     f"on one H100/H200; paper {PAPER['tta_ms_per_image']} ms TTA)")
    if "targets_met" in s:
        lines.append("targets met: " + ", ".join(f"{k} {'yes' if v else 'NO'}"
                                                 for k, v in s["targets_met"].items()))
    else:
        lines.append("targets: not judged (they are for CUDA at paper sizes)")
    lines.append(f"wall time {res['wall_s']:.0f} s")
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    try:
        res = run(args)
    except PDSLError as e:
        fail(str(e))
    print()
    print(table(res))
    Path(args.out).write_text(json.dumps(res, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
