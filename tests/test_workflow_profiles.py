"""The workflow's resources and its two profiles, by dry runs (`snakemake -n --profile ...`).

Every rule declares threads, mem_mb and runtime; pretrain, train and eval a `gpu` resource taken
from the workflow config's `train.gpus`; train runs torchrun with one process per GPU when
train.gpus > 1. The slurm profile is dry-run with `--executor dryrun`: the executor plugin is an
optional extra (`.[slurm]`), and the override replaces only the executor — Snakemake still parses
every other key of the profile and computes each job's resources as the plugin would receive them.
"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PROFILES = REPO / "pipeline" / "profiles"
GPU_RULES = {"pretrain", "train", "eval", "pseudo_label", "retrain"}


def _dry_run(tmp_path, gpus: int, *args):
    cfg = tmp_path / f"gpus{gpus}.yaml"
    cfg.write_text(yaml.safe_dump({
        "data_dir": str(tmp_path / "data"), "runs_dir": str(tmp_path / "runs"),
        "train": {"run": "demo", "config": "pipeline/configs/demo.yaml", "split": "train",
                  "gpus": gpus}}))
    return subprocess.run([sys.executable, "-m", "snakemake", "-n", "--configfile", str(cfg),
                           *args], cwd=REPO, capture_output=True, text=True, timeout=300)


def _jobs(text: str) -> dict:
    """rule name -> {"threads", "resources" (dict), "shell"} of the first job of each rule."""
    jobs, cur = {}, None
    for line in text.splitlines():
        m = re.match(r"^(?:local)?rule (\w+):$", line)
        if m:
            cur = jobs.setdefault(m.group(1), {"threads": 1, "resources": {}, "shell": None})
            cur = cur if cur["shell"] is None else None  # keep the first job of a rule
            continue
        if cur is None:
            continue
        if line.startswith("    threads: "):
            cur["threads"] = int(line.split(":")[1])
        elif line.startswith("    resources: "):
            cur["resources"] = dict(kv.split("=", 1) for kv in line[15:].split(", "))
        elif line.startswith("Shell command: "):
            cur["shell"] = line[15:]
    return jobs


def test_every_rule_declares_threads_mem_runtime():
    for smk in sorted((REPO / "pipeline" / "rules").glob("*.smk")):
        text = smk.read_text()
        for rule in re.split(r"^rule ", text, flags=re.M)[1:]:
            name = rule.split(":")[0]
            for key in ("threads:", "mem_mb=", "runtime="):
                assert key in rule, f"{smk.name}: rule {name} declares no {key}"
            assert ("gpu=" in rule) == (name in GPU_RULES), f"{smk.name}: rule {name} gpu"


def test_slurm_profile_dry_run_gives_each_job_its_resources(tmp_path):
    profile = yaml.safe_load((PROFILES / "slurm" / "config.yaml").read_text())
    assert profile["executor"] == "slurm"
    r = _dry_run(tmp_path, 2, "--profile", str(PROFILES / "slurm"), "--executor", "dryrun",
                 "--cores", "64")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    jobs = _jobs(r.stdout + r.stderr)
    assert {"prepare", "proposals", "seeds", "merge", "pretrain", "train", "eval"} <= set(jobs)
    for name, job in jobs.items():
        if name == "all":
            continue
        res = job["resources"]
        assert int(res["mem_mb"]) > 0 and int(res["runtime"]) > 0, (name, res)
        assert int(res.get("gpu", 0)) == {"train": 2, "pretrain": 1, "eval": 1}.get(name, 0), \
            (name, res)
    assert jobs["train"]["threads"] == 12  # 6 per GPU process
    assert jobs["seeds"]["threads"] == 1 and jobs["proposals"]["threads"] == 1
    assert "-m torch.distributed.run --standalone --nproc_per_node=2 cli.py train" in \
        jobs["train"]["shell"]
    # jobs that hold a GPU run on it (the demo config says train.device: cpu)
    assert "'train.device=cuda'" in jobs["train"]["shell"]
    assert "--device cuda" in jobs["pretrain"]["shell"] and "--device cuda" in jobs["eval"]["shell"]


def test_local_gpu_profile_dry_runs_and_caps_gpus(tmp_path):
    local = str(PROFILES / "local-gpu")
    r = _dry_run(tmp_path, 1, "--profile", local)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    jobs = _jobs(r.stdout + r.stderr)
    assert int(jobs["train"]["resources"]["gpu"]) == 1
    # one GPU: the plain interpreter, no torchrun
    assert "torch.distributed.run" not in jobs["train"]["shell"]
    assert re.search(r"python[0-9.]* cli\.py train ", jobs["train"]["shell"])
    # more GPUs than the profile says the machine has: one clear error, not a silently shrunk job
    r = _dry_run(tmp_path, 0, "--profile", local)  # the CPU demo: no GPU asked, none used
    jobs = _jobs(r.stdout + r.stderr)
    assert r.returncode == 0 and all(int(j["resources"].get("gpu", 0)) == 0 for j in jobs.values())
    assert "cuda" not in jobs["train"]["shell"] + jobs["pretrain"]["shell"] + jobs["eval"]["shell"]
    r = _dry_run(tmp_path, 2, "--profile", local)
    assert r.returncode != 0
    assert "train.gpus is 2 but this machine offers gpu=1" in r.stdout + r.stderr
    r = _dry_run(tmp_path, 2, "--profile", local, "--resources", "gpu=2")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "--nproc_per_node=2" in _jobs(r.stdout + r.stderr)["train"]["shell"]


def test_pretrain_on_a_missing_gpu_is_one_clear_error(tmp_path, monkeypatch):
    import torch

    from pdsl.errors import ConfigError
    from pdsl.engine.pretrain import pretrain_backbone

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="--device cuda but torch sees no CUDA device"):
        pretrain_backbone(tmp_path / "none.json", tmp_path / "b.pth", device="cuda")


def test_negative_gpus_is_refused_by_the_schema(tmp_path):
    r = _dry_run(tmp_path, -1, "--cores", "1")
    assert r.returncode != 0 and "gpus" in r.stdout + r.stderr


@pytest.mark.parametrize("name,dataset,splits,shards,train_split", [
    ("voc2012", "voc2012", ("train_aug", "val"), 64, "train_aug"),
    ("coco2017", "coco2017", ("train2017", "val2017"), 512, "train2017")])
def test_real_dataset_workflow_configs_dry_run(tmp_path, name, dataset, splits, shards, train_split):
    """The shipped VOC 2012 and COCO 2017 workflow configs parse, validate and plan every stage:
    MCG proposals (4,000 per image), the real-photo seed settings, no demo pretraining, 4-GPU
    torchrun training."""
    src = yaml.safe_load((REPO / "pipeline" / "configs" / f"workflow-{name}.yaml").read_text())
    assert src["seeds"]["method"] == "grabcut_batched" and src["proposals"].startswith("mcg:")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({**src, "data_dir": str(tmp_path / "data"),
                                   "runs_dir": str(tmp_path / "runs")}))
    r = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--configfile",
                        str(REPO / "pipeline" / "configs" / f"workflow-{name}.yaml"),
                        "--configfile", str(cfg), "--executor", "dryrun", "--cores", "64", "-p",
                        "--resources", "gpu=4"], cwd=REPO, capture_output=True, text=True,
                       timeout=300)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", out, flags=re.M))
    assert int(counts["proposals"]) == int(counts["seeds"]) == shards * len(splits)
    assert int(counts["prepare"]) == len(splits) and counts["train"] == "1"
    assert "pretrain" not in counts
    jobs = _jobs(out)
    assert f"--split {train_split}" in jobs["prepare"]["shell"] or \
        f"--split {splits[1]}" in jobs["prepare"]["shell"]
    assert "--format " + src["prepare"]["format"] in jobs["prepare"]["shell"]
    seeds = jobs["seeds"]["shell"]  # one bit-packed mask per proposal, as many as training reads
    assert "--method grabcut_batched" in seeds and "--sharing none" in seeds
    assert "--mask-format bits" in seeds
    assert f"--proposals '{src['proposals']}'" in jobs["proposals"]["shell"]
    assert "--max-proposals 4000" in jobs["proposals"]["shell"]
    assert "--nproc_per_node=4 cli.py train" in jobs["train"]["shell"]
    assert f"data/{dataset}/{train_split}.json" in jobs["train"]["shell"].replace(str(tmp_path) + "/", "")


def test_second_stage_section_plans_pseudo_labels_retrain_and_its_eval(tmp_path):
    cfg = tmp_path / "second.yaml"
    cfg.write_text(yaml.safe_dump({
        "data_dir": str(tmp_path / "data"), "runs_dir": str(tmp_path / "runs"),
        "second_stage": {"score_thresh": 0.4, "per_class_cap": 5, "keep_top": False,
                         "masks": "refine", "tta": True, "tta_scales": [128, 160], "tta_flip": True}}))
    r = subprocess.run([sys.executable, "-m", "snakemake", "-n", "-p", "--configfile", str(cfg)],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", out, flags=re.M))
    assert counts["pseudo_label"] == counts["retrain"] == counts["train"] == "1"
    assert counts["eval"] == "2"  # the PDSL run and the retrained Mask R-CNN
    jobs = _jobs(out)
    assert ("--score-thresh 0.4 --per-class-cap 5 --no-keep-top --masks refine --tta "
            "--tta-scales 128,160 --tta-flip") in jobs["pseudo_label"]["shell"]
    assert "train-supervised" in jobs["retrain"]["shell"]
    assert "--annotations " + str(tmp_path / "runs" / "demo" / "pseudo" / "train.json") in \
        jobs["retrain"]["shell"]


def test_shipped_second_stage_config_adds_the_stage_with_tta(tmp_path):
    """README's one command that adds the second stage to the demo workflow."""
    cfg = tmp_path / "dirs.yaml"
    cfg.write_text(yaml.safe_dump({"data_dir": str(tmp_path / "data"),
                                   "runs_dir": str(tmp_path / "runs")}))
    r = subprocess.run([sys.executable, "-m", "snakemake", "-n", "-p", "--configfile", str(cfg),
                        "pipeline/configs/workflow-second-stage.yaml"],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", out, flags=re.M))
    assert counts["pseudo_label"] == counts["retrain"] == "1"
    assert "--masks grabcut --tta --tta-scales 160 --tta-flip" in _jobs(out)["pseudo_label"]["shell"]


def test_grid_target_plans_the_grid_after_the_demo_inputs(tmp_path):
    """`snakemake pipeline/results/NAME.json` trains the grid after the caches and the pretrained
    backbone its spec names, when the result is missing (a committed result counts as done)."""
    import shutil

    work = tmp_path / "repo"
    shutil.copytree(REPO, work, ignore=shutil.ignore_patterns(".venv*", "data", "runs", ".git",
                                                              ".snakemake", "__pycache__"))
    for f in (work / "pipeline" / "results").glob("authors-switches.*"):
        f.unlink()
    r = subprocess.run([sys.executable, "-m", "snakemake", "pipeline/results/authors-switches.json",
                        "-n", "-p", "--cores", "2"], cwd=work, capture_output=True, text=True,
                       timeout=300)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", out, flags=re.M))
    assert counts["grid"] == counts["pretrain"] == "1" and counts["merge"] == "2"
    assert "cli.py grid --spec pipeline/grids/authors-switches.yaml --out runs/grid-authors-switches" \
        " --results pipeline/results/authors-switches --jobs 2 --threads 1" in out


def test_proposal_file_sources_and_conventions_reach_the_proposals_stage(tmp_path):
    cfg = tmp_path / "boxes.yaml"
    cfg.write_text(yaml.safe_dump({"data_dir": str(tmp_path / "data"),
                                   "runs_dir": str(tmp_path / "runs"), "proposals": "boxes:ss",
                                   "box_format": "y1x1y2x2", "box_base": 1}))
    r = subprocess.run([sys.executable, "-m", "snakemake", "-n", "-p", "--configfile", str(cfg)],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert ("--proposals 'boxes:ss' --box-format y1x1y2x2 --box-base 1"
            in _jobs(r.stdout + r.stderr)["proposals"]["shell"])
    cfg.write_text(yaml.safe_dump({"proposals": "fastrcnn:x.mat", "box_base": 2}))
    r = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--configfile", str(cfg)],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "box_base" in r.stdout + r.stderr
