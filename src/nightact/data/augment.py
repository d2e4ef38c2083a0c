"""Clip-consistent augmentation: one random transform per clip, the same for all its frames.

A clip's frames share one draw of every parameter: mirrored or not, one crop window, one gamma,
contrast and gain. A per-frame flip or crop would make the figure jump from side to side between
frames and scramble the very motion the recurrent layer reads. Only the sensor noise is drawn
per pixel and frame, as a camera's is.

What a training clip goes through, in this order (pixels as floats in 0-1 after the warp)::

    uint8 (batch, frames, h, w, 3)
      -> mirror left-right (probability ``flip``)            \\ one bilinear warp per frame,
      -> crop a window of ``scale`` x the frame's sides,      / ``keras.ops.image.affine_transform``
         placed at random, and stretch it back to h x w        (zoom 1 to 1/scale)
      -> x ** gamma        gamma > 1 darkens, < 1 brightens (log-uniform draw)
      -> (x - m) * contrast + m, m the clip's mean          contrast about the clip's own level
      -> x * gain          brighter or darker (log-uniform draw)
      -> + N(0, sigma)     sensor noise
      -> clipped to 0-1, x 255, rounded to uint8

Where it runs, and why there: in the batch reader, after a batch is read from the store (or
gathered from the split's copy on the device) and before the model sees it, with ``keras.ops`` on
the active backend: on JAX as one compiled function on the device where the batch lies
(:func:`augment_batch`), on TensorFlow eagerly. The models are left untouched: ``model.keras``
holds only the six stock architectures, loads without custom objects, and nothing of the
augmentation can be switched on by accident at inference (validation, test and predict read
clips without it). The parameters of a clip are drawn from its own generator seeded by
``(seed, epoch, row)``, so the same clip in the same epoch is transformed the same way whatever
batch or thread reads it, and a resumed run reads exactly the batches an uninterrupted one would
have. The noise comes from the backend's stateless generator seeded from ``(seed, epoch, rows of
the batch)``: reproducible too, but not the same numbers on TensorFlow and JAX.

The parameter draws are plain NumPy (:func:`draw_parameters`); :func:`transform` applies given
parameters, so a test can check the backend result against an independent NumPy computation.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass

import numpy as np

__all__ = [
    "PARAMETER_NAMES",
    "augment_batch",
    "augment_clips",
    "compiled_transform",
    "AugmentConfig",
    "draw_parameters",
    "identity_parameters",
    "mirror_clips",
    "mirror_parameters",
    "to_uint8",
    "transform",
    "warp_matrices",
]

# Keys of the parameter dict, each an array with one value per clip.
PARAMETER_NAMES = ("flip", "scale", "top", "left", "gamma", "contrast", "gain", "noise")


@dataclass(frozen=True)
class AugmentConfig:
    """Ranges of the random transform; every range is (low, high), inclusive.

    The defaults reach darker and brighter than the stored clips: gamma up to 2 and gain down to
    0.5 together make a dark clip about 8x darker in its mid-tones; gamma 0.6 and gain 1.3 make
    it brighter. Zoom up to 1/0.75 = 1.33x.
    """

    flip: float = 0.5  # probability of mirroring a clip left-right
    scale: tuple[float, float] = (0.75, 1.0)  # crop side as a fraction of the frame's side
    gamma: tuple[float, float] = (0.6, 2.0)  # drawn log-uniform
    contrast: tuple[float, float] = (0.7, 1.3)
    gain: tuple[float, float] = (0.5, 1.3)  # drawn log-uniform
    noise: tuple[float, float] = (0.0, 0.04)  # standard deviation in 0-1 units (0.04 ~ 10/255)

    def __post_init__(self) -> None:
        if not 0.0 <= self.flip <= 1.0:
            raise ValueError(f"flip must be a probability in [0, 1], got {self.flip}")
        for name, low_bound in (("scale", 0.0), ("gamma", 0.0), ("contrast", 0.0), ("gain", 0.0)):
            low, high = getattr(self, name)
            if not low_bound < low <= high:
                raise ValueError(
                    f"{name} must be (low, high) with 0 < low <= high, got {low, high}"
                )
        if self.scale[1] > 1.0:
            raise ValueError(f"scale must not exceed 1 (a crop inside the frame), got {self.scale}")
        if not 0.0 <= self.noise[0] <= self.noise[1]:
            raise ValueError(f"noise must be (low, high) with 0 <= low <= high, got {self.noise}")

    def to_dict(self) -> dict:
        return {
            key: list(value) if isinstance(value, tuple) else value
            for key, value in dataclasses.asdict(self).items()
        }

    @classmethod
    def from_dict(cls, values: dict) -> AugmentConfig:
        return cls(
            **{
                key: tuple(value) if isinstance(value, list) else value
                for key, value in values.items()
            }
        )


def draw_parameters(config: AugmentConfig, seed: int, epoch: int, rows) -> dict[str, np.ndarray]:
    """One draw of every parameter per clip, from a generator seeded by ``(seed, epoch, row)``.

    ``top`` and ``left`` place the crop window as fractions (0-1) of the room left around it.
    """
    rows = [int(row) for row in np.asarray(rows).reshape(-1)]
    values = {name: [] for name in PARAMETER_NAMES}
    for row in rows:
        generator = np.random.default_rng([seed, epoch, row, 0xA06])
        # A fixed number of draws in a fixed order, so one range never shifts another's values.
        uniform = generator.random(8)
        values["flip"].append(uniform[0] < config.flip)
        values["scale"].append(_between(config.scale, uniform[1]))
        values["top"].append(uniform[2])
        values["left"].append(uniform[3])
        values["gamma"].append(_log_between(config.gamma, uniform[4]))
        values["contrast"].append(_between(config.contrast, uniform[5]))
        values["gain"].append(_log_between(config.gain, uniform[6]))
        values["noise"].append(_between(config.noise, uniform[7]))
    return {
        name: np.asarray(column, dtype=bool if name == "flip" else np.float32)
        for name, column in values.items()
    }


def identity_parameters(count: int) -> dict[str, np.ndarray]:
    """Parameters that leave ``count`` clips unchanged."""
    ones, zeros = np.ones(count, np.float32), np.zeros(count, np.float32)
    return {
        "flip": np.zeros(count, bool),
        "scale": ones,
        "top": zeros,
        "left": zeros,
        "gamma": ones,
        "contrast": ones,
        "gain": ones,
        "noise": zeros,
    }


def mirror_parameters(count: int) -> dict[str, np.ndarray]:
    """Parameters that only mirror ``count`` clips left-right (a test-time view)."""
    parameters = identity_parameters(count)
    parameters["flip"] = np.ones(count, bool)
    return parameters


def warp_matrices(parameters: dict, height: int, width: int) -> np.ndarray:
    """(clips, 8) projective transforms, output pixel -> input pixel, as Keras expects them.

    Output pixel (x, y) reads input pixel ``(s*x + left*(1-s)*(w-1), s*y + top*(1-s)*(h-1))``,
    with x mirrored to ``w-1-x`` first when flipped: the crop window always lies inside the frame.
    """
    scale = np.asarray(parameters["scale"], np.float64)
    shift_x = np.asarray(parameters["left"], np.float64) * (1.0 - scale) * (width - 1)
    shift_y = np.asarray(parameters["top"], np.float64) * (1.0 - scale) * (height - 1)
    flip = np.asarray(parameters["flip"], bool)
    matrices = np.zeros((len(scale), 8), np.float64)
    matrices[:, 0] = np.where(flip, -scale, scale)
    matrices[:, 2] = np.where(flip, scale * (width - 1) + shift_x, shift_x)
    matrices[:, 4] = scale
    matrices[:, 5] = shift_y
    return matrices.astype(np.float32)


def transform(clips, parameters: dict, noise_seed: int | None = None):
    """Apply one set of parameters per clip to uint8 clips (batch, frames, h, w, 3).

    Returns a float32 backend tensor with values in 0-255 (not rounded). ``noise_seed`` None
    leaves the noise out whatever ``parameters["noise"]`` says.
    """
    from keras import ops

    height, width = clips.shape[2:4]
    matrices = warp_matrices(parameters, height, width)
    warp = not np.array_equal(matrices, np.repeat(_IDENTITY[None], len(matrices), axis=0))
    noisy = noise_seed is not None and float(np.max(parameters["noise"], initial=0.0)) > 0.0
    return _transform(
        ops.convert_to_tensor(clips),
        *_tensors(matrices, parameters, noise_seed if noisy else None),
        warp=warp,
    )


def _tensors(matrices: np.ndarray, parameters: dict, noise_seed: int | None) -> tuple:
    """The per-clip arguments of :func:`_transform` as backend tensors, and the noise's seed."""
    import keras
    from keras import ops

    names = ("gamma", "contrast", "gain", "noise")
    columns = [ops.convert_to_tensor(np.asarray(parameters[name], np.float32)) for name in names]
    seed = noise_seed
    if noise_seed is not None and keras.config.backend() == "jax":
        # What keras.random makes of an integer seed on JAX, [seed, 0], but as an argument: a
        # compiled transform then takes each batch's seed without being traced again.
        seed = ops.convert_to_tensor([noise_seed, 0], "uint32")
    return (ops.convert_to_tensor(matrices), *columns, seed)


