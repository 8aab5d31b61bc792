"""The cue cache: the ONE contract between the offline pipeline and the trainer.

Nothing else in the code base touches HDF5 keys. A cue file (a shard or the merged ``cues.h5``)
holds, for every image of one manifest split, its proposals and its seed-mask bank::

    attrs   pdsl_cues_format (int), kind ("proposals" | "cues"), dataset, split, num_classes,
            class_names (json), proposal_source (json), seeds (json: GrabCut and bank params),
            mask_size M, shard ("i/n" or "merged")
    /images/id          int64  [I]      manifest image id
    /images/height      int32  [I]      original image size in pixels
    /images/width       int32  [I]
    /images/file_sha1   S40    [I]      content hash of the image file (stale-cache detection)
    /images/prop_start  int64  [I]      first row of the image in /proposals/*
    /images/prop_count  int32  [I]
    /images/bank_start  int64  [I]      first row of the image in /bank/*  (kind "cues" only)
    /images/bank_count  int32  [I]
    /proposals/boxes    float32 [P, 4]  x1y1x2y2, 0-based continuous pixels of the ORIGINAL image
    /proposals/scores   float32 [P]     sorted descending within an image
    /proposals/bank_row int32  [P]      row of the proposal's representative in ITS image's bank
    /proposals/coverage float32 [P]     IoU(proposal, its representative bank box)
    /proposals/segments uint8  [P,M,M]  optional: MCG segment of the proposal in its box frame
    /bank/boxes         float32 [B, 4]  representative box, original-image pixels
    /bank/masks         uint8  [B,M,M]  GrabCut foreground (0..255) in the bank box's frame:
                                        the box resampled to M x M, so pixel (i, j) covers
                                        x = x1 + (j + .5) * w / M, y = y1 + (i + .5) * h / M
    /bank/status        uint8  [B]      STATUS_* below (fallback shapes, empty/full results flagged)

Random access is O(1): the small ``/images`` index is read once into numpy; an image's rows are
two contiguous slices. Files are opened lazily per process (safe in DataLoader workers), and
written atomically (temp + rename) by :class:`CueWriter`, so a killed job never leaves a file that
looks complete.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from ..errors import CacheError

FORMAT_VERSION = 1

STATUS_OK = 0
STATUS_EMPTY = 1  # GrabCut kept (almost) nothing of the box
STATUS_FULL = 2  # GrabCut kept (almost) the whole box
STATUS_TINY = 3  # box too small to segment: mask is the filled box
STATUS_FALLBACK = 4  # the method degenerated: mask is the fallback shape (ellipse or filled box)
STATUS_NAMES = {STATUS_OK: "ok", STATUS_EMPTY: "empty", STATUS_FULL: "full", STATUS_TINY: "tiny",
                STATUS_FALLBACK: "fallback"}

_INDEX_KEYS = ("id", "height", "width", "file_sha1", "prop_start", "prop_count", "bank_start",
               "bank_count")


@dataclass
class ImageCues:
    """Everything cached for one image. All boxes in original-image pixels (x1y1x2y2)."""

    image_id: int
    height: int
    width: int
    file_sha1: str
    boxes: np.ndarray  # float32 [P, 4]
    scores: np.ndarray  # float32 [P]
    bank_row: np.ndarray | None = None  # int32 [P], index into bank_* below
    coverage: np.ndarray | None = None  # float32 [P]
    bank_boxes: np.ndarray | None = None  # float32 [B, 4]
    bank_masks: np.ndarray | None = None  # uint8 [B, M, M], bank-box frame
    bank_status: np.ndarray | None = None  # uint8 [B]
    segments: np.ndarray | None = None  # uint8 [P, M, M] or None


def _json_attr(value) -> str:
    return json.dumps(value, sort_keys=True, default=lambda o: o.item() if hasattr(o, "item") else str(o))


class CueWriter:
    """Append images to a new cue file; the file appears under its final name only on success.

    Use as a context manager::

        with CueWriter(path, meta, kind="cues", mask_size=28) as w:
            w.add(image_id, h, w, sha1, boxes, scores, bank_row=..., coverage=..., bank_boxes=...,
                  bank_masks=..., bank_status=...)
    """

    def __init__(self, path, meta: dict, kind: str = "cues", mask_size: int = 28,
                 compression: str | None = "lzf"):
        if kind not in ("proposals", "cues"):
            raise ValueError(f"kind must be 'proposals' or 'cues', got {kind!r}")
        self.path = Path(path)
        self.meta = meta
        self.kind = kind
        self.M = int(mask_size)
        self.compression = compression
        self._index = {k: [] for k in _INDEX_KEYS}
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
        for k, v in self.meta.items():
            if isinstance(v, np.generic):
                v = v.item()
            f.attrs[k] = v if isinstance(v, (str, int, float)) else _json_attr(v)
        f.create_dataset("proposals/boxes", (0, 4), np.float32, maxshape=(None, 4), chunks=(4096, 4))
        f.create_dataset("proposals/scores", (0,), np.float32, maxshape=(None,), chunks=(4096,))
        if self.kind == "cues":
            f.create_dataset("proposals/bank_row", (0,), np.int32, maxshape=(None,), chunks=(4096,))
            f.create_dataset("proposals/coverage", (0,), np.float32, maxshape=(None,),
                             chunks=(4096,))
            f.create_dataset("bank/boxes", (0, 4), np.float32, maxshape=(None, 4), chunks=(1024, 4))
            f.create_dataset("bank/status", (0,), np.uint8, maxshape=(None,), chunks=(4096,))
            f.create_dataset("bank/masks", (0, M, M), np.uint8, maxshape=(None, M, M),
                             chunks=(64, M, M), compression=comp)
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
            assert bank_masks.shape == (B, self.M, self.M), (image_id, bank_masks.shape)
            assert len(bank_row) == P and len(coverage) == P and len(bank_status) == B
            assert B == 0 or (0 <= bank_row.min() and bank_row.max() < B), image_id
            self._append("proposals/bank_row", np.asarray(bank_row, np.int32))
            self._append("proposals/coverage", np.asarray(coverage, np.float32))
            self._append("bank/boxes", np.asarray(bank_boxes, np.float32).reshape(-1, 4))
            self._append("bank/status", np.asarray(bank_status, np.uint8))
            self._append("bank/masks", np.asarray(bank_masks, np.uint8))
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
                dtypes = dict(id=np.int64, height=np.int32, width=np.int32, file_sha1="S40",
                              prop_start=np.int64, prop_count=np.int32, bank_start=np.int64,
                              bank_count=np.int32)
                for k in _INDEX_KEYS:
                    self._f.create_dataset(f"images/{k}", data=np.asarray(idx[k], dtype=dtypes[k]))
                self._f.attrs["num_images"] = len(idx["id"])
            self._f.close()
            if exc_type is None:
                os.replace(self._tmp, self.path)
        finally:
            if self._tmp.exists():
                self._tmp.unlink()
        return False


class CueStore:
    """Read-only, lazily opened view of a cue file. Safe to pickle into DataLoader workers:
    the HDF5 handle is (re)opened on first use in each process."""

    def __init__(self, path):
        self.path = Path(path)
        if not self.path.is_file():
            raise CacheError(f"cue cache {self.path}: file not found "
                             f"(build it with `cli.py cache-cues` or `snakemake`)")
        self._f = None
        self._pid = None
        f = self._open()
        attrs = dict(f.attrs)
        if "pdsl_cues_format" not in attrs:
            raise CacheError(f"cue cache {self.path}: not a PDSL cue cache (no format attribute)")
        version = int(attrs["pdsl_cues_format"])
        if version != FORMAT_VERSION:
            raise CacheError(f"cue cache {self.path}: format version {version}, this pdsl reads "
                             f"version {FORMAT_VERSION}; rebuild it with `cli.py cache-cues`")
        if "images/id" not in f:
            raise CacheError(f"cue cache {self.path}: incomplete (no image index)")
        self.attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in attrs.items()}
        self.kind = self.attrs.get("kind", "cues")
        self.mask_size = int(self.attrs.get("mask_size", 0))
        self.index = {k: f[f"images/{k}"][()] for k in _INDEX_KEYS}
        self.ids = self.index["id"]
        self._row = {int(i): r for r, i in enumerate(self.ids)}
        self.has_segments = "proposals/segments" in f
        self.close()

    # -- lifecycle --------------------------------------------------------------------------
    def _open(self):
        import h5py

        if self._f is None or self._pid != os.getpid():
            try:
                self._f = h5py.File(self.path, "r")
            except OSError as e:
                raise CacheError(f"cue cache {self.path}: not a readable HDF5 file ({e})") from None
            self._pid = os.getpid()
        return self._f

    def close(self):
        if self._f is not None and self._pid == os.getpid():
            self._f.close()
        self._f = None

    def __getstate__(self):
        d = self.__dict__.copy()
        d["_f"] = None
        d["_pid"] = None
        return d

    def __len__(self):
        return len(self.ids)

    def __contains__(self, image_id):
        return int(image_id) in self._row

    def meta(self, key, default=None):
        v = self.attrs.get(key, default)
        if isinstance(v, str) and v[:1] in "{[":
            try:
                return json.loads(v)
            except json.JSONDecodeError:
                return v
        return v

    # -- access -----------------------------------------------------------------------------
    def get(self, image_id, with_bank: bool = True, with_segments: bool = False) -> ImageCues:
        r = self._row.get(int(image_id))
        if r is None:
            raise CacheError(f"cue cache {self.path}: image {image_id} is not in the cache "
                             f"(was it built from another manifest?)")
        f = self._open()
        ix = self.index
        p0, pn = int(ix["prop_start"][r]), int(ix["prop_count"][r])
        c = ImageCues(image_id=int(image_id), height=int(ix["height"][r]),
                      width=int(ix["width"][r]), file_sha1=ix["file_sha1"][r].decode(),
                      boxes=f["proposals/boxes"][p0:p0 + pn],
                      scores=f["proposals/scores"][p0:p0 + pn])
        if with_bank and self.kind == "cues":
            b0, bn = int(ix["bank_start"][r]), int(ix["bank_count"][r])
            c.bank_row = f["proposals/bank_row"][p0:p0 + pn]
            c.coverage = f["proposals/coverage"][p0:p0 + pn]
            c.bank_boxes = f["bank/boxes"][b0:b0 + bn]
            c.bank_masks = f["bank/masks"][b0:b0 + bn]
            c.bank_status = f["bank/status"][b0:b0 + bn]
        if with_segments and self.has_segments:
            c.segments = f["proposals/segments"][p0:p0 + pn]
        return c

    def __iter__(self) -> Iterable[ImageCues]:
        for i in self.ids:
            yield self.get(int(i), with_segments=self.has_segments)

    # -- checks -----------------------------------------------------------------------------
    def check_manifest(self, manifest, require_bank: bool = True, check_hashes: bool = False):
        """Refuse (CacheError) a cache that does not belong to ``manifest``.

        Checks dataset, split, class list, that every manifest image with labels is cached with
        the manifest's size, and with ``check_hashes`` that no image file changed since caching.
        """
        from ..io import file_sha1

        where = f"cue cache {self.path}"
        if require_bank and self.kind != "cues":
            raise CacheError(f"{where}: holds proposals only (kind {self.kind!r}); run the seeds "
                             f"stage (`cli.py cache-cues`) to add the seed-mask bank")
        for key, want in (("dataset", manifest.dataset), ("split", manifest.split)):
            got = self.attrs.get(key)
            if got is not None and got != want:
                raise CacheError(f"{where}: built for {key} {got!r}, manifest {manifest.path} has "
                                 f"{want!r}")
        names = self.meta("class_names")
        if names is not None and list(names) != manifest.class_names:
            raise CacheError(f"{where}: built for classes {names}, manifest {manifest.path} has "
                             f"{manifest.class_names}")
        ix = self.index
        for img in manifest.images:
            r = self._row.get(int(img["id"]))
            if r is None:
                raise CacheError(f"{where}: image {img['id']} ({img['file_name']}) of manifest "
                                 f"{manifest.path} is not cached; rebuild the cache")
            if (int(ix["height"][r]), int(ix["width"][r])) != (int(img["height"]), int(img["width"])):
                raise CacheError(f"{where}: image {img['id']} ({img['file_name']}) is "
                                 f"{img['width']}x{img['height']} in the manifest but was cached at "
                                 f"{ix['width'][r]}x{ix['height'][r]}: stale cache, rebuild it")
            if check_hashes:
                sha = file_sha1(manifest.image_path(img))
                if sha != ix["file_sha1"][r].decode():
                    raise CacheError(f"{where}: image {img['id']} ({manifest.image_path(img)}) "
                                     f"changed since it was cached (content hash differs): stale "
                                     f"cache, rebuild it")


def merge_cue_files(parts: list, out, meta: dict | None = None, compression="lzf") -> Path:
    """Concatenate shard files (same kind, mask size and parameters) into one file, atomically."""
    if not parts:
        raise CacheError("merge: no shard files given")
    stores = [CueStore(p) for p in parts]
    first = stores[0]
    keys = ("kind", "mask_size", "dataset", "split", "proposal_source", "seeds", "class_names")
    for s in stores[1:]:
        for k in keys:
            if s.attrs.get(k) != first.attrs.get(k):
                raise CacheError(f"merge: shard {s.path} has {k}={s.attrs.get(k)!r} but "
                                 f"{first.path} has {first.attrs.get(k)!r}; rebuild the shards")
    base = {k: v for k, v in first.attrs.items()
            if k not in ("pdsl_cues_format", "kind", "mask_size", "num_images", "shard")}
    base.update(meta or {})
    base["shard"] = "merged"
    seen = set()
    with CueWriter(out, base, kind=first.kind, mask_size=first.mask_size or 28,
                   compression=compression) as w:
        for s in stores:
            for c in s:
                if c.image_id in seen:
                    raise CacheError(f"merge: image {c.image_id} appears in two shards "
                                     f"(second: {s.path})")
                seen.add(c.image_id)
                w.add_cues(c)
            s.close()
    return Path(out)
