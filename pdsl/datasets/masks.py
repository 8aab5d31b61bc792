"""Mask helpers shared by the dataset converters: index-PNG reading, RLE encoding, JPEG size.

Palette PNGs (VOC ``SegmentationObject`` / ``SegmentationClass``) store one palette *index* per
pixel, but OpenCV always expands a palette to BGR colours. :func:`read_index_png` therefore
rewrites the PNG in memory before decoding: the ``IHDR`` colour type 3 (palette) becomes 0
(greyscale) with a fresh CRC, and ``PLTE``/``tRNS``/all other ancillary chunks are dropped. The
compressed pixel data (``IDAT``) is byte-for-byte the same for both colour types, so libpng
(inside ``cv2.imdecode``) then returns the raw indices, fast and exactly, interlaced or not.
Bit depths 1/2/4, which the decoder scales up to 0..255, are scaled back. RGB masks (a palette
PNG someone re-saved as colour) are mapped back through the standard VOC colour map.
"""
from __future__ import annotations

import os
import struct
import zlib

import numpy as np

from ..errors import DataError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def voc_colormap(n: int = 256) -> np.ndarray:
    """The standard PASCAL VOC palette, ``uint8 [n, 3]`` RGB (index 255 = (224, 224, 192))."""
    cmap = np.zeros((n, 3), dtype=np.uint8)
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        cmap[i] = (r, g, b)
    return cmap


def _png_chunks(data: bytes, who: str):
    if data[:8] != PNG_SIGNATURE:
        raise DataError(f"{who}: not a PNG file")
    pos = 8
    chunks = []
    while pos + 8 <= len(data):
        length, ctype = struct.unpack(">I4s", data[pos:pos + 8])
        end = pos + 12 + length
        if end > len(data):
            raise DataError(f"{who}: truncated PNG (chunk {ctype!r} runs past the end of the file)")
        chunks.append((ctype, data[pos + 8:pos + 8 + length], data[pos:end]))
        pos = end
        if ctype == b"IEND":
            break
    if not chunks or chunks[0][0] != b"IHDR" or len(chunks[0][1]) != 13:
        raise DataError(f"{who}: corrupt PNG (no IHDR header)")
    return chunks


