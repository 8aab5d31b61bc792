"""Reading the cue cache (its format: :mod:`.cueformat`; writing: :mod:`.writer`).

Random access is O(1): the small ``/images`` index is read once into numpy; an image's rows are
two contiguous slices. Files are opened lazily per process (safe in DataLoader workers). Every
name of the cache's contract is importable from here.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

import numpy as np

from ..errors import CacheError
from .cueformat import (ENCODINGS, FORMAT_VERSION, INDEX_KEYS, LAYOUTS,  # noqa: F401
                        READ_VERSIONS, STATUS_EMPTY, STATUS_FALLBACK, STATUS_FULL, STATUS_NAMES,
                        STATUS_OK, STATUS_TINY, ImageCues, unpack_masks)
from .writer import CueWriter, merge_cue_files  # noqa: F401


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
        self.version = int(attrs["pdsl_cues_format"])
        if self.version not in READ_VERSIONS:
            raise CacheError(f"cue cache {self.path}: format version {self.version}, this pdsl "
                             f"reads versions {', '.join(map(str, READ_VERSIONS))}; rebuild it "
                             f"with `cli.py cache-cues` (or use the pdsl that wrote it)")
        if "images/id" not in f:
            raise CacheError(f"cue cache {self.path}: incomplete (no image index)")
        self.attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in attrs.items()}
        self.kind = self.attrs.get("kind", "cues")
        self.mask_size = int(self.attrs.get("mask_size", 0))
        self.bank_layout = self.attrs.get("bank_layout", "shared")
        self.mask_encoding = self.attrs.get("mask_encoding", "u8")
        if self.bank_layout not in LAYOUTS or self.mask_encoding not in ENCODINGS:
            raise CacheError(f"cue cache {self.path}: unknown bank_layout {self.bank_layout!r} "
                             f"or mask_encoding {self.mask_encoding!r}")
        self.index = {k: f[f"images/{k}"][()] for k in INDEX_KEYS}
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
            if self.bank_layout == "per_proposal":  # the bank rows are the proposals
                c.bank_row = np.arange(pn, dtype=np.int32)
                c.coverage = np.ones(pn, np.float32)
                c.bank_boxes = c.boxes
            else:
                c.bank_row = f["proposals/bank_row"][p0:p0 + pn]
                c.coverage = f["proposals/coverage"][p0:p0 + pn]
                c.bank_boxes = f["bank/boxes"][b0:b0 + bn]
            masks = f["bank/masks"][b0:b0 + bn]
            c.bank_masks = (unpack_masks(masks, self.mask_size) if self.mask_encoding == "bits"
                            else masks)
            c.bank_status = f["bank/status"][b0:b0 + bn]
        if with_segments and self.has_segments:
            c.segments = f["proposals/segments"][p0:p0 + pn]
        return c

    def bytes_per_image(self) -> float:
        """The file's size divided by its number of images (every field and the index)."""
        return self.path.stat().st_size / max(len(self), 1)

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
