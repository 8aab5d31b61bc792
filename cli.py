#!/usr/bin/env python
"""PDSL command line: the same stages the Snakefile runs, for a person.

Every command parses and validates its arguments and calls one library function in ``pdsl``;
bad input ends with one ``Error: ...`` line naming the file, image or field (no traceback).
Run ``python cli.py COMMAND --help`` for what a command reads and writes.
"""
from __future__ import annotations

import json
import sys

import click

from pdsl.errors import PDSLError, user_message


class _Group(click.Group):
    """Turns PDSLError into one clear line and exit status 2."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except PDSLError as e:
            click.echo(f"Error: {user_message(e)}", err=True)
            sys.exit(2)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
def cli():
    """PDSL: weakly supervised instance segmentation from image-level labels (ICCV 2021).

    \b
    Stages (the Snakefile runs the same ones):
      prepare-data  dataset -> manifest json (COCO format + image-level labels)
      cache-cues    manifest -> proposals + GrabCut seed-mask bank in one HDF5 file
      cue-report    proposal recall, bank coverage and seed-mask quality of a cache
      pretrain-backbone  image-level initialisation on the same labels (no ImageNet offline)
      train         manifest + cues -> run dir (config, metrics, checkpoints)
      train-supervised  the fully supervised Mask R-CNN ceiling (GT or pseudo-label masks)
      eval          run + split -> metrics (pycocotools), results json, report.md
      predict       run + any images -> overlays and a COCO json (no cache needed; without
                    --run: the released demo model)
      pseudo-label  run + its training split -> COCO json of pseudo labels (second stage)
      export-model  run -> weights-only release
      grid          variants x seeds -> trained runs and a table (Table 1, Fig. 3, ceiling)
    Stage pieces used by Snakemake shards: proposals-shard, seeds-shard, merge-cues.
    """


def _seed_params(**kw):
    from pdsl.cues.seeds import SeedParams

    return SeedParams(**{k: v for k, v in kw.items() if v is not None})


_seed_options = [
    click.option("--seed-method", "--method", "method",
                 type=click.Choice(["grabcut_masked", "grabcut", "grabcut_rect", "ellipse", "box",
                                    "mcg", "mcg_grabcut"]),
                 default=None, help="How a box's seed mask is made. Default grabcut_masked "
                 "(GrabCut initialised with a sure-foreground core: no empty masks on real "
                 "photos); grabcut = the rectangle first, the core where it degenerates (clean "
                 "shapes; 1.7-1.8x the time); grabcut_rect = rectangle init (earlier versions); mcg / "
                 "mcg_grabcut need MCG '-proposals' segments."),
    click.option("--fallback", type=click.Choice(["ellipse", "box", "none"]), default=None,
                 help="Mask stored where the method degenerates. Default ellipse (box = the "
                 "authors' code; none keeps the empty mask, flagged)."),
    click.option("--mask-size", type=click.IntRange(28), default=None,
                 help="Bank mask side M (>= 28). Default 28."),
    click.option("--crop-size", type=click.IntRange(16), default=None,
                 help="Long side (px) of the box crop GrabCut runs on. Default 64."),
    click.option("--iterations", type=click.IntRange(1), default=None,
                 help="GrabCut iterations. Default 1 (the authors use 5 on whole images)."),
    click.option("--core", type=click.FloatRange(0.0, 1.0), default=None,
                 help="grabcut: sure-foreground core, as a fraction of the inscribed ellipse's "
                 "axes. Default 0.7."),
    click.option("--cluster-iou", type=click.FloatRange(0.3, 1.0), default=None,
                 help="threshold sharing: proposals with IoU >= this share a representative's "
                      "mask; facility: no more masks once every proposal overlaps a "
                      "representative this much. Default 0.8."),
    click.option("--max-bank", type=click.IntRange(1), default=None,
                 help="At most this many seed masks per image. Default 80."),
    click.option("--sharing", type=click.Choice(["threshold", "facility"]), default=None,
                 help="How the masked representatives are chosen: facility (max-bank boxes "
                      "maximising every proposal's IoU to its nearest one) or threshold (greedy "
                      "clustering at --cluster-iou, earlier versions). Default facility."),
]


def seed_options(f):
    for opt in reversed(_seed_options):
        f = opt(f)
    return f


@cli.command("prepare-data")
@click.option("--format", "fmt", type=click.Choice(["synthetic", "voc", "coco", "folder"]),
              required=True, help="Dataset layout to read.")
@click.option("--root", type=click.Path(file_okay=False), default=None,
              help="Dataset root: VOC2012 (or VOCdevkit), COCO root, or an image folder.")
@click.option("--sbd", type=click.Path(file_okay=False), default=None,
              help="SBD benchmark_RELEASE/dataset dir (VOC train_aug needs it).")
@click.option("--labels", "labels_csv", type=click.Path(dir_okay=False), default=None,
              help="folder format: CSV 'file_name,labels' or JSON {file_name: [labels]} "
                   "(default ROOT/labels.csv, else ROOT/labels.json).")
@click.option("--classes", "classes", multiple=True, type=click.Path(dir_okay=False),
              help="folder format: one class list for every split: a .txt (one name per line, "
                   "order kept) or the labels files of all splits (sorted union); repeatable.")
@click.option("--split", required=True,
              help="voc: train_aug|train|val; coco: e.g. train2017; synthetic/folder: any name.")
@click.option("--num-images", type=click.IntRange(1), default=None, help="synthetic: image count.")
@click.option("--seed", type=int, default=0, show_default=True, help="synthetic: RNG seed.")
@click.option("--out", type=click.Path(dir_okay=False), required=True, help="Manifest json to write.")
def prepare_data(fmt, root, sbd, labels_csv, classes, split, num_images, seed, out):
    """Convert a dataset split into a manifest (COCO json + image-level labels).

    Reads the dataset under ROOT (or generates the synthetic benchmark) and writes MANIFEST
    atomically. Training reads only image-level labels from it; GT masks are kept for evaluation.

    \b
    Examples:
      python cli.py prepare-data --format synthetic --split train --num-images 800 --out data/synthetic/train.json
      python cli.py prepare-data --format voc --root VOCdevkit/VOC2012 --sbd SBD/dataset --split train_aug --out data/voc/train_aug.json
      python cli.py prepare-data --format folder --root my_images --labels my_labels.csv --split all --out data/mine/all.json
      python cli.py prepare-data --format folder --root my_images --labels val.json --classes classes.txt --split val --out data/mine/val.json
    """
    from pdsl.datasets import prepare_data as run

    run(fmt, out, split, root=root, sbd=sbd, labels_csv=labels_csv, num_images=num_images,
        seed=seed, classes=list(classes) or None)


@cli.command("cache-cues")
@click.option("--manifest", type=click.Path(dir_okay=False), required=True,
              help="Manifest json (from prepare-data).")
@click.option("--proposals", default="builtin", show_default=True,
              help="builtin (selective search) | mcg:DIR (one .mat per image) | pickle:FILE.")
@click.option("--workers", type=click.IntRange(1), default=1, show_default=True,
              help="Parallel CPU worker processes (one shard each at a time).")
@click.option("--shard-size", type=click.IntRange(1), default=64, show_default=True,
              help="Images per resumable shard.")
@click.option("--out", type=click.Path(dir_okay=False), required=True, help="cues.h5 to write.")
@click.option("--keep-parts", is_flag=True, help="Keep the shard files after merging.")
@seed_options
def cache_cues(manifest, proposals, workers, shard_size, out, keep_parts, **seed_kw):
    """Compute proposals and the GrabCut seed-mask bank of one split into one HDF5 file.

    Reads MANIFEST and its images (plus MCG .mat files or a proposals pickle if given), writes
    OUT atomically. Work is split into shards kept in OUT.parts/ until the merge, so a killed run
    resumes where it stopped. Same result as the Snakemake stages, without Snakemake.

    \b
    Example:
      python cli.py cache-cues --manifest data/voc/val.json --proposals mcg:MCG/VOC2012 --workers 8 --out data/cues/voc/val/cues.h5
    """
    from pdsl.cues.cache import cache_cues as run

    run(manifest, proposals, out, workers=workers, shard_size=shard_size,
        params=_seed_params(**seed_kw), keep_parts=keep_parts)


@cli.command("proposals-shard")
@click.option("--manifest", type=click.Path(dir_okay=False), required=True)
@click.option("--proposals", default="builtin", show_default=True,
              help="builtin | mcg:DIR | pickle:FILE.")
@click.option("--shard", required=True, help="Which slice of the images: 'I-of-N', e.g. 1-of-8.")
@click.option("--out", type=click.Path(dir_okay=False), required=True)
def proposals_shard(manifest, proposals, shard, out):
    """Stage 1 of one shard: proposals of the shard's images -> OUT (HDF5, kind 'proposals')."""
    from pdsl.cues.cache import compute_proposals_shard

    compute_proposals_shard(manifest, proposals, shard, out)


