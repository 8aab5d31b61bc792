"""Using a trained run: ``eval`` (a split with GT -> metrics and a report), ``score`` (any
prediction file -> metrics), ``predict`` (any images -> overlays and a COCO json) and
``export-model`` (a run -> a weights-only release)."""
from __future__ import annotations

import click

from ..errors import PDSLError
from .options import FILE, cues_option, device_option, manifest_option, out_option, run_option


@click.command("eval")
@run_option("Run directory of `cli.py train` or `train-supervised` (its last_checkpoint is "
            "used).")
@manifest_option("Manifest of the split to evaluate (GT masks for the metrics).")
@cues_option("Cue cache of that split (its proposals are used; a train-supervised run ignores "
             "them).")
@click.option("--tta", is_flag=True,
              help="Test-time augmentation: every input.test_scales scale, + flips if "
                   "input.test_flip (paper §4.3); default single middle scale.")
@out_option("Output dir (default RUN/eval/<split>).", folder=True, required=False)
@click.option("--max-images", type=click.IntRange(1), default=None,
              help="Evaluate only the first N images (quick look).")
@click.option("--curve", type=click.IntRange(0), default=0, show_default=True,
              help="Also score every checkpoint of the run on the first N images (single scale) "
                   "for the report's AP curve; 0 = off.")
@device_option
def eval_cmd(run_dir, manifest, cues, tta, out_dir, max_images, curve, device):
    """Evaluate a trained run on one split and write a report.

    Reads the run's last checkpoint, the manifest and the split's cue cache (proposals). Writes
    OUT/coco_instances_results.json (RLE masks), OUT/metrics.json (mask and box AP, AP50, AP75,
    APs/m/l, the VOC WSIS mAP@0.25/0.50/0.70/0.75, detection mAP@0.5, CorLoc, image-level mAP —
    pycocotools COCOeval; VOC AP as area under PR and VOC07 11-point too) and OUT/report.md with
    pictures. Box-only GT (VOC XML, Roboflow boxes) gets the box metrics, CorLoc and image-level
    mAP; mask metrics leave those images out and say for how many instances. A checkpoint
    trained on another class set is refused.

    \b
    Example:
      python cli.py eval --run runs/demo --manifest data/synthetic/val.json --cues data/cues/synthetic/val/cues.h5
    """
    from ..engine.evaluate import evaluate_run
    from ..evaluation.report import metrics_table

    m = evaluate_run(run_dir, manifest, cues, tta=tta, out_dir=out_dir, max_images=max_images,
                     device=device, curve=curve)
    if "bbox" in m:
        click.echo(metrics_table(m))
        if "classification" in m:
            click.echo(f"image-level classification mAP: {m['classification']['mAP']:.1f}")
        if m.get("mask_metrics_skipped"):
            from ..evaluation.report import skipped_line

            click.echo(skipped_line(m["mask_metrics_skipped"]))


@click.command("score")
@click.option("--predictions", type=FILE, required=True,
              help="COCO results json: a list of {image_id, category_id, score, bbox [x, y, w, "
                   "h], optional segmentation} (eval's coco_instances_results.json, detectron2, "
                   "mmdetection, wetectron), or predict's predictions.json.")
@manifest_option("Manifest with the GT to score against (its image and category ids).")
@out_option("Also write the metrics here (json).", required=False)
def score_cmd(predictions, manifest, out):
    """Score a prediction file someone already has, under every protocol, without a run.

    COCO AP/AP50/AP75/APs/m/l (101-point), and at IoU 0.25/0.5/0.7/0.75 COCO's 101-point AP, VOC
    AP (area under the PR curve) and VOC07 11-point AP, for boxes and (where every record has
    one) masks; CorLoc. Box-only GT scores boxes and says how many instances the mask metrics
    left out. Records on image or category ids the manifest lacks are left out and counted.

    \b
    Example:
      python cli.py score --predictions runs/demo/eval/val/coco_instances_results.json --manifest data/synthetic/val.json
    """
    from ..evaluation.score import format_score, score_predictions

    click.echo(format_score(score_predictions(predictions, manifest, out=out)))


def released_classes() -> list[str]:
    """The class names of the released demo model, in category-id order (its run.json)."""
    from ..rundir import RELEASED_DEMO, run_categories

    cats = run_categories(RELEASED_DEMO) or []
    return [c["name"] for c in sorted(cats, key=lambda c: int(c["id"]))]


class _PredictRunOption(click.Option):
    """predict's ``--run``: its help names the released demo model's classes, read from the
    release when the help is shown (nothing is read when a command runs)."""

    def get_help_record(self, ctx):
        try:
            names = released_classes()
        except PDSLError:
            names = []
        classes = (f"{len(names)} shape classes: {', '.join(names)}" if names else
                   "shape classes")
        self.help = ("Run directory of `cli.py train` or `train-supervised`, or a release of "
                     "`cli.py export-model` "
                     f"[default: the released demo model, pipeline/release/demo: the synthetic "
                     f"benchmark's {classes}].")
        return super().get_help_record(ctx)


@click.command("predict")
@click.argument("inputs", nargs=-1, required=True, type=click.Path())
@run_option(None, required=False, cls=_PredictRunOption)
@out_option("Where overlays (*_pred.png) and predictions.json go.", folder=True)
@click.option("--tta", is_flag=True,
              help="Test-time augmentation: the run's input.test_scales, + flips if "
                   "input.test_flip (the released demo model: one scale, no flip).")
@click.option("--score-thresh", type=click.FloatRange(0, 1), default=0.3, show_default=True,
              help="Keep detections scoring at least this.")
@device_option
@manifest_option("Training manifest whose category ids to write (only for runs without "
                 "RUN/run.json, which records them).", required=False)
def predict_cmd(inputs, run_dir, out_dir, tta, score_thresh, device, manifest):
    """Detect and segment objects in arbitrary images (files or folders), no cache needed.

    Proposals come from the built-in generator on the fly (a train-supervised run's Mask R-CNN
    makes its own). Writes an overlay PNG per image and OUT/predictions.json (COCO-style:
    images, categories, annotations with RLE masks; category ids are the training manifest's).
    An unreadable image is reported and skipped; the others proceed.

    \b
    Example:
      python cli.py predict photos/ extra.jpg --run runs/demo --out predictions/
      python cli.py predict shapes.png --out predictions/   # the released demo model
    """
    from ..engine.evaluate import predict_paths
    from ..rundir import RELEASED_DEMO

    run_dir = run_dir or RELEASED_DEMO
    r = predict_paths(inputs, run_dir, out_dir, tta=tta, device=device, score_thresh=score_thresh,
                      manifest=manifest)
    click.echo(f"predict: {r['images']} images, {r['detections']} detections, "
               f"{len(r['skipped'])} skipped -> {out_dir}", err=True)


@click.command("export-model")
@run_option("Trained run directory.")
@out_option("Release directory (model.pth, config.yaml, run.json, metrics.json).", folder=True)
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
    from ..engine.release import export_model

    path = export_model(run_dir, out_dir, half=half, force=force)
    click.echo(f"export-model: {path} ({path.stat().st_size / 1e6:.1f} MB)", err=True)


COMMANDS = (eval_cmd, score_cmd, predict_cmd, export_model_cmd)
