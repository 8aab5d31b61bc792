"""PASCAL VOC 2012 (+ SBD augmentation) -> manifest.

Splits:

* ``val``       -- ``ImageSets/Segmentation/val.txt`` (1,449 images), VOC masks.
* ``train``     -- ``ImageSets/Segmentation/train.txt`` (1,464 images), VOC masks.
* ``trainval``  -- ``ImageSets/Segmentation/trainval.txt``, VOC masks.
* ``train_aug`` -- (SBD train | SBD val | VOC seg train) - VOC seg val (10,582 images on the real
  data). Instance masks come from SBD ``inst/<name>.mat`` where SBD has the image, else from VOC
  ``SegmentationObject``. Needs ``sbd_root``.

VOC instance masks: ``SegmentationObject/<name>.png`` (palette index = instance id 1..N, 0
background, 255 void) and ``SegmentationClass/<name>.png`` (index = class 1..20, 255 void); an
instance's class is the majority class over its pixels, ignoring 0 and 255. SBD:
``GTinst.Segmentation`` (instance map) and ``GTinst.Categories`` (class of instance i at i-1).
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from ..errors import DataError
from .masks import (choose_subset, instances_from_map, jpeg_size, mask_annotation, progress_iter,
                    read_index_png)

VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
               "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
               "sheep", "sofa", "train", "tvmonitor")

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


def find_sbd_root(sbd: str | os.PathLike) -> Path:
    """The SBD ``dataset`` folder (with ``inst/``, ``cls/``, ``train.txt``, ``val.txt``)."""
    sbd = Path(sbd).expanduser()
    if not sbd.is_dir():
        raise DataError(f"SBD root {sbd}: directory not found")
    for cand in (sbd, sbd / "dataset", sbd / "benchmark_RELEASE" / "dataset"):
        if (cand / "inst").is_dir():
            return cand.resolve()
    raise DataError(f"SBD root {sbd}: no inst/ folder here nor in dataset/ -- pass "
                    "benchmark_RELEASE/dataset or benchmark_RELEASE")


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
# SBD .mat files
# --------------------------------------------------------------------------------------------
def _unwrap(x):
    while isinstance(x, np.ndarray) and x.dtype == object and x.size == 1:
        x = x.reshape(-1)[0]
    return x


def _field(struct, name: str):
    """Field ``name`` of a MATLAB struct as loaded by scipy (mat_struct, record array or dict)."""
    struct = _unwrap(struct)
    if isinstance(struct, dict):
        return struct.get(name)
    if isinstance(struct, np.ndarray) and struct.dtype.names is not None:
        if name not in struct.dtype.names or struct.size == 0:
            return None
        return _unwrap(struct.reshape(-1)[0][name])
    if isinstance(struct, np.void) and struct.dtype.names is not None:
        return _unwrap(struct[name]) if name in struct.dtype.names else None
    return getattr(struct, name, None)


def load_mat_struct(path: Path, key: str, fields: tuple[str, ...], image: str) -> dict:
    """``{field: ndarray}`` of struct ``key`` in a .mat file; one DataError for anything wrong."""
    who = f"image {image}: {path}"
    if not path.is_file():
        raise DataError(f"{who}: file not found")
    import scipy.io

    try:
        mat = scipy.io.loadmat(str(path), squeeze_me=True, struct_as_record=False)
    except NotImplementedError:  # MATLAB v7.3 (HDF5)
        return _load_mat73(path, key, fields, who)
    except Exception as e:  # scipy raises several types for corrupt files
        raise DataError(f"{who}: not a readable .mat file ({type(e).__name__}: {e})") from None
    if key not in mat:
        found = sorted(k for k in mat if not k.startswith("__"))
        raise DataError(f"{who}: no '{key}' struct in the .mat file (found {found})")
    out = {}
    for f in fields:
        v = _field(mat[key], f)
        if v is None:
            raise DataError(f"{who}: struct '{key}' has no field '{f}'")
        out[f] = np.asarray(v)
    return out


def _load_mat73(path, key, fields, who):
    import h5py

    try:
        with h5py.File(path, "r") as h:
            if key not in h:
                raise DataError(f"{who}: no '{key}' struct in the .mat file (found {sorted(h)})")
            out = {}
            for f in fields:
                if f not in h[key]:
                    raise DataError(f"{who}: struct '{key}' has no field '{f}'")
                out[f] = np.asarray(h[key][f]).T  # MATLAB is column-major
            return out
    except OSError as e:
        raise DataError(f"{who}: not a readable .mat file ({e})") from None


def _as_map(arr, who: str, what: str) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.ndim != 2 or arr.size == 0 or not (np.issubdtype(arr.dtype, np.integer)
                                              or np.issubdtype(arr.dtype, np.floating)
                                              or arr.dtype == bool):
        raise DataError(f"{who}: {what} must be a 2-D numeric map, got shape {arr.shape} "
                        f"dtype {arr.dtype}")
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)) or arr.min() < 0:
            raise DataError(f"{who}: {what} has non-integer values")
    return arr.astype(np.int64) if arr.dtype != np.uint8 else arr


# --------------------------------------------------------------------------------------------
# per-image conversion
# --------------------------------------------------------------------------------------------
def _voc_instances(voc: Path, name: str):
    obj_path = voc / "SegmentationObject" / f"{name}.png"
    cls_path = voc / "SegmentationClass" / f"{name}.png"
    obj = read_index_png(obj_path, f"image {name}: instance mask")
    cls = read_index_png(cls_path, f"image {name}: class mask")
    if obj.shape != cls.shape:
        raise DataError(f"image {name}: {obj_path} is {obj.shape[1]}x{obj.shape[0]} but "
                        f"{cls_path} is {cls.shape[1]}x{cls.shape[0]}")
    bad = np.setdiff1d(np.unique(cls), [0, 255, *range(1, len(VOC_CLASSES) + 1)])
    if bad.size:
        raise DataError(f"image {name}: {cls_path} has class indices {bad.tolist()} outside "
                        f"0..{len(VOC_CLASSES)} and 255")
    insts, dropped = [], 0
    for v, m in instances_from_map(obj):
        counts = np.bincount(cls[m].ravel(), minlength=256)
        counts[0] = counts[255] = 0
        if counts.max() == 0:
            dropped += 1  # instance lies entirely on background/void in the class mask
            continue
        insts.append((m, int(counts.argmax())))
    return obj.shape, insts, dropped, str(obj_path)


def _sbd_instances(sbd: Path, name: str):
    path = sbd / "inst" / f"{name}.mat"
    who = f"image {name}: {path}"
    st = load_mat_struct(path, "GTinst", ("Segmentation", "Categories"), name)
    seg = _as_map(st["Segmentation"], who, "GTinst.Segmentation")
    cats = np.atleast_1d(np.asarray(st["Categories"])).reshape(-1)
    try:
        cats = cats.astype(np.int64)
    except (TypeError, ValueError):
        raise DataError(f"{who}: GTinst.Categories is not numeric") from None
    insts = []
    for v, m in instances_from_map(seg, ignore=(0, 255)):
        if v > len(cats):
            raise DataError(f"{who}: instance id {v} in GTinst.Segmentation but GTinst.Categories "
                            f"lists only {len(cats)} instances")
        c = int(cats[v - 1])
        if not 1 <= c <= len(VOC_CLASSES):
            raise DataError(f"{who}: instance {v} has category {c}, outside 1..{len(VOC_CLASSES)}")
        insts.append((m, c))
    return seg.shape, insts, 0, str(path)


def convert_voc_image(voc: Path, name: str, sbd: Path | None = None,
                      image_id: int | None = None) -> dict:
    """One image -> ``{"image": ..., "annotations": [...], "dropped": n, "source": "voc"|"sbd"}``.

    Uses SBD masks when ``sbd`` is given, else VOC masks. Annotations have no ``id`` yet.
    ``image_id``: from :func:`assign_image_ids` (default: the authors' id of a VOC name).
    """
    if image_id is None:
        image_id = image_id_of(name)
    jpg = find_image(voc, name)
    if sbd is not None:
        shape, insts, dropped, mask_path = _sbd_instances(sbd, name)
    else:
        shape, insts, dropped, mask_path = _voc_instances(voc, name)
    h, w = int(shape[0]), int(shape[1])
    js = jpeg_size(jpg)
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
def voc_split_names(voc: Path, split: str, sbd: Path | None) -> list[tuple[str, bool]]:
    """``[(name, use_sbd)]`` sorted by name for a split."""
    seg_dir = voc / "ImageSets" / "Segmentation"
    if split in ("train", "val", "trainval"):
        names = read_list(seg_dir / f"{split}.txt", f"VOC {split} list")
        return [(n, False) for n in sorted(set(names))]
    if split != "train_aug":
        raise DataError(f"VOC split {split!r}: unknown; choose one of {', '.join(VOC_SPLITS)}")
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
    """Convert a VOC 2012 split (optionally SBD-augmented) to a manifest dict (not yet saved).

    ``num_images`` keeps a seeded random subset of the split (for quick runs); ``n_jobs > 1``
    converts images in parallel with joblib. ``info["notes"]`` feeds the summary line.
    """
    if split not in VOC_SPLITS:
        raise DataError(f"VOC split {split!r}: unknown; choose one of {', '.join(VOC_SPLITS)}")
    voc = find_voc_root(root)
    sbd = find_sbd_root(sbd_root) if sbd_root is not None else None
    entries = voc_split_names(voc, split, sbd if split == "train_aug" else None)
    if not entries:
        raise DataError(f"VOC split {split!r} under {voc}: the image list is empty")
    n_listed = len(entries)
    ids = assign_image_ids(name for name, _ in entries)
    entries = [entries[i] for i in choose_subset(n_listed, num_images, seed)]

    jobs = [(name, sbd if use_sbd else None, ids[name]) for name, use_sbd in entries]
    results = _run_jobs(voc, jobs, n_jobs, progress, f"voc {split}")

    images, anns, dropped, n_sbd = [], [], 0, 0
    for r in results:
        images.append(r["image"])
        dropped += r["dropped"]
        n_sbd += r["source"] == "sbd"
        for a in r["annotations"]:
            a["id"] = len(anns) + 1
            anns.append(a)
    notes = []
    if len(entries) < n_listed:
        notes.append(f"{n_listed - len(entries)} of {n_listed} listed images left out "
                     f"(num_images={num_images}, seed={seed})")
    if split == "train_aug":
        notes.append(f"masks: {n_sbd} from SBD, {len(images) - n_sbd} from VOC")
    if dropped:
        notes.append(f"{dropped} instances dropped (no class pixels under them in "
                     "SegmentationClass)")
    info = {"dataset": "voc2012", "split": split, "format": "voc",
            "image_root": str(voc / "JPEGImages"), "source_root": str(voc)}
    if split == "train_aug":
        info["sbd_root"] = str(sbd)
    info["notes"] = notes
    return {
        "info": info,
        "images": images,
        "categories": [{"id": i + 1, "name": n, "supercategory": "voc"}
                       for i, n in enumerate(VOC_CLASSES)],
        "annotations": anns,
    }


def _run_jobs(voc, jobs, n_jobs, progress, label):
    if n_jobs is None or n_jobs == 1 or len(jobs) < 2:
        gen = (convert_voc_image(voc, name, s, i) for name, s, i in jobs)
    else:
        from joblib import Parallel, delayed

        gen = Parallel(n_jobs=n_jobs, return_as="generator", batch_size=16)(
            delayed(convert_voc_image)(voc, name, s, i) for name, s, i in jobs)
    return list(progress_iter(gen, len(jobs), label, enabled=progress))