@cli.command("seeds-shard")
@click.option("--manifest", type=click.Path(dir_okay=False), required=True)
@click.option("--proposals-file", type=click.Path(dir_okay=False), required=True,
              help="Output of proposals-shard.")
@click.option("--out", type=click.Path(dir_okay=False), required=True)
@seed_options
def seeds_shard(manifest, proposals_file, out, **seed_kw):
    """Stage 2 of one shard: GrabCut seed-mask bank for a proposals shard -> OUT (kind 'cues')."""
    from pdsl.cues.cache import compute_seeds_shard

    compute_seeds_shard(manifest, proposals_file, out, _seed_params(**seed_kw))


@cli.command("merge-cues")
@click.argument("parts", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--out", type=click.Path(dir_okay=False), required=True)
def merge_cues(parts, out):
    """Merge shard files (same parameters) into the one cues.h5 the trainer opens."""
    from pdsl.cues.store import CueStore, merge_cue_files

    merge_cue_files(list(parts), out)
    s = CueStore(out)
    click.echo(f"merge-cues: wrote {out}: {len(s)} images from {len(parts)} shards", err=True)


@cli.command("cue-report")
@click.option("--manifest", type=click.Path(dir_okay=False), required=True)
@click.option("--cues", type=click.Path(dir_okay=False), required=True)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--online/--no-online", default=True, show_default=True,
              help="Also run the authors' online GrabCut on the same boxes for comparison.")
