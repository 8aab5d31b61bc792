"""SBD (Hariharan et al.) instance masks: ``inst/<name>.mat`` holding struct ``GTinst`` with
``Segmentation`` (instance map) and ``Categories`` (VOC class of instance i at i - 1); classic
MAT files with scipy, MATLAB v7.3 (HDF5) with h5py."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import DataError
from .masks import instances_from_map

#: the 20 VOC classes, in VOC's index order 1..20
VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
               "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
               "sheep", "sofa", "train", "tvmonitor")


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


def sbd_instances(sbd: Path, name: str):
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
