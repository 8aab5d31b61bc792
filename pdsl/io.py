"""Small I/O helpers shared by every stage: atomic writes, reading JSON/YAML with clear errors,
content hashes, image reading."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np

from .errors import CacheError, DataError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only if the block succeeds.

    A killed or failed run therefore never leaves a half-written file under the final name.
    The temp name starts with ``.`` and ends with ``.tmp`` so that nothing mistakes it for output.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json_atomic(obj, path: str | os.PathLike, indent: int | None = None) -> None:
    """Write ``obj`` as JSON to ``path`` atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=indent)


def json_safe(obj):
    """NaN/inf (metrics with no GT to score) -> None, so the file is strict JSON."""
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def read_data_file(path: str | os.PathLike, what: str, error: type[Exception] = DataError,
                   hint: str = "", fmt: str = "json"):
    """The parsed contents of a JSON (``fmt="json"``) or YAML (``fmt="yaml"``) file.

    Every failure is one ``error`` that names ``what`` and the path: ``{what} {path}: file not
    found{hint}``, ``…: cannot read (reason)``, ``…: not valid JSON (parser message)`` (or YAML).
    A UTF-8 byte-order mark is allowed. The caller checks the shape of what it gets."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise error(f"{what} {path}: file not found{hint}")
    try:
        with open(path, encoding="utf-8-sig") as f:
            return yaml.safe_load(f) if fmt == "yaml" else json.load(f)
    except OSError as e:
        raise error(f"{what} {path}: cannot read ({e.strerror})") from None
    except UnicodeDecodeError as e:
        raise error(f"{what} {path}: cannot read ({e})") from None
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        raise error(f"{what} {path}: not valid {fmt.upper()} ({e})") from None


def file_sha1(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-1 of a file's bytes (the cache uses it to detect changed images)."""
    h = hashlib.sha1()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(chunk), b""):
                h.update(block)
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror}") from None
    return h.hexdigest()


def read_image(path: str | os.PathLike, image_id=None, expect_sha1: str | None = None) -> np.ndarray:
    """Read an image as ``uint8 [H, W, 3]`` BGR (OpenCV order). One clear error if it cannot.

    ``expect_sha1``: the SHA-1 the cue cache recorded for the file; other bytes raise
    :class:`CacheError` (the image changed after caching). Hashes the bytes already read."""
    import cv2

    who = f"image {image_id} ({path})" if image_id is not None else f"image {path}"
    if not os.path.isfile(path):
        raise DataError(f"{who}: file not found")
    data = np.fromfile(str(path), dtype=np.uint8)
    if expect_sha1 is not None:
        sha = hashlib.sha1(data.tobytes()).hexdigest()
        if sha != expect_sha1:
            raise CacheError(f"{who}: changed since it was cached (SHA-1 {sha[:12]}, the cue "
                             f"cache recorded {expect_sha1[:12]}): stale cue cache, rebuild it "
                             f"(`cli.py cache-cues` or snakemake) or restore the image")
    img = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if img is None:
        raise DataError(f"{who}: not a readable image (corrupt or unsupported format)")
    return img


class JsonListWriter:
    """Write a JSON list item by item (memory independent of its length), atomically: the file
    appears under its name only when the ``with`` block ends without an error.

    >>> with JsonListWriter("results.json") as out:
    ...     out.extend([{"image_id": 1}, {"image_id": 2}])
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.count = 0
        self._ctx = atomic_path(self.path)
        self._f = None

    def __enter__(self) -> "JsonListWriter":
        tmp = self._ctx.__enter__()
        self._f = open(tmp, "w")
        self._f.write("[")
        return self

    def extend(self, items) -> None:
        for item in items:
            self._f.write(("\n" if self.count == 0 else ",\n") + json.dumps(item))
            self.count += 1

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self._f.write("\n]\n")
        self._f.close()
        return self._ctx.__exit__(exc_type, exc, tb)
