rule eval:
    """Evaluate the trained run on a split: metrics (pycocotools), results json, report.md."""
    input:
        done=f"{RUNS}/{{run}}/train.done",
        manifest=f"{DATA}/{DATASET}/{{split}}.json",
        cues=f"{DATA}/cues/{DATASET}/{{split}}/cues.h5",
    output:
        report=f"{RUNS}/{{run}}/eval/{{split}}/report.md",
        metrics=f"{RUNS}/{{run}}/eval/{{split}}/metrics.json",
        results=f"{RUNS}/{{run}}/eval/{{split}}/coco_instances_results.json",
    params:
        python=PYTHON,
        run_dir=f"{RUNS}/{{run}}",
        out_dir=f"{RUNS}/{{run}}/eval/{{split}}",
        args=eval_args,
    log:
        f"{RUNS}/{{run}}/logs/eval-{{split}}.log",
    threads: 4 if GPU_JOB else 2  # torch intra-op threads of one inference process
    resources:
        mem_mb=16000,  # predictions are kept per image until COCOeval
        runtime=480,  # minutes; COCO val with TTA at ~0.5 s/image, plus the AP curve
        gpu=GPU_JOB,
    shell:
        "{params.python} cli.py eval --run {params.run_dir} --manifest {input.manifest} "
        "--cues {input.cues} --out {params.out_dir} {params.args} > {log} 2>&1"
