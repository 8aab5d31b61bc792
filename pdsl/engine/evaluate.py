"""``cli.py eval`` and ``cli.py predict``: a trained run -> predictions, metrics, report."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ..config import config_from_dict
from ..errors import ConfigError, DataError, PDSLError
from .inference import TestParams, predict_image
from ..io import json_safe, read_image, write_json_atomic
from ..manifest import load_manifest


def load_run(run_dir, class_names=None, device="cpu", checkpoint=None):
    """Model (eval mode), config and class names of a run directory's last (or given) checkpoint:
    a PDSLNet, or for a checkpoint of ``cli.py train-supervised`` (``kind: maskrcnn``) the
    Mask R-CNN, which :func:`predict_image` runs on its own (it ignores the proposals).

    Refuses a checkpoint trained on another class set, or whose weights do not fit the model its
    own config describes (another config), with a message naming both."""
    from .checkpoint import build_model, check_classes, last_checkpoint, load_checkpoint

    run_dir = Path(run_dir)
    path = Path(checkpoint) if checkpoint else last_checkpoint(run_dir)
    if path is None:
        raise ConfigError(f"run {run_dir}: no checkpoint (no {run_dir / 'last_checkpoint'}); "
                          f"train first with `cli.py train --out {run_dir}`")
    ckpt = load_checkpoint(path)
    if not isinstance(ckpt, dict) or "config" not in ckpt or "class_names" not in ckpt:
        raise ConfigError(f"checkpoint {path}: not a PDSL training checkpoint (no config/classes)")
    if class_names is not None:
        check_classes(ckpt, class_names, path)
    cfg = config_from_dict(ckpt["config"])
    if ckpt.get("kind") == "maskrcnn":  # `cli.py train-supervised` (pdsl/engine/supervised.py)
        from ..model.maskrcnn import build_maskrcnn

        model = build_maskrcnn(cfg, len(ckpt["class_names"]), load_pretrained=False,
                               sizes=(ckpt.get("maskrcnn") or {}).get("anchor_sizes"))
    else:
        model = build_model(cfg, len(ckpt["class_names"]), load_pretrained=False)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        first = str(e).splitlines()[0:3]
        raise ConfigError(f"checkpoint {path}: weights do not fit the model of its config "
                          f"({' '.join(first)})") from None
    return model.to(device).eval(), cfg, list(ckpt["class_names"]), path


def _device(name="auto"):
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def evaluate_run(run_dir, manifest, cues, tta: bool = False, out_dir=None,
                 max_images: int | None = None, device: str = "auto", report: bool = True,
                 curve: int = 0) -> dict:
    """Predict every image of the manifest (proposals from the cue cache), score with pycocotools
    as the images come, write ``coco_instances_results.json`` (incrementally), ``metrics.json``
    and (``report``) ``report.md``. Memory does not grow with the number of images: each image's
    masks are RLE-encoded and matched, then dropped (only the report's few samples are kept).

    ``manifest`` and ``cues`` are paths or the loaded :class:`Manifest` and :class:`CueStore`;
    each is read once. ``curve`` > 0 first scores every checkpoint on that many images
    (:func:`ap_curve`), so the report draws the AP curve."""
    device = _device(device)
    manifest, store = _open_split(manifest, cues)
    if curve:
        ap_curve(run_dir, manifest, store, max_images=curve, device=device)
    model, cfg, names, ckpt_path = load_run(run_dir, manifest.class_names, device)
    params = TestParams.from_config(cfg, tta)
    out_dir = Path(out_dir) if out_dir else Path(run_dir) / "eval" / manifest.split
    if max_images:  # score only the processed images
        manifest = manifest.subset(manifest.images[:max_images])

    def predict(img):
        c = store.get(img["id"], with_bank=False)
        image = read_image(manifest.image_path(img), img["id"])
        return predict_image(model, image, c.boxes, c.scores, params, device)

    samples = [img["id"] for img in manifest.images[:REPORT_SAMPLES]]
    t0 = time.perf_counter()
    scores, kept = stream_evaluation(manifest, predict, out_dir / "coco_instances_results.json",
                                     keep=samples, label=f"eval {manifest.split}")
    secs = time.perf_counter() - t0
    n = len(manifest.images)
    metrics = {"run": str(run_dir), "checkpoint": str(ckpt_path), "manifest": str(manifest.path),
               "split": manifest.split, "tta": tta, "scales": list(params.scales),
               "flip": params.flip, "images": n, "seconds_per_image": secs / max(n, 1)}
    if scores is not None:
        from ..evaluation import PROTOCOLS

        metrics.update(scores)
        metrics["protocols"] = dict(PROTOCOLS)
    write_json_atomic(json_safe(metrics), out_dir / "metrics.json", indent=2)
    if report:
        from ..evaluation.report import write_report

        write_report(out_dir, Path(run_dir), manifest, store, kept, metrics)
    return metrics


#: images whose predictions ``report.md`` draws (the only ones kept in memory)
REPORT_SAMPLES = 6


def stream_evaluation(manifest, predict, results_path, keep=(), label: str = "eval"):
    """``predict(image_info) -> prediction`` (as :func:`predict_image` returns it) for every
    manifest image; each image's results are appended to ``results_path`` (a COCO result json,
    renamed into place at the end) and, with GT, scored by a streaming
    :class:`~pdsl.evaluation.Evaluator`. Returns ``(metrics or None without GT, {image id:
    prediction} for the ids in keep)``."""
    import click

    from ..evaluation import Evaluator
    from ..io import JsonListWriter

    ev = Evaluator(manifest, keep_results=False) if manifest.has_gt else None
    cat_ids = [c["id"] for c in manifest.categories]
    keep, kept = set(keep), {}
    bar = click.progressbar(manifest.images, label=label, show_pos=True, show_eta=True,
                            file=sys.stderr)
    with bar, JsonListWriter(results_path) as out:
        for img in bar:
            p = predict(img)
            if ev is not None:
                records = ev.process(img["id"], {"boxes": p["boxes"], "scores": p["scores"],
                                                 "labels": p["labels"], "masks": p["masks"],
                                                 "image_scores": p.get("class_scores")})
            else:
                records = result_records(img["id"], p, cat_ids)
            out.extend(records)
            if img["id"] in keep:
                kept[img["id"]] = p
    if ev is None:
        return None, kept
    metrics = ev.evaluate()
    ev.reset()  # closes the temporary files of the per-detection rows
    return metrics, kept


def _open_split(manifest, cues):
    """The split's manifest and cue cache (each a path or already loaded), checked to match."""
    from ..cues.store import CueStore
    from ..manifest import Manifest

    manifest = manifest if isinstance(manifest, Manifest) else load_manifest(manifest)
    store = cues if isinstance(cues, CueStore) else CueStore(cues)
    store.check_manifest(manifest, require_bank=False)
    return manifest, store


