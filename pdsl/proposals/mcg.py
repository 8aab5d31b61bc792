"""MCG proposals as published (Pont-Tuset et al.): one ``.mat`` per image.

File name: the image file's stem (``2008_000002.mat``, ``COCO_val2014_000000000042.mat``), also
looked up as ``<relative path>.mat`` and ``<image id>.mat``.

Contents:

* ``boxes`` ``N x 4`` **1-based inclusive ``[y1 x1 y2 x2]``** (``bboxes`` is accepted too), and
  ``scores`` ``N`` or ``N x 1``.  Converted to 0-based continuous x1y1x2y2:
  ``x1 = c1 - 1, y1 = r1 - 1, x2 = c2, y2 = r2``.
* the ``-proposals`` variant adds ``superpixels`` (``H x W`` 1-based label map) and ``labels``
  (a cell array: per proposal, the superpixel ids it covers). From these, :func:`segment_masks`
  rasterises each proposal's segment into its box frame as a second bottom-up cue. If such a file
  has no ``boxes``, they are derived from the segments.

Both classic MAT files (``scipy.io.loadmat``) and MATLAB v7.3 (HDF5, read with ``h5py``; arrays
come transposed there) are supported. A top-level struct (e.g. ``candidates``) holding these
fields is unwrapped.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import DataError
from .common import ProposalSource

_KEYS = ("boxes", "bboxes", "scores", "superpixels", "labels")


# --------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------
def _h5_value(f, obj):
    """Read one MATLAB v7.3 dataset as a numpy array in MATLAB (row, col) order."""
    import h5py

    if obj.attrs.get("MATLAB_empty", 0):
        return np.zeros((0,), dtype=np.float64)
    data = obj[()]
    if obj.dtype == h5py.ref_dtype or data.dtype == object:          # cell array
        flat = data.reshape(-1)          # HDF5 row-major == MATLAB column-major order
        out = np.empty(len(flat), dtype=object)
        for i, ref in enumerate(flat):
            out[i] = _h5_value(f, f[ref])
        return out
    data = np.asarray(data)
    return data.T if data.ndim >= 2 else data


def _load_h5(path: Path) -> tuple[dict, list]:
    import h5py

    with h5py.File(path, "r") as f:
        keys = [k for k in f.keys() if not k.startswith("#")]
        grp = f
        if not any(k in f for k in _KEYS):
            # a struct such as `candidates` holding the fields
            for k in keys:
                if isinstance(f[k], h5py.Group) and any(kk in f[k] for kk in _KEYS):
                    grp = f[k]
                    keys = keys + [f"{k}.{kk}" for kk in grp.keys()]
                    break
        out = {}
        for k in _KEYS:
            if k in grp and isinstance(grp[k], h5py.Dataset):
                out[k] = _h5_value(f, grp[k])
    return out, keys


def _load_scipy(path: Path) -> tuple[dict, list]:
    import scipy.io

    raw = scipy.io.loadmat(str(path), squeeze_me=False, struct_as_record=True)
    keys = [k for k in raw if not k.startswith("__")]
    src = raw
    if not any(k in raw for k in _KEYS):
        for k in keys:
            v = raw[k]
            if isinstance(v, np.ndarray) and v.dtype.names and any(kk in v.dtype.names
                                                                   for kk in _KEYS):
                rec = v.reshape(-1)[0]
                src = {name: rec[name] for name in v.dtype.names}
                keys = keys + [f"{k}.{name}" for name in v.dtype.names]
                break
    out = {}
    for k in _KEYS:
        if k in src:
            v = src[k]
            if isinstance(v, np.ndarray) and v.dtype == object:       # cell array
                flat = v.T.reshape(-1) if v.ndim == 2 else v.reshape(-1)   # MATLAB order
                cells = np.empty(len(flat), dtype=object)
                for i, e in enumerate(flat):
                    cells[i] = np.asarray(e)
                v = cells
            out[k] = v
    return out, keys


def load_mcg_mat(path) -> dict:
    """Load and normalise one MCG ``.mat``.

    Returns ``{"boxes": float64 [N,4] 1-based [y1 x1 y2 x2], "scores": float64 [N] or None,
    "superpixels": int32 [H,W] or None, "labels": list of int64 arrays or None, "path": str}``.
    """
    import h5py

    path = Path(path)
    try:
        if h5py.is_hdf5(str(path)):
            data, keys = _load_h5(path)
        else:
            data, keys = _load_scipy(path)
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - any reader failure is a bad file for the user
        raise DataError(f"MCG file {path}: cannot read .mat ({type(e).__name__}: {e})") from None

    res = {"path": str(path), "boxes": None, "scores": None, "superpixels": None, "labels": None}
    if data.get("superpixels") is not None and data.get("labels") is not None:
        sp = np.asarray(data["superpixels"])
        if sp.ndim != 2:
            raise DataError(f"MCG file {path}: 'superpixels' must be a 2-D label map, got shape "
                            f"{list(sp.shape)}")
        res["superpixels"] = sp.astype(np.int32)
        labels = data["labels"]
        if not (isinstance(labels, np.ndarray) and labels.dtype == object):
            # a numeric matrix (one superpixel per proposal) or a single cell
            labels = np.asarray(labels)
            labels = [np.atleast_1d(r) for r in (labels.reshape(-1, 1) if labels.ndim < 2
                                                 else labels)]
        try:
            res["labels"] = [np.asarray(e, dtype=np.float64).reshape(-1).astype(np.int64)
                             for e in labels]
        except (TypeError, ValueError) as e:
            raise DataError(f"MCG file {path}: 'labels' is not a cell array of superpixel ids "
                            f"({e})") from None

    box_key = "boxes" if data.get("boxes") is not None else (
        "bboxes" if data.get("bboxes") is not None else None)
    if box_key is not None:
        b = np.asarray(data[box_key])
        if b.dtype == object or not np.issubdtype(b.dtype, np.number):
            raise DataError(f"MCG file {path}: '{box_key}' is not numeric (dtype {b.dtype})")
        if b.ndim == 1 and b.size == 4:
            b = b.reshape(1, 4)
        if b.ndim != 2 or b.shape[1] != 4:
            raise DataError(f"MCG file {path}: '{box_key}' must be N x 4 [y1 x1 y2 x2], got "
                            f"shape {list(b.shape)}")
        res["boxes"] = b.astype(np.float64)
    elif res["labels"] is not None:
        res["boxes"] = boxes_from_segments(res["superpixels"], res["labels"])
    else:
        raise DataError(f"MCG file {path}: no 'boxes' variable (keys in the file: "
                        f"{', '.join(keys) or 'none'}) — expected MCG boxes N x 4 [y1 x1 y2 x2] "
                        f"and 'scores'")

    if data.get("scores") is not None:
        s = np.asarray(data["scores"])
        if s.dtype == object or not np.issubdtype(s.dtype, np.number):
            raise DataError(f"MCG file {path}: 'scores' is not numeric (dtype {s.dtype})")
        s = s.astype(np.float64).reshape(-1)
        if len(s) != len(res["boxes"]):
            raise DataError(f"MCG file {path}: {len(res['boxes'])} boxes but {len(s)} scores")
        res["scores"] = s
    if res["labels"] is not None and len(res["labels"]) != len(res["boxes"]):
        raise DataError(f"MCG file {path}: {len(res['boxes'])} boxes but {len(res['labels'])} "
                        f"label cells")
    return res


def boxes_from_segments(superpixels: np.ndarray, labels) -> np.ndarray:
    """1-based inclusive ``[y1 x1 y2 x2]`` of each proposal's union of superpixels."""
    from scipy import ndimage

    sp = np.asarray(superpixels)
    nsp = int(sp.max()) if sp.size else 0
    ext = np.full((nsp + 1, 4), np.nan)                 # per superpixel: r1 c1 r2 c2 (1-based)
    for lab, sl in enumerate(ndimage.find_objects(np.clip(sp, 0, None)), start=1):
        if sl is not None:
            ext[lab] = (sl[0].start + 1, sl[1].start + 1, sl[0].stop, sl[1].stop)
    out = np.full((len(labels), 4), np.nan)
    for i, ids in enumerate(labels):
        ids = ids[(ids >= 1) & (ids <= nsp)]
        e = ext[ids]
        e = e[~np.isnan(e[:, 0])]
        if len(e):
            out[i] = (e[:, 0].min(), e[:, 1].min(), e[:, 2].max(), e[:, 3].max())
    return out  # NaN rows (empty segments) are rejected by sanitize; callers filter first


