"""A folder of images + a labels CSV -> manifest (image-level labels only, no GT masks).

CSV format (default ``<root>/labels.csv``; UTF-8, a header line is required)::

    file_name,labels
    cats/001.jpg,cat;dog
    002.png,person | bicycle
    003.jpg,sheep
    004.jpg,

* ``file_name``: path relative to the image folder (absolute paths work too).
* ``labels``: class names separated by ``;``, ``|`` or whitespace (so class names cannot contain
  spaces; quote the field if you like, but do not separate names with commas). An empty field is
  an image without any of the classes (a negative), kept and counted in the summary.
* Columns are found by their header names (case-insensitive); further columns are ignored.

Class ids are 1..C over the sorted unique class names. Every image must exist and be readable
(its size is read with OpenCV). Image ids are 1..N in CSV order.
"""
from __future__ import annotations

import csv
import os
import re
from pathlib import Path

from ..errors import DataError
from ..io import read_image
from .masks import choose_subset, progress_iter

_SPLIT = re.compile(r"[;|\s]+")


def parse_labels_csv(csv_path: Path) -> list[tuple[int, str, list[str]]]:
    """``[(line_number, file_name, [class names])]`` from a labels CSV."""
    if not csv_path.is_file():
        raise DataError(f"labels CSV {csv_path}: file not found")
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            records = [(reader.line_num, r) for r in reader if r and any(c.strip() for c in r)]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"labels CSV {csv_path}: cannot read ({e})") from None
    if not records:
        raise DataError(f"labels CSV {csv_path}: empty (expected a header 'file_name,labels')")
    _, header = records[0]
    cols = [h.strip().lower() for h in header]
    if "file_name" not in cols or "labels" not in cols:
        raise DataError(f"labels CSV {csv_path}: unknown column layout {header} -- the header "
                        "must name the columns 'file_name' and 'labels'")
    fi, li = cols.index("file_name"), cols.index("labels")
    out = []
    for line, r in records[1:]:
        if len(r) > len(header):
            raise DataError(f"labels CSV {csv_path} line {line}: {len(r)} fields but the header "
                            f"has {len(header)} -- separate labels with ';', '|' or spaces, "
                            "not commas")
        if len(r) <= max(fi, li):
            raise DataError(f"labels CSV {csv_path} line {line}: {len(r)} fields but the header "
                            f"has {len(header)}")
        name = r[fi].strip()
        if not name:
            raise DataError(f"labels CSV {csv_path} line {line}: empty file_name")
        labels = [t for t in _SPLIT.split(r[li].strip()) if t]
        out.append((line, name, labels))
    return out


def convert_folder(root: str | os.PathLike, split: str, labels_csv: str | os.PathLike | None = None,
                   progress: bool = True, num_images: int | None = None, seed: int = 0) -> dict:
    """Convert an image folder + labels CSV to a manifest dict (not yet saved).

    ``num_images`` keeps a seeded random subset of the rows (class list still from all rows).
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"image folder {root}: directory not found")
    root = root.resolve()
    csv_path = Path(labels_csv).expanduser() if labels_csv is not None else root / "labels.csv"
    rows = parse_labels_csv(csv_path)
    if not rows:
        raise DataError(f"labels CSV {csv_path}: no image rows after the header")

    seen = {}
    for line, name, _ in rows:
        key = os.path.normpath(name)
        if key in seen:
            raise DataError(f"labels CSV {csv_path} line {line}: image {name} is already listed "
                            f"on line {seen[key]}")
        seen[key] = line

    names = sorted({lab for _, _, labs in rows for lab in labs})
    if not names:
        raise DataError(f"labels CSV {csv_path}: no class labels at all")
    cat_id = {n: i + 1 for i, n in enumerate(names)}

    n_listed = len(rows)
    keep = choose_subset(n_listed, num_images, seed)
    rows = [(idx + 1, *rows[idx]) for idx in keep]
    images = []
    for idx, line, name, labs in progress_iter(iter(rows), len(rows), f"folder {split}",
                                               enabled=progress):
        path = root / name
        try:
            img = read_image(path, image_id=idx)
        except DataError as e:
            raise DataError(f"labels CSV {csv_path} line {line}: {e}") from None
        h, w = img.shape[:2]
        images.append({"id": idx, "file_name": name, "height": int(h), "width": int(w),
                       "labels": sorted({cat_id[lab] for lab in labs})})
    return {
        "info": {"dataset": root.name or "folder", "split": split, "format": "folder",
                 "image_root": str(root), "labels_csv": str(csv_path.resolve()),
                 "notes": [f"{n_listed - len(rows)} of {n_listed} listed images left out "
                           f"(num_images={num_images}, seed={seed})"] if len(rows) < n_listed
                 else []},
        "images": images,
        "categories": [{"id": cat_id[n], "name": n} for n in names],
        "annotations": [],
    }
