"""The second stage: ``pseudo-label`` labels a training split with a trained run, for the fully
supervised retrain (``train-supervised --annotations``)."""
from __future__ import annotations

import click

from .options import (cues_option, device_option, manifest_option, out_option, output_lock,
                      run_option)


@click.command("pseudo-label")
@run_option("Trained PDSL run (or release) that labels the images.")
@manifest_option("Manifest of the split to label (the training split: its image-level labels "
                 "decide which classes are kept).")
@cues_option("That split's cue cache (the proposals).")
@out_option("COCO instances json to write (RLE masks).")
@click.option("--score-thresh", type=click.FloatRange(0, 1), default=0.3, show_default=True,
              help="Keep detections of a labelled class scoring at least this.")
@click.option("--per-class-cap", type=click.IntRange(1), default=10, show_default=True,
              help="At most this many per labelled class and image.")
@click.option("--keep-top/--no-keep-top", default=True, show_default=True,
              help="Keep the top detection of every labelled class whatever its score.")
@click.option("--tta", is_flag=True, help="Multi-scale + flip test (the run config's "
              "input.test_scales, + flips if input.test_flip).")
@click.option("--tta-scales", default=None, metavar="S1,S2,...",
              help="With --tta: these shorter sides (px) instead of the run's input.test_scales.")
@click.option("--tta-flip/--tta-no-flip", default=None,
              help="With --tta: mirrored passes or not (default: the run's input.test_flip).")
@click.option("--masks", "mask_source", type=click.Choice(["model", "grabcut", "refine"]),
              default="grabcut", show_default=True,
              help="Where the labels' masks come from: grabcut = the cue cache's seed-mask method "
                   "on each kept box (better labels than the model's own masks: pipeline/results/README.md); model = "
                   "the run's masks; refine = GrabCut started from the model's mask.")
@device_option
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
    with output_lock(out, "pseudo-label"):
        from ..engine.pseudo_label import PseudoLabelParams, pseudo_label

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


COMMANDS = (pseudo_label_cmd,)