def ap_curve(run_dir, manifest, cues, max_images: int = 50, device: str = "auto") -> Path:
    """AP50 of every checkpoint of a run on the first ``max_images`` images (single scale):
    ``RUN_DIR/ap_curve.jsonl``, one line per checkpoint, plotted by the report. ``manifest`` and
    ``cues``: paths, or the loaded :class:`Manifest` and :class:`CueStore`."""
    import click

    from ..evaluation import Evaluator

    device = _device(device)
    manifest, store = _open_split(manifest, cues)
    images = manifest.images[:max_images]
    sub = manifest.subset(images)
    ckpts = sorted((Path(run_dir) / "checkpoints").glob("model_*.pth"))
    if not ckpts:
        raise ConfigError(f"run {run_dir}: no checkpoints to draw an AP curve from")
    loaded = [(img, read_image(manifest.image_path(img), img["id"]), store.get(img["id"], False))
              for img in images]
    lines = []
    for ck in ckpts:
        model, cfg, _, _ = load_run(run_dir, manifest.class_names, device, checkpoint=ck)
        params = TestParams.from_config(cfg, tta=False)
        ev = Evaluator(sub, keep_results=False)
        for img, image, c in loaded:
            p = predict_image(model, image, c.boxes, c.scores, params, device)
            ev.process(img["id"], {"boxes": p["boxes"], "scores": p["scores"],
                                   "labels": p["labels"], "masks": p["masks"],
                                   "image_scores": p["class_scores"]})
        m = ev.evaluate()
        step = int(torch.load(ck, map_location="cpu", weights_only=True)["step"])
        row = {"step": step, "mask_AP50": m.get("segm", {}).get("AP50"),
               "mask_AP75": m.get("segm", {}).get("AP75"), "box_AP50": m["bbox"]["AP50"],
               "cls_mAP": m["classification"]["mAP"], "images": len(images)}
        mask50 = float("nan") if row["mask_AP50"] is None else row["mask_AP50"]
        click.echo(f"ap-curve: step {step}: mask AP50 {mask50:.1f}, box AP50 "
                   f"{row['box_AP50']:.1f}, classification mAP {row['cls_mAP']:.1f}", err=True)
        lines.append(json.dumps(json_safe(row)))
    out = Path(run_dir) / "ap_curve.jsonl"
    from ..io import atomic_path

    with atomic_path(out) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    return out


