"""The second stage's first half (``cli.py pseudo-label``): a trained PDSL run labels its own
training split, and a fully supervised Mask R-CNN is retrained on those labels
(``cli.py train-supervised --annotations``; :mod:`pdsl.engine.supervised`).

Each training image is predicted as at evaluation (its cached proposals, optionally with the
config's test-time augmentation). Only the classes of the image's labels are kept (the
image-level labels are known at training time); per present class the detections scoring at
least ``score_thresh``, at most ``per_class_cap`` of them, and (``keep_top``) its top detection
whatever its score, since the label says the class is there. Their masks come from ``masks``
(:func:`label_masks`): by default GrabCut on each kept box with the cue cache's seed settings,
which on the demo gave far better labels than the model's own masks (README, *Second stage*).
The output is a COCO instances
json (RLE masks, ``iscrowd`` 0, the detection score in ``score``) that any detector library
reads.

Resumable: images are labelled in chunks, each written atomically to ``OUT.parts/`` and skipped
when present; the json is assembled (atomically) at the end and the parts removed. Memory does
not grow with the number of images. With GT in the manifest, ``OUT.quality.json`` says how good
the labels are: precision and recall at mask IoU 0.5 and the mean mask IoU of matched pairs.
"""
from __future__ import annotations

import json
import shutil
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from ..io import atomic_path, read_image, write_json_atomic


MASK_SOURCES = ("model", "grabcut", "refine")


@dataclass(frozen=True)
class PseudoLabelParams:
    score_thresh: float = 0.3   # keep detections of a present class scoring at least this
    per_class_cap: int = 10     # at most this many per present class and image
    keep_top: bool = True       # the top detection of every present class, whatever its score
    tta: bool = False           # the run config's test scales and flips
    scales: tuple = ()          # with tta: these shorter sides instead of input.test_scales
    flip: bool | None = None    # with tta: mirrored passes or not (None: input.test_flip)
    masks: str = "grabcut"      # grabcut: the cue cache's seed-mask method on each kept box |
    # model: the run's own masks | refine: GrabCut initialised from the model's mask (label_masks)

    def __post_init__(self):
        try:
            scales = tuple(int(s) for s in self.scales or ())
        except (TypeError, ValueError):
            scales = (0,)  # refused below
        if any(s < 1 for s in scales):
            raise ConfigError(f"scales must be positive integers (px), got {self.scales!r}")
        object.__setattr__(self, "scales", scales)
        if not 0 <= self.score_thresh <= 1:
            raise ConfigError(f"score_thresh must be in [0, 1], got {self.score_thresh}")
        if self.masks not in MASK_SOURCES:
            raise ConfigError(f"masks must be one of {', '.join(MASK_SOURCES)}, got {self.masks!r}")
        if self.per_class_cap < 1:
            raise ConfigError(f"per_class_cap must be >= 1, got {self.per_class_cap}")


def select_pseudo_labels(scores, labels, present, params: PseudoLabelParams) -> np.ndarray:
    """Indices of the detections kept as pseudo labels, by class then score (descending).

    Args:
        scores (float[K]), labels (int[K]: 0-based class): one image's detections.
        present: 0-based classes of the image's labels.
    """
    scores, labels = np.asarray(scores, float), np.asarray(labels, int)
    keep = []
    for c in sorted(set(int(c) for c in present)):
        idx = np.nonzero(labels == c)[0]
        idx = idx[np.argsort(-scores[idx], kind="stable")]
        chosen = [i for i in idx if scores[i] >= params.score_thresh][:params.per_class_cap]
        if not chosen and params.keep_top and len(idx):
            chosen = [idx[0]]
        keep += chosen
    return np.asarray(keep, dtype=np.int64)


