rule proposals:
    """Proposals of one shard of a split (MCG import, pickle import or built-in generator)."""
    input:
        manifest=f"{DATA}/{{dataset}}/{{split}}.json",
    output:
        f"{DATA}/cues/{{dataset}}/{{split}}/proposals-{{shard}}.h5",
    params:
        python=PYTHON,
        source=config["proposals"],
        convention=proposal_args,
    log:
        f"{DATA}/cues/{{dataset}}/{{split}}/logs/proposals-{{shard}}.log",
    benchmark:
        f"{DATA}/cues/{{dataset}}/{{split}}/benchmarks/proposals-{{shard}}.tsv"
    threads: 1  # selective search runs with cv2.setNumThreads(1); parallelism is across shards
    resources:
        mem_mb=2000,  # one image and its proposals at a time
        runtime=240,  # minutes per shard: ~1.2 core-s/image (README), e.g. 10,582 VOC images / 8
    shell:
        "{params.python} cli.py proposals-shard --manifest {input.manifest} --proposals '{params.source}' "
        "{params.convention} --shard {wildcards.shard} --out {output} 2> {log}"
