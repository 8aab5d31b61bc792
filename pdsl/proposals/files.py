"""Proposal files as WSOD code ships them: one file per image (``boxes:DIR``) and Fast R-CNN's
dataset-level ``.mat`` (``fastrcnn:FILE``).

``boxes:DIR`` -- for image ``<stem>.jpg``: ``DIR/<stem>.{mat,npy,npz,pkl,pickle,txt}`` or
``DIR/<stem>_boxes.*`` (also under the image's relative path, or named by its id). A file holds
an ``N x 4`` array, or ``N x 5`` with the score last, or a dict / .mat / .npz with ``boxes``
(``bboxes``, ``proposals`` and ``rois`` are accepted too) and optional ``scores``. Python 2
pickles are read with latin1; a .txt is whitespace- or comma-separated. Default convention:
x1y1x2y2, 0-based (:mod:`.convention`); without scores the file order is the rank.

``fastrcnn:FILE`` -- ``selective_search_data/voc_2007_trainval.mat`` of Fast R-CNN (also used by
OICR, PCL, wetectron): cell arrays ``images`` (image names) and ``boxes`` (per image ``N x 4``,
1-based ``[y1 x1 y2 x2]``, no scores). Images are matched by id, stem, or the stem as an integer.

Only open pickles you trust: unpickling can run code.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import DataError
from .common import ProposalSource
from .pickled import _norm_key, load_pickle

EXTENSIONS = (".mat", ".npy", ".npz", ".pkl", ".pickle", ".txt")
BOX_KEYS = ("boxes", "bboxes", "proposals", "rois")


def boxes_and_scores(obj, where: str):
    """``(boxes [N, 4], scores [N] or None)`` from an array, a list or a dict-like."""
    if hasattr(obj, "keys") and not isinstance(obj, np.ndarray):
        keys = [k.decode() if isinstance(k, bytes) else str(k) for k in obj.keys()]
        d = {k: obj[orig] for k, orig in zip(keys, obj.keys())}
        key = next((k for k in BOX_KEYS if k in d), None)
        if key is None:
            found = [k for k in keys if not k.startswith("__")]
            raise DataError(f"{where}: no 'boxes' (keys: {', '.join(found) or 'none'})")
        b, s = _numeric(d[key], where, key), d.get("scores")
        if s is not None:
            s = _numeric(s, where, "scores").reshape(-1)
            if len(s) != len(b):
                raise DataError(f"{where}: {len(b)} boxes but {len(s)} scores")
        return b, s
    b = _numeric(obj, where, "boxes", cols=(4, 5))
    return (b[:, :4], b[:, 4]) if b.shape[1] == 5 else (b, None)


def _numeric(x, where, what, cols=(4,)):
    a = np.asarray(x)
    if a.dtype == object or not (np.issubdtype(a.dtype, np.number) or a.size == 0):
        raise DataError(f"{where}: {what} are not numeric (dtype {a.dtype})")
    a = a.astype(np.float64)
    if what == "scores":
        return a
    if a.size == 0:
        return np.zeros((0, 4))
    if a.ndim == 1 and a.size in cols:
        a = a.reshape(1, -1)
    if a.ndim != 2 or a.shape[1] not in cols:
        raise DataError(f"{where}: {what} must be N x 4" + (" (or N x 5, score last)"
                                                           if 5 in cols else "")
                        + f", got shape {list(a.shape)}")
    return a


def _load_mat(path: Path):
    import scipy.io

    try:
        raw = scipy.io.loadmat(str(path), squeeze_me=False)
    except NotImplementedError:                       # MATLAB v7.3: HDF5
        from .mcg import load_mcg_mat

        d = load_mcg_mat(path)
        return {"boxes": d["boxes"], **({"scores": d["scores"]} if d["scores"] is not None
                                        else {})}
    except Exception as e:  # noqa: BLE001 -- scipy raises several types for corrupt files
        raise DataError(f"proposal file {path}: not a readable .mat file "
                        f"({type(e).__name__}: {e})") from None
    d = {k: v for k, v in raw.items() if not k.startswith("__")}
    if not any(k in d for k in BOX_KEYS):
        numeric = [k for k, v in d.items() if isinstance(v, np.ndarray)
                   and np.issubdtype(v.dtype, np.number) and v.ndim == 2 and v.shape[1] in (4, 5)]
        if len(numeric) == 1:
            return d[numeric[0]]
    return d


def load_box_file(path: Path):
    """``(boxes, scores or None)`` of one per-image proposal file, as stored."""
    where = f"proposal file {path}"
    ext = path.suffix.lower()
    if ext == ".mat":
        obj = _load_mat(path)
    elif ext in (".pkl", ".pickle"):
        obj = load_pickle(path, "proposal file")
    elif ext in (".npy", ".npz"):
        try:
            obj = np.load(path, allow_pickle=True)
        except Exception as e:  # noqa: BLE001
            raise DataError(f"{where}: not a readable NumPy file ({e})") from None
        if isinstance(obj, np.ndarray) and obj.dtype == object and obj.shape == ():
            obj = obj.item()                          # np.save of a dict
    else:
        try:
            obj = np.loadtxt(path.read_text().replace(",", " ").splitlines(), ndmin=2)
        except (OSError, ValueError) as e:
            raise DataError(f"{where}: not a table of numbers ({e})") from None
    return boxes_and_scores(obj, where)


class BoxFileSource(ProposalSource):
    """Per-image proposal files in ``directory`` (see the module docstring)."""

    kind = "boxes"

    def __init__(self, directory, *, box_format=None, box_base=None,
                 max_proposals: int = 2000, min_size: float = 1.0):
        super().__init__(max_proposals=max_proposals, min_size=min_size)
        self._set_convention(box_format, box_base, ("x1y1x2y2", 0))
        self.directory = Path(os.path.abspath(directory))
        if not self.directory.is_dir():
            raise DataError(f"proposal folder {self.directory}: not found (spec 'boxes:DIR' "
                            f"needs a folder of per-image files)")
        self.name = f"boxes:{self.directory}"

    def describe(self) -> dict:
        return {**super().describe(), "path": str(self.directory)}

    def find(self, img: dict) -> Path:
        fn = Path(img["file_name"])
        stems = [fn.stem] + ([str(fn.with_suffix(""))] if len(fn.parts) > 1 else []) \
            + [str(img["id"])]
        for stem in dict.fromkeys(stems):
            for tail in ("", "_boxes"):
                for ext in EXTENSIONS:
                    p = self.directory / f"{stem}{tail}{ext}"
                    if p.is_file():
                        return p
        raise DataError(f"image {img['id']} ({img['file_name']}): no proposal file -- looked "
                        f"for {fn.stem}[_boxes].{{{','.join(e[1:] for e in EXTENSIONS)}}} in "
                        f"{self.directory}")

    def get(self, img: dict, image_path=None, image=None) -> dict:
        path = self.find(img)
        boxes, scores = load_box_file(path)
        b, s = self._sanitize(self._to_xyxy(boxes), scores, img, path)
        return {"boxes": b, "scores": s}


class FastRCNNSource(ProposalSource):
    """Fast R-CNN's dataset-level selective-search ``.mat`` (loaded lazily, once per process)."""

    kind = "fastrcnn"

    def __init__(self, path, *, box_format=None, box_base=None, max_proposals: int = 2000,
                 min_size: float = 1.0):
        super().__init__(max_proposals=max_proposals, min_size=min_size)
        self._set_convention(box_format, box_base, ("y1x1y2x2", 1))   # Fast R-CNN's published one
        self.path = Path(os.path.abspath(path))
        if not self.path.is_file():
            raise DataError(f"Fast R-CNN proposal file {self.path}: not found "
                            f"(spec 'fastrcnn:FILE.mat')")
        self.name = f"fastrcnn:{self.path}"
        self._data = None

    def __getstate__(self):
        return {**self.__dict__, "_data": None}      # workers reload instead of a huge copy

    def describe(self) -> dict:
        return {**super().describe(), "path": str(self.path)}

    def _load(self):
        if self._data is None:
            import scipy.io

            where = f"Fast R-CNN proposal file {self.path}"
            try:
                raw = scipy.io.loadmat(str(self.path), squeeze_me=False)
            except Exception as e:  # noqa: BLE001
                raise DataError(f"{where}: not a readable .mat file ({type(e).__name__}: "
                                f"{e})") from None
            if "images" not in raw or "boxes" not in raw:
                found = sorted(k for k in raw if not k.startswith("__"))
                raise DataError(f"{where}: needs cell arrays 'images' and 'boxes' (found "
                                f"{', '.join(found)})")
            images = [np.asarray(x).reshape(-1) for x in raw["images"].reshape(-1)]
            images = [str(x[0]) if x.size else "" for x in images]
            boxes = list(raw["boxes"].reshape(-1))
            if len(images) != len(boxes):
                raise DataError(f"{where}: {len(images)} images but {len(boxes)} box entries")
            pos: dict = {}
            for i, name in enumerate(images):
                for key in _norm_key(name):
                    pos.setdefault(key, i)
            self._data = (images, boxes, pos)
        return self._data

    def get(self, img: dict, image_path=None, image=None) -> dict:
        images, boxes, pos = self._load()
        for key in _norm_key(img["id"]) + _norm_key(Path(img["file_name"]).stem):
            if key in pos:
                i = pos[key]
                break
        else:
            raise DataError(f"image {img['id']} ({img['file_name']}): not in {self.path} (its "
                            f"images look like {', '.join(map(repr, images[:3]))}, ...)")
        src = f"{self.path}[{images[i]}]"
        b, _ = boxes_and_scores(boxes[i], src)
        bb, ss = self._sanitize(self._to_xyxy(b), None, img, src)
        return {"boxes": bb, "scores": ss}