@click.option("--max-images", type=click.IntRange(1), default=None,
              help="Evaluate seed-mask quality on at most this many images (speed).")
def cue_report(manifest, cues, as_json, online, max_images):
    """Quality of a cue cache against the manifest's GT (boxes and masks).

    Proposal recall at IoU 0.5/0.7 and mean best IoU vs GT boxes; bank coverage; GrabCut
    status counts; and, for each GT instance, the IoU with its GT mask of the cached mask of its
    best-overlapping proposal — beside the authors' online GrabCut (whole image at 400 px,
    5 iterations) on the same boxes, with seconds per box for both.
    """
    from pdsl.cues.report import cue_report as run, format_report

    rep = run(manifest, cues, online=online, max_images=max_images)
    click.echo(json.dumps(rep, indent=2) if as_json else format_report(rep))


@cli.command("train")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="Run config YAML (pipeline/configs/*.yaml); keys missing from it take the "
                   "values of pdsl/defaults.yaml.")
@click.option("--manifest", type=click.Path(dir_okay=False), required=True,
              help="Manifest json of the training split (from prepare-data).")
@click.option("--cues", type=click.Path(dir_okay=False), required=True,
              help="Cue cache of that split (cues.h5 from cache-cues).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True,
              help="Run directory: config.yaml, metrics.jsonl, checkpoints/, last_checkpoint.")
@click.option("--max-iter", type=click.IntRange(1), default=None,
              help="Optimiser steps (overrides solver.max_iter).")
@click.option("--resume", is_flag=True,
              help="Continue from OUT/last_checkpoint: model, optimizer, scheduler, step and RNG "
                   "(same result as an uninterrupted run).")
@click.option("--weights", type=click.Path(dir_okay=False), default=None,
              help="Initialise the model only from this checkpoint (same classes required).")