def label_masks(image: np.ndarray, boxes, model_masks, how: str, seeds) -> np.ndarray:
    """The masks of the kept detections, ``bool [K, H, W]``, by mask source ``how``.

    ``model_masks`` are the run's ``bool [K, H, W]`` masks of the kept detections. ``model``:
    those. ``grabcut``: the cue cache's seed-mask settings (``seeds``, its
    :class:`~pdsl.cues.seeds.SeedParams`) run on each kept box, as the cues were made for the
    proposals, only now on the detector's final boxes; a cache of shapes (``box``, ``ellipse``)
    or MCG segments uses ``grabcut_masked`` with its crop settings. ``refine``: GrabCut
    initialised from the model's mask inside its box
    (:func:`~pdsl.cues.grabcut.grabcut_from_prior`). Where GrabCut degenerates (a failed result,
    under ``seeds.empty_frac`` of the box, a box too small to segment) the model's mask is kept:
    a shape would be worse. A result filling the box is kept (an object filling its box).
    """
    from dataclasses import replace as dc_replace

    from ..boxes import paste_mask
    from ..cues.grabcut import grabcut_from_prior, resample_box
    from ..cues.seeds import STATUS_FULL, STATUS_OK, _status, seed_mask

    if how not in MASK_SOURCES:
        raise ConfigError(f"mask source {how!r}: expected one of {', '.join(MASK_SOURCES)}")
    model_masks = np.asarray(model_masks, bool)
    if how == "model" or not len(boxes):
        return model_masks
    H, W = model_masks.shape[1:]
    out = model_masks.copy()
    if how == "grabcut":
        method = "grabcut_masked" if seeds.needs_segments or seeds.method in ("box", "ellipse") \
            else seeds.method
        p = dc_replace(seeds, method=method, fallback="none")
    for k, box in enumerate(boxes):
        if how == "grabcut":
            m, status = seed_mask(image, box, p)
            m = m if status in (STATUS_OK, STATUS_FULL) else None
        else:
            prior = resample_box(model_masks[k].astype(np.float32), box, seeds.mask_size)
            m = grabcut_from_prior(image, box, prior, M=seeds.mask_size,
                                   crop_size=seeds.crop_size, margin=seeds.margin,
                                   iterations=seeds.iterations, core=seeds.core,
                                   upscale=seeds.upscale, min_box_px=seeds.min_box_px)
            m = m if m is not None and _status(m, seeds) in (STATUS_OK, STATUS_FULL) else None
        if m is not None:
            pasted = paste_mask(m, box, H, W)
            if pasted.any():
                out[k] = pasted
    return out


def kept_detections(model, store, manifest, img, test, params: PseudoLabelParams, index, device):
    """One image predicted from its cached proposals (``test``: the pass settings) and the indices
    of the detections kept as its pseudo labels: ``(image BGR, prediction dict, keep)``.
    ``index`` maps a category id to its 0-based class."""
    from .inference import predict_image

    c = store.get(img["id"], with_bank=False)
    image = read_image(manifest.image_path(img), img["id"])
    p = predict_image(model, image, c.boxes, c.scores, test, device)
    keep = select_pseudo_labels(p["scores"], p["labels"], [index[cid] for cid in img["labels"]],
                                params)
    return image, p, keep


def _annotations(img, p, keep, cat_ids) -> list[dict]:
    from pycocotools import mask as mask_utils

    out = []
    for k in keep:
        m = np.asfortranarray(p["masks"][k].astype(np.uint8))
        if not m.any():
            continue  # an empty mask teaches nothing
        rle = mask_utils.encode(m)
        x, y, w, h = (float(v) for v in mask_utils.toBbox(rle))
        out.append({"image_id": int(img["id"]), "category_id": int(cat_ids[int(p["labels"][k])]),
                    "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()},
                    "area": float(mask_utils.area(rle)), "bbox": [x, y, w, h], "iscrowd": 0,
                    "score": float(p["scores"][k])})
    return out


class QualityCounter:
    """Pseudo labels against GT, one image at a time: greedy matching by score at mask IoU ≥ 0.5
    within a class (crowd GT left out); precision = matched / labels, recall = matched / GT."""

    def __init__(self, iou: float = 0.5):
        self.iou, self.labels, self.gt, self.matched, self.iou_sum = iou, 0, 0, 0, 0.0

    def add(self, anns: list[dict], gts: list[dict], h: int, w: int) -> None:
        from pycocotools import mask as mask_utils

        from ..evaluation.coco import any_to_rle

        gts = [g for g in gts if not g.get("iscrowd")]
        self.labels += len(anns)
        self.gt += len(gts)
        for c in {a["category_id"] for a in anns} & {g["category_id"] for g in gts}:
            d = sorted((a for a in anns if a["category_id"] == c), key=lambda a: -a["score"])
            g = [x for x in gts if x["category_id"] == c]
            drle = [{"size": a["segmentation"]["size"],
                     "counts": a["segmentation"]["counts"].encode()} for a in d]
            grle = [any_to_rle(x["segmentation"], h, w) for x in g]
            ious = np.asarray(mask_utils.iou(drle, grle, [0] * len(grle))).reshape(len(d), len(g))
            free = np.ones(len(g), bool)
            for i in range(len(d)):
                j = int(np.argmax(np.where(free, ious[i], -1)))
                if free[j] and ious[i, j] >= self.iou:
                    free[j] = False
                    self.matched += 1
                    self.iou_sum += float(ious[i, j])

    def result(self) -> dict:
        return {"labels": self.labels, "gt_instances": self.gt, "matched": self.matched,
                "iou_threshold": self.iou,
                "precision": self.matched / self.labels if self.labels else None,
                "recall": self.matched / self.gt if self.gt else None,
                "matched_mask_iou": self.iou_sum / self.matched if self.matched else None}


