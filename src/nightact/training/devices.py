"""Train on several devices with Keras' and the backends' own synchronous data parallelism.

::

    setup = setup_devices(2)      # before the backend runs its first operation (see below)
    with setup.scope():           # TensorFlow: the MirroredStrategy's scope; JAX: nothing to enter
        model = build_model(...)
        model.compile(...)
    model.fit(batches)            # batches of the GLOBAL batch size; Keras splits each one

What each backend does with ``setup_devices(N)``:

- TensorFlow: a ``tf.distribute.MirroredStrategy`` over the first N GPUs. Variables are made,
  and the model compiled, inside its scope; ``fit`` then turns the input (a
  ``keras.utils.PyDataset`` included: Keras wraps it in ``tf.data.Dataset.from_generator``) into
  a distributed dataset that hands each replica ``global batch / N`` rows. A last batch that
  does not divide evenly is split unevenly, which MirroredStrategy allows.
- JAX: ``keras.distribution.DataParallel`` over N devices, made the global distribution with
  ``keras.distribution.set_distribution``; ``fit`` shards every batch along its first axis.
  JAX requires every batch, validation included, to divide evenly by N.
- Without accelerators, the CPU is split into N logical devices, so data parallelism can be
  tried and tested anywhere: TensorFlow's ``tf.config.set_logical_device_configuration``,
  JAX's ``jax_num_cpu_devices`` (the config twin of
  ``XLA_FLAGS=--xla_force_host_platform_device_count=N``).

When to call it: both backends fix their device list when their runtime starts, which is at the
first operation (building a tensor, a layer, setting Keras' seed), not at ``import``. Importing
``keras``, ``tensorflow`` or ``jax`` first is fine; running anything first is not, and then
:func:`setup_devices` raises :class:`DeviceError` unless the devices asked for are already
there. So a CLI process calls it right after parsing its flags. (JAX reads ``XLA_FLAGS`` at the
same moment, so the variable works after ``import jax`` too, as long as nothing has run; a
process that has already run JAX code cannot change its CPU device count at all, and must be
restarted with the flag set.)

Several machines (JAX only): :func:`initialize_processes` wraps
``keras.distribution.initialize`` and must come before :func:`setup_devices`; every process then
feeds its own share of each global batch (``setup.process_batch_size(global_batch)`` rows,
``setup.process_id``-th of ``setup.processes``). TensorFlow's ``MultiWorkerMirroredStrategy`` is
not supported with Keras 3; use the JAX backend across machines.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass, field

__all__ = [
    "ADDRESS_VARIABLE",
    "PROCESS_ID_VARIABLE",
    "PROCESSES_VARIABLE",
    "DeviceError",
    "DeviceSetup",
    "initialize_processes",
    "setup_devices",
]

log = logging.getLogger(__name__)

# The environment variables keras.distribution.initialize reads when no argument is given.
ADDRESS_VARIABLE = "KERAS_DISTRIBUTION_JOB_ADDRESSES"
PROCESSES_VARIABLE = "KERAS_DISTRIBUTION_NUM_PROCESSES"
PROCESS_ID_VARIABLE = "KERAS_DISTRIBUTION_PROCESS_ID"


class DeviceError(ValueError):
    """The devices asked for cannot be set up in this process (a ValueError: one the user fixes)."""


@dataclass
class DeviceSetup:
    """The devices a run trains on, and the distribution context that spreads it over them."""

    backend: str  # "tensorflow" or "jax"
    platform: str  # "gpu", "tpu" or "cpu"
    devices: list[str]  # every device taking part, over all processes
    processes: int = 1
    process_id: int = 0
    strategy: object = field(default=None, repr=False)  # TensorFlow's, or None

    @property
    def count(self) -> int:
        """Devices taking part, over all processes: the number of replicas."""
        return len(self.devices)

    def scope(self):
        """The context to build and compile the model in."""
        if self.strategy is not None:
            return self.strategy.scope()
        return contextlib.nullcontext()

    def process_batch_size(self, global_batch_size: int) -> int:
        """Rows of each global batch that this process reads and feeds."""
        if global_batch_size % self.count:
            raise ValueError(
                f"the batch size {global_batch_size} does not divide evenly over "
                f"{self.count} devices; choose a multiple of {self.count}"
            )
        return global_batch_size // self.processes

    def local_jax_devices(self) -> list:
        """This process's JAX devices taking part, as JAX objects (JAX only)."""
        import jax

        return [device for device in jax.local_devices() if _jax_name(device) in self.devices]

    def record(self) -> dict:
        """What a run's config.json keeps about its devices."""
        return {
            "devices": self.count,
            "platform": self.platform,
            "processes": self.processes,
            "device_names": list(self.devices),
        }


