"""Rows of a numpy structured dtype, appended in any number and read back by group, with a
bounded amount of memory: pending rows are spilled, sorted by group, to an anonymous temporary
file every ``chunk_rows`` rows (``tempfile.TemporaryFile``: gone when closed or when the process
ends). Streaming evaluation keeps its per-detection scores and match flags here."""
from __future__ import annotations

import tempfile

import numpy as np


class RowSpool:
    """Append rows (a structured array with an integer ``group`` field); read one group's rows
    back in append order. Memory: at most ``chunk_rows`` pending rows plus one group's rows
    being read; disk: ``dtype.itemsize`` bytes per row."""

    def __init__(self, dtype, n_groups: int, chunk_rows: int = 1 << 18):
        self.dtype = np.dtype(dtype)
        if "group" not in self.dtype.names:
            raise ValueError("RowSpool dtype needs a 'group' field")
        self.n_groups = int(n_groups)
        self.chunk_rows = int(chunk_rows)
        self._file = None
        self._chunks: list[tuple[int, np.ndarray]] = []   # (byte offset, row starts [G + 1])
        self._pending: list[np.ndarray] = []
        self._n_pending = 0
        self.rows = 0

    def append(self, rows: np.ndarray) -> None:
        if not len(rows):
            return
        self._pending.append(np.asarray(rows, self.dtype))
        self._n_pending += len(rows)
        self.rows += len(rows)
        if self._n_pending >= self.chunk_rows:
            self.flush()

    def flush(self) -> None:
        """Write the pending rows, grouped, to the spool file."""
        if not self._pending:
            return
        rows = np.concatenate(self._pending)
        self._pending, self._n_pending = [], 0
        rows = rows[np.argsort(rows["group"], kind="stable")]
        counts = np.bincount(rows["group"], minlength=self.n_groups)
        if self._file is None:
            self._file = tempfile.TemporaryFile(prefix="pdsl-eval-")
        self._file.seek(0, 2)
        offset = self._file.tell()
        self._file.write(rows.tobytes())
        self._chunks.append((offset, np.concatenate([[0], np.cumsum(counts)])))

    def group(self, g: int) -> np.ndarray:
        """Every row of group ``g``, in append order."""
        self.flush()
        parts = []
        size = self.dtype.itemsize
        for offset, starts in self._chunks:
            a, b = int(starts[g]), int(starts[g + 1])
            if b > a:
                self._file.seek(offset + a * size)
                parts.append(np.frombuffer(self._file.read((b - a) * size), self.dtype))
        return np.concatenate(parts) if parts else np.zeros(0, self.dtype)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self._chunks, self._pending, self._n_pending, self.rows = [], [], 0, 0