@click.argument("overrides", nargs=-1)
def train(config_path, manifest, cues, out_dir, max_iter, resume, weights, overrides):
    """Train PDSL on a manifest split with its cue cache.

    Reads MANIFEST (image-level labels, class names), CUES (proposals and the GrabCut seed-mask
    bank) and the images; writes OUT/config.yaml (resolved config), OUT/metrics.jsonl (one line
    per step), OUT/checkpoints/model_NNNNNNN.pth and OUT/last_checkpoint. OVERRIDES are dotted
    KEY=VALUE pairs on top of the config (values parsed as YAML; see pdsl/defaults.yaml).
    Several GPUs: launch the same command with torchrun; the effective batch stays
    solver.images_per_step (gradient accumulation makes up for fewer processes).

    \b
    Examples:
      python cli.py train --config pipeline/configs/demo.yaml --manifest data/synthetic/train.json --cues data/cues/synthetic/train/cues.h5 --out runs/demo
      python cli.py train --config pipeline/configs/voc2012_r50.yaml --manifest data/voc/train_aug.json --cues data/cues/voc/train_aug/cues.h5 --out runs/voc --resume solver.base_lr=0.005 train.num_workers=8
      torchrun --nproc_per_node 4 cli.py train --config pipeline/configs/voc2012_r50.yaml --manifest ... --cues ... --out runs/voc
    """
    from pdsl.engine.train import train as run

    run(config_path, manifest, cues, out_dir, max_iter=max_iter, resume=resume, weights=weights,
        overrides=list(overrides))


@cli.command("train-supervised")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="PDSL run config YAML: its model.backbone/pretrained/freeze_at, head "
                   "widths, input and solver sections are used.")
@click.option("--manifest", type=click.Path(dir_okay=False), required=True,
              help="Manifest json of the training split (images, classes, GT annotations).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True,
              help="Run directory (same layout as `train`; run.json records kind maskrcnn).")
@click.option("--annotations", type=click.Path(dir_okay=False), default=None,
              help="COCO instances json (RLE or polygon masks; image and category ids of "
                   "MANIFEST) to train on instead of the manifest's GT, e.g. pseudo labels. "
                   "A bare list of records (coco_instances_results.json) is accepted too.")
@click.option("--max-iter", type=click.IntRange(1), default=None,
              help="Optimiser steps (overrides solver.max_iter).")
@click.option("--resume", is_flag=True,
              help="Continue from OUT/last_checkpoint (same config and annotations).")
@click.argument("overrides", nargs=-1)
def train_supervised_cmd(config_path, manifest, out_dir, annotations, max_iter, resume,
                         overrides):
    """Train the fully supervised ceiling: a Mask R-CNN with PDSL's backbone and budget.

    torchvision's Mask R-CNN on the SAME backbone and initialisation as the PDSL config, with
    PDSL's head widths and the SAME solver, input scales, flip, seed and device, trained on
    instance masks: the manifest's GT (the upper bound for PDSL), or --annotations (e.g. a
    retrain on PDSL's pseudo labels). Crowd annotations are not targets; images without a usable
    one are skipped. `cli.py eval --run OUT` scores it like a PDSL run (the Mask R-CNN ignores
    the --cues proposals); `predict` works too. OVERRIDES: KEY=VALUE pairs, as for `train`.

    \b
    Examples:
      python cli.py train-supervised --config pipeline/configs/demo.yaml --manifest data/synthetic/train.json --out runs/demo_maskrcnn model.pretrained=runs/demo/backbone.pth
      python cli.py eval --run runs/demo_maskrcnn --manifest data/synthetic/val.json --cues data/cues/synthetic/val/cues.h5
      python cli.py train-supervised --config pipeline/configs/voc2012_r50.yaml --manifest data/voc/train_aug.json --annotations runs/voc/pseudo_labels.json --out runs/voc_retrain
    """
    from pdsl.engine.supervised import train_supervised

    train_supervised(config_path, manifest, out_dir, annotations=annotations, max_iter=max_iter,
                     resume=resume, overrides=list(overrides))


@cli.command("pretrain-backbone")
@click.option("--manifest", type=click.Path(dir_okay=False), required=True,
              help="Training manifest (its image-level labels are the only supervision).")
@click.option("--val-manifest", type=click.Path(dir_okay=False), default=None,
              help="Report image-level classification mAP on this split after each epoch.")
@click.option("--out", type=click.Path(dir_okay=False), required=True,
              help="Backbone weights (.pth) to write; pass it as model.pretrained=OUT to train.")