def setup_devices(count: int | None = None) -> DeviceSetup:
    """Set up ``count`` devices for the active Keras backend and return their distribution.

    Args:
        count: devices to train on. None: every accelerator, or 1 where there is none. On a
            machine without accelerators, a count above 1 splits the CPU into that many logical
            devices. Under :func:`initialize_processes` it counts this process's devices only.

    Raises:
        ValueError: count is not positive, or more accelerators are asked for than exist.
        DeviceError: the backend has already started with other devices than asked for.
    """
    if count is not None and count < 1:
        raise ValueError(f"devices must be at least 1, got {count}")
    import keras

    backend = keras.config.backend()
    if backend == "tensorflow":
        return _setup_tensorflow(count)
    if backend == "jax":
        return _setup_jax(count)
    raise DeviceError(
        f"the {backend} backend is not supported for several devices; use tensorflow or jax"
    )


def initialize_processes(
    coordinator: str | None = None,
    processes: int | None = None,
    process_id: int | None = None,
) -> None:
    """Join a multi-process JAX run (one process per machine, typically).

    Each argument left None is read by Keras from its environment variable
    (``KERAS_DISTRIBUTION_JOB_ADDRESSES``, ``..._NUM_PROCESSES``, ``..._PROCESS_ID``). Call it
    in every process, before :func:`setup_devices` and before any JAX operation; it blocks until
    all ``processes`` have joined the coordinator (process 0, at ``host:port``).
    """
    import keras

    if keras.config.backend() != "jax":
        raise DeviceError(
            "several processes are supported on the JAX backend only (KERAS_BACKEND=jax): "
            "TensorFlow's multi-worker strategy is unreliable with Keras 3"
        )
    coordinator = coordinator or os.environ.get(ADDRESS_VARIABLE)
    if not coordinator:
        raise ValueError(
            f"no coordinator address: pass host:port of process 0 or set {ADDRESS_VARIABLE}"
        )
    if processes is not None and process_id is not None and not 0 <= process_id < processes:
        raise ValueError(f"process id {process_id} is outside 0..{processes - 1}")
    log.info("joining %s as process %s of %s", coordinator, process_id, processes)
    keras.distribution.initialize(coordinator, processes, process_id)


def _setup_tensorflow(count: int | None) -> DeviceSetup:
    import tensorflow as tf

    # Listing physical devices does not start the runtime; listing logical ones does.
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        count = len(gpus) if count is None else count
        if count > len(gpus):
            raise ValueError(f"{count} devices asked for, but TensorFlow sees {len(gpus)} GPU(s)")
        names = [f"/gpu:{index}" for index in range(count)]
        platform = "gpu"
    else:
        count = 1 if count is None else count
        cpu = tf.config.list_physical_devices("CPU")[0]
        wanted = [tf.config.LogicalDeviceConfiguration() for _ in range(count)]
        try:
            if count > 1 or tf.config.get_logical_device_configuration(cpu):
                tf.config.set_logical_device_configuration(cpu, wanted)
        except RuntimeError as error:
            have = len(tf.config.list_logical_devices("CPU"))
            if have != count:
                raise DeviceError(
                    f"TensorFlow already started with {have} CPU device(s); {count} must be set "
                    "up before its first operation (call setup_devices first)"
                ) from error
        names = [f"/cpu:{index}" for index in range(count)]
        platform = "cpu"
    if count == 1:
        # One device: no strategy, so a single-device run is exactly what it was before.
        return DeviceSetup("tensorflow", platform, names)
    strategy = tf.distribute.MirroredStrategy(names)
    log.info("training on %d %s devices with MirroredStrategy", count, platform)
    return DeviceSetup("tensorflow", platform, names, strategy=strategy)


def _setup_jax(count: int | None) -> DeviceSetup:
    import jax
    import keras

    if count is not None and count > 1:
        try:
            # Only the CPU platform is affected, so this is harmless where GPUs do the work.
            jax.config.update("jax_num_cpu_devices", count)
        except RuntimeError:
            # The backend has started; whether it has the devices is checked below.
            pass
    local = jax.local_devices()
    platform = local[0].platform
    count = len(local) if count is None else count
    if platform == "cpu" and count > len(local):
        raise DeviceError(
            f"JAX already started with {len(local)} CPU device(s); {count} must be set up before "
            f"its first operation (call setup_devices first, or start the process with "
            f"XLA_FLAGS=--xla_force_host_platform_device_count={count})"
        )
    if count > len(local):
        raise ValueError(f"{count} devices asked for, but JAX sees {len(local)} {platform}(s)")
    processes, process_id = jax.process_count(), jax.process_index()
    if processes > 1:
        if count != len(local):
            raise ValueError(
                f"with {processes} processes every local device takes part; "
                f"asked for {count} of {len(local)}"
            )
        chosen = jax.devices()
    else:
        chosen = local[:count]
    names = [_jax_name(device) for device in chosen]
    if len(chosen) > 1:
        # Each process reads its own share of every batch (process_batch_size); Keras' own
        # sharding works on tf.data datasets only, and would refuse a PyDataset.
        distribution = keras.distribution.DataParallel(devices=chosen, auto_shard_dataset=False)
        keras.distribution.set_distribution(distribution)
        log.info(
            "training on %d %s devices (%d process(es)) with DataParallel",
            len(chosen),
            platform,
            processes,
        )
    return DeviceSetup("jax", platform, names, processes=processes, process_id=process_id)


def _jax_name(device) -> str:
    return f"{device.platform}:{device.id}"
