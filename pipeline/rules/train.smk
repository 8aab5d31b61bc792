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
        launcher=train_launcher(),
        run_dir=f"{RUNS}/{{run}}",
        overrides=train_overrides,
    log:
        f"{RUNS}/{{run}}/logs/train.log",
    # CPU: torch intra-op threads of one training process (train.threads in the config); GPU: per
    # process 1 + 4 DataLoader workers (train.num_workers) + online-cue GrabCut workers
    threads: 6 * TRAIN_GPUS if TRAIN_GPUS else 2
    resources:
        mem_mb=16000 * TRAIN_GPUS if TRAIN_GPUS else 8000,
        runtime=2880,  # minutes (48 h); a killed run continues where it stopped (--resume)
        gpu=TRAIN_GPUS,
    shell:
        "{params.launcher} cli.py train --config {input.config} --manifest {input.manifest} "
        "--cues {input.cues} --out {params.run_dir} --resume {params.overrides} 2> {log} "
        "&& touch {output}"
