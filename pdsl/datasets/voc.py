"""PASCAL VOC 2012 (+ SBD augmentation) and VOC-layout exports of annotation tools -> manifest.

Splits: any name with a list file ``ImageSets/Segmentation/<split>.txt`` or, failing that,
``ImageSets/Main/<split>.txt`` (VOC's ``train``/``val``/``trainval``, CVAT's ``default``, ...), and

* ``train_aug`` -- (SBD train | SBD val | VOC seg train) - VOC seg val (10,582 images on the real
  data). Instance masks come from SBD ``inst/<name>.mat`` where SBD has the image, else from VOC
  ``SegmentationObject``. Needs ``sbd_root``.

VOC instance masks: ``SegmentationObject/<name>.png`` (palette index = instance id 1..N, 0
background, 255 void; or RGB in the VOC colour map) and ``SegmentationClass/<name>.png`` (index =
class 1..20, 255 void); an instance's class is the majority class over its pixels, ignoring 0 and
255. With a ``labelmap.txt`` beside ``JPEGImages/`` (CVAT), the classes are its labels and the
class masks its colours (:mod:`.voc_tools`). An image without a ``SegmentationObject`` PNG but with
``Annotations/<name>.xml`` (labelImg, CVAT "PASCAL VOC 1.1") gives box-only GT: its objects'
boxes, no masks. The classes of an XML-only export without labelmap are VOC's when every object
name is one, else the sorted object names of all its XML files.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError
from .masks import (choose_subset, instances_from_map, jpeg_size, mask_annotation, progress_iter,
                    read_index_png)
from .sbd import VOC_CLASSES, find_sbd_root, sbd_instances
from .voc_tools import (box_annotation, class_lut, labelmap_classes, labelmap_palette,
                        read_labelmap, read_voc_xml, xml_class_names)

#: VOC's own split names (any other name with a list file works too)
VOC_SPLITS = ("train", "val", "trainval", "train_aug")


# --------------------------------------------------------------------------------------------
# locating the folders
# --------------------------------------------------------------------------------------------
def find_voc_root(root: str | os.PathLike) -> Path:
    """The ``VOC2012`` folder, given it, a ``VOCdevkit`` folder, or the folder holding VOCdevkit."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"VOC root {root}: directory not found")
    for cand in (root, root / "VOC2012", root / "VOCdevkit" / "VOC2012"):
        if (cand / "JPEGImages").is_dir():
            return cand.resolve()
    raise DataError(f"VOC root {root}: no JPEGImages/ here nor in VOC2012/ -- pass the VOC2012 "
                    "folder or the VOCdevkit folder that contains it")


def read_list(path: Path, what: str) -> list[str]:
    """Image names of a split list (one per line; extra columns, as in class lists, ignored)."""
    if not path.is_file():
        raise DataError(f"{what} {path}: file not found")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{what} {path}: cannot read ({e})") from None
    names = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1] in ("-1", "0", "1"):  # a per-class list: name flag
            names.append(parts[0])
        elif parts:
            names.append(line.strip())                       # a name may contain spaces
    return names


_VOC_NAME = re.compile(r"^\d[\d_]*$")


def image_id_of(name: str) -> int:
    """``2008_000002`` -> ``2008000002`` (the authors' id scheme, for VOC-style names)."""
    if not _VOC_NAME.match(name):
        raise DataError(f"VOC image name {name!r}: not of the form YYYY_NNNNNN (digits and "
                        "underscores), so it has no id of the authors' scheme")
    return int(name.replace("_", ""))


def assign_image_ids(names) -> dict[str, int]:
    """Image id of every name of a split list.

    VOC's own names (``2008_000002``: digits and underscores) keep the authors' ids
    (``2008000002``), so manifests and proposal files match theirs. Any other name (exports of
    labelImg, CVAT or Roboflow: ``IMG_0042``, ``frame 7``, ...) or names whose ids would collide
    (``1_23`` and ``12_3``) give every image its position 1..N in the sorted list instead. The
    ids are therefore stable for a given list, whatever subset (``num_images``) is converted."""
    names = sorted(set(names))
    if all(_VOC_NAME.match(n) for n in names):
        ids = {n: int(n.replace("_", "")) for n in names}
        if len(set(ids.values())) == len(ids):
            return ids
    return {n: k + 1 for k, n in enumerate(names)}


