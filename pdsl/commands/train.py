"""The trainers: ``train`` (PDSL), ``train-supervised`` (the fully supervised Mask R-CNN) and
``pretrain-backbone`` (the image-level initialisation)."""
from __future__ import annotations

import click

from .options import (FILE, config_option, cues_option, manifest_option, max_iter_option,
                      out_option, output_lock, overrides_argument)


@click.command("train")
@config_option("Run config YAML (pipeline/configs/*.yaml); keys missing from it take the values "
               "of pdsl/defaults.yaml.")
@manifest_option("Manifest json of the training split (from prepare-data).")
@cues_option("Cue cache of that split (cues.h5 from cache-cues).")
@out_option("Run directory: config.yaml, metrics.jsonl, checkpoints/, last_checkpoint.",
            folder=True)
@max_iter_option
@click.option("--resume", is_flag=True,
              help="Continue from OUT/last_checkpoint: model, optimizer, scheduler, step and RNG "
                   "(same result as an uninterrupted run).")
@click.option("--weights", type=FILE, default=None,
              help="Initialise the model only from this checkpoint (same classes required).")
@overrides_argument
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
    with output_lock(out_dir, "train"):
        from ..engine.train import train as run

        run(config_path, manifest, cues, out_dir, max_iter=max_iter, resume=resume,
            weights=weights, overrides=list(overrides))


@click.command("train-supervised")
@config_option("PDSL run config YAML: its model.backbone/pretrained/freeze_at, head widths, "
               "input and solver sections are used.")
@manifest_option("Manifest json of the training split (images, classes, GT annotations).")
@out_option("Run directory (same layout as `train`; run.json records kind maskrcnn).",
            folder=True)
@click.option("--annotations", type=FILE, default=None,
              help="COCO instances json (RLE or polygon masks; image and category ids of "
                   "MANIFEST) to train on instead of the manifest's GT, e.g. pseudo labels. "
                   "A bare list of records (coco_instances_results.json) is accepted too.")
@max_iter_option
@click.option("--resume", is_flag=True,
              help="Continue from OUT/last_checkpoint (same config and annotations).")
@overrides_argument
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
    with output_lock(out_dir, "train-supervised"):
        from ..engine.supervised import train_supervised

        train_supervised(config_path, manifest, out_dir, annotations=annotations,
                         max_iter=max_iter, resume=resume, overrides=list(overrides))


@click.command("pretrain-backbone")
@manifest_option("Training manifest (its image-level labels are the only supervision).")
@click.option("--val-manifest", type=FILE, default=None,
              help="Report image-level classification mAP on this split after each epoch.")
@out_option("Backbone weights (.pth) to write; pass it as model.pretrained=OUT to train.")
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
    from ..engine.pretrain import pretrain_backbone

    pretrain_backbone(manifest, out, backbone=backbone, epochs=epochs, size=size, lr=lr,
                      val_manifest=val_manifest, device=device)


COMMANDS = (train, train_supervised_cmd, pretrain_backbone_cmd)
