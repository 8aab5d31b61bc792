"""Embedded synthetic benchmark: procedurally drawn object categories on textured backgrounds.

``generate(out_manifest, split, num_images, seed)`` writes lossless PNG images and a COCO-format
PDSL manifest (see :mod:`pdsl.manifest`) with image-level labels and visible-part instance masks.

Design (what makes it a small but honest weakly supervised benchmark):

* 7 categories, each with its own silhouette and a class-typical colour palette. Palettes overlap
  between classes (red cars / red stars / red mushroom caps, orange fish / orange stars ...), so
  colour alone does not identify a class; the shape does.
* Composite classes (car = body + wheels + windows, person = torso + legs + head, mushroom =
  stem + cap, tree = crown + trunk, fish = body + tail + eye): a detector trained from image
  labels is tempted to fire on the distinctive part only.
* 1-4 instances of 1-3 classes per image, small/medium/large, rotated, mirrored, partially
  occluded (GT masks are the visible parts; nearly hidden instances are dropped), sometimes cut by
  the image border.
* Non-flat backgrounds (smooth noise, gradients, low-contrast stripes, blurred colour fields) with
  no object-like distractors; objects carry shading and texture.

Everything is a function of ``(seed, split, image index)``: one independent RNG stream per image,
so the bytes written are reproducible and train/val never share images.
"""
from __future__ import annotations

import zlib
from pathlib import Path

import cv2
import numpy as np

from ..io import atomic_path
from ..manifest import Manifest, save_manifest
from .shapes import background, colour_object, object_shape

#: Default side of the square images. 160 px: large enough that small objects (~18 px) keep their
#: shape, small enough that a from-scratch CNN trains on 2 CPU cores in minutes (160 = 5 x 32, so
#: five stride-2 stages end on a 5x5 map).
DEFAULT_IMAGE_SIZE = 160

CLASS_NAMES = ["car", "person", "mushroom", "tree", "fish", "star", "donut"]

# ----------------------------------------------------------------------------------- one image
_MIN_VIS_PX = 40
_MIN_VIS_FRAC = 0.30
_PLACE_VIS_FRAC = 0.5  # placement keeps earlier instances at least this visible


def _sample_size(rng, n: int) -> float:
    k = n / 160.0
    r = rng.random()
    if r < 0.2:
        return rng.uniform(20, 34) * k       # small
    if r < 0.65:
        return rng.uniform(34, 66) * k       # medium
    return rng.uniform(66, 112) * k          # large


def render_image(rng: np.random.Generator, n: int = DEFAULT_IMAGE_SIZE):
    """One image: ``(uint8 BGR [n,n,3], [(class_index, visible bool mask [n,n]), ...])``."""
    C = len(CLASS_NAMES)
    k = int(rng.choice([1, 2, 3], p=[0.45, 0.4, 0.15]))
    classes = list(rng.choice(C, size=k, replace=False))
    extra = int(rng.choice(5 - k, p=np.array([8, 4, 2, 1][:5 - k], float) / sum([8, 4, 2, 1][:5 - k])))
    inst_cls = classes + [classes[i] for i in rng.integers(0, k, extra)]
    sizes = [_sample_size(rng, n) for _ in inst_cls]
    # mostly larger objects behind, with some shuffling
    order = np.argsort(-(np.array(sizes) * rng.uniform(0.7, 1.3, len(sizes))))
    img = background(rng, n)
    bg = img.copy()
    full_masks, full_areas, vis_masks, labels = [], [], [], []
    for idx in order:
        cls = CLASS_NAMES[inst_cls[idx]]
        size = sizes[idx]
        placed = None
        for attempt in range(30):
            if attempt and attempt % 10 == 0:
                size *= 0.75
            P, parts = object_shape(cls, size, rng)
            h, w = P.shape
            if h >= n or w >= n:
                size *= 0.85
                continue
            # allow up to ~12% of the object outside the image
            x0 = int(rng.integers(-int(0.12 * w), n - w + int(0.12 * w) + 1))
            y0 = int(rng.integers(-int(0.12 * h), n - h + int(0.12 * h) + 1))
            m = np.zeros((n, n), bool)
            ys0, ys1, xs0, xs1 = max(y0, 0), min(y0 + h, n), max(x0, 0), min(x0 + w, n)
            m[ys0:ys1, xs0:xs1] = P[ys0 - y0:ys1 - y0, xs0 - x0:xs1 - x0] > 0
            full = int((P > 0).sum())
            if m.sum() < max(_MIN_VIS_PX, 0.75 * full):
                continue
            ok = all(((v & ~m).sum() >= max(_MIN_VIS_PX, _PLACE_VIS_FRAC * fa))
                     for v, fa in zip(vis_masks, full_areas))
            if ok:
                placed = (P, parts, x0, y0, m, full)
                break
        if placed is None:
            continue
        P, parts, x0, y0, m, full = placed
        h, w = P.shape
        # colour on an (unclipped) local window of the background
        pad_img = np.pad(bg, ((h, h), (w, w), (0, 0)), mode="edge")
        bg_patch = pad_img[y0 + h:y0 + 2 * h, x0 + w:x0 + 2 * w]
        layer = colour_object(cls, P, parts, rng, bg_patch)
        ys0, ys1, xs0, xs1 = max(y0, 0), min(y0 + h, n), max(x0, 0), min(x0 + w, n)
        sub = layer[ys0 - y0:ys1 - y0, xs0 - x0:xs1 - x0]
        sel = m[ys0:ys1, xs0:xs1]
        img[ys0:ys1, xs0:xs1][sel] = sub[sel]
        vis_masks = [v & ~m for v in vis_masks]
        vis_masks.append(m)
        full_masks.append(m)
        full_areas.append(full)
        labels.append(int(inst_cls[idx]))
    img = cv2.GaussianBlur(img, (3, 3), 0.6)
    out = np.clip(np.round(img), 0, 255).astype(np.uint8)
    insts = [(c, v) for c, v, fa in zip(labels, vis_masks, full_areas)
             if v.sum() >= _MIN_VIS_PX and v.sum() >= _MIN_VIS_FRAC * fa]
    return out, insts


