"""Where training's clips live: a split copied to the device once, or batches put there ahead.

The two ways a batch reaches the model (:class:`nightact.data.batches.ClipBatches` takes either)::

    device path: the split, uint8, copied to the device(s) once      host path: reading threads
                 (DeviceSplit); each batch gathered there                read each batch from the
                 (rows, candidate frames, mirror), then augmented        store, put it on the
                 there                                                   device(s) and augment it
                                                                         there, a few batches ahead

Both give the same batches, bit for bit: the rows, the candidates and the augmentation's draws
come from the same seeds, and the augmentation is one compiled function on both
(:func:`nightact.data.augment.augment_batch`). The device path spends no host time per batch
beyond drawing those numbers, and nothing crosses the bus but a few hundred bytes of indices; the
host path is bounded by reading (1,200-1,800 clips/s per thread from the page cache) and by the
bus (2.3 MB per clip at 10 x 240x320).

:func:`choose` decides, for ``--data-on-device {auto,yes,no}``: the device path where the
backend is JAX, one process trains, and the splits take at most :data:`DEVICE_SHARE` of the
memory the device reports free (on a CPU, the host memory available: the "device" is the host
itself). With several devices (data parallel, one process) every device holds a whole copy, and
gathers the clips of its own share of each global batch from it: no device ever sends clips to
another, at the price of one copy per device, which the check counts. Several processes
(several machines) read from the store: each needs only its share of every batch, and
Keras assembles the global batch from the processes' shares as they arrive from the host.

JAX only; the module imports without it, and JAX loads when a function here is first called.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import numpy as np

from nightact.core.files import human_size

__all__ = [
    "DATA_ON_DEVICE",
    "DEVICE_SHARE",
    "COPY_CHUNK_BYTES",
    "Choice",
    "DeviceSplit",
    "batch_sharding",
    "choose",
    "copy_to_device",
    "memory_free",
    "put_batch",
]

log = logging.getLogger(__name__)

# The values of --data-on-device.
DATA_ON_DEVICE = ("auto", "yes", "no")
# The splits may take at most this share of the memory the device reports free; the rest is the
# model's: weights, optimizer state, a step's activations and XLA's workspace, and the batches in
# flight: a few GB at 10 x 240x320 and batch 64, by the tensors' sizes.
DEVICE_SHARE = 0.5
# The copy to an accelerator goes in pieces of about this size, so the host never holds more
# than a piece of a split beyond its page cache.
COPY_CHUNK_BYTES = 256 << 20


@dataclass(frozen=True)
class Choice:
    """Which path the batches take, and why, in words for the log."""

    on_device: bool
    reason: str
    risky: bool = False  # taken where "auto" would not have: worth a warning

    def describe(self) -> str:
        where = "gathered on the device" if self.on_device else "read from the store"
        return f"batches {where}: {self.reason}"


def choose(setting: str, splits, backend: str, devices=None, processes: int = 1) -> Choice:
    """The device or the host path for ``splits``, as ``setting`` ("auto", "yes", "no") asks.

    Args:
        setting: "no" always reads from the store; "yes" refuses where the device path is
            impossible, or where the splits would not fit at all; "auto" takes the device path
            where it is possible and the splits fit within :data:`DEVICE_SHARE` of free memory.
        splits: the splits to copy (each needs ``frames.nbytes``).
        backend: the Keras backend's name.
        devices: the JAX devices a batch is spread over (None: the first local device).
        processes: processes sharing each global batch.

    Raises:
        ValueError: ``setting`` is "yes" and the device path cannot be taken; the message says
            why.
    """
    if setting not in DATA_ON_DEVICE:
        raise ValueError(f"data_on_device must be one of {DATA_ON_DEVICE}, got {setting!r}")
    if setting == "no":
        return Choice(False, "--data-on-device no")
    impossible = None
    if backend != "jax":
        impossible = f"the {backend} backend (batches are gathered on the device with JAX only)"
    elif processes > 1:
        impossible = f"{processes} processes (each reads its own share of every batch)"
    if impossible is not None:
        if setting == "yes":
            raise ValueError(f"--data-on-device yes is not possible with {impossible}")
        return Choice(False, impossible)
    return _choose_by_size(setting, splits, devices)


def _choose_by_size(setting: str, splits, devices) -> Choice:
    import jax

    devices = list(devices) if devices else jax.local_devices()[:1]
    copy = sum(int(split.frames.nbytes) for split in splits)
    needed = copy
    if devices[0].platform == "cpu":
        # Logical CPU devices share the host's memory: their copies add up, and the split is
        # read into one host array first (copy_to_device), which lives until it is handed over.
        needed = copy * (len(devices) + 1)
    free, where = memory_free(devices)
    names = " + ".join(split.name for split in splits)
    copies = f", a copy on each of {len(devices)} devices" if len(devices) > 1 else ""
    size = f"{names} ({human_size(copy)}{copies})"
    if needed <= DEVICE_SHARE * free:
        share = f"{needed / free:.0%}" if free else "all"
        return Choice(True, f"{size} take {share} of the {human_size(free)} free {where}")
    if setting == "yes" and needed < free:
        return Choice(
            True,
            f"--data-on-device yes: {size} take more than {DEVICE_SHARE:.0%} of the "
            f"{human_size(free)} free {where}; training may run out of memory",
            risky=True,
        )
    too_big = f"{size} take more than {DEVICE_SHARE:.0%} of the {human_size(free)} free {where}"
    if setting == "yes":
        raise ValueError(
            f"--data-on-device yes: {size} do not fit in the {human_size(free)} free {where}"
        )
    return Choice(False, too_big)


def memory_free(devices) -> tuple[int, str]:
    """Bytes free on the tightest of ``devices``, and where, in words.

    An accelerator's own figure (``bytes_limit - bytes_in_use`` of JAX's allocator, which counts
    what JAX may take, 75% of the memory by default, not what the card has); on a CPU device
    the host memory available (Linux' MemAvailable, page cache included, as it can be reclaimed).
    """
    tightest = None
    for device in devices:
        stats = device.memory_stats() if device.platform != "cpu" else None
        if stats and "bytes_limit" in stats:
            free = int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
            where = f"on {device.platform}:{device.id}"
        else:
            free, where = _host_memory_available(), "in host memory"
        if tightest is None or free < tightest[0]:
            tightest = (free, where)
    return tightest


def _host_memory_available() -> int:
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def batch_sharding(rank: int):
    """Where a batch of ``rank`` dimensions goes: Keras' data layout under its distribution
    (split along the first axis over the devices), else the first local device.

    Ask in the thread that set the distribution up: Keras keeps it per thread, so a reading
    thread would see none.
    """
    import jax
    import keras

    distribution = keras.distribution.distribution()
    if distribution is None:
        return jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    return distribution.get_data_layout((1,) * rank).backend_layout


def put_batch(array: np.ndarray, sharding):
    """``array`` put as ``sharding`` (:func:`batch_sharding`) says, the copy finished.

    Called in a reading thread, so that the transfer overlaps the step in progress.
    """
    import jax

    placed = jax.device_put(array, sharding)
    placed.block_until_ready()
    return placed


def copy_to_device(
    frames: np.ndarray, sharding, chunk_bytes: int = COPY_CHUNK_BYTES, pieces: bool | None = None
):
    """``frames`` (a memory-mapped split) as one array placed as ``sharding`` says.

    On a CPU the split is read whole and handed over. On an accelerator (or with ``pieces``) it
    goes in pieces of about ``chunk_bytes``, each written into a buffer made on the device
    beforehand (donated, so it is updated in place): the host never holds a second copy of the
    split, and the next piece is read while the last one crosses.
    """
    import jax
    import jax.numpy as jnp

    if pieces is None:
        pieces = next(iter(sharding.device_set)).platform != "cpu"
    if not pieces:
        return jax.device_put(np.array(frames), sharding)
    shape, dtype = frames.shape, frames.dtype
    buffer = jax.jit(lambda: jnp.zeros(shape, dtype), out_shardings=sharding)()
    update = jax.jit(
        lambda buffer, piece, start: jax.lax.dynamic_update_slice_in_dim(buffer, piece, start, 0),
        donate_argnums=0,
        out_shardings=sharding,
    )
    step = max(1, chunk_bytes // max(1, int(np.prod(shape[1:])) * dtype.itemsize))
    for start in range(0, len(frames), step):
        # A slice of the map reads its rows in order, once: no need for the batch reader here.
        piece = np.array(frames[start : start + step])
        buffer = update(buffer, jax.device_put(piece, sharding), start)
    return buffer.block_until_ready()


class DeviceSplit:
    """A store's split copied to the device(s) once; batches are gathered from it there.

    It stands in for :class:`nightact.core.store.Split` (name, labels, class names, paths,
    candidates per segment, ``len``), with ``frames`` a JAX array holding every row: one copy on
    each device a batch is spread over (Keras' distribution, or the first local device). Labels
    stay on the host: a batch's are a few hundred bytes.
    """

    def __init__(self, split, chunk_bytes: int = COPY_CHUNK_BYTES):
        import jax

        self.name = split.name
        self.labels = np.asarray(split.labels)
        self.class_names = list(split.class_names)
        self.paths = list(split.paths)
        self.frames_per_segment = split.frames_per_segment
        rank = split.frames.ndim
        self.sharding = batch_sharding(rank)
        # Every device of the batch's placement holds the whole split.
        whole = _replicated(self.sharding)
        self.nbytes = int(split.frames.nbytes)
        self.frames = copy_to_device(split.frames, whole, chunk_bytes)
        self._indices = _indices_sharding(self.sharding)
        self._gather = jax.jit(_gather, static_argnames="mirror", out_shardings=self.sharding)

    @property
    def segments(self) -> int:
        return int(self.frames.shape[1]) // self.frames_per_segment

    def __len__(self) -> int:
        return len(self.labels)

    def gather(self, rows: np.ndarray, positions: np.ndarray, mirror: bool = False):
        """Rows ``rows`` with frame positions ``positions`` (one row of them per clip), as a
        batch placed as Keras expects it; mirrored left-right with ``mirror``."""
        import jax

        rows = jax.device_put(np.asarray(rows, np.int32), self._indices)
        positions = jax.device_put(np.asarray(positions, np.int32), self._indices)
        return self._gather(self.frames, rows, positions, mirror=mirror)

    def release(self) -> None:
        """Free the device memory now, not when the last reference goes."""
        if self.frames is not None:
            self.frames.delete()
            self.frames = None


def _gather(frames, rows, positions, mirror: bool):
    clips = frames[rows[:, None], positions]
    return clips[:, :, :, ::-1] if mirror else clips


def _replicated(sharding):
    import jax

    if isinstance(sharding, jax.sharding.NamedSharding):
        return jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec())
    return sharding


def _indices_sharding(sharding):
    """Row indices split like the batch, so that each device gathers its own clips."""
    import jax

    if isinstance(sharding, jax.sharding.NamedSharding):
        return jax.sharding.NamedSharding(
            sharding.mesh, jax.sharding.PartitionSpec(sharding.spec[0])
        )
    return sharding
