"""Dataset converters: every supported source becomes one manifest json per split.

``prepare_data`` is the one entry point (the CLI's ``prepare-data`` calls it):

* ``synthetic`` -- generated shapes (``pdsl.datasets.synthetic.generate``)
* ``voc``       -- PASCAL VOC 2012, ``train``/``val``/``trainval``; ``train_aug`` with SBD
* ``coco``      -- COCO instances json + image folder, passed through
* ``folder``    -- a folder of images and a labels CSV or JSON (image-level labels only)

The converters themselves (``convert_voc``, ``convert_coco``, ``convert_folder``) return manifest
dicts without writing anything; ``prepare_data`` saves atomically and prints one summary line.
"""
from __future__ import annotations

import os
from pathlib import Path

from ..errors import DataError

FORMATS = ("synthetic", "voc", "coco", "folder")


def manifest_path(out: str | os.PathLike, split: str) -> Path:
    """``out`` itself if it ends in ``.json``, else ``out/<split>.json`` (``out`` = a folder)."""
    out = Path(out).expanduser()
    return out if out.suffix.lower() == ".json" else out / f"{split}.json"


def summarize(d: dict) -> str:
    """One line: images, instances, classes, images without labels, and converter notes."""
    info = d["info"]
    n_img = len(d["images"])
    n_ann = len(d.get("annotations") or [])
    n_empty = sum(1 for img in d["images"] if not img["labels"])
    parts = [f"{n_img} images", f"{n_ann} instances" if n_ann or info.get("format") != "folder"
             else "no GT instances", f"{len(d['categories'])} classes"]
    if n_empty:
        what = "instances" if info.get("format") == "voc" else "labels"
        parts.append(f"{n_empty} images without {what} (kept with empty labels)")
    parts.append("0 images skipped")
    parts += list(info.get("notes") or [])
    return (f"prepared {info.get('dataset')} {info.get('split')} ({info.get('format')}): "
            + ", ".join(parts))


def prepare_data(fmt: str, out: str | os.PathLike, split: str, root=None, sbd=None,
                 labels_csv=None, num_images: int | None = None, seed: int = 0,
                 n_jobs: int = 1, progress: bool = True, classes=None):
    """Convert a dataset split to a manifest and write it; return the loaded ``Manifest``.

    ``out`` is the manifest path (``*.json``) or a folder (the manifest is ``<out>/<split>.json``;
    synthetic images then go to ``<out>/images/<split>/``). ``num_images`` keeps a seeded random
    subset of a real dataset's split (for quick runs) and is the (required) image count for
    ``synthetic``. ``n_jobs`` parallelises the VOC conversion with joblib.
    """
    fmt = (fmt or "").lower()
    if fmt not in FORMATS:
        raise DataError(f"unknown dataset format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if not split:
        raise DataError(f"prepare-data {fmt}: a split name is required")
    if out is None:
        raise DataError(f"prepare-data {fmt}: an output path (--out) is required")
    if num_images is not None and int(num_images) <= 0:
        raise DataError(f"prepare-data {fmt}: --num-images must be positive, got {num_images}")

    if fmt == "synthetic":
        if num_images is None:
            raise DataError("prepare-data synthetic: --num-images is required (how many images "
                            "to generate)")
        from .synthetic import generate

        path = manifest_path(out, split)
        m = generate(path, split, int(num_images), seed)
        print(f"{summarize(m.to_dict())} -> {path}", flush=True)
        return m

    if root is None:
        hint = {"voc": "the VOC2012 or VOCdevkit folder", "coco": "the COCO folder with "
                "annotations/", "folder": "the image folder"}[fmt]
        raise DataError(f"prepare-data {fmt}: --root is required ({hint})")
    if sbd is not None and fmt != "voc":
        raise DataError(f"prepare-data {fmt}: --sbd only applies to the voc format")
    if labels_csv is not None and fmt != "folder":
        raise DataError(f"prepare-data {fmt}: --labels only applies to the folder format")
    if classes and fmt != "folder":
        raise DataError(f"prepare-data {fmt}: --classes only applies to the folder format")

    if fmt == "voc":
        from .voc import convert_voc

        d = convert_voc(root, split, sbd_root=sbd, n_jobs=n_jobs, progress=progress,
                        num_images=num_images, seed=seed)
    elif fmt == "coco":
        from .coco import convert_coco

        d = convert_coco(root, split, progress=progress, num_images=num_images, seed=seed)
    else:
        from .folder import convert_folder

        d = convert_folder(root, split, labels_csv=labels_csv, progress=progress,
                           num_images=num_images, seed=seed, classes=classes)

    from ..manifest import save_manifest

    path = manifest_path(out, split)
    line = summarize(d)
    m = save_manifest(d, path)
    print(f"{line} -> {path}", flush=True)
    return m


__all__ = ["FORMATS", "prepare_data", "manifest_path", "summarize"]
