"""The workflow's cluster path on a real SLURM: the shipped profile (`pipeline/profiles/slurm`)
and snakemake-executor-plugin-slurm submit the cache stages and a 2-step CPU `train` to a private
single-node cluster (tests/slurm_cluster.py); the jobs' scheduler records carry the rules'
threads, mem_mb and runtime; the merged cue cache equals a local `--cores 2` run's array for
array; a GPU train job asks sbatch for its GPUs and runs torchrun in its step.

Runs where SLURM is installed (`apt-get install slurm-wlm munge`) and the tests run as root
(slurmd starts the jobs); skipped with the reason elsewhere.
"""
from __future__ import annotations

import importlib.metadata
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from slurm_cluster import Cluster, missing_programs

REPO = Path(__file__).resolve().parents[1]
TEST_CONFIG = "pipeline/configs/workflow-test.yaml"


def _skip_reason():
    missing = missing_programs()
    if missing:
        return ("SLURM is not installed (missing " + ", ".join(missing) + "; "
                "apt-get install slurm-wlm munge)")
    if os.geteuid() != 0:
        return "the private SLURM cluster needs root (slurmd starts the jobs as their user)"
    try:  # its version only: importing the plugin queries the default cluster's scontrol
        plugin = importlib.metadata.version("snakemake-executor-plugin-slurm")
    except importlib.metadata.PackageNotFoundError:
        return "snakemake-executor-plugin-slurm is not installed (pip install -e '.[slurm]')"
    if tuple(int(x) for x in re.findall(r"\d+", plugin)[:2]) < (2, 1):
        return (f"snakemake-executor-plugin-slurm {plugin} has no --slurm-status-command (2.1+), "
                "which this test needs: its cluster keeps no accounting database for sacct")
    return None


pytestmark = pytest.mark.skipif(_skip_reason() is not None, reason=str(_skip_reason()))


@pytest.fixture(scope="module")
def cluster():
    c = Cluster()
    try:
        if c.cpus < 2 or c.memory_mb < 8000:
            pytest.skip(f"the workflow's jobs ask for 2 CPUs and 8000 MB; this machine has "
                        f"{c.cpus} CPUs and {c.memory_mb} MB")
        c.start()
        yield c
    finally:
        c.stop()


def _config(path: Path, root: Path, **extra) -> Path:
    """A --configfile over the tiny test config: its train split only, data under `root`."""
    path.write_text(yaml.safe_dump({"data_dir": str(root / "data"), "runs_dir": str(root / "runs"),
                                    "splits": ["train"], "pretrain": None, "eval": None, **extra}))
    return path


def _snakemake_argv(cfg: Path, *args) -> list[str]:
    return [sys.executable, "-m", "snakemake", "--configfile", TEST_CONFIG, str(cfg), *args]


def _slurm_argv(cfg: Path, logdir: Path, *args) -> list[str]:
    """The shipped profile; job states from squeue (the cluster has no accounting database)."""
    return _snakemake_argv(
        cfg, "--profile", "pipeline/profiles/slurm", "--retries", "0", "--verbose",
        "--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "1",
        "--slurm-logdir", str(logdir), "--slurm-keep-successful-logs", *args)


def _start(argv: list[str], log: Path, env=None) -> subprocess.Popen:
    with open(log, "w") as f:
        return subprocess.Popen(argv, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT)


def _submissions(out: str) -> dict[str, dict]:
    """SLURM job id -> {"rule", "threads", "resources", "sbatch"} from Snakemake's output."""
    blocks, cur, calls, subs = {}, None, [], {}
    for line in out.splitlines():
        if m := re.match(r"^(?:local)?rule (\w+):$", line):
            cur = {"rule": m.group(1), "threads": 1, "resources": {}}
        elif cur is not None and (m := re.match(r"^    jobid: (\d+)$", line)):
            blocks[m.group(1)] = cur
        elif cur is not None and (m := re.match(r"^    threads: (\d+)$", line)):
            cur["threads"] = int(m.group(1))
        elif cur is not None and line.startswith("    resources: "):
            cur["resources"] = dict(kv.split("=", 1) for kv in line[15:].split(", "))
        elif "sbatch call: " in line:
            calls.append(line.split("sbatch call: ", 1)[1])
        elif m := re.match(r"^Job (\d+) has been submitted with SLURM jobid (\d+) \(log: (.*)\)",
                           line):
            output = f"--output {Path(m.group(3)).with_name('%j.log')} "
            call = next(c for c in calls if output in c)  # the call that job was sent with
            subs[m.group(2)] = {**blocks[m.group(1)], "sbatch": call}
    return subs


