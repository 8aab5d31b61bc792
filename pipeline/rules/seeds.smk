rule seeds:
    """Seed masks of one shard: one per proposal (real datasets) or a shared bank (the demo)."""
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
    threads: 1  # GrabCut runs on one core (cv2 and torch set to 1 thread); parallelism is across shards
    resources:
        mem_mb=2000,  # one image and its masks at a time (~100 MB of tensors at 4,000 proposals)
        runtime=240,  # minutes per shard: ~1.2 / 2.4 core-s per image at 2,000 / 4,000 proposals
                      # (pipeline/results/README.md, "Seed masks on real photos")
    shell:
        "{params.python} cli.py seeds-shard --manifest {input.manifest} --proposals-file {input.proposals} "
        "{params.args} --out {output} 2> {log}"