def _transform(pixels, matrices, gamma, contrast, gain, noise, seed, warp: bool):
    """:func:`transform` on backend tensors; traceable, so JAX can compile it whole."""
    import keras
    from keras import ops

    batch, frames, height, width, channels = pixels.shape
    flat = ops.reshape(ops.cast(pixels, "float32"), (batch * frames, height, width, channels))
    if warp:
        # One matrix per clip, repeated for each of its frames: the same warp for the whole clip.
        flat = ops.image.affine_transform(
            flat,
            ops.repeat(matrices, frames, axis=0),
            interpolation="bilinear",
            fill_mode="nearest",
        )
    x = ops.reshape(flat, (batch, frames, height, width, channels)) / 255.0

    def per_clip(values):
        return ops.reshape(ops.convert_to_tensor(values), (batch, 1, 1, 1, 1))

    x = ops.power(x, per_clip(gamma))
    mean = ops.mean(x, axis=(1, 2, 3, 4), keepdims=True)
    x = (x - mean) * per_clip(contrast) + mean
    x = x * per_clip(gain)
    if seed is not None:
        x = x + keras.random.normal(ops.shape(x), seed=seed, dtype="float32") * per_clip(noise)
    return ops.clip(x, 0.0, 1.0) * 255.0


def to_uint8(pixels) -> np.ndarray:
    """A 0-255 float tensor as a rounded uint8 NumPy array."""
    from keras import ops

    return np.rint(ops.convert_to_numpy(pixels)).clip(0, 255).astype(np.uint8)


