# PDSL workflow: `snakemake --cores N` goes from nothing to a report: prepare -> proposals ->
# GrabCut seeds -> merged cue cache -> train -> eval + report (pipeline/config.yaml).
#
# Output tree (relative to the repository root; DATA = config "data_dir", default data/):
#   DATA/<dataset>/<split>.json                          prepare    manifest (COCO json + labels)
#   DATA/cues/<dataset>/<split>/proposals-I-of-N.h5      proposals  one job per shard
#   DATA/cues/<dataset>/<split>/seeds-I-of-N.h5          seeds      one job per shard (GrabCut)
#   DATA/cues/<dataset>/<split>/cues.h5                  merge      the one file the trainer opens
#   DATA/cues/<dataset>/<split>/{logs,benchmarks}/       per-job logs and Snakemake benchmarks
#   RUNS/<run>/backbone.pth                              pretrain   (optional: image-level init)
#   RUNS/<run>/{config.yaml,checkpoints/,metrics.jsonl}   train      (RUNS = config "runs_dir")
#   RUNS/<run>/eval/<split>/{report.md,metrics.json,coco_instances_results.json}   eval
#
# Another dataset or cluster: `snakemake --cores 8 --configfile my.yaml` (see pipeline/config.yaml).
from snakemake.utils import min_version, validate

min_version("8.0")


configfile: "pipeline/config.yaml"


validate(config, "pipeline/schema.yaml")


include: "pipeline/rules/common.smk"
include: "pipeline/rules/prepare.smk"
include: "pipeline/rules/proposals.smk"
include: "pipeline/rules/seeds.smk"
include: "pipeline/rules/merge.smk"


# The training stages exist only when their config sections do (a section left out, or set to
# null in a --configfile, builds the caches only): their rules read those sections when parsed.
if section("train"):

    include: "pipeline/rules/train.smk"

    if section("pretrain"):

        include: "pipeline/rules/pretrain.smk"

    if section("eval"):

        include: "pipeline/rules/eval.smk"

    if section("second_stage"):

        include: "pipeline/rules/second_stage.smk"

        ruleorder: retrain > train


include: "pipeline/rules/grid.smk"


rule all:
    input:
        all_targets(),
    default_target: True