@click.option("--backbone", default="tiny", show_default=True)
@click.option("--epochs", type=click.IntRange(1), default=8, show_default=True)
@click.option("--size", type=click.IntRange(32), default=160, show_default=True,
              help="Images are resized to SIZE x SIZE.")
@click.option("--lr", type=float, default=3e-3, show_default=True, help="AdamW, one-cycle.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="cpu",
              show_default=True, help="Where the classifier trains (the workflow passes cuda "
              "when train.gpus > 0).")
def pretrain_backbone_cmd(manifest, val_manifest, out, backbone, epochs, size, lr, device):
    """Initialise a backbone as an image-level classifier on the SAME labels PDSL trains on.

    The stand-in for the paper's ImageNet initialisation where none exists (the synthetic
    benchmark's `tiny` backbone): no extra supervision, just the manifest's image-level labels.

    \b
    Example:
      python cli.py pretrain-backbone --manifest data/synthetic/train.json --val-manifest data/synthetic/val.json --out runs/demo/backbone.pth
    """
    from pdsl.engine.pretrain import pretrain_backbone

    pretrain_backbone(manifest, out, backbone=backbone, epochs=epochs, size=size, lr=lr,
                      val_manifest=val_manifest, device=device)


@cli.command("eval")
@click.option("--run", "run_dir", type=click.Path(file_okay=False), required=True,
              help="Run directory of `cli.py train` or `train-supervised` (its last_checkpoint "
                   "is used).")
@click.option("--manifest", type=click.Path(dir_okay=False), required=True,
              help="Manifest of the split to evaluate (GT masks for the metrics).")
@click.option("--cues", type=click.Path(dir_okay=False), required=True,
              help="Cue cache of that split (its proposals are used; a train-supervised run "
                   "ignores them).")
@click.option("--tta", is_flag=True,
              help="Test-time augmentation: every input.test_scales scale + flips (paper §4.3); "
                   "default single middle scale.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Output dir (default RUN/eval/<split>).")
@click.option("--max-images", type=click.IntRange(1), default=None,
              help="Evaluate only the first N images (quick look).")
@click.option("--curve", type=click.IntRange(0), default=0, show_default=True,
              help="Also score every checkpoint of the run on the first N images (single scale) "
                   "for the report's AP curve; 0 = off.")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda")
def eval_cmd(run_dir, manifest, cues, tta, out_dir, max_images, curve, device):
    """Evaluate a trained run on one split and write a report.

    Reads the run's last checkpoint, the manifest and the split's cue cache (proposals). Writes
    OUT/coco_instances_results.json (RLE masks), OUT/metrics.json (mask and box AP, AP50, AP75,
    APs/m/l, the VOC WSIS mAP@0.25/0.50/0.70/0.75, detection mAP@0.5, CorLoc, image-level mAP —
    pycocotools COCOeval) and OUT/report.md with pictures. A checkpoint trained on another class
    set is refused.

    \b
    Example:
      python cli.py eval --run runs/demo --manifest data/synthetic/val.json --cues data/cues/synthetic/val/cues.h5
    """
    from pdsl.engine.evaluate import evaluate_run
    from pdsl.evaluation.report import metrics_table

    m = evaluate_run(run_dir, manifest, cues, tta=tta, out_dir=out_dir, max_images=max_images,
                     device=device, curve=curve)
    if "bbox" in m:
        click.echo(metrics_table(m))
        if "classification" in m:
            click.echo(f"image-level classification mAP: {m['classification']['mAP']:.1f}")


@cli.command("pseudo-label")
@click.option("--run", "run_dir", type=click.Path(file_okay=False), required=True,
              help="Trained PDSL run (or release) that labels the images.")
@click.option("--manifest", type=click.Path(dir_okay=False), required=True,
              help="Manifest of the split to label (the training split: its image-level labels "
                   "decide which classes are kept).")
@click.option("--cues", type=click.Path(dir_okay=False), required=True,
              help="That split's cue cache (the proposals).")
@click.option("--out", type=click.Path(dir_okay=False), required=True,
              help="COCO instances json to write (RLE masks).")
@click.option("--score-thresh", type=click.FloatRange(0, 1), default=0.3, show_default=True,
              help="Keep detections of a labelled class scoring at least this.")