def _image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    ss = np.random.SeedSequence(entropy=int(seed), spawn_key=(zlib.crc32(split.encode()), int(index)))
    return np.random.default_rng(ss)


# ----------------------------------------------------------------------------------- public API
def generate(out_manifest, split: str, num_images: int, seed: int, image_dir=None,
             image_size: int = DEFAULT_IMAGE_SIZE) -> Manifest:
    """Generate ``num_images`` images of ``split`` and write their manifest to ``out_manifest``.

    Images go to ``image_dir`` (default ``<out_manifest parent>/images/<split>/``) as PNG. The
    output is a pure function of ``(seed, split, num_images, image_size)``.
    """
    from pycocotools import mask as mask_utils

    out_manifest = Path(out_manifest)
    image_dir = Path(image_dir) if image_dir is not None else out_manifest.parent / "images" / split
    image_dir = image_dir.resolve()
    image_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    ann_id = 1
    for i in range(int(num_images)):
        rng = _image_rng(seed, split, i)
        img, insts = render_image(rng, int(image_size))
        image_id = i + 1
        file_name = f"{split}_{i:06d}.png"
        ok, buf = cv2.imencode(".png", img, [cv2.IMWRITE_PNG_COMPRESSION, 3])
        if not ok:
            raise RuntimeError(f"PNG encoding failed for image {image_id}")
        with atomic_path(image_dir / file_name) as tmp:
            with open(tmp, "wb") as f:
                f.write(buf.tobytes())
        for cls, vis in insts:
            rle = mask_utils.encode(np.asfortranarray(vis.astype(np.uint8)))
            rle["counts"] = rle["counts"].decode("ascii")
            ys, xs = np.nonzero(vis)
            x, y = int(xs.min()), int(ys.min())
            annotations.append({
                "id": ann_id, "image_id": image_id, "category_id": cls + 1,
                "bbox": [x, y, int(xs.max()) - x + 1, int(ys.max()) - y + 1],
                "area": int(vis.sum()), "iscrowd": 0, "segmentation": rle,
            })
            ann_id += 1
        images.append({"id": image_id, "file_name": file_name, "height": int(image_size),
                       "width": int(image_size), "labels": sorted({c + 1 for c, _ in insts})})
    d = {
        "info": {"dataset": "synthetic", "split": split, "format": "synthetic",
                 "image_root": str(image_dir), "seed": int(seed)},
        "images": images,
        "categories": [{"id": i + 1, "name": n} for i, n in enumerate(CLASS_NAMES)],
        "annotations": annotations,
    }
    return save_manifest(d, out_manifest)


__all__ = ["CLASS_NAMES", "DEFAULT_IMAGE_SIZE", "generate", "render_image"]
