"""COCO instances json -> manifest.

``root/annotations/instances_<split>.json`` with images in ``root/<split>/`` (``train2017``,
``val2017``, ``train2014``, ``val2014``; ``file_name`` is relative to that folder), or Roboflow's
export: ``root/<split>/_annotations.coco.json`` beside the images (``train``, ``valid``,
``test``). Annotations are kept as they are (polygons, RLE and crowd regions all work with
pycocotools) after the checks of :mod:`.coco_checks` (placeholder category, duplicate names,
boxes leaving the image or disagreeing with their segmentation); one with an empty
``segmentation`` is box-only GT. Each image gets ``labels`` = the sorted category ids of all its
annotations, crowd ones included.
"""
from __future__ import annotations

import os
from pathlib import Path

from ..errors import DataError
from ..io import read_data_file
from .coco_checks import check_bbox, drop_placeholders
from .masks import choose_subset, progress_iter


def find_coco_split(root: Path, split: str) -> tuple[Path, Path]:
    """``(annotation json, image folder)`` of a split, in COCO's layout or Roboflow's."""
    official = root / "annotations" / f"instances_{split}.json"
    roboflow = root / split / "_annotations.coco.json"
    ann_path = official if official.is_file() or not roboflow.is_file() else roboflow
    if not ann_path.is_file():
        raise DataError(f"COCO split {split!r}: annotation file {official} not found (nor "
                        f"Roboflow's {roboflow})")
    image_dir = root / split
    if not image_dir.is_dir():
        raise DataError(f"COCO split {split!r}: image folder {image_dir} not found")
    return ann_path, image_dir


def convert_coco(root: str | os.PathLike, split: str, progress: bool = True,
                 check_files: bool = True, num_images: int | None = None, seed: int = 0) -> dict:
    """Convert a COCO split to a manifest dict (not yet saved).

    ``check_files`` verifies that every listed image file exists (a stat per image);
    ``num_images`` keeps a seeded random subset of the images and their annotations.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"COCO root {root}: directory not found")
    root = root.resolve()
    ann_path, image_dir = find_coco_split(root, split)
    d = read_data_file(ann_path, "COCO annotation file")
    if not isinstance(d, dict):
        raise DataError(f"COCO annotation file {ann_path}: top level must be a JSON object")
    for key in ("images", "categories"):
        if not isinstance(d.get(key), list):
            raise DataError(f"COCO annotation file {ann_path}: missing list '{key}'")
    anns = d.get("annotations") or []
    if not isinstance(anns, list):
        raise DataError(f"COCO annotation file {ann_path}: 'annotations' must be a list")

    cat_ids = set()
    for i, c in enumerate(d["categories"]):
        if not isinstance(c, dict) or "id" not in c or "name" not in c:
            raise DataError(f"COCO annotation file {ann_path}: categories[{i}] needs 'id' and "
                            "'name'")
        cat_ids.add(c["id"])

    images, labels = [], {}
    for i, img in enumerate(d["images"]):
        if not isinstance(img, dict):
            raise DataError(f"COCO annotation file {ann_path}: images[{i}] is not an object")
        for key in ("id", "file_name", "height", "width"):
            if key not in img:
                raise DataError(f"COCO annotation file {ann_path}: image {img.get('id', i)} "
                                f"({img.get('file_name', '?')}) has no '{key}'")
        if img["id"] in labels:
            raise DataError(f"COCO annotation file {ann_path}: duplicate image id {img['id']}")
        labels[img["id"]] = set()
        images.append(img)

    for j, a in enumerate(anns):
        try:
            iid, cid = a["image_id"], a["category_id"]
        except (KeyError, TypeError):
            raise DataError(f"COCO annotation file {ann_path}: annotations[{j}] needs "
                            "'image_id' and 'category_id'") from None
        if iid not in labels:
            raise DataError(f"COCO annotation file {ann_path}: annotation {a.get('id', j)} "
                            f"refers to unknown image id {iid}")
        if cid not in cat_ids:
            raise DataError(f"COCO annotation file {ann_path}: annotation {a.get('id', j)} "
                            f"(image {iid}) has unknown category id {cid}")
        labels[iid].add(cid)
    used = {a["category_id"] for a in anns}
    categories, dropped = drop_placeholders(d["categories"], used,
                                            f"COCO annotation file {ann_path}")

    n_listed = len(images)
    if num_images is not None and num_images < n_listed:
        images = [images[i] for i in choose_subset(n_listed, num_images, seed)]
        kept = {img["id"] for img in images}
        anns = [a for a in anns if a["image_id"] in kept]

    if check_files:
        missing = [img for img in progress_iter(iter(images), len(images), f"coco {split} files",
                                                enabled=progress and len(images) > 5000)
                   if not (image_dir / img["file_name"]).is_file()]
        if missing:
            m = missing[0]
            raise DataError(f"COCO split {split!r}: image {m['id']} file "
                            f"{image_dir / m['file_name']} not found"
                            + (f" (and {len(missing) - 1} more missing)" if len(missing) > 1
                               else ""))

    for img in images:
        img["labels"] = sorted(labels[img["id"]])
    sizes = {img["id"]: (int(img["height"]), int(img["width"])) for img in images}
    fixed = {"clipped": 0, "replaced": 0, None: 0}
    for a in anns:
        fixed[check_bbox(a, *sizes[a["image_id"]], f"COCO annotation file {ann_path}")] += 1
    n_box = sum(1 for a in anns if not a.get("segmentation"))
    n_crowd = sum(1 for a in anns if a.get("iscrowd", 0))
    notes = [f"{len(dropped)} placeholder categories dropped"
             + "".join(f" (id {c['id']} {c['name']!r}: supercategory 'none', unused)"
                       for c in dropped)
             + f", {fixed['clipped']} bboxes clipped to the image, {fixed['replaced']} replaced "
             f"by their segmentation's extent (IoU < 0.5)"]
    if n_box:
        notes.append(f"{n_box} box-only instances (no segmentation)")
    if len(images) < n_listed:
        notes.append(f"{n_listed - len(images)} of {n_listed} listed images left out "
                     f"(num_images={num_images}, seed={seed})")
    if n_crowd:
        notes.append(f"{n_crowd} crowd annotations kept (they count toward image labels)")
    info = {"dataset": "coco", "split": split, "format": "coco", "image_root": str(image_dir),
            "source_annotations": str(ann_path), "notes": notes}
    if isinstance(d.get("info"), dict):
        info["coco_info"] = d["info"]
    return {"info": info, "images": images, "categories": categories, "annotations": anns}
