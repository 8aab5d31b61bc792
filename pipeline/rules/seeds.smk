rule seeds:
    """GrabCut seed-mask bank of one shard (one mask per cluster of near-duplicate proposals)."""
    input:
        manifest=f"{DATA}/{{dataset}}/{{split}}.json",
        proposals=f"{DATA}/cues/{{dataset}}/{{split}}/proposals-{{shard}}.h5",
    output:
        f"{DATA}/cues/{{dataset}}/{{split}}/seeds-{{shard}}.h5",
    params:
        python=PYTHON,
        args=seed_args,
    log:
        f"{DATA}/cues/{{dataset}}/{{split}}/logs/seeds-{{shard}}.log",
    benchmark:
        f"{DATA}/cues/{{dataset}}/{{split}}/benchmarks/seeds-{{shard}}.tsv"
    threads: 1  # cv2.grabCut is single-threaded; parallelism is across shards
    resources:
        mem_mb=2000,  # one image and its bank at a time
        runtime=240,  # minutes per shard: ~1.5 core-s/image at 2,000 proposals (README)
    shell:
        "{params.python} cli.py seeds-shard --manifest {input.manifest} --proposals-file {input.proposals} "
        "{params.args} --out {output} 2> {log}"
