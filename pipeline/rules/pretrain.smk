rule pretrain:
    """Backbone initialisation: an image-level classifier on the training split's labels (the
    stand-in for ImageNet weights where none exist, e.g. the synthetic benchmark's tiny CNN)."""
    input:
        manifest=f"{DATA}/{DATASET}/{config['train']['split']}.json",
        val=pretrain_val,
    output:
        f"{RUNS}/{{run}}/backbone.pth",
    params:
        python=PYTHON,
        args=pretrain_args,
        val=pretrain_val_arg,
    log:
        f"{RUNS}/{{run}}/logs/pretrain.log",
    threads: 4 if GPU_JOB else 2  # torch intra-op threads of one CPU process / data loading
    resources:
        mem_mb=8000,
        runtime=240,  # minutes
        gpu=GPU_JOB,
    shell:
        "{params.python} cli.py pretrain-backbone --manifest {input.manifest} "
        "{params.val} {params.args} --out {output} 2> {log}"