def _chunk(ctype: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + ctype + body + struct.pack(
        ">I", zlib.crc32(ctype + body) & 0xFFFFFFFF)


def read_index_png(path: str | os.PathLike, what: str = "mask", palette=None) -> np.ndarray:
    """Read a label PNG as a 2-D integer array of palette indices / grey values.

    Works for palette PNGs (the VOC format), greyscale PNGs (8 or 16 bit) and RGB(A) PNGs drawn
    with the standard VOC colour map, or with ``palette`` (``[n, 3]`` RGB, index i = colour i;
    rows of -1 unused: a CVAT labelmap's colours). ``what`` names the file in error messages.
    """
    import cv2

    who = f"{what} {path}"
    if not os.path.isfile(path):
        raise DataError(f"{who}: file not found")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise DataError(f"{who}: cannot read ({e.strerror})") from None
    chunks = _png_chunks(data, who)
    width, height, depth, ctype, _comp, _filt, interlace = struct.unpack(">IIBBBBB", chunks[0][1])
    if ctype in (0, 3):
        if ctype == 3:
            ihdr = struct.pack(">IIBBBBB", width, height, depth, 0, 0, 0, interlace)
            parts = [PNG_SIGNATURE, _chunk(b"IHDR", ihdr)]
            parts += [raw for t, _b, raw in chunks if t == b"IDAT"]
            parts.append(_chunk(b"IEND", b""))
            data = b"".join(parts)
        arr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
        if arr is None:
            raise DataError(f"{who}: corrupt PNG (cannot decode pixel data)")
        if arr.ndim == 3:  # should not happen for greyscale, but be safe
            arr = arr[..., 0]
        if depth < 8 and arr.dtype == np.uint8:
            maxv = (1 << depth) - 1
            if arr.max() > maxv:  # decoder scaled the samples up to 0..255: scale back
                arr = ((arr.astype(np.int32) * maxv + 127) // 255).astype(np.uint8)
    elif ctype in (2, 4, 6):
        arr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
        if arr is None:
            raise DataError(f"{who}: corrupt PNG (cannot decode pixel data)")
        if ctype == 4 or arr.ndim == 2:
            arr = arr if arr.ndim == 2 else arr[..., 0]
        else:
            if arr.dtype != np.uint8:
                raise DataError(f"{who}: 16-bit colour masks are not supported; "
                                "save it as a palette or greyscale PNG")
            arr = _rgb_to_index(arr[..., :3][..., ::-1], who, palette)
    else:
        raise DataError(f"{who}: unsupported PNG colour type {ctype}")
    if arr.shape != (height, width):
        raise DataError(f"{who}: decoded size {arr.shape} differs from the PNG header")
    return arr


def _rgb_to_index(rgb: np.ndarray, who: str, palette=None) -> np.ndarray:
    cmap = (voc_colormap() if palette is None else np.asarray(palette)).astype(np.int64)
    keys = (cmap[:, 0] << 16) | (cmap[:, 1] << 8) | cmap[:, 2]
    lut = {int(k): i for i, k in enumerate(keys) if cmap[i].min() >= 0}
    where = "VOC colour map" if palette is None else "labelmap.txt"
    px = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
    uniq, inv = np.unique(px, return_inverse=True)
    out = np.empty(len(uniq), dtype=np.uint8)
    for j, k in enumerate(uniq):
        if int(k) not in lut:
            r, g, b = int(k) >> 16, (int(k) >> 8) & 255, int(k) & 255
            raise DataError(f"{who}: colour mask has colour RGB({r},{g},{b}) that is not in the "
                            f"{where}; save masks as palette or greyscale PNGs of indices"
                            + ("" if palette is not None else " (a CVAT export: keep its "
                               "labelmap.txt beside JPEGImages/)"))
        out[j] = lut[int(k)]
    return out[inv.reshape(px.shape)]


def encode_rle(mask: np.ndarray) -> dict:
    """COCO compressed RLE of a binary ``[H, W]`` mask, with ``counts`` as a str (JSON-ready)."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def decode_rle(rle: dict) -> np.ndarray:
    """Inverse of :func:`encode_rle`: ``uint8 [H, W]`` binary mask."""
    from pycocotools import mask as mask_utils

    r = dict(rle)
    if isinstance(r["counts"], str):
        r["counts"] = r["counts"].encode("ascii")
    return mask_utils.decode(r)


def mask_annotation(mask: np.ndarray, image_id: int, category_id: int) -> dict:
    """A COCO instance annotation (no ``id`` yet) for one binary mask: RLE, xywh bbox, area."""
    ys, xs = np.nonzero(mask)
    x1, y1, x2, y2 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
    return {"image_id": int(image_id), "category_id": int(category_id),
            "segmentation": encode_rle(mask), "area": int(len(xs)),
            "bbox": [x1, y1, x2 - x1, y2 - y1], "iscrowd": 0}


def instances_from_map(inst_map: np.ndarray, ignore=(0, 255)):
    """Yield ``(value, binary_mask)`` for each value of an instance map not in ``ignore``."""
    values = np.unique(inst_map)
    for v in values:
        if int(v) in ignore:
            continue
        yield int(v), inst_map == v


def jpeg_size(path: str | os.PathLike) -> tuple[int, int] | None:
    """``(height, width)`` from a JPEG's SOF marker without decoding it; None if not found."""
    try:
        with open(path, "rb") as f:
            data = f.read(1 << 16)
            if data[:2] != b"\xff\xd8":
                return None
            pos = 2
            while True:
                while pos + 4 > len(data):
                    more = f.read(1 << 16)
                    if not more:
                        return None
                    data += more
                if data[pos] != 0xFF:
                    return None
                marker = data[pos + 1]
                if marker == 0xFF:  # fill byte
                    pos += 1
                    continue
                if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
                    pos += 2
                    continue
                seglen = struct.unpack(">H", data[pos + 2:pos + 4])[0]
                if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB,
                              0xCD, 0xCE, 0xCF):
                    while pos + 9 > len(data):
                        more = f.read(1 << 16)
                        if not more:
                            return None
                        data += more
                    h, w = struct.unpack(">HH", data[pos + 5:pos + 9])
                    return int(h), int(w)
                if marker in (0xD9, 0xDA):  # end of image / start of scan before any SOF
                    return None
                pos += 2 + seglen
    except OSError:
        return None


def progress_iter(it, total: int, label: str, enabled: bool = True):
    """Yield from ``it`` with progress on stderr: a bar on a terminal, a line every ~10% in logs."""
    import sys
    import time

    if not enabled or total < 50:
        yield from it
        return
    if sys.stderr.isatty():
        import click

        with click.progressbar(it, length=total, label=label, file=sys.stderr) as bar:
            yield from bar
        return
    step = max(1, total // 10)
    t0 = last = time.monotonic()
    for i, x in enumerate(it, 1):
        yield x
        now = time.monotonic()
        if i % step == 0 or i == total or now - last > 60:
            print(f"{label}: {i}/{total} ({now - t0:.0f}s)", file=sys.stderr, flush=True)
            last = now


def choose_subset(n_total: int, num_images: int | None, seed: int = 0) -> list[int]:
    """Indices of a seeded random subset of ``num_images`` of ``n_total`` items, in input order
    (all of them when ``num_images`` is None or not smaller than ``n_total``)."""
    if num_images is None or num_images >= n_total:
        return list(range(n_total))
    if num_images <= 0:
        raise DataError(f"--num-images must be positive, got {num_images}")
    rng = np.random.default_rng(seed)
    return sorted(rng.choice(n_total, size=num_images, replace=False).tolist())
