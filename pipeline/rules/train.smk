rule train:
    """Train PDSL on the cached cues of the training split (resumes a killed run)."""
    input:
        manifest=f"{DATA}/{DATASET}/{config['train']['split']}.json",
        cues=f"{DATA}/cues/{DATASET}/{config['train']['split']}/cues.h5",
        config=config["train"]["config"],
        backbone=train_inputs,
    output:
        # a marker, not the checkpoint pointer: Snakemake deletes the outputs of a failed job,
        # and RUN/last_checkpoint must survive a kill for --resume to continue the run
        f"{RUNS}/{{run}}/train.done",
    params:
        python=PYTHON,
        run_dir=f"{RUNS}/{{run}}",
        overrides=train_overrides,
    log:
        f"{RUNS}/{{run}}/logs/train.log",
    threads: 2  # torch intra-op threads of one CPU training process (train.threads in the config)
    shell:
        "{params.python} cli.py train --config {input.config} --manifest {input.manifest} "
        "--cues {input.cues} --out {params.run_dir} --resume {params.overrides} 2> {log} "
        "&& touch {output}"