def result_records(image_id, p, cat_ids) -> list[dict]:
    """COCO result records of one image's prediction (category ids from ``cat_ids``, the
    manifest's, indexed by label; masks RLE-encoded)."""
    from pycocotools import mask as mask_utils

    out = []
    for k in range(len(p["boxes"])):
        x1, y1, x2, y2 = (float(v) for v in p["boxes"][k])
        r = {"image_id": int(image_id), "category_id": int(cat_ids[int(p["labels"][k])]),
             "score": float(p["scores"][k]), "bbox": [x1, y1, x2 - x1, y2 - y1]}
        if p.get("masks") is not None:
            rle = mask_utils.encode(np.asfortranarray(p["masks"][k].astype(np.uint8)))
            r["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode()}
        out.append(r)
    return out


def run_category_ids(run_dir, names, manifest_path=None) -> list[int]:
    """The category id of each class index of a run: the manifest's ids, as ``RUN/run.json``
    recorded them at training time (or as ``manifest_path`` gives them, for a run made before
    run.json existed). Refuses categories whose names are not the run's classes."""
    from ..rundir import run_categories

    if manifest_path is not None:
        cats, where = load_manifest(manifest_path).categories, f"manifest {manifest_path}"
    else:
        cats, where = run_categories(run_dir), f"{Path(run_dir) / 'run.json'}"
        if cats is None:
            raise ConfigError(f"run {run_dir}: no run.json recording the training manifest's "
                              f"category ids (a run trained before it existed): pass "
                              f"--manifest with the training manifest")
    cats = sorted(cats, key=lambda c: int(c["id"]))  # class index order = sorted category ids
    if [c["name"] for c in cats] != list(names):
        raise ConfigError(f"{where}: categories {[c['name'] for c in cats]} are not the run's "
                          f"classes {list(names)}")
    return [int(c["id"]) for c in cats]


def predict_paths(inputs, run_dir, out_dir, tta: bool = False, device: str = "auto",
                  score_thresh: float = 0.3, proposals: str = "builtin",
                  manifest=None) -> dict:
    """Predict arbitrary images (files or folders) with no cache: proposals from the built-in
    generator. Writes one overlay PNG per image and ``predictions.json`` (COCO results with a
    ``file_name`` per image; category ids are the training manifest's, see
    :func:`run_category_ids`). An unreadable image is reported and skipped."""
    import click

    from ..proposals import make_source
    from ..evaluation.report import draw_predictions

    device = _device(device)
    model, cfg, names, _ = load_run(run_dir, None, device)
    cat_ids = run_category_ids(run_dir, names, manifest)
    params = TestParams.from_config(cfg, tta)
    uses_proposals = getattr(model, "uses_proposals", True)  # a Mask R-CNN run makes its own
    source = make_source(proposals) if uses_proposals else None
    no_proposals = {"boxes": np.zeros((0, 4), np.float32), "scores": np.zeros(0, np.float32)}
    exts = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
    files = []
    for inp in inputs:
        pth = Path(inp)
        if pth.is_dir():
            files += sorted(f for f in pth.rglob("*") if f.suffix.lower() in exts)
        else:
            files.append(pth)
    if not files:
        raise DataError(f"predict: no images found in {list(map(str, inputs))}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    images, results, skipped = [], [], []
    from pycocotools import mask as mask_utils

    for k, f in enumerate(files, 1):
        try:
            image = read_image(f)
            H, W = image.shape[:2]
            prop = source.get({"id": k, "file_name": f.name, "height": H, "width": W}, f,
                              image=image) if uses_proposals else no_proposals
        except PDSLError as e:
            click.echo(f"predict: skipped {f}: {e}", err=True)
            skipped.append(str(f))
            continue
        p = predict_image(model, image, prop["boxes"], prop["scores"], params, device)
        keep = p["scores"] >= score_thresh
        images.append({"id": k, "file_name": str(f), "height": H, "width": W})
        for j in np.nonzero(keep)[0]:
            x1, y1, x2, y2 = (float(v) for v in p["boxes"][j])
            rle = mask_utils.encode(np.asfortranarray(p["masks"][j].astype(np.uint8)))
            results.append({"image_id": k, "category_id": cat_ids[int(p["labels"][j])],
                            "category": names[int(p["labels"][j])], "score": float(p["scores"][j]),
                            "bbox": [x1, y1, x2 - x1, y2 - y1],
                            "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()}})
        vis = draw_predictions(image, p["boxes"][keep], p["labels"][keep], p["scores"][keep],
                               p["masks"][keep], names)
        import cv2

        cv2.imwrite(str(out_dir / f"{f.stem}_pred.png"), vis)
        click.echo(f"predict: {f} -> {int(keep.sum())} detections", err=True)
    doc = {"images": images, "categories": [{"id": i, "name": n} for i, n in zip(cat_ids, names)],
           "annotations": results, "skipped": skipped}
    write_json_atomic(doc, out_dir / "predictions.json")
    return {"images": len(images), "skipped": skipped, "detections": len(results)}
