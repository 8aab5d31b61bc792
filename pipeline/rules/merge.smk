rule merge:
    """All seed shards of a split -> the one cues.h5 the trainer opens."""
    input:
        shard_files("seeds"),
    output:
        f"{DATA}/cues/{{dataset}}/{{split}}/cues.h5",
    params:
        python=PYTHON,
    log:
        f"{DATA}/cues/{{dataset}}/{{split}}/logs/merge.log",
    threads: 1  # sequential copy
    resources:
        mem_mb=4000,  # one shard's datasets at a time
        runtime=60,  # minutes; a copy of the shards
    shell:
        "{params.python} cli.py merge-cues {input} --out {output} 2> {log}"
