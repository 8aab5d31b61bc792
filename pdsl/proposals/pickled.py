"""Proposal pickles as shipped by Detectron / PCL / OICR.

A dict with

* ``boxes``: list (one entry per image) of ``[N, 4]`` x1y1x2y2 arrays in 0-based pixels. By
  default they are read as Detectron's *inclusive* corners (x2 = last pixel column), so 1 is
  added to x2/y2 to get PDSL's continuous convention; pass ``inclusive=False`` for files that
  already use continuous coordinates (width = x2 - x1);
* ``scores``: list of ``[N]`` (optional; without it scores are by rank ``1 - r/N``);
* ``indexes`` or ``ids``: the image of each entry, as ints or strings (file stems or ids).

Manifest images are matched by id, then by file stem (``2008_000002``), then by the stem as an
integer (``000005`` -> 5). The file is loaded once per process, lazily (it can be hundreds of MB),
and is not part of the pickled source state, so joblib workers each load it on first use.

Only open pickles you trust: unpickling can run code.
"""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np

from ..errors import DataError
from .common import ProposalSource


def load_pickle(path, what: str):
    """Unpickle ``path``; Python 2 pickles (Detectron, OICR, Fast R-CNN) are read with latin1.
    Anything unreadable is one :class:`DataError` naming ``what`` and the file."""
    try:
        with open(path, "rb") as f:
            try:
                return pickle.load(f)
            except UnicodeDecodeError:          # Python 2 str of bytes >= 128
                f.seek(0)
                return pickle.load(f, encoding="latin1")
    except Exception as e:  # noqa: BLE001
        raise DataError(f"{what} {path}: cannot unpickle ({type(e).__name__}: {e})") from None


def _norm_key(k) -> list[str]:
    """Lookup keys for one id as stored in the pickle (or derived from the manifest)."""
    if isinstance(k, bytes):
        k = k.decode("utf-8", "replace")
    if isinstance(k, np.ndarray):
        k = k.item() if k.size == 1 else str(k)
    if isinstance(k, (np.integer, int)) and not isinstance(k, bool):
        return [str(int(k))]
    if isinstance(k, (np.floating, float)) and float(k).is_integer():
        return [str(int(k))]
    s = str(k).strip()
    keys = [s]
    stem = Path(s).stem
    if stem != s:
        keys.append(stem)
    for t in (s, stem):
        if t.isdigit():
            keys.append(str(int(t)))
    return list(dict.fromkeys(keys))


class PickleSource(ProposalSource):
    kind = "pickle"

    def __init__(self, path, *, inclusive: bool = True, max_proposals: int = 2000,
                 min_size: float = 1.0):
        super().__init__(max_proposals=max_proposals, min_size=min_size)
        self.path = Path(os.path.abspath(path))
        if not self.path.is_file():
            raise DataError(f"proposal pickle {self.path}: file not found (spec 'pickle:FILE')")
        self.inclusive = bool(inclusive)
        self.name = f"pickle:{self.path}"
        self._data = None

    def __getstate__(self):
        st = self.__dict__.copy()
        st["_data"] = None          # workers reload lazily instead of receiving a huge copy
        return st

    def params(self) -> dict:
        return {**super().params(), "inclusive": self.inclusive}

    def convention(self) -> str:
        return ("x1y1x2y2, 0-based inclusive (Detectron: +1 on x2, y2)" if self.inclusive
                else "x1y1x2y2, 0-based continuous")

    def describe(self) -> dict:
        d = {**super().describe(), "path": str(self.path)}
        try:
            d["file_size"] = self.path.stat().st_size
        except OSError:
            pass
        return d

    # ------------------------------------------------------------------------------------
    def _load(self):
        if self._data is not None:
            return self._data
        p = self.path
        d = load_pickle(p, "proposal pickle")
        if not isinstance(d, dict):
            raise DataError(f"proposal pickle {p}: expected a dict with 'boxes' and 'indexes' or "
                            f"'ids', got {type(d).__name__}")
        d = {(k.decode() if isinstance(k, bytes) else k): v for k, v in d.items()}
        if "boxes" not in d:
            raise DataError(f"proposal pickle {p}: no 'boxes' (keys: {', '.join(map(str, d))})")
        id_key = "indexes" if "indexes" in d else ("ids" if "ids" in d else None)
        if id_key is None:
            raise DataError(f"proposal pickle {p}: no 'indexes' or 'ids' naming the image of each "
                            f"entry (keys: {', '.join(map(str, d))})")
        boxes, ids = list(d["boxes"]), list(d[id_key])
        scores = d.get("scores")
        scores = None if scores is None else list(scores)
        if len(ids) != len(boxes) or (scores is not None and len(scores) != len(boxes)):
            raise DataError(f"proposal pickle {p}: {len(boxes)} box entries, {len(ids)} "
                            f"{id_key}" + ("" if scores is None else f", {len(scores)} scores")
                            + " — they must match")
        pos: dict[str, int] = {}
        for i, k in enumerate(ids):
            for key in _norm_key(k):
                pos.setdefault(key, i)
        self._data = {"boxes": boxes, "scores": scores, "ids": ids, "pos": pos,
                      "id_key": id_key}
        return self._data

    def lookup(self, img: dict) -> int:
        d = self._load()
        tried = []
        for key in _norm_key(img["id"]) + _norm_key(Path(img["file_name"]).stem):
            if key in d["pos"]:
                return d["pos"][key]
            tried.append(key)
        sample = ", ".join(repr(x) for x in d["ids"][:3])
        raise DataError(f"image {img['id']} ({img['file_name']}): not in proposal pickle "
                        f"{self.path} (looked up {', '.join(dict.fromkeys(tried))}; its "
                        f"'{d['id_key']}' look like {sample}, ...)")

    def get(self, img: dict, image_path=None, image=None) -> dict:
        d = self._load()
        i = self.lookup(img)
        src = f"{self.path}[{i}]"
        b = np.asarray(d["boxes"][i])
        if b.size and (b.dtype == object or not np.issubdtype(b.dtype, np.number)):
            raise DataError(f"image {img['id']} ({src}): boxes are not numeric ({b.dtype})")
        if b.ndim == 1 and b.size == 4:
            b = b.reshape(1, 4)
        if b.size == 0:
            b = np.zeros((0, 4))
        if b.ndim != 2 or b.shape[1] != 4:
            raise DataError(f"image {img['id']} ({src}): boxes must be [N, 4] x1y1x2y2, got shape "
                            f"{list(b.shape)}")
        b = b.astype(np.float64)
        if self.inclusive:
            b = b.copy()
            b[:, 2:] += 1.0
        s = None if d["scores"] is None else np.asarray(d["scores"][i]).reshape(-1)
        bb, ss = self._sanitize(b, s, img, src)
        return {"boxes": bb, "scores": ss}
