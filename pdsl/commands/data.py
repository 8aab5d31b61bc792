"""``prepare-data``: a dataset split -> a manifest json."""
from __future__ import annotations

import click

from .options import FILE, FOLDER, out_option


@click.command("prepare-data")
@click.option("--format", "fmt", type=click.Choice(["synthetic", "voc", "coco", "folder"]),
              required=True, help="Dataset layout to read.")  # pdsl.datasets.FORMATS
@click.option("--root", type=FOLDER, default=None,
              help="Dataset root: VOC2012 (or VOCdevkit), COCO root, or an image folder.")
@click.option("--sbd", type=FOLDER, default=None,
              help="SBD benchmark_RELEASE/dataset dir (VOC train_aug needs it).")
@click.option("--labels", "labels_csv", type=FILE, default=None,
              help="folder format: CSV 'file_name,labels' or JSON {file_name: [labels]} "
                   "(default ROOT/labels.csv, else ROOT/labels.json).")
@click.option("--classes", "classes", multiple=True, type=FILE,
              help="folder format: one class list for every split: a .txt (one name per line, "
                   "order kept) or the labels files of all splits (sorted union); repeatable.")
@click.option("--split", required=True,
              help="voc: train_aug (with --sbd) or any list in ImageSets/Segmentation or "
                   "ImageSets/Main (train, val, CVAT's default); coco: e.g. train2017, or "
                   "Roboflow's train/valid/test; synthetic/folder: any name.")
@click.option("--num-images", type=click.IntRange(1), default=None,
              help="synthetic: image count (required); voc/coco/folder: keep a seeded random "
                   "subset of this many images (quick runs).")
@click.option("--seed", type=int, default=0, show_default=True,
              help="synthetic: RNG seed; voc/coco/folder: the seed of the --num-images subset.")
@out_option("Manifest json to write.")
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
    from ..datasets import prepare_data as run

    run(fmt, out, split, root=root, sbd=sbd, labels_csv=labels_csv, num_images=num_images,
        seed=seed, classes=list(classes) or None)


COMMANDS = (prepare_data,)
