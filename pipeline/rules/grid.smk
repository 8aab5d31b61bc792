# Experiment grids (pdsl/engine/grid/): `snakemake --cores 2 ablation` runs the Table 1 /
# Fig. 3 / second-stage grid of pipeline/grids/ablation.yaml after the demo's caches and
# pretrained backbone exist, and writes pipeline/results/ablation.{json,md,png}; any grid spec
# pipeline/grids/NAME.yaml is the target pipeline/results/NAME.json. The cells live in
# RUNS/grid-NAME/<variant>/seed<k>/ and a finished cell is never re-run. A committed result
# counts as done (a clean clone plans nothing for it); `--forcerun grid` re-runs it, training
# only the cells RUNS/grid-NAME/ lacks (all of them after a clean clone). Not part of the
# default target.


def grid_inputs(wildcards):
    """The data files a grid spec names (train/eval manifests and caches, a pretrained backbone),
    so the workflow builds them first."""
    import yaml

    spec = yaml.safe_load(open(f"pipeline/grids/{wildcards.grid}.yaml"))
    paths = [spec["train"]["manifest"], spec["train"]["cues"], spec["eval"]["manifest"],
             spec["eval"]["cues"]]
    paths += [o.split("=", 1)[1] for o in spec["train"].get("overrides") or []
              if o.startswith("model.pretrained=") and o.endswith(".pth")]
    return paths


rule grid:
    """Train and evaluate a grid's variants over its seeds (resumable) and tabulate them."""
    input:
        spec="pipeline/grids/{grid}.yaml",
        data=grid_inputs,
    output:
        json="pipeline/results/{grid}.json",
        md="pipeline/results/{grid}.md",
        png="pipeline/results/{grid}.png",
    params:
        python=PYTHON,
        out=f"{RUNS}/grid-{{grid}}",
    log:
        f"{RUNS}/grid-{{grid}}/grid.log",
    threads: 2  # one cell per core, one torch thread each
    resources:
        mem_mb=8000,
        runtime=600,  # minutes
    shell:
        "{params.python} cli.py grid --spec {input.spec} --out {params.out} "
        "--results pipeline/results/{wildcards.grid} --jobs {threads} --threads 1 > {log} 2>&1"


rule ablation:
    """Table 1 and Fig. 3 of the paper, the ceiling and the second stage on the demo data, 3 seeds
    (README: Ablations)."""
    input:
        "pipeline/results/ablation.json",
    threads: 1
    resources:
        mem_mb=100,
        runtime=1,