def augment_batch(clips, rows, config: AugmentConfig, seed: int, epoch: int):
    """The training transform of a batch: uint8 clips in, uint8 clips of the same shape out.

    ``clips`` may be NumPy or a backend tensor already on the device(s); the result is a
    backend tensor where the work was done, which on JAX is where ``clips`` lay (sharded alike
    over several devices), so a batch on the device never comes back to the host. On JAX the
    whole transform is one compiled function (:func:`compiled_transform`), whichever reader
    calls it, so the batches gathered on the device and those read from the store are the same
    bit for bit. ``rows`` are the clips' rows in their split (the key of each clip's draw).
    """
    import keras
    from keras import ops

    rows = np.asarray(rows).reshape(-1)
    if len(rows) != len(clips):
        raise ValueError(f"{len(clips)} clips but {len(rows)} rows")
    parameters = draw_parameters(config, seed, epoch, rows)
    noise_seed = int(np.random.default_rng([seed, epoch, *rows.tolist()]).integers(2**31 - 1))
    if keras.config.backend() != "jax":
        return ops.cast(ops.round(transform(clips, parameters, noise_seed)), "uint8")
    height, width = clips.shape[2:4]
    matrices = warp_matrices(parameters, height, width)
    warp = not np.array_equal(matrices, np.repeat(_IDENTITY[None], len(matrices), axis=0))
    noisy = float(np.max(parameters["noise"], initial=0.0)) > 0.0
    arguments = _tensors(matrices, parameters, noise_seed if noisy else None)
    return compiled_transform(getattr(clips, "sharding", None), warp)(clips, *arguments)


@functools.lru_cache(maxsize=16)
def compiled_transform(sharding, warp: bool):
    """The JAX-compiled uint8 -> uint8 transform whose result lies as ``sharding`` says.

    One per placement and warp (the seed None, for no noise, is traced apart by JAX itself): a
    batch sharded over several devices is transformed where it lies, each device its own clips,
    and stays sharded for the training step.
    """
    import jax
    from keras import ops

    def apply(pixels, matrices, gamma, contrast, gain, noise, seed):
        x = _transform(pixels, matrices, gamma, contrast, gain, noise, seed, warp=warp)
        return ops.cast(ops.round(x), "uint8")

    return jax.jit(apply, out_shardings=sharding)


def augment_clips(
    clips: np.ndarray, rows, config: AugmentConfig, seed: int, epoch: int
) -> np.ndarray:
    """:func:`augment_batch` as a uint8 NumPy array."""
    from keras import ops

    return np.asarray(ops.convert_to_numpy(augment_batch(clips, rows, config, seed, epoch)))


def mirror_clips(clips: np.ndarray) -> np.ndarray:
    """Clips mirrored left-right (exact: a pure reversal of the width axis)."""
    return np.ascontiguousarray(np.asarray(clips)[:, :, :, ::-1])


_IDENTITY = np.array([1, 0, 0, 0, 1, 0, 0, 0], np.float32)


def _between(bounds: tuple[float, float], uniform: float) -> float:
    low, high = bounds
    return low + (high - low) * uniform


def _log_between(bounds: tuple[float, float], uniform: float) -> float:
    low, high = bounds
    return math.exp(math.log(low) + (math.log(high) - math.log(low)) * uniform)