#: image file extensions looked for in JPEGImages/, in this order (exports are not always JPEG)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG", ".bmp", ".webp")


def find_image(voc: Path, name: str) -> Path:
    for ext in IMAGE_EXTENSIONS:
        p = voc / "JPEGImages" / f"{name}{ext}"
        if p.is_file():
            return p
    raise DataError(f"image {name}: JPEG {voc / 'JPEGImages' / (name + '.jpg')} not found "
                    f"(nor .jpeg/.png/.bmp/.webp)")


# --------------------------------------------------------------------------------------------
# per-image conversion
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Layout:
    """How one VOC-layout folder encodes classes (picklable, for joblib workers)."""

    classes: tuple
    palette: object = None          # labelmap colours ([256, 3]) for RGB class masks, or None
    lut: object = None              # class mask index -> class id (labelmap), or None (VOC)
    source: str = "VOC"

    @property
    def class_id(self) -> dict:
        return {n: i + 1 for i, n in enumerate(self.classes)}


def voc_layout(voc: Path) -> Layout:
    """Classes and mask colours of a VOC-layout folder (see the module docstring)."""
    lm = voc / "labelmap.txt"
    if lm.is_file():
        labels = read_labelmap(lm)
        return Layout(tuple(labelmap_classes(labels)), labelmap_palette(labels), class_lut(labels),
                      f"labelmap {lm}")
    if not (voc / "SegmentationObject").is_dir() and (voc / "Annotations").is_dir():
        names = xml_class_names(voc)
        if names and not set(names) <= set(VOC_CLASSES):
            return Layout(tuple(names), source=f"object names of {voc / 'Annotations'}")
    return Layout(VOC_CLASSES)


def _voc_instances(voc: Path, name: str, layout: Layout):
    obj_path = voc / "SegmentationObject" / f"{name}.png"
    cls_path = voc / "SegmentationClass" / f"{name}.png"
    obj = read_index_png(obj_path, f"image {name}: instance mask")
    cls = read_index_png(cls_path, f"image {name}: class mask", palette=layout.palette)
    if obj.shape != cls.shape:
        raise DataError(f"image {name}: {obj_path} is {obj.shape[1]}x{obj.shape[0]} but "
                        f"{cls_path} is {cls.shape[1]}x{cls.shape[0]}")
    n = len(layout.classes)
    if layout.lut is not None:
        raw = cls
        bad = np.unique(raw[(raw > 255) | (layout.lut[np.clip(raw, 0, 255)] < 0)])
        if bad.size:
            raise DataError(f"image {name}: {cls_path} has indices {bad.tolist()} that no line "
                            f"of labelmap.txt has")
        cls = layout.lut[raw]
    bad = np.setdiff1d(np.unique(cls), [0, 255, *range(1, n + 1)])
    if bad.size:
        raise DataError(f"image {name}: {cls_path} has class indices {bad.tolist()} outside "
                        f"0..{n} and 255")
    insts, dropped = [], 0
    for v, m in instances_from_map(obj):
        counts = np.bincount(cls[m].ravel(), minlength=256)
        counts[0] = counts[255] = 0
        if counts.max() == 0:
            dropped += 1  # instance lies entirely on background/void in the class mask
            continue
        insts.append((m, int(counts.argmax())))
    return obj.shape, insts, dropped, str(obj_path)


def _xml_boxes(voc: Path, name: str, layout: Layout):
    path = voc / "Annotations" / f"{name}.xml"
    x = read_voc_xml(path, name)
    ids = layout.class_id
    for o in x["objects"]:
        if o["name"] not in ids:
            raise DataError(f"image {name}: {path}: object class {o['name']!r} is not one of the "
                            f"classes ({layout.source}: {', '.join(layout.classes)})")
    return x["size"], [(o["box"], ids[o["name"]], o["difficult"]) for o in x["objects"]], str(path)