def pseudo_label(run_dir, manifest, cues, out, params: PseudoLabelParams = PseudoLabelParams(),
                 device: str = "auto", chunk_size: int = 200, force: bool = False) -> dict:
    """Label every image of ``manifest`` (a training split) with ``run_dir``'s model; write the
    COCO instances json ``out`` (and ``out.quality.json`` with GT). Returns a summary."""
    import click

    from .evaluate import _device, _open_split, load_run
    from .inference import TestParams

    out = Path(out)
    if out.exists() and not force:
        raise ConfigError(f"{out} exists: pseudo labels are never overwritten silently (pass "
                          f"--force, or another --out)")
    device = _device(device)
    manifest, store = _open_split(manifest, cues)
    model, cfg, names, ckpt = load_run(run_dir, manifest.class_names, device)
    test = TestParams.from_config(cfg, params.tta)
    if params.tta and params.scales:
        test = replace(test, scales=params.scales)
    if params.tta and params.flip is not None:
        test = replace(test, flip=params.flip)
    from ..cues.seeds import SeedParams

    seeds = SeedParams.from_stored(store.meta("seeds"))
    cat_ids = [c["id"] for c in sorted(manifest.categories, key=lambda c: int(c["id"]))]
    index = {cid: k for k, cid in enumerate(cat_ids)}
    parts = out.with_name(out.name + ".parts")
    stamp = {"run": str(run_dir), "checkpoint": str(ckpt), "manifest": str(manifest.path),
             "params": asdict(params)}
    _check_parts(parts, stamp)
    images = manifest.images
    chunks = [images[k:k + chunk_size] for k in range(0, len(images), chunk_size)]
    todo = [k for k in range(len(chunks)) if not (parts / f"part-{k:05d}.jsonl").exists()]
    with click.progressbar(length=sum(len(chunks[k]) for k in todo), label="pseudo-label",
                           show_pos=True, show_eta=True, file=sys.stderr) as bar:
        for k in todo:
            lines = []
            for img in chunks[k]:
                image, p, keep = kept_detections(model, store, manifest, img, test, params,
                                                 index, device)
                p["masks"][keep] = label_masks(image, p["boxes"][keep], p["masks"][keep],
                                               params.masks, seeds)
                lines += [json.dumps(a) for a in _annotations(img, p, keep, cat_ids)]
                bar.update(1)
            with atomic_path(parts / f"part-{k:05d}.jsonl") as tmp:
                Path(tmp).write_text("".join(line + "\n" for line in lines))
    return _assemble(out, parts, manifest, chunks, stamp)


def _check_parts(parts: Path, stamp: dict) -> None:
    """``OUT.parts/`` of an interrupted run is resumed only if made with the same inputs."""
    meta = parts / "stamp.json"
    if meta.exists():
        if json.loads(meta.read_text()) != json.loads(json.dumps(stamp)):
            raise ConfigError(f"{parts} holds the parts of another labelling ({meta}); delete it "
                              f"or choose another --out")
    else:
        parts.mkdir(parents=True, exist_ok=True)
        write_json_atomic(stamp, meta, indent=2)


def _assemble(out: Path, parts: Path, manifest, chunks, stamp: dict) -> dict:
    masked = manifest.mask_coverage()["images"]      # mask IoU needs GT masks: box-only GT left out
    quality = QualityCounter() if manifest.has_gt and masked else None
    n = 0
    with atomic_path(out) as tmp, open(tmp, "w") as f:
        f.write('{"info": ' + json.dumps({"description": "PDSL pseudo labels", **stamp}))
        f.write(',\n"images": ' + json.dumps([{k: img[k] for k in ("id", "file_name", "height",
                                                                   "width")}
                                               for img in manifest.images]))
        f.write(',\n"categories": ' + json.dumps(manifest.categories) + ',\n"annotations": [')
        for k, chunk in enumerate(chunks):
            anns = [json.loads(x) for x in (parts / f"part-{k:05d}.jsonl").read_text().splitlines()]
            by_image = {}
            for a in anns:
                n += 1
                a["id"] = n
                f.write(("\n" if n == 1 else ",\n") + json.dumps(a))
                by_image.setdefault(a["image_id"], []).append(a)
            if quality is not None:
                for img in (i for i in chunk if i["id"] in masked):
                    quality.add(by_image.get(img["id"], []), manifest.annotations_of(img["id"]),
                                int(img["height"]), int(img["width"]))
        f.write("\n]}\n")
    summary = {"out": str(out), "images": len(manifest.images), "annotations": n}
    if quality is not None:
        summary["quality"] = quality.result()
        write_json_atomic({**stamp, **summary}, out.with_name(out.stem + ".quality.json"),
                          indent=2)
    shutil.rmtree(parts)
    return summary
