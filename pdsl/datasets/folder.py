"""A folder of images + image-level labels (CSV or JSON) -> manifest (no GT masks).

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

JSON format (a ``.json`` labels file; default ``<root>/labels.json`` when there is no CSV)::

    {"cats/001.jpg": ["cat", "dog"], "003.jpg": ["sheep"], "004.jpg": []}
    [{"file_name": "cats/001.jpg", "labels": ["cat", "dog"]}, ...]       (the same, as a list)

(a label list may also be one string, split as in the CSV).

**The class list** must be the same for every split of a dataset, or a run trained on one split
cannot be evaluated on another. ``classes`` sets it:

* one class-list file (``.txt``, one name per line, ``#`` comments): that list, in that order
  (category ids 1..C);
* labels files (CSV/JSON) of every split, or several files: the sorted union of their names;
* nothing: the names of this labels file alone (fine for a dataset with one split).

A label outside the class list is an error naming the file and the line (CSV) or entry (JSON).
Every image must exist and be readable (its size is read with OpenCV). Image ids are 1..N in
file order.
"""
from __future__ import annotations

import csv
import os
import re
from pathlib import Path

from ..errors import DataError
from ..io import read_data_file, read_image
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


def parse_labels_json(path: Path) -> list[tuple[str, str, list[str]]]:
    """``[(where, file_name, [class names])]`` from a labels JSON (a dict or a list, see above)."""
    doc = read_data_file(path, "labels JSON")
    if isinstance(doc, dict):
        items = [(f"entry {k!r}", k, v) for k, v in doc.items()]
    elif isinstance(doc, list):
        items = []
        for n, e in enumerate(doc):
            if not isinstance(e, dict) or "file_name" not in e or "labels" not in e:
                raise DataError(f"labels JSON {path} entry {n}: expected an object with "
                                f"'file_name' and 'labels', got {str(e)[:80]}")
            items.append((f"entry {n}", e["file_name"], e["labels"]))
    else:
        raise DataError(f"labels JSON {path}: expected an object {{file_name: [labels]}} or a "
                        f"list of {{'file_name', 'labels'}}, got {type(doc).__name__}")
    out = []
    for where, name, labels in items:
        if not isinstance(name, str) or not name.strip():
            raise DataError(f"labels JSON {path} {where}: empty or non-string file_name")
        if isinstance(labels, str):
            labels = [t for t in _SPLIT.split(labels.strip()) if t]
        if not isinstance(labels, list) or not all(isinstance(t, str) for t in labels):
            raise DataError(f"labels JSON {path} {where}: 'labels' must be a list of class "
                            f"names, got {str(labels)[:80]}")
        out.append((where, name.strip(), [t.strip() for t in labels if t.strip()]))
    return out


def parse_labels(path: Path) -> list[tuple[str, str, list[str]]]:
    """``[(where, file_name, labels)]`` of a CSV or (``.json``) JSON labels file; ``where`` is
    ``"line N"`` or ``"entry K"``."""
    if path.suffix.lower() == ".json":
        return parse_labels_json(path)
    return [(f"line {line}", name, labs) for line, name, labs in parse_labels_csv(path)]


def read_class_list(paths) -> list[str]:
    """The class names of ``--classes``: one ``.txt`` list keeps its order; labels files (or
    several files) give the sorted union."""
    paths = [Path(p).expanduser() for p in paths]
    if len(paths) == 1 and paths[0].suffix.lower() not in (".csv", ".json"):
        p = paths[0]
        if not p.is_file():
            raise DataError(f"class list {p}: file not found")
        try:
            lines = p.read_text(encoding="utf-8-sig").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise DataError(f"class list {p}: cannot read ({e})") from None
        names = [ln.split("#", 1)[0].strip() for ln in lines]
        names = [n for n in names if n]
        bad = [n for n in names if _SPLIT.search(n)]
        if bad:
            raise DataError(f"class list {p}: class name {bad[0]!r} contains a separator "
                            f"(';', '|' or whitespace)")
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise DataError(f"class list {p}: {dup[0]!r} is listed twice")
        if not names:
            raise DataError(f"class list {p}: no class names")
        return names
    names = set()
    for p in paths:
        if p.suffix.lower() not in (".csv", ".json"):
            raise DataError(f"--classes {p}: with several files, each must be a labels file "
                            f"(.csv or .json) whose names are pooled")
        names |= {lab for _, _, labs in parse_labels(p) for lab in labs}
    if not names:
        raise DataError(f"--classes {', '.join(map(str, paths))}: no class labels at all")
    return sorted(names)


