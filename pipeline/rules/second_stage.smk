# Second stage (a `second_stage` section in the workflow config): the trained PDSL run labels its
# own training split (`cli.py pseudo-label`, labelled classes only), and a fully supervised Mask
# R-CNN with the same backbone family is retrained on those labels (`cli.py train-supervised
# --annotations`) and scored by the same evaluator:
#   RUNS/<run>/pseudo/<split>.json (+ .quality.json)   pseudo_label
#   RUNS/<run>-retrain/train.done                        retrain
#   RUNS/<run>-retrain/eval/<split>/metrics.json         eval_retrain


def second_stage_args(wildcards):
    s = config["second_stage"]
    args = [f"--score-thresh {s.get('score_thresh', 0.3)}",
            f"--per-class-cap {s.get('per_class_cap', 10)}",
            "--keep-top" if s.get("keep_top", True) else "--no-keep-top",
            f"--masks {s.get('masks', 'grabcut')}"]
    if s.get("tta"):
        args.append("--tta")
        if s.get("tta_scales"):
            args.append("--tta-scales " + ",".join(str(int(x)) for x in s["tta_scales"]))
        if s.get("tta_flip") is not None:
            args.append("--tta-flip" if s["tta_flip"] else "--tta-no-flip")
    return " ".join(args + (["--device cuda"] if GPU_JOB else []))


def retrain_overrides(wildcards):
    s = config["second_stage"]
    overrides = list(s.get("overrides", []))
    if section("pretrain"):
        overrides.append(f"model.pretrained={RUNS}/{wildcards.run}/backbone.pth")
    if TRAIN_GPUS:
        overrides.append("train.device=cuda")
    return " ".join(f"'{o}'" for o in overrides)


rule pseudo_label:
    """Label the training split with the trained run (resumable: OUT.parts/)."""
    input:
        done=f"{RUNS}/{{run}}/train.done",
        manifest=f"{DATA}/{DATASET}/{{split}}.json",
        cues=f"{DATA}/cues/{DATASET}/{{split}}/cues.h5",
    output:
        f"{RUNS}/{{run}}/pseudo/{{split}}.json",
    params:
        python=PYTHON,
        run_dir=f"{RUNS}/{{run}}",
        args=second_stage_args,
    log:
        f"{RUNS}/{{run}}/logs/pseudo-label-{{split}}.log",
    threads: 4 if GPU_JOB else 2
    resources:
        mem_mb=8000,
        runtime=480,
        gpu=GPU_JOB,
    shell:
        "{params.python} cli.py pseudo-label --run {params.run_dir} --manifest {input.manifest} "
        "--cues {input.cues} --out {output} {params.args} > {log} 2>&1"


rule retrain:
    """Mask R-CNN on the pseudo labels (same config family as the ceiling; resumes)."""
    input:
        labels=f"{RUNS}/{{run}}/pseudo/{config['train']['split']}.json",
        manifest=f"{DATA}/{DATASET}/{config['train']['split']}.json",
        config=config["second_stage"].get("config", config["train"]["config"]),
        backbone=train_inputs,
    output:
        f"{RUNS}/{{run}}-retrain/train.done",
    params:
        python=PYTHON,
        run_dir=f"{RUNS}/{{run}}-retrain",
        overrides=retrain_overrides,
    log:
        f"{RUNS}/{{run}}-retrain/logs/train.log",
    threads: 6 if TRAIN_GPUS else 2
    resources:
        mem_mb=8000,
        runtime=2880,
        gpu=GPU_JOB,
    shell:
        "{params.python} cli.py train-supervised --config {input.config} --manifest "
        "{input.manifest} --annotations {input.labels} --out {params.run_dir} --resume "
        "{params.overrides} 2> {log} && touch {output}"