def mcg_to_xyxy(boxes_mat: np.ndarray) -> np.ndarray:
    """1-based inclusive ``[y1 x1 y2 x2]`` -> 0-based continuous ``[x1 y1 x2 y2]``."""
    from .convention import to_xyxy

    return to_xyxy(boxes_mat, "y1x1y2x2", 1)


def segment_masks(mat_data: dict, boxes_idx, boxes, M: int = 28) -> np.ndarray:
    """Rasterise proposals' segments into their own box frames.

    ``mat_data``: from :func:`load_mcg_mat` (needs ``superpixels`` and ``labels``);
    ``boxes_idx``: positions of the proposals in the file; ``boxes``: their (sanitised, 0-based
    continuous x1y1x2y2) boxes. Each box is resampled to an ``M x M`` grid (cell centres, nearest
    pixel); returns ``uint8 [N, M, M]``, 255 where the cell centre lies in the segment, else 0.
    """
    sp = np.asarray(mat_data["superpixels"])
    labels = mat_data["labels"]
    idx = np.asarray(boxes_idx, dtype=np.int64).reshape(-1)
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if len(idx) != len(b):
        raise ValueError(f"{len(idx)} indices but {len(b)} boxes")
    n = len(b)
    if n == 0:
        return np.zeros((0, M, M), dtype=np.uint8)
    H, W = sp.shape
    t = (np.arange(M, dtype=np.float64) + 0.5) / M
    xs = np.clip(np.floor(b[:, 0:1] + t[None] * (b[:, 2:3] - b[:, 0:1])), 0, W - 1).astype(np.intp)
    ys = np.clip(np.floor(b[:, 1:2] + t[None] * (b[:, 3:4] - b[:, 1:2])), 0, H - 1).astype(np.intp)
    grid = sp[ys[:, :, None], xs[:, None, :]]                      # [N, M, M] superpixel ids
    nsp = max(int(sp.max()), 0) + 1
    lut = np.zeros((n, nsp), dtype=bool)                          # proposal x superpixel
    for r, i in enumerate(idx):
        ids = labels[i]
        ids = ids[(ids >= 0) & (ids < nsp)]
        lut[r, ids] = True
    inside = lut[np.arange(n)[:, None, None], np.clip(grid, 0, nsp - 1)]
    inside &= grid >= 0
    return inside.astype(np.uint8) * 255