def default_labels_path(root: Path) -> Path:
    csv_path, json_path = root / "labels.csv", root / "labels.json"
    return json_path if not csv_path.is_file() and json_path.is_file() else csv_path


def convert_folder(root: str | os.PathLike, split: str, labels_csv: str | os.PathLike | None = None,
                   progress: bool = True, num_images: int | None = None, seed: int = 0,
                   classes=None) -> dict:
    """Convert an image folder + labels file (CSV or JSON) to a manifest dict (not yet saved).

    ``classes``: paths of a class list or of the labels files of every split (see the module
    docstring); None takes the class list from this labels file. ``num_images`` keeps a seeded
    random subset of the rows (class list still from all rows).
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"image folder {root}: directory not found")
    root = root.resolve()
    labels_path = (Path(labels_csv).expanduser() if labels_csv is not None
                   else default_labels_path(root))
    kind = "JSON" if labels_path.suffix.lower() == ".json" else "CSV"
    rows = parse_labels(labels_path)
    if not rows:
        raise DataError(f"labels {kind} {labels_path}: no image rows")

    seen = {}
    for where, name, _ in rows:
        key = os.path.normpath(name)
        if key in seen:
            raise DataError(f"labels {kind} {labels_path} {where}: image {name} is already "
                            f"listed on {seen[key]}")
        seen[key] = where

    if classes:
        names = read_class_list(classes)
        known = set(names)
        for where, name, labs in rows:
            unknown = [lab for lab in labs if lab not in known]
            if unknown:
                raise DataError(f"labels {kind} {labels_path} {where}: image {name} has class "
                                f"{unknown[0]!r}, which is not in the class list "
                                f"({', '.join(map(str, classes))}: {names})")
    else:
        names = sorted({lab for _, _, labs in rows for lab in labs})
    if not names:
        raise DataError(f"labels {kind} {labels_path}: no class labels at all")
    cat_id = {n: i + 1 for i, n in enumerate(names)}

    n_listed = len(rows)
    keep = choose_subset(n_listed, num_images, seed)
    rows = [(idx + 1, *rows[idx]) for idx in keep]
    images = []
    for idx, where, name, labs in progress_iter(iter(rows), len(rows), f"folder {split}",
                                                enabled=progress):
        path = root / name
        try:
            img = read_image(path, image_id=idx)
        except DataError as e:
            raise DataError(f"labels {kind} {labels_path} {where}: {e}") from None
        h, w = img.shape[:2]
        images.append({"id": idx, "file_name": name, "height": int(h), "width": int(w),
                       "labels": sorted({cat_id[lab] for lab in labs})})
    notes = []
    if len(rows) < n_listed:
        notes.append(f"{n_listed - len(rows)} of {n_listed} listed images left out "
                     f"(num_images={num_images}, seed={seed})")
    if not classes:
        notes.append("class list from this labels file only (pass --classes to share one "
                     "list across splits)")
    return {
        "info": {"dataset": root.name or "folder", "split": split, "format": "folder",
                 "image_root": str(root), "labels_csv": str(labels_path.resolve()),
                 "notes": notes},
        "images": images,
        "categories": [{"id": cat_id[n], "name": n} for n in names],
        "annotations": [],
    }