@click.option("--per-class-cap", type=click.IntRange(1), default=10, show_default=True,
              help="At most this many per labelled class and image.")
@click.option("--keep-top/--no-keep-top", default=True, show_default=True,
              help="Keep the top detection of every labelled class whatever its score.")
@click.option("--tta", is_flag=True, help="Multi-scale + flip test (the run config's scales).")
@click.option("--tta-scales", default=None, metavar="S1,S2,...",
              help="With --tta: these shorter sides (px) instead of the run's input.test_scales.")
@click.option("--tta-flip/--tta-no-flip", default=None,
              help="With --tta: mirrored passes or not (default: the run's input.test_flip).")
@click.option("--masks", "mask_source", type=click.Choice(["model", "grabcut", "refine"]),
              default="grabcut", show_default=True,
              help="Where the labels' masks come from: grabcut = the cue cache's seed-mask method "
                   "on each kept box (README: better labels than the model's own masks); model = "
                   "the run's masks; refine = GrabCut started from the model's mask.")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda")
@click.option("--force", is_flag=True, help="Replace an existing OUT.")
def pseudo_label_cmd(run_dir, manifest, cues, out, score_thresh, per_class_cap, keep_top, tta,
                     tta_scales, tta_flip, mask_source, device, force):
    """Label a split with a trained run: pseudo labels for a fully supervised retrain.

    Only the classes of each image's labels are kept (they are known at training time). The
    json loads in pycocotools and any detector library; `cli.py train-supervised --annotations
    OUT` retrains Mask R-CNN on it. Resumable (chunks in OUT.parts/). With GT in the manifest,
    OUT.quality.json gives precision, recall (mask IoU 0.5) and the matched mask IoU.

    \b
    Example:
      python cli.py pseudo-label --run runs/demo --manifest data/synthetic/train.json \\
          --cues data/cues/synthetic/train/cues.h5 --out runs/demo/pseudo/train.json \\
          --tta --tta-scales 128,160,192 --tta-flip
    """
    from pdsl.engine.pseudo_label import PseudoLabelParams, pseudo_label

    scales = tuple(x.strip() for x in tta_scales.split(",")) if tta_scales else ()
    params = PseudoLabelParams(score_thresh=score_thresh, per_class_cap=per_class_cap,
                               keep_top=keep_top, tta=tta, scales=scales, flip=tta_flip,
                               masks=mask_source)
    s = pseudo_label(run_dir, manifest, cues, out, params, device=device, force=force)
    q = s.get("quality")

    def f(v):
        return "n/a" if v is None else f"{v:.3f}"

    click.echo(f"pseudo-label: {s['annotations']} instances on {s['images']} images -> {out}"
               + (f"; vs GT: precision {f(q['precision'])}, recall {f(q['recall'])}, matched "
                  f"mask IoU {f(q['matched_mask_iou'])}" if q else ""), err=True)


@cli.command("export-model")
@click.option("--run", "run_dir", type=click.Path(file_okay=False), required=True,
              help="Trained run directory.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True,
              help="Release directory (model.pth, config.yaml, run.json, metrics.json).")
@click.option("--half", is_flag=True, help="Store float weights as float16 (half the size).")
@click.option("--force", is_flag=True, help="Replace an existing release in OUT.")
def export_model_cmd(run_dir, out_dir, half, force):
    """Reduce a trained run to a weights-only release that predict/eval read like a run.

    Drops the optimizer, scheduler and RNG state; keeps the config, the class names and ids and
    the run's eval metrics. The demo release in pipeline/release/demo was made this way.

    \b
    Example:
      python cli.py export-model --run runs/demo --out pipeline/release/demo --half
    """
    from pdsl.engine.release import export_model

    path = export_model(run_dir, out_dir, half=half, force=force)
    click.echo(f"export-model: {path} ({path.stat().st_size / 1e6:.1f} MB)", err=True)


@cli.command("grid")
@click.option("--spec", "spec_path", type=click.Path(dir_okay=False), required=True,
              help="Grid spec YAML: train/eval inputs, seeds, variants (override lists), expected "
                   "directions. See pipeline/grids/.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True,
              help="Where the cells go: OUT/<variant>/seed<k>/ (run dir + cell.json).")
