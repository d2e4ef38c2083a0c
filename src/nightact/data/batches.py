"""Batches of clips for Keras, from a store's memory-mapped split or from its copy on the device.

:class:`ClipBatches` is the data pipeline between the store (:mod:`nightact.core.store` opens it,
Keras-free) and the model: training reads a shuffled endless stream of it, evaluation and validation
an ordered finite one. It lives apart from :mod:`nightact.training.train` so that evaluating a run
does not import the training loop. Where the batches are made, on the device from a copy of the
split or on the host from the store, is :mod:`nightact.data.placement`'s part.
"""

from __future__ import annotations

import math
import mmap
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import keras
import numpy as np

from nightact.data.augment import augment_batch
from nightact.data.placement import DeviceSplit, batch_sharding, put_batch
from nightact.data.sampling import positions, random_candidates, select_frames

__all__ = [
    "ClipBatches",
    "read_rows",
]


class ClipBatches(keras.utils.PyDataset):
    """Batches of (uint8 clips, one-hot float32 labels) read from a memory-mapped split.

    Each batch reads its rows from the store in ascending order (sequential reads on disk), so
    memory holds one batch, plus the few being read ahead.

    With ``shuffle=False`` it is an ordinary finite dataset of ``len(self)`` batches in row order
    (validation, test, prediction).

    With ``shuffle=True`` it is an endless stream for ``fit(steps_per_epoch=len(self))``: batch
    ``index`` belongs to epoch ``start_epoch + index // len(self)``, and each epoch visits every
    clip once in the order of a permutation drawn from ``(seed, epoch)``; with
    ``drop_remainder``, all but the last ``len(split) % batch_size`` clips of that order, a
    different few each epoch. Deriving the order from the batch index (rather than reshuffling in
    ``on_epoch_end``) keeps it right even though Keras starts reading the next epoch before the
    current one has ended, and lets a resumed run see exactly the batches an uninterrupted one
    would have.

    A store with K candidate frames per segment holds N*K frames per row
    (:mod:`nightact.data.sampling`); the batches hold N. Training with ``augment`` set shows each
    clip a random candidate per segment and one random clip-consistent transform
    (:mod:`nightact.data.augment`), both drawn from ``(seed, epoch, row)``. Everything else reads
    ``candidate`` (0: the original's frames) untouched, mirrored when ``mirror`` is set (a test-time
    view); ``augment`` is ignored without ``shuffle``, so validation never sees it.

    Data parallelism (:mod:`nightact.training.devices`): ``batch_size`` is the global batch. With
    ``process=(index, count)`` this process reads only its own contiguous ``1/count`` of each
    batch's rows (JAX assembles the global batch from the processes' shares, in process order).
    With ``pad_to=N`` every finite batch is padded to a multiple of N rows by repeating its last
    clip, because JAX splits a batch evenly over N devices; batches then come with sample
    weights, 1 for the real clips and 0 for the copies, so that the accuracy (a weighted mean
    over all clips) counts the real clips alone. The loss of a padded batch is still divided by
    its padded size, so an epoch's ``val_loss`` comes out low by (copies / clips).

    Where the batches are made (:mod:`nightact.data.placement`; JAX only, one process): with
    ``on_device`` (or a :class:`nightact.data.placement.DeviceSplit` as ``split``) the split is on
    the device(s) and every batch is gathered, and augmented, there, as JAX arrays that Keras
    takes as they are; with ``place``, batches read from the store are put on the device(s) by
    the reading threads, a few steps ahead, and augmented there. Either way a batch never
    crosses back to the host. Without them, batches are NumPy arrays, as any backend takes
    them. The batches are the same on every path.
    """

    def __init__(
        self,
        split,
        batch_size: int,
        shuffle: bool = False,
        seed: int = 0,
        start_epoch: int = 0,
        workers: int = 1,
        drop_remainder: bool = False,
        augment=None,
        candidate: int = 0,
        mirror: bool = False,
        process: tuple[int, int] = (0, 1),
        pad_to: int = 1,
        on_device: bool = False,
        place: bool = False,
    ):
        # Keras' own worker threads are not used: its enqueuer drops the batches it has read
        # ahead at every epoch's end, which would break the index -> epoch mapping above.
        super().__init__(workers=1, use_multiprocessing=False)
        if len(split) == 0:
            raise ValueError(f"the {split.name} split has no clips")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        process_index, processes = process
        if not 0 <= process_index < processes or batch_size % processes or batch_size % pad_to:
            raise ValueError(
                f"batch_size {batch_size} cannot be shared as process {process_index} of "
                f"{processes} over multiples of {pad_to} devices"
            )
        self.process = (process_index, processes)
        self.pad_to = pad_to
        self.on_device = on_device or isinstance(split, DeviceSplit)
        if (self.on_device or place) and (keras.config.backend() != "jax" or processes > 1):
            raise ValueError(
                "batches are made on the device with the JAX backend and one process only"
            )
        self.place = place and not self.on_device
        # Asked here, not in the reading threads: Keras keeps its distribution per thread.
        self._sharding = batch_sharding(split.frames.ndim) if self.place else None
        self.split = split
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.start_epoch = start_epoch
        self.segments = int(split.frames.shape[1]) // split.frames_per_segment
        self.per_segment = split.frames_per_segment
        if not 0 <= candidate < self.per_segment:
            raise ValueError(
                f"candidate must lie in [0, {self.per_segment}) for this store, got {candidate}"
            )
        self.augment = augment if shuffle else None
        self.candidate = candidate
        self.mirror = mirror
        if shuffle and drop_remainder and len(split) >= batch_size:
            # Every batch full: one shape, so a compiled step is traced and compiled only once.
            self.steps_per_epoch = len(split) // batch_size
        else:
            self.steps_per_epoch = math.ceil(len(split) / batch_size)
        self._one_hot = np.eye(len(split.class_names), dtype=np.float32)
        self._lock = threading.Lock()
        self._orders: dict[int, np.ndarray] = {}
        self._read_ahead = workers - 1
        self._pool = ThreadPoolExecutor(self._read_ahead) if self._read_ahead > 0 else None
        self._pending: dict = {}
        # Last, once everything is checked: a copy made here is freed by close(); one passed in
        # belongs to the caller.
        self._owned = None
        if self.on_device and not isinstance(split, DeviceSplit):
            self.split = self._owned = DeviceSplit(split)

    def __len__(self) -> int:
        """Batches per epoch."""
        return self.steps_per_epoch

    @property
    def num_batches(self):
        # None tells Keras the stream is endless; fit then needs steps_per_epoch.
        return None if self.shuffle else self.steps_per_epoch

    def epoch_of(self, index: int) -> int:
        return self.start_epoch + index // self.steps_per_epoch if self.shuffle else 0

    def rows(self, index: int) -> np.ndarray:
        """The sorted store rows of batch ``index``."""
        if index < 0 or (not self.shuffle and index >= self.steps_per_epoch):
            raise IndexError(f"batch {index} is out of range (0..{self.steps_per_epoch - 1})")
        position = index % self.steps_per_epoch
        start, stop = position * self.batch_size, (position + 1) * self.batch_size
        if not self.shuffle:
            return np.arange(start, min(stop, len(self.split)))
        return np.sort(self._order(self.epoch_of(index))[start:stop])

    def __getitem__(self, index: int):
        if self._pool is None:
            return self._read(index)
        with self._lock:
            future = self._pending.pop(index, None) or self._pool.submit(self._read, index)
            for stale in [key for key in self._pending if key < index]:
                del self._pending[stale]
            last = None if self.shuffle else self.steps_per_epoch - 1
            for ahead in range(index + 1, index + 1 + self._read_ahead):
                if (last is None or ahead <= last) and ahead not in self._pending:
                    self._pending[ahead] = self._pool.submit(self._read, ahead)
        return future.result()

    def close(self) -> None:
        """Stop the read-ahead threads, if any, and free the split's copy made on the device."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        if self._owned is not None:
            self._owned.release()
            self._owned = None

    def _read(self, index: int):
        rows, weights = self._shared_rows(index)
        epoch = self.epoch_of(index)
        choices = self._choices(rows, epoch)
        # A training view is never mirrored here: the augmentation flips at random.
        mirror = self.mirror and self.augment is None
        if self.on_device:
            picked = positions(
                np.broadcast_to(choices, (len(rows), self.segments)), self.per_segment
            )
            clips = self.split.gather(rows, picked, mirror)
        else:
            clips = select_frames(
                read_rows(self.split.frames, rows), self.segments, self.per_segment, choices
            )
            if mirror:
                clips = np.ascontiguousarray(clips[:, :, :, ::-1])
            if self.place:
                clips = put_batch(clips, self._sharding)
        if self.augment is not None:
            clips = augment_batch(clips, rows, self.augment, self.seed, epoch)
            if not (self.on_device or self.place):
                clips = np.asarray(keras.ops.convert_to_numpy(clips))
        labels = self._one_hot[self.split.labels[rows]]
        if weights is None:
            return clips, labels
        return clips, labels, weights

    def _choices(self, rows: np.ndarray, epoch: int) -> np.ndarray:
        """Each clip's candidate per segment, (clips, segments); or (segments,), one for all."""
        if self.augment is not None and self.per_segment > 1:
            return np.stack(
                [
                    random_candidates(self.segments, self.per_segment, self.seed, epoch, row)
                    for row in rows.tolist()
                ]
            )
        return np.full(self.segments, self.candidate, dtype=np.int64)

    def _shared_rows(self, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        """This process's rows of batch ``index``, padded, and their weights (None: unpadded)."""
        rows = self.rows(index)
        weights = None
        if self.pad_to > 1:
            real = len(rows)
            padded = -(-real // self.pad_to) * self.pad_to
            rows = np.concatenate([rows, np.full(padded - real, rows[-1])])
            weights = np.zeros(padded, dtype=np.float32)
            weights[:real] = 1.0
        process_index, processes = self.process
        if processes > 1:
            share = len(rows) // processes
            mine = slice(process_index * share, (process_index + 1) * share)
            rows = rows[mine]
            weights = None if weights is None else weights[mine]
        return rows, weights

    def _order(self, epoch: int) -> np.ndarray:
        with self._lock:
            order = self._orders.get(epoch)
            if order is None:
                order = np.random.default_rng([self.seed, epoch]).permutation(len(self.split))
                # Batches of at most two epochs are in flight at once.
                self._orders = {
                    key: value for key, value in self._orders.items() if key >= epoch - 1
                }
                self._orders[epoch] = order
            return order


def read_rows(frames: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``frames[rows]`` as a new array; from a memory-mapped .npy, one ``preadv`` per row.

    Indexing a memory map reads the rows through page faults, and every page it touches counts in
    the training process's resident memory for as long as the kernel keeps it; reading each row
    (2.3 MB at 10 x 240x320) with one system call into the batch's buffer does neither, and
    releases the GIL while it waits, so read-ahead threads overlap. benchmarks/loader.py times
    both ("memmap" against "clipbatches").
    """
    # Only a whole mapped file (as np.load(mmap_mode="r") gives it) has its first row at
    # ``offset``; a slice of one keeps its parent's offset, so it is indexed as any array.
    whole = isinstance(frames, np.memmap) and isinstance(frames.base, mmap.mmap)
    if not whole or frames.filename is None or not frames.flags.c_contiguous or len(rows) == 0:
        return np.ascontiguousarray(frames[rows])
    filename, start = frames.filename, frames.offset
    out = np.empty((len(rows), *frames.shape[1:]), dtype=frames.dtype)
    row_bytes = out[0].nbytes
    descriptor = os.open(filename, os.O_RDONLY)
    try:
        for position, row in enumerate(rows):
            view = memoryview(out[position]).cast("B")
            done = 0
            while done < row_bytes:
                read = os.preadv(descriptor, [view[done:]], start + int(row) * row_bytes + done)
                if read == 0:
                    raise OSError(f"{filename}: ends before row {row}")
                done += read
    finally:
        os.close(descriptor)
    return out