def _minutes(limit: str) -> int:
    days, _, hms = limit.rpartition("-")
    h, m, s = (int(x) for x in hms.split(":"))
    return int(days or 0) * 1440 + h * 60 + m + (s > 0)


def _megabytes(mem: str) -> int:
    return int(float(mem[:-1]) * {"M": 1, "G": 1024, "T": 1024 ** 2}[mem[-1]])


@pytest.fixture(scope="module")
def runs(cluster, tmp_path_factory):
    """Three runs at once (the SLURM runs mostly wait for status checks): on SLURM, the cache
    stages of the tiny train split and a 2-step CPU train; on SLURM, a 2-GPU train job; locally
    (`--cores 2`), the same cache stages."""
    root = tmp_path_factory.mktemp("runs")
    cpu, gpu, local = (root / d for d in ("cpu", "gpu", "local"))
    for d in (cpu, gpu, local):
        d.mkdir()
    train = {"config": "pipeline/configs/demo.yaml", "split": "train"}
    cpu_cfg = _config(cpu / "config.yaml", cpu, train={
        **train, "run": "tiny", "gpus": 0, "overrides": [
            "solver.max_iter=2", "train.checkpoint_period=2", "solver.warmup_iters=1",
            "solver.steps=[1]"]})
    # The 2-GPU job only: placeholder inputs (the trainer stops at its CUDA check before it
    # reads them) and the train rule alone; the node has the machine's CPUs, so the job asks
    # for 1 of them instead of 6 per GPU; CUDA hidden, the same on a machine with GPUs
    gpu_cfg = _config(gpu / "config.yaml", gpu, train={**train, "run": "tiny-gpu", "gpus": 2})
    for f in ("data/synthetic/train.json", "data/cues/synthetic/train/cues.h5"):
        (gpu / f).parent.mkdir(parents=True, exist_ok=True)
        (gpu / f).write_text("placeholder\n")
    procs = {
        "gpu": _start(_slurm_argv(gpu_cfg, gpu / "slurm-logs", str(gpu / "runs/tiny-gpu/train.done"),
                                  "--allowed-rules", "train",
                                  "--set-threads", "train=1", "--set-resources",
                                  "train:mem_mb=2000"), gpu / "snakemake.log",
                      {**cluster.env, "CUDA_VISIBLE_DEVICES": ""}),
        "local": _start(_snakemake_argv(_config(local / "config.yaml", local, train=None),
                                        "--cores", "2", "--quiet"), local / "snakemake.log",
                        cluster.env),  # Snakemake asks SLURM about itself when it loads the plugin
        "cpu": _start(_slurm_argv(cpu_cfg, cpu / "slurm-logs"), cpu / "snakemake.log",
                      cluster.env)}
    try:
        for p in procs.values():
            p.wait(300)
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
    out = {}
    for name, d in (("cpu", cpu), ("gpu", gpu), ("local", local)):
        text = (d / "snakemake.log").read_text()
        run_id = re.search(r"SLURM run ID: (\S+)", text)
        out[name] = {"dir": d, "rc": procs[name].returncode, "out": text,
                     "run_id": run_id and run_id.group(1), "subs": _submissions(text)}
    assert out["cpu"]["rc"] == 0, out["cpu"]["out"][-4000:] + cluster.logs()
    return out


