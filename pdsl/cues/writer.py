"""Writing cue files (the format is :mod:`.cueformat`'s): :class:`CueWriter` and the shard merge.

Files are written atomically (temp + rename), so a killed job never leaves a file that looks
complete.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import CacheError
from .cueformat import (ENCODINGS, FORMAT_VERSION, INDEX_DTYPES, INDEX_KEYS, LAYOUTS, ImageCues,
                        json_attr, pack_masks, packed_width)


class CueWriter:
    """Append images to a new cue file; the file appears under its final name only on success.

    Use as a context manager::

        with CueWriter(path, meta, kind="cues", mask_size=28) as w:
            w.add(image_id, h, w, sha1, boxes, scores, bank_row=..., coverage=..., bank_boxes=...,
                  bank_masks=..., bank_status=...)

    ``bank_layout="per_proposal"``: one mask per proposal (``bank_boxes`` must be the proposals;
    ``bank_row`` and ``coverage`` are not stored). ``mask_encoding="bits"``: binary masks,
    bit-packed (98 bytes per 28 x 28 mask instead of 784).
    """

    def __init__(self, path, meta: dict, kind: str = "cues", mask_size: int = 28,
                 compression: str | None = "lzf", bank_layout: str = "shared",
                 mask_encoding: str = "u8"):
        if kind not in ("proposals", "cues"):
            raise ValueError(f"kind must be 'proposals' or 'cues', got {kind!r}")
        if bank_layout not in LAYOUTS or mask_encoding not in ENCODINGS:
            raise ValueError(f"bank_layout {bank_layout!r} / mask_encoding {mask_encoding!r}: "
                             f"expected one of {LAYOUTS} / {ENCODINGS}")
        self.path = Path(path)
        self.meta = meta
        self.kind = kind
        self.M = int(mask_size)
        self.compression = compression
        self.layout, self.encoding = bank_layout, mask_encoding
        self._index = {k: [] for k in INDEX_KEYS}
        self._n_prop = 0
        self._n_bank = 0
        self._f = None
        self._tmp = None

    def __enter__(self):
        import h5py

        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        self._f = h5py.File(self._tmp, "w")
        f, M, comp = self._f, self.M, self.compression
        f.attrs["pdsl_cues_format"] = FORMAT_VERSION
        f.attrs["kind"] = self.kind
        f.attrs["mask_size"] = M
        f.attrs["bank_layout"] = self.layout
        f.attrs["mask_encoding"] = self.encoding
        for k, v in self.meta.items():
            if isinstance(v, np.generic):
                v = v.item()
            f.attrs[k] = v if isinstance(v, (str, int, float)) else json_attr(v)

        def grow(key, shape, dtype, rows, compression=None):
            f.create_dataset(key, (0, *shape), dtype, maxshape=(None, *shape),
                             chunks=(rows, *shape), compression=compression)

        grow("proposals/boxes", (4,), np.float32, 4096)
        grow("proposals/scores", (), np.float32, 4096)
        if self.kind == "cues":
            if self.layout == "shared":
                grow("proposals/bank_row", (), np.int32, 4096)
                grow("proposals/coverage", (), np.float32, 4096)
                grow("bank/boxes", (4,), np.float32, 1024)
            grow("bank/status", (), np.uint8, 4096)
            if self.encoding == "bits":  # bit-packed: little to gain from compression
                grow("bank/masks", (packed_width(M),), np.uint8, 2048)
            else:
                grow("bank/masks", (M, M), np.uint8, 64, comp)
        return self

    def _append(self, key, arr):
        ds = self._f[key]
        n = ds.shape[0]
        ds.resize(n + len(arr), axis=0)
        ds[n:] = arr

    def add(self, image_id, height, width, file_sha1, boxes, scores, *, bank_row=None,
            coverage=None, bank_boxes=None, bank_masks=None, bank_status=None, segments=None):
        boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
        scores = np.asarray(scores, np.float32).reshape(-1)
        P = len(boxes)
        assert len(scores) == P, (image_id, boxes.shape, scores.shape)
        self._append("proposals/boxes", boxes)
        self._append("proposals/scores", scores)
        if segments is not None:
            if "proposals/segments" not in self._f:
                if self._n_prop:
                    raise CacheError(f"image {image_id}: segments given but earlier images had none")
                self._f.create_dataset("proposals/segments", (0, self.M, self.M), np.uint8,
                                       maxshape=(None, self.M, self.M), chunks=(64, self.M, self.M),
                                       compression=self.compression)
            self._append("proposals/segments", np.asarray(segments, np.uint8))
        elif "proposals/segments" in self._f:
            raise CacheError(f"image {image_id}: no segments but earlier images had them")
        B = 0
        if self.kind == "cues":
            B = len(bank_boxes)
            bank_masks = np.asarray(bank_masks, np.uint8)
            if self.layout == "per_proposal" and (
                    len(bank_masks) != P or B != P
                    or not np.array_equal(np.asarray(bank_boxes, np.float32), boxes)):
                raise CacheError(f"image {image_id}: a per-proposal bank needs one mask per "
                                 f"proposal, in its box ({len(bank_masks)} masks, {P} proposals)")
            assert bank_masks.shape == (B, self.M, self.M), (image_id, bank_masks.shape)
            assert len(bank_status) == B, image_id
            if self.layout == "shared":
                assert len(bank_row) == P and len(coverage) == P, image_id
                assert B == 0 or (0 <= bank_row.min() and bank_row.max() < B), image_id
                self._append("proposals/bank_row", np.asarray(bank_row, np.int32))
                self._append("proposals/coverage", np.asarray(coverage, np.float32))
                self._append("bank/boxes", np.asarray(bank_boxes, np.float32).reshape(-1, 4))
            self._append("bank/status", np.asarray(bank_status, np.uint8))
            self._append("bank/masks", pack_masks(bank_masks) if self.encoding == "bits"
                         else bank_masks)
        idx = self._index
        idx["id"].append(int(image_id))
        idx["height"].append(int(height))
        idx["width"].append(int(width))
        idx["file_sha1"].append(file_sha1.encode())
        idx["prop_start"].append(self._n_prop)
        idx["prop_count"].append(P)
        idx["bank_start"].append(self._n_bank)
        idx["bank_count"].append(B)
        self._n_prop += P
        self._n_bank += B

    def add_cues(self, c: ImageCues):
        """Append an :class:`ImageCues` record (used by merge)."""
        kw = {}
        if self.kind == "cues":
            kw = dict(bank_row=c.bank_row, coverage=c.coverage, bank_boxes=c.bank_boxes,
                      bank_masks=c.bank_masks, bank_status=c.bank_status)
        self.add(c.image_id, c.height, c.width, c.file_sha1, c.boxes, c.scores,
                 segments=c.segments, **kw)

    def __exit__(self, exc_type, exc, tb):
        try:
            if exc_type is None:
                idx = self._index
                for k in INDEX_KEYS:
                    self._f.create_dataset(f"images/{k}",
                                           data=np.asarray(idx[k], dtype=INDEX_DTYPES[k]))
                self._f.attrs["num_images"] = len(idx["id"])
            self._f.close()
            if exc_type is None:
                os.replace(self._tmp, self.path)
        finally:
            if self._tmp.exists():
                self._tmp.unlink()
        return False


_COPIED = ("pdsl_cues_format", "kind", "mask_size", "num_images", "shard", "bank_layout",
           "mask_encoding")


def merge_cue_files(parts: list, out, meta: dict | None = None, compression="lzf") -> Path:
    """Concatenate shard files (same kind, mask size, parameters, bank layout and mask encoding)
    into one file, atomically."""
    from .store import CueStore

    if not parts:
        raise CacheError("merge: no shard files given")
    stores = [CueStore(p) for p in parts]
    first = stores[0]
    keys = ("kind", "mask_size", "dataset", "split", "proposal_source", "seeds", "class_names",
            "bank_layout", "mask_encoding")
    for s in stores[1:]:
        for k in keys:
            if s.attrs.get(k) != first.attrs.get(k):
                raise CacheError(f"merge: shard {s.path} has {k}={s.attrs.get(k)!r} but "
                                 f"{first.path} has {first.attrs.get(k)!r}; rebuild the shards")
    base = {k: v for k, v in first.attrs.items() if k not in _COPIED}
    base.update(meta or {})
    base["shard"] = "merged"
    seen = set()
    with CueWriter(out, base, kind=first.kind, mask_size=first.mask_size or 28,
                   compression=compression, bank_layout=first.bank_layout,
                   mask_encoding=first.mask_encoding) as w:
        for s in stores:
            for c in s:
                if c.image_id in seen:
                    raise CacheError(f"merge: image {c.image_id} appears in two shards "
                                     f"(second: {s.path})")
                seen.add(c.image_id)
                w.add_cues(c)
            s.close()
    return Path(out)
