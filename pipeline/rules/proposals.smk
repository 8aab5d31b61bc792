rule proposals:
    """Proposals of one shard of a split (MCG import, pickle import or built-in generator)."""
    input:
        manifest=f"{DATA}/{{dataset}}/{{split}}.json",
    output:
        f"{DATA}/cues/{{dataset}}/{{split}}/proposals-{{shard}}.h5",
    params:
        python=PYTHON,
        source=config["proposals"],
    log:
        f"{DATA}/cues/{{dataset}}/{{split}}/logs/proposals-{{shard}}.log",
    benchmark:
        f"{DATA}/cues/{{dataset}}/{{split}}/benchmarks/proposals-{{shard}}.tsv"
    threads: 1  # selective search runs with cv2.setNumThreads(1); parallelism is across shards
    shell:
        "{params.python} cli.py proposals-shard --manifest {input.manifest} --proposals '{params.source}' "
        "--shard {wildcards.shard} --out {output} 2> {log}"