def _decoded_size(path: Path, name: str):
    """(height, width) of an image whose header :func:`jpeg_size` could not read."""
    import cv2

    im = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if im is None:
        raise DataError(f"image {name}: {path}: cannot decode the image")
    return im.shape[:2]


def convert_voc_image(voc: Path, name: str, sbd: Path | None = None,
                      image_id: int | None = None, layout: Layout | None = None) -> dict:
    """One image -> ``{"image": ..., "annotations": [...], "dropped": n, "source":
    "voc"|"sbd"|"xml"}``.

    Uses SBD masks when ``sbd`` is given, else VOC masks, else (no SegmentationObject PNG)
    ``Annotations/<name>.xml`` boxes. Annotations have no ``id`` yet. ``image_id``: from
    :func:`assign_image_ids` (default: the authors' id of a VOC name).
    """
    if image_id is None:
        image_id = image_id_of(name)
    layout = layout or Layout(VOC_CLASSES)
    jpg = find_image(voc, name)
    js = jpeg_size(jpg)
    xml = voc / "Annotations" / f"{name}.xml"
    if sbd is None and not (voc / "SegmentationObject" / f"{name}.png").is_file() \
            and xml.is_file():
        size, boxes, mask_path = _xml_boxes(voc, name, layout)
        h, w = size if size is not None else (js or _decoded_size(jpg, name))
        if js is not None and js != (h, w):
            raise DataError(f"image {name}: JPEG {jpg} is {js[1]}x{js[0]} but {mask_path} says "
                            f"{w}x{h}")
        anns = [box_annotation(b, image_id, c, d, h, w) for b, c, d in boxes]
        img = {"id": image_id, "file_name": jpg.name, "height": int(h), "width": int(w),
               "labels": sorted({c for _, c, _ in boxes})}
        return {"image": img, "annotations": anns, "dropped": 0, "source": "xml"}
    if sbd is not None:
        shape, insts, dropped, mask_path = sbd_instances(sbd, name)
    else:
        shape, insts, dropped, mask_path = _voc_instances(voc, name, layout)
    h, w = int(shape[0]), int(shape[1])
    if js is not None and js != (h, w):
        raise DataError(f"image {name}: JPEG {jpg} is {js[1]}x{js[0]} but its mask {mask_path} "
                        f"is {w}x{h}")
    anns = [mask_annotation(m, image_id, c) for m, c in insts]
    img = {"id": image_id, "file_name": jpg.name, "height": h, "width": w,
           "labels": sorted({c for _, c in insts})}
    return {"image": img, "annotations": anns, "dropped": dropped,
            "source": "sbd" if sbd is not None else "voc"}


# --------------------------------------------------------------------------------------------
# split
# --------------------------------------------------------------------------------------------
def split_list(voc: Path, split: str) -> Path:
    """The list file of ``split``: ``ImageSets/Segmentation/<split>.txt``, else ``Main/``."""
    for sub in ("Segmentation", "Main"):
        p = voc / "ImageSets" / sub / f"{split}.txt"
        if p.is_file():
            return p
    found = sorted({p.stem for sub in ("Segmentation", "Main")
                    for p in (voc / "ImageSets" / sub).glob("*.txt") if "_" not in p.stem
                    or sub == "Segmentation"})
    raise DataError(f"VOC split {split!r}: unknown, no list file {voc / 'ImageSets/Segmentation'}/"
                    f"{split}.txt nor ImageSets/Main/{split}.txt; splits here: "
                    f"{', '.join(found) or 'none'} (and train_aug with --sbd)")