def test_every_job_went_through_sbatch_with_its_rule_resources(cluster, runs):
    cpu = runs["cpu"]
    subs, records = cpu["subs"], cluster.jobs(cpu["run_id"])
    rules = sorted(s["rule"] for s in subs.values())
    assert rules == ["merge", "prepare", "proposals", "proposals", "seeds", "seeds", "train"]
    assert set(records) == set(subs)  # the scheduler knows every job Snakemake submitted
    done = cluster.completions()
    for jobid, sub in subs.items():
        rec, res = records[jobid], sub["resources"]
        assert rec["JobState"] == "COMPLETED" and done[jobid]["JobState"] == "COMPLETED", rec
        assert rec["Comment"].startswith(f"rule_{sub['rule']}")
        assert int(rec["NumCPUs"]) == sub["threads"], (sub, rec)  # threads -> --cpus-per-task
        assert _megabytes(rec["MinMemoryNode"]) == int(res["mem_mb"]), (sub, rec)  # -> --mem
        assert _minutes(rec["TimeLimit"]) == int(res["runtime"]), (sub, rec)  # runtime -> -t
        assert "--gpus" not in sub["sbatch"] and "gpu" not in rec.get("TresPerJob", "")
        assert rec["WorkDir"] == str(REPO)  # jobs run in the workflow's directory
        assert Path(rec["StdOut"]).parent.is_relative_to(cpu["dir"] / "slurm-logs")
        assert Path(rec["StdOut"]).is_file()
    cues = cpu["dir"] / "data" / "cues" / "synthetic" / "train"
    assert sorted(p.name for p in (cues / "logs").iterdir()) == [
        "merge.log", "proposals-1-of-2.log", "proposals-2-of-2.log", "seeds-1-of-2.log",
        "seeds-2-of-2.log"]
    # the 2-step CPU train ran in its SLURM job and left its checkpoint
    run = cpu["dir"] / "runs" / "tiny"
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2] and (run / "train.done").exists()
    assert (run / "last_checkpoint").read_text().strip().endswith("model_0000002.pth")


def _arrays(path: Path) -> dict[str, np.ndarray]:
    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda k, v: out.__setitem__(k, v[()]) if isinstance(v, h5py.Dataset)
                     else None)
    return out


def test_merged_cache_from_slurm_equals_a_local_run(runs):
    assert runs["local"]["rc"] == 0, runs["local"]["out"][-4000:]
    rel = Path("data/cues/synthetic/train/cues.h5")
    local, cluster = _arrays(runs["local"]["dir"] / rel), _arrays(runs["cpu"]["dir"] / rel)
    assert len(local) > 10 and sorted(local) == sorted(cluster)
    for name, a in local.items():
        b = cluster[name]
        assert (a.dtype, a.shape) == (b.dtype, b.shape), name
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes(), name


def test_gpu_train_job_asks_sbatch_for_gpus_and_runs_torchrun(cluster, runs):
    """train.gpus: 2: sbatch gets --gpus=2, the scheduler allocates two (declared) GPUs, and
    the job's step starts torchrun with two processes, which stop at once with the trainer's
    clear error (torch sees no CUDA device on this machine)."""
    gpu = runs["gpu"]
    assert gpu["rc"] != 0, gpu["out"][-3000:]
    assert [s["rule"] for s in gpu["subs"].values()] == ["train"], gpu["out"][-3000:]
    (jobid, sub), = gpu["subs"].items()
    assert "--gpus=2" in sub["sbatch"] and "--cpus-per-task=1" in sub["sbatch"]
    assert "--mem 2000" in sub["sbatch"] and "-t 2880" in sub["sbatch"]
    rec = cluster.jobs(gpu["run_id"])[jobid]
    assert re.search(r"gpu[:=]2", rec["TresPerJob"]), rec
    assert rec["JobState"] == "FAILED"
    job_log = Path(rec["StdOut"]).read_text()
    assert re.search(r"-m torch\.distributed\.run --standalone --nproc_per_node=2 cli\.py train "
                     r".*'train\.device=cuda'", job_log), job_log[-3000:]
    train_log = (gpu["dir"] / "runs" / "tiny-gpu" / "logs" / "train.log").read_text()
    assert train_log.count("Error: train.device is cuda but no CUDA device is available") == 2, \
        train_log[-3000:]