@click.option("--results", type=click.Path(dir_okay=False), default=None,
              help="Write RESULTS.json, .md and .png (table mean ± std over seeds, plot).")
@click.option("--only", multiple=True, help="Run only this variant (repeatable).")
@click.option("--jobs", type=click.IntRange(1), default=1, show_default=True,
              help="Cells trained at once (one process each).")
@click.option("--threads", type=click.IntRange(1), default=None,
              help="torch threads per cell (default: the config's train.threads); on a CPU "
                   "keep jobs x threads <= cores.")
@click.option("--title", default="", help="Heading of the markdown table.")
def grid_cmd(spec_path, out_dir, results, only, jobs, threads, title):
    """Train and evaluate config variants over seeds, resumably, and tabulate them.

    Every (variant, seed) cell trains with `cli.py train` semantics (an unfinished run resumes)
    and is evaluated on the spec's eval split; a finished cell (OUT/<variant>/seed<k>/cell.json)
    is never re-run, and a cell that finished with another spec is refused rather than
    overwritten. Variant kinds: pdsl (default; an override list), supervised (Mask R-CNN on the
    GT: the ceiling) and second_stage (`from: VARIANT`: that variant's cell of the same seed
    labels the training split, Mask R-CNN is retrained on the labels; run after it). The table
    gives mean ± std over seeds of mask/box AP and CorLoc, each variant's final training losses,
    weak/full ratios, the pseudo labels' quality, and whether each expected direction is beyond
    seed noise (difference > 2 pooled std).

    \b
    Example (Table 1, Fig. 3, the ceiling and the second stage on the demo data):
      python cli.py grid --spec pipeline/grids/ablation.yaml --out runs/grid-ablation \\
          --results pipeline/results/ablation --jobs 2 --threads 1
    """
    from pdsl.engine.grid import markdown, run_grid, summarize, load_spec, write_results

    recs = run_grid(spec_path, out_dir, only=only or None, jobs=jobs, threads=threads,
                    echo=lambda m: click.echo(m, err=True))
    if results:
        summary = write_results(spec_path, out_dir, results, title)
        click.echo(f"wrote {results}.json/.md/.png", err=True)
    else:
        summary = summarize(load_spec(spec_path), recs)
    click.echo(markdown(summary, title))


@cli.command("predict")
@click.argument("inputs", nargs=-1, required=True, type=click.Path())
@click.option("--run", "run_dir", type=click.Path(file_okay=False), default=None,
              help="Run directory of `cli.py train` or a release of `cli.py export-model` "
                   "[default: the released demo model, pipeline/release/demo: the synthetic "
                   "benchmark's 4 shape classes].")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True,
              help="Where overlays (*_pred.png) and predictions.json go.")
@click.option("--tta", is_flag=True, help="Multi-scale + flip test-time augmentation.")
@click.option("--score-thresh", type=click.FloatRange(0, 1), default=0.3, show_default=True,
              help="Keep detections scoring at least this.")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda")
@click.option("--manifest", type=click.Path(dir_okay=False), default=None,
              help="Training manifest whose category ids to write (only for runs without "
                   "RUN/run.json, which records them).")
def predict_cmd(inputs, run_dir, out_dir, tta, score_thresh, device, manifest):
    """Detect and segment objects in arbitrary images (files or folders), no cache needed.

    Proposals come from the built-in generator on the fly. Writes an overlay PNG per image and
    OUT/predictions.json (COCO-style: images, categories, annotations with RLE masks; category
    ids are the training manifest's). An unreadable image is reported and skipped; the others
    proceed.

    \b
    Example:
      python cli.py predict photos/ extra.jpg --run runs/demo --out predictions/
      python cli.py predict shapes.png --out predictions/   # the released demo model
    """
    from pdsl.engine.evaluate import predict_paths
    from pdsl.engine.release import RELEASED_DEMO

    run_dir = run_dir or RELEASED_DEMO
    r = predict_paths(inputs, run_dir, out_dir, tta=tta, device=device, score_thresh=score_thresh,
                      manifest=manifest)
    click.echo(f"predict: {r['images']} images, {r['detections']} detections, "
               f"{len(r['skipped'])} skipped -> {out_dir}", err=True)


if __name__ == "__main__":
    cli()
