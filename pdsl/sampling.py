"""Which image each training pass reads, and its random draws: the run's sample stream.

Shared by both trainers (:mod:`pdsl.engine.train`, :mod:`pdsl.engine.supervised`): the images of
optimiser step ``t`` and every random draw of a sample are pure functions of ``(seed, t, position
in the step)``, so a run is reproducible for any ``num_workers``, number of processes, and after
``--resume``.
"""
from __future__ import annotations

import numpy as np
import torch

from .errors import DataError


def sample_rng(seed: int, step: int, slot: int, index: int) -> np.random.Generator:
    """The generator of one training sample: a pure function of its position in the run."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(step), int(slot),
                                                         int(index)]))


class TrainBatchSampler(torch.utils.data.Sampler):
    """Deterministic, resumable, sharded sampler of training micro-batches.

    The run sees one endless stream of dataset indices: epoch ``e`` is the permutation
    ``default_rng([seed, e]).permutation(N)``, epochs concatenated. Optimiser step ``t`` (0-based)
    consumes stream positions ``[t * images_per_step, (t + 1) * images_per_step)``, split into
    ``accum`` micro-batches per process; process ``rank`` of ``world`` takes, in micro-batch ``k``,
    positions ``t * ips + (k * world + rank) * ipg + j``, j < ``ipg``. So the images of a step do
    not depend on the number of processes, and starting at ``start_step`` resumes the stream
    exactly. Each item is ``(index, step, slot)``, slot = position within the step.
    """

    def __init__(self, num_images: int, seed: int, images_per_step: int, images_per_gpu: int,
                 start_step: int, max_iter: int, rank: int = 0, world_size: int = 1):
        if images_per_step % (images_per_gpu * world_size):
            raise DataError(f"solver.images_per_step ({images_per_step}) must be a multiple of "
                            f"world size x solver.images_per_gpu ({world_size} x {images_per_gpu})")
        self.n, self.seed = int(num_images), int(seed)
        self.ips, self.ipg = images_per_step, images_per_gpu
        self.accum = images_per_step // (images_per_gpu * world_size)
        self.start, self.stop = int(start_step), int(max_iter)
        self.rank, self.world = rank, world_size
        self._perm_epoch, self._perm = None, None

    def index_at(self, position: int) -> int:
        epoch, pos = divmod(position, self.n)
        if epoch != self._perm_epoch:
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.n)
            self._perm_epoch = epoch
        return int(self._perm[pos])

    def __len__(self):
        return max(0, self.stop - self.start) * self.accum

    def __iter__(self):
        for t in range(self.start, self.stop):
            for k in range(self.accum):
                first = (k * self.world + self.rank) * self.ipg
                yield [(self.index_at(t * self.ips + first + j), t, first + j)
                       for j in range(self.ipg)]


def worker_init(_worker_id: int) -> None:
    """DataLoader workers: nothing OpenCV-related here. ``cv2.setNumThreads`` in a forked child
    deadlocks when the parent had started OpenCV's thread pool, so the parent calls
    :func:`single_threaded_opencv` before the loader forks and the children inherit it."""


def single_threaded_opencv() -> None:
    """One OpenCV thread in this process (call before creating DataLoader workers): the workers
    are the parallelism, and a process without an OpenCV pool forks safely."""
    import cv2

    cv2.setNumThreads(1)
