# Helpers shared by the rules: paths and command-line arguments derived from the validated config.

import sys

def _interpreter():
    """The interpreter running snakemake (rules use the same environment), spelled the same way
    however snakemake was started (`snakemake`, `python -m snakemake`, `python3 -m ...`): it is
    a rule param, and a changed param would make Snakemake rebuild every cache."""
    from pathlib import Path

    canonical = Path(sys.prefix) / "bin" / "python"
    same = canonical.exists() and Path(sys.executable).resolve() == canonical.resolve()
    return str(canonical) if same else sys.executable


PYTHON = _interpreter()
DATA = config.get("data_dir", "data")
DATASET = config["dataset"]
RUNS = config.get("runs_dir", "runs")
SHARDS = [f"{i + 1}-of-{config['shards']}" for i in range(config["shards"])]

# GPUs of the train job (workflow config `train.gpus`; 0 = CPU). pretrain and eval use one GPU
# when training uses any. Rules request them as the `gpu` resource (what
# snakemake-executor-plugin-slurm turns into --gpus, and what `--resources gpu=N` caps locally).
TRAIN_GPUS = int((config.get("train") or {}).get("gpus", 0))
GPU_JOB = min(TRAIN_GPUS, 1)
_gpu_cap = getattr(workflow, "global_resources", {}).get("gpu")  # `--resources gpu=N`, if given
_gpu_cap = getattr(_gpu_cap, "value", _gpu_cap)
if _gpu_cap is not None and TRAIN_GPUS > int(_gpu_cap):
    # Snakemake would shrink the job's `gpu` to N and torchrun would still start G processes
    raise ValueError(f"train.gpus is {TRAIN_GPUS} but this machine offers gpu={_gpu_cap} "
                     f"(--resources / the profile's resources): lower train.gpus or raise gpu")


wildcard_constraints:
    dataset=r"[A-Za-z0-9_.-]+",
    split=r"[A-Za-z0-9_.-]+",
    shard=r"\d+-of-\d+",


def section(name):
    """A config section, or None when it is left out or null (`train: null` in a --configfile
    removes a section the default config has: Snakemake merges config files)."""
    return config.get(name) or None


def all_targets():
    """Cue caches of every split, then (with a `train` section) the trained run, (with an
    `eval` section too) its report on the eval split, and (with `second_stage`) the Mask R-CNN
    retrained on the run's pseudo labels (and its report)."""
    targets = all_cues()
    if section("train"):
        run = config["train"]["run"]
        if section("eval"):
            targets.append(f"{RUNS}/{run}/eval/{config['eval']['split']}/report.md")
        else:
            targets.append(f"{RUNS}/{run}/train.done")
        if section("second_stage"):  # pseudo labels -> Mask R-CNN retrained on them (-> eval)
            targets.append(f"{RUNS}/{run}-retrain/eval/{config['eval']['split']}/report.md"
                           if section("eval") else f"{RUNS}/{run}-retrain/train.done")
    return targets


def train_overrides(wildcards):
    overrides = list(config["train"].get("overrides", []))
    if section("pretrain"):
        overrides.append(f"model.pretrained={RUNS}/{wildcards.run}/backbone.pth")
    if TRAIN_GPUS:
        overrides.append("train.device=cuda")  # the job holds GPUs: never fall back to the CPU
    return " ".join(f"'{o}'" for o in overrides)


def train_launcher():
    """The interpreter, or torchrun with one DDP process per GPU when train.gpus > 1 (the
    trainer joins the process group torchrun sets up, see pdsl/engine/train.py)."""
    if TRAIN_GPUS > 1:
        return f"{PYTHON} -m torch.distributed.run --standalone --nproc_per_node={TRAIN_GPUS}"
    return PYTHON


def train_inputs(wildcards):
    """The pretrained backbone, when the config has a `pretrain` section."""
    return [f"{RUNS}/{wildcards.run}/backbone.pth"] if section("pretrain") else []


def pretrain_val(wildcards):
    """The eval split's manifest (pretrain reports its val mAP on it), if there is one."""
    return [f"{DATA}/{DATASET}/{config['eval']['split']}.json"] if section("eval") else []


def pretrain_val_arg(wildcards, input):
    return f"--val-manifest {input.val}" if input.val else ""


def pretrain_args(wildcards):
    p = config["pretrain"]
    return " ".join([f"--{k} {v}" for k, v in p.items()] + (["--device cuda"] if GPU_JOB else []))


def eval_args(wildcards):
    e = config["eval"]
    return " ".join((["--tta"] if e.get("tta") else []) + [f"--curve {e.get('curve_images', 0)}"]
                    + (["--device cuda"] if GPU_JOB else []))


def all_cues():
    """The merged caches, and the shards they are made of: shards are targets too, so deleting
    one shard rebuilds just that shard (and the merge), never the others."""
    merged = expand(f"{DATA}/cues/{{dataset}}/{{split}}/cues.h5", dataset=DATASET,
                    split=config["splits"])
    shards = expand(f"{DATA}/cues/{{dataset}}/{{split}}/{{kind}}-{{shard}}.h5", dataset=DATASET,
                    split=config["splits"], kind=["proposals", "seeds"], shard=SHARDS)
    return merged + shards


def cue_dir(wildcards):
    return f"{DATA}/cues/{wildcards.dataset}/{wildcards.split}"


def prepare_args(wildcards):
    """cli.py prepare-data options for one split, from the `prepare` section of the config."""
    p = config["prepare"]
    args = [f"--format {p['format']}", f"--split {wildcards.split}"]
    if p["format"] == "synthetic":
        args += [f"--num-images {p['num_images'][wildcards.split]}", f"--seed {p.get('seed', 0)}"]
    for key, opt in (("root", "--root"), ("sbd", "--sbd"), ("labels_csv", "--labels")):
        if p.get(key):  # "{split}" in a path names the split's own file (labels per split)
            args.append(f"{opt} '{p[key].replace('{split}', wildcards.split)}'")
    classes = p.get("classes") or []
    for c in [classes] if isinstance(classes, str) else classes:
        args.append(f"--classes '{c}'")
    return " ".join(args)


def proposal_args(wildcards):
    """cli.py proposals-shard options: the proposal files' convention and the proposals kept per
    image, where the config states them."""
    return " ".join(f"--{k.replace('_', '-')} {config[k]}"
                    for k in ("box_format", "box_base", "max_proposals") if config.get(k) is not None)


def seed_args(wildcards):
    """cli.py seeds-shard options from the `seeds` section of the config."""
    return " ".join(f"--{k.replace('_', '-')} {v}" for k, v in config.get("seeds", {}).items())


def shard_files(kind):
    def files(wildcards):
        return [f"{cue_dir(wildcards)}/{kind}-{s}.h5" for s in SHARDS]

    return files
