"""The cue cache's file format: the ONE contract between the offline pipeline and the trainer.

Nothing outside :mod:`.store` (reading) and :mod:`.writer` (writing) touches HDF5 keys. A cue file
(a shard or the merged ``cues.h5``) holds, for every image of one manifest split, its proposals
and its seed masks::

    attrs   pdsl_cues_format (int), kind ("proposals" | "cues"), dataset, split, num_classes,
            class_names (json), proposal_source (json), seeds (json: GrabCut and bank params),
            mask_size M, shard ("i/n" or "merged"),
            bank_layout ("shared" | "per_proposal"), mask_encoding ("u8" | "bits")   [format 2]
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
    /bank/masks         uint8  [B,M,M]  foreground (0..255) in the bank box's frame: the box
                                        resampled to M x M, so pixel (i, j) covers
                                        x = x1 + (j + .5) * w / M, y = y1 + (i + .5) * h / M
                        uint8 [B, ceil(M*M/8)]   with mask_encoding "bits": the binary masks
                                        (>= 128) row-major, np.packbits
    /bank/status        uint8  [B]      STATUS_* below (fallback shapes, empty/full results flagged)

``bank_layout: per_proposal`` (one seed mask per proposal): the bank rows ARE the proposals, so
``/proposals/bank_row``, ``/proposals/coverage`` and ``/bank/boxes`` are not stored (the reader
gives ``bank_row = 0..P-1``, ``coverage = 1``, ``bank_boxes = boxes``) and ``bank_count ==
prop_count``. Format 1 (earlier versions) is format 2 with ``shared`` and ``u8``: it is read as is.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

FORMAT_VERSION = 2  # what this pdsl writes
READ_VERSIONS = (1, 2)  # what it reads (1: the shared uint8 bank of earlier versions)

STATUS_OK = 0
STATUS_EMPTY = 1  # GrabCut kept (almost) nothing of the box
STATUS_FULL = 2  # GrabCut kept (almost) the whole box
STATUS_TINY = 3  # box too small to segment: mask is the filled box
STATUS_FALLBACK = 4  # the method degenerated: mask is the fallback shape (ellipse or filled box)
STATUS_NAMES = {STATUS_OK: "ok", STATUS_EMPTY: "empty", STATUS_FULL: "full", STATUS_TINY: "tiny",
                STATUS_FALLBACK: "fallback"}

LAYOUTS = ("shared", "per_proposal")
ENCODINGS = ("u8", "bits")

INDEX_KEYS = ("id", "height", "width", "file_sha1", "prop_start", "prop_count", "bank_start",
              "bank_count")
INDEX_DTYPES = dict(id=np.int64, height=np.int32, width=np.int32, file_sha1="S40",
                    prop_start=np.int64, prop_count=np.int32, bank_start=np.int64,
                    bank_count=np.int32)


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


def packed_width(M: int) -> int:
    """Bytes per bit-packed ``M x M`` mask."""
    return (M * M + 7) // 8


def pack_masks(masks: np.ndarray) -> np.ndarray:
    """``uint8 [B, M, M]`` (0..255) -> ``uint8 [B, ceil(M*M/8)]``: the binary masks (>= 128)."""
    masks = np.asarray(masks)
    return np.packbits((masks >= 128).reshape(len(masks), -1), axis=1)


def unpack_masks(bits: np.ndarray, M: int) -> np.ndarray:
    """Inverse of :func:`pack_masks`: ``uint8 [B, M, M]`` of 0 and 255."""
    out = np.unpackbits(bits, axis=1, count=M * M).reshape(len(bits), M, M)
    out *= 255
    return out


def json_attr(value) -> str:
    return json.dumps(value, sort_keys=True,
                      default=lambda o: o.item() if hasattr(o, "item") else str(o))
