#!/usr/bin/env python
"""A/B training-step benchmark: this checkout against a git revision, interleaved, by median step
time (a script, not a test). Data is excluded: the batches are built once (with this checkout's
data code) and both sides train on the same batches: forward + backward + optimiser step.

    python pipeline/scripts/bench_step_ab.py --base main [--config pipeline/configs/demo.yaml]
        [--threads 2] [--rounds 8] [--steps 3] [--grid-overrides pipeline/grids/ablation.yaml]
        [KEY=VALUE ...]

Each side runs in its own process from its own tree (the base is ``git archive``d into a temp
dir), reads its own copy of the config file and the same overrides, so a config key the base
does not know must not be passed. The rounds alternate which side goes first; each round runs
``--steps`` steps per side after one warm-up step per side. Shared cores: the interleaving
spreads other load over both sides; the medians are printed with the quartiles, of the wall
time and of the process's CPU time (all its threads: less sensitive to other processes on the
cores, but it counts OpenMP threads' spinning).

``--grid-overrides SPEC`` takes the ``train.overrides`` of a grid spec (e.g. the authors' recipe
of pipeline/grids/ablation.yaml); ``model.pretrained`` is set to null (weights do not change the
step's cost; the frozen/trained split of the backbone is kept).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

WORKER = r'''
import json, sys, time
import torch
root, batches, config, threads = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
overrides = json.loads(sys.argv[5])
sys.path.insert(0, root)
torch.set_num_threads(threads)
from pdsl.config import load_config
from pdsl.engine.checkpoint import build_model
try:
    from pdsl.engine.loop import build_optimizer
except ImportError:
    from pdsl.engine.train import build_optimizer
cfg = load_config(config, overrides)
data = torch.load(batches, weights_only=False)
torch.manual_seed(0)
model = build_model(cfg, data["num_classes"]).train()
opt = build_optimizer(cfg, model)
step = 0
def one():
    global step
    b = data["batches"][step % len(data["batches"])]
    torch.manual_seed(step)
    t0, c0 = time.perf_counter(), time.process_time()
    losses = model(*b)
    sum(losses.values()).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    step += 1
    return time.perf_counter() - t0, time.process_time() - c0
one()
print("ready", flush=True)
for line in sys.stdin:
    n = int(line)
    print(json.dumps([one() for _ in range(n)]), flush=True)
'''


def make_batches(config, overrides, n, path, manifest=None, cues=None):
    """``n`` training batches of the config (a generated 16-image synthetic set with its cues, or
    ``manifest`` and its ``cues``), saved for both sides."""
    import torch

    sys.path.insert(0, str(ROOT))
    from pdsl.config import load_config
    from pdsl.cues.cache import cache_cues
    from pdsl.cues.store import CueStore
    from pdsl.data import Collate, TrainDataset, batch_to_device
    from pdsl.datasets.synthetic import generate
    from pdsl.manifest import load_manifest

    cfg = load_config(config, overrides)
    tmp = Path(path).parent
    if manifest is None:
        m = generate(tmp / "train.json", "train", 16, seed=0)
        cues = str(tmp / "cues.h5")
        cache_cues(str(m.path), "builtin", cues, workers=2, log=lambda s: None)
        manifest = m.path
    manifest = load_manifest(str(manifest))
    ds = TrainDataset(manifest, CueStore(str(cues)), cfg, seed=0, verbose=False)
    collate = Collate(cfg.input.size_divisibility)
    k = cfg.solver.images_per_gpu
    batches = []
    for s in range(n):
        items = [ds[((s * k + j) % len(ds), s, j)] for j in range(k)]
        images, proposals, scores, targets = batch_to_device(collate(items), torch.device("cpu"))
        batches.append((images, proposals, scores, targets))
    torch.save({"num_classes": manifest.num_classes, "batches": batches}, path)


def profile(a, overrides):
    import torch
    from torch.profiler import ProfilerActivity, profile as torch_profile

    from pdsl.config import load_config
    from pdsl.engine.checkpoint import build_model
    from pdsl.engine.loop import build_optimizer

    torch.set_num_threads(a.threads)
    with tempfile.TemporaryDirectory() as tmp:
        make_batches(ROOT / a.config, overrides, a.batches, Path(tmp) / "b.pt", a.manifest,
                     a.cues)
        data = torch.load(Path(tmp) / "b.pt", weights_only=False)
    cfg = load_config(ROOT / a.config, overrides)
    torch.manual_seed(0)
    model = build_model(cfg, data["num_classes"]).train()
    opt = build_optimizer(cfg, model)

    def step(i):
        torch.manual_seed(i)
        losses = model(*data["batches"][i % len(data["batches"])])
        sum(losses.values()).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step(0)
    t0 = time.perf_counter()
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        for i in range(1, a.profile + 1):
            step(i)
    dt = (time.perf_counter() - t0) / a.profile
    ev = prof.key_averages()
    n_ops = sum(e.count for e in ev) / a.profile
    print(f"{a.profile} steps profiled, {dt:.3f} s/step under the profiler, {n_ops:.0f} op calls "
          f"per step")
    print(ev.table(sort_by="self_cpu_time_total", row_limit=25))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base", required=True, help="git revision to compare against")
    ap.add_argument("--config", default="pipeline/configs/demo.yaml")
    ap.add_argument("--grid-overrides", help="a grid spec whose train.overrides to apply")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batches", type=int, default=6)
    ap.add_argument("--profile", type=int, default=0,
                    help="instead: profile this many steps of this checkout with torch.profiler "
                         "and print the ops by self CPU time")
    ap.add_argument("--manifest", help="batches from this manifest and --cues (e.g. the demo's "
                    "data/synthetic/train.json and data/cues/synthetic/train/cues.h5: its real "
                    "proposal and mask counts) instead of a generated 16-image set")
    ap.add_argument("--cues", help="the cue cache of --manifest")
    ap.add_argument("overrides", nargs="*")
    a = ap.parse_args()
    if (a.manifest is None) != (a.cues is None):
        ap.error("--manifest and --cues go together")
    overrides = []
    if a.grid_overrides:
        import yaml

        overrides += [str(o) for o in yaml.safe_load(Path(a.grid_overrides).read_text())["train"]
                      ["overrides"]]
    overrides += ["model.pretrained=null"] + list(a.overrides)
    if a.profile:
        return profile(a, overrides)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        base_root = tmp / "base"
        base_root.mkdir()
        arch = subprocess.run(["git", "-C", str(ROOT), "archive", a.base], check=True,
                              capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(base_root)], input=arch, check=True)
        rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", a.base],
                             capture_output=True, text=True, check=True).stdout.strip()
        make_batches(ROOT / a.config, overrides, a.batches, tmp / "batches.pt", a.manifest,
                     a.cues)
        sides = {}
        for name, root in (("base", base_root), ("head", ROOT)):
            p = subprocess.Popen([sys.executable, "-c", WORKER, str(root), str(tmp / "batches.pt"),
                                  str(root / a.config), str(a.threads), json.dumps(overrides)],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            assert p.stdout.readline().strip() == "ready", f"{name} worker failed"
            sides[name] = p
        times = {"base": [], "head": []}
        t0 = time.time()
        for r in range(a.rounds):
            for name in (("base", "head") if r % 2 == 0 else ("head", "base")):
                p = sides[name]
                p.stdin.write(f"{a.steps}\n")
                p.stdin.flush()
                times[name] += json.loads(p.stdout.readline())
        for p in sides.values():
            p.stdin.close()
            p.wait()
    import numpy as np

    wall = {k: np.percentile([t[0] for t in v], [25, 50, 75]) for k, v in times.items()}
    cpu = {k: np.percentile([t[1] for t in v], [25, 50, 75]) for k, v in times.items()}
    print(f"config {a.config}" + (f" + {a.grid_overrides} overrides" if a.grid_overrides else "")
          + f", {a.threads} thread(s), {a.rounds} interleaved rounds x {a.steps} steps per side "
          f"({time.time() - t0:.0f} s)")
    print("| side | median wall s/step | quartiles | median CPU s/step (all threads) | "
          "quartiles |\n|---|---|---|---|---|")
    for k, label in (("base", f"base {a.base} ({rev})"), ("head", "this checkout")):
        print(f"| {label} | {wall[k][1]:.4f} | {wall[k][0]:.4f} - {wall[k][2]:.4f} | "
              f"{cpu[k][1]:.4f} | {cpu[k][0]:.4f} - {cpu[k][2]:.4f} |")
    print(f"speed-up (median base / median head): wall {wall['base'][1] / wall['head'][1]:.2f}x, "
          f"CPU {cpu['base'][1] / cpu['head'][1]:.2f}x")


if __name__ == "__main__":
    main()