def voc_split_names(voc: Path, split: str, sbd: Path | None) -> list[tuple[str, bool]]:
    """``[(name, use_sbd)]`` sorted by name for a split."""
    seg_dir = voc / "ImageSets" / "Segmentation"
    if split != "train_aug":
        names = read_list(split_list(voc, split), f"VOC {split} list")
        return [(n, False) for n in sorted(set(names))]
    if sbd is None:
        raise DataError("VOC split 'train_aug' needs the SBD dataset: pass --sbd "
                        "benchmark_RELEASE/dataset (or benchmark_RELEASE)")
    voc_train = set(read_list(seg_dir / "train.txt", "VOC train list"))
    voc_val = set(read_list(seg_dir / "val.txt", "VOC val list"))
    sbd_names = (set(read_list(sbd / "train.txt", "SBD train list"))
                 | set(read_list(sbd / "val.txt", "SBD val list")))
    names = (sbd_names | voc_train) - voc_val
    return [(n, n in sbd_names) for n in sorted(names)]


def convert_voc(root: str | os.PathLike, split: str, sbd_root: str | os.PathLike | None = None,
                n_jobs: int = 1, progress: bool = True, num_images: int | None = None,
                seed: int = 0) -> dict:
    """Convert a VOC-layout split (optionally SBD-augmented) to a manifest dict (not yet saved).

    ``num_images`` keeps a seeded random subset of the split (for quick runs); ``n_jobs > 1``
    converts images in parallel with joblib. ``info["notes"]`` feeds the summary line.
    """
    voc = find_voc_root(root)
    sbd = find_sbd_root(sbd_root) if sbd_root is not None else None
    entries = voc_split_names(voc, split, sbd if split == "train_aug" else None)
    if not entries:
        raise DataError(f"VOC split {split!r} under {voc}: the image list is empty")
    layout = voc_layout(voc)
    n_listed = len(entries)
    ids = assign_image_ids(name for name, _ in entries)
    entries = [entries[i] for i in choose_subset(n_listed, num_images, seed)]

    jobs = [(name, sbd if use_sbd else None, ids[name]) for name, use_sbd in entries]
    results = _run_jobs(voc, jobs, n_jobs, progress, f"voc {split}", layout)

    images, anns, dropped = [], [], 0
    sources = {"sbd": 0, "voc": 0, "xml": 0}
    for r in results:
        images.append(r["image"])
        dropped += r["dropped"]
        sources[r["source"]] += 1
        for a in r["annotations"]:
            a["id"] = len(anns) + 1
            anns.append(a)
    notes = []
    if len(entries) < n_listed:
        notes.append(f"{n_listed - len(entries)} of {n_listed} listed images left out "
                     f"(num_images={num_images}, seed={seed})")
    if split == "train_aug":
        notes.append(f"masks: {sources['sbd']} from SBD, {sources['voc']} from VOC")
    if sources["xml"]:
        n_box = sum(1 for a in anns if "segmentation" not in a)
        notes.append(f"{sources['xml']} images with boxes only (Annotations/*.xml, no "
                     f"SegmentationObject PNG): {n_box} box-only instances")
    if layout.source != "VOC":
        notes.append(f"{len(layout.classes)} classes from the {layout.source}")
    if dropped:
        notes.append(f"{dropped} instances dropped (no class pixels under them in "
                     "SegmentationClass)")
    info = {"dataset": "voc2012" if layout.classes == VOC_CLASSES else voc.name, "split": split,
            "format": "voc", "image_root": str(voc / "JPEGImages"), "source_root": str(voc)}
    if split == "train_aug":
        info["sbd_root"] = str(sbd)
    info["notes"] = notes
    return {
        "info": info,
        "images": images,
        "categories": [{"id": i + 1, "name": n, "supercategory": "voc"}
                       for i, n in enumerate(layout.classes)],
        "annotations": anns,
    }


def _run_jobs(voc, jobs, n_jobs, progress, label, layout):
    if n_jobs is None or n_jobs == 1 or len(jobs) < 2:
        gen = (convert_voc_image(voc, name, s, i, layout) for name, s, i in jobs)
    else:
        from joblib import Parallel, delayed

        gen = Parallel(n_jobs=n_jobs, return_as="generator", batch_size=16)(
            delayed(convert_voc_image)(voc, name, s, i, layout) for name, s, i in jobs)
    return list(progress_iter(gen, len(jobs), label, enabled=progress))
