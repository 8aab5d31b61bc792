rule prepare:
    """Dataset split -> manifest json (synthetic benchmark generated on the fly)."""
    output:
        f"{DATA}/{{dataset}}/{{split}}.json",
    params:
        python=PYTHON,
        args=prepare_args,
    log:
        f"{DATA}/{{dataset}}/logs/prepare-{{split}}.log",
    threads: 1  # single process; the synthetic generator and converters are sequential
    resources:
        mem_mb=8000,  # COCO train2017's annotation json is read whole
        runtime=120,  # minutes; COCO train2017's RLE conversion is the longest
    shell:
        "{params.python} cli.py prepare-data {params.args} --out {output} 2> {log}"