# --------------------------------------------------------------------------------------------
# source
# --------------------------------------------------------------------------------------------
class MCGSource(ProposalSource):
    """Per-image MCG ``.mat`` files in ``directory`` (nothing is loaded until :meth:`get`)."""

    kind = "mcg"

    def __init__(self, directory, *, segments: bool = True, segment_size: int = 28,
                 max_proposals: int = 2000, min_size: float = 1.0, box_format=None,
                 box_base=None):
        super().__init__(max_proposals=max_proposals, min_size=min_size)
        self._set_convention(box_format, box_base, ("y1x1y2x2", 1))   # MCG's published one
        self.directory = Path(os.path.abspath(directory))
        if not self.directory.is_dir():
            raise DataError(f"MCG directory {self.directory}: not found (spec 'mcg:DIR' needs a "
                            f"folder of per-image .mat files)")
        self.segments = bool(segments)
        self.segment_size = int(segment_size)
        self.name = f"mcg:{self.directory}"

    def params(self) -> dict:
        return {**super().params(), "segments": self.segments, "segment_size": self.segment_size}

    def describe(self) -> dict:
        return {**super().describe(), "path": str(self.directory)}

    def candidates(self, img: dict) -> list[str]:
        fn = Path(img["file_name"])
        names = [fn.stem + ".mat"]
        if len(fn.parts) > 1:
            names.append(str(fn.with_suffix(".mat")))
        names.append(f"{img['id']}.mat")
        return list(dict.fromkeys(names))

    def find(self, img: dict) -> Path:
        names = self.candidates(img)
        for n in names:
            p = self.directory / n
            if p.is_file():
                return p
        raise DataError(f"image {img['id']} ({img['file_name']}): no MCG file — looked for "
                        f"{' or '.join(names)} in {self.directory}")

    def get(self, img: dict, image_path=None, image=None) -> dict:
        path = self.find(img)
        data = load_mcg_mat(path)
        boxes = self._to_xyxy(data["boxes"])
        scores = data["scores"]
        has_labels = data["superpixels"] is not None
        has_seg = self.segments and has_labels
        if has_labels:
            sp = data["superpixels"]
            if sp.shape != (int(img["height"]), int(img["width"])):
                raise DataError(f"image {img['id']} ({path}): superpixel map is {sp.shape[1]}x"
                                f"{sp.shape[0]} (WxH) but the image is {img['width']}x"
                                f"{img['height']} — MCG file of another image?")
            # proposals whose segment is empty (NaN boxes when derived) carry no information
            keep = np.isfinite(boxes).all(axis=1) & np.array([len(l) > 0 for l in data["labels"]])
        else:
            keep = np.ones(len(boxes), dtype=bool)
        if not keep.all():
            pos = np.nonzero(keep)[0]
            boxes = boxes[pos]
            scores = scores[pos] if scores is not None else None
        else:
            pos = None
        # same box, different segment = different proposal: dedupe only box-only files
        b, s, k = self._sanitize(boxes, scores, img, path, return_index=True,
                                 dedupe=not has_seg)
        out = {"boxes": b, "scores": s}
        if has_seg:
            file_idx = k if pos is None else pos[k]
            out["segments"] = segment_masks(data, file_idx, b, M=self.segment_size)
        return out
