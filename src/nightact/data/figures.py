"""What stands out of a clip's still picture: where its bright regions sit, how far they spread
and how much brighter they are than the scene around them.

A figure standing still in a dark room is the hardest case for the near-duplicate detector
(``nightact.data.leakage``). Re-encoding wipes the sensor noise its frames carried and the fine
detail of its outline, and added noise buries both, so a copy then looks like another take in the
same room. What such a copy keeps is the figure itself: the same place, the same size, the same
brightness, to a pixel. Another take puts the figure a few pixels elsewhere at least, makes it
taller or shorter, or lights it otherwise. ``regions_agree`` tells whether two clips hold their
regions at the same place, spread and contrast; the detector counts it only for pairs that are
near-still and alike in content.

How the regions are found (``still_regions``), and why:

1. The picture is the per-pixel temporal median of the clip's grey frames (the letterbox bars
   stripped by the caller), at full resolution: a place to a pixel needs the pixels.
2. The scene's light is a low percentile over a window a third of the height and a sixth of the
   width, wider than a figure (on means of 8x8 blocks, then smoothed and enlarged): the
   lamp's glow and the floor stay in it, the figure does not.
3. A pixel stands out when it lies DETECTION robust standard deviations above that light and at
   least PEAK_SHARE of the way to the brightest; connected pixels form a region. The largest
   region and those at least REGION_SHARE of its area (REGIONS at most) are kept: a lamp and a
   figure in one picture must then both agree.
4. Each region's place is its centre and spread (the brightness-weighted mean and standard
   deviation of its pixels' positions, as shares of the picture: a resized copy keeps them), and
   its level the 75th percentile of its brightness above the light.

Pictures whose short side is under MIN_SIDE pixels (the 60x80 pre-pass of ``--group-by
near-duplicates``, the demo's 48x64 store) are not measured: a pixel there is too coarse.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "CONTRAST_TOLERANCE",
    "DETECTION",
    "MIN_SIDE",
    "PEAK_SHARE",
    "PLACE_TOLERANCE",
    "REGION_SHARE",
    "REGIONS",
    "Regions",
    "regions_agree",
    "still_regions",
]

MIN_SIDE = 120  # pixels on the short side below which places are not measured
DETECTION = 4.0  # robust standard deviations above the light from which a pixel stands out
PEAK_SHARE = 0.3  # ... and the share of the way to the brightest pixel it must reach
REGION_SHARE = 0.25  # regions kept besides the largest: at least this share of its area
REGIONS = 3  # at most this many regions kept
# Measured on the copy corpora (benchmarks/leakage.py, seeds 0-3): copies of dark stills that are
# not cropped keep their regions within 0.0001-0.0059 of the picture and their level within 0.13
# (log ratio); other takes of one scene begin at 0.0032 (a stand on the same spot, 1 pixel off).
# The ranges overlap, so the tolerance sits below the closest take: at 0.0065 this evidence found
# 5 copies of dark stills over the four seeds but took takes of two scenes for copies; at 0.003,
# 3 and none (docs/leakage.md).
PLACE_TOLERANCE = 0.003  # largest difference of centre or spread, as a share of the picture
CONTRAST_TOLERANCE = 0.2  # largest |log| of the ratio of two regions' levels

_LIGHT_PERCENTILE = 10  # of the window: below the figure, above the darkest noise
_LIGHT_STEP = 8  # the light is estimated on means of 8x8 blocks: it is smooth


@dataclass(frozen=True)
class Regions:
    """The regions that stand out of one clip's still picture, largest first."""

    places: np.ndarray  # float32 (regions, 4): centre x, centre y, spread x, spread y (shares)
    levels: np.ndarray  # float32 (regions,): brightness above the light, grey levels
    areas: np.ndarray  # int64 (regions,): pixels


def _still_picture(frames: np.ndarray) -> np.ndarray:
    """Per-pixel temporal median of the grey frames, float32 (height, width)."""
    if frames.ndim == 4:
        # Sums of the three channels in uint16 (exact), divided once at the end: converting the
        # frames to float first costs more than the median itself.
        grey = frames[..., 0].astype(np.uint16)
        grey += frames[..., 1]
        grey += frames[..., 2]
        scale = 1.0 / 3.0
    else:
        grey, scale = frames, 1.0
    # A sort along time and its middle, faster than np.median over the first axis.
    ordered = np.sort(grey, axis=0)
    middle = ordered[(len(ordered) - 1) // 2].astype(np.float32)
    middle += ordered[len(ordered) // 2]
    return middle * np.float32(0.5 * scale)


def _light(picture: np.ndarray) -> np.ndarray:
    """The scene's smooth light under whatever stands out, at the picture's size."""
    from scipy import ndimage  # here, not at the top: importing it costs prepare 0.2 s to start

    height, width = picture.shape
    # Means of whole blocks, the leftover rows and columns split evenly between both borders:
    # a mirrored copy then has the same blocks mirrored, and measures the same (a subsample of
    # every 8th pixel put its figure a pixel off).
    rows, columns = height // _LIGHT_STEP, width // _LIGHT_STEP
    top, left = (height - rows * _LIGHT_STEP) // 2, (width - columns * _LIGHT_STEP) // 2
    inner = picture[top : top + rows * _LIGHT_STEP, left : left + columns * _LIGHT_STEP]
    small = inner.reshape(rows, _LIGHT_STEP, columns, _LIGHT_STEP).mean(axis=(1, 3))
    window = (max(3, rows // 3) | 1, max(3, columns // 6) | 1)
    light = ndimage.percentile_filter(small, _LIGHT_PERCENTILE, size=window, mode="nearest")
    light = ndimage.uniform_filter(light, size=5, mode="nearest")
    light = ndimage.zoom(light, _LIGHT_STEP, order=1, mode="nearest", grid_mode=True)
    bottom, right = height - top - rows * _LIGHT_STEP, width - left - columns * _LIGHT_STEP
    return np.pad(light, ((top, bottom), (left, right)), mode="edge")


def still_regions(frames: np.ndarray) -> Regions | None:
    """The regions of uint8 (frames, height, width[, 3]) pixels, letterbox bars already stripped
    (``leakage.content_box``); None when the picture is too small (MIN_SIDE) or nothing stands
    out."""
    from scipy import ndimage  # see _light

    frames = np.asarray(frames)
    if min(frames.shape[1:3]) < MIN_SIDE:
        return None
    picture = _still_picture(frames)
    height, width = picture.shape
    above = ndimage.gaussian_filter(picture - _light(picture), 1.0)
    spread = 1.4826 * float(np.median(np.abs(above - np.median(above))))
    peak = float(np.percentile(above, 99.9))
    floor = max(DETECTION * spread, PEAK_SHARE * peak)
    if peak <= 0 or floor <= 0:
        return None
    labels, count = ndimage.label(above > floor)
    if count == 0:
        return None
    areas = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    order = np.argsort(-areas, kind="stable")
    order = order[areas[order] >= REGION_SHARE * areas[order[0]]][:REGIONS]
    rows = (np.arange(height) + 0.5) / height
    columns = (np.arange(width) + 0.5) / width
    places, levels = [], []
    for index in order:
        inside = labels == index + 1
        weights = np.where(inside, above, 0.0)
        total = float(weights.sum())
        by_row, by_column = weights.sum(axis=1) / total, weights.sum(axis=0) / total
        centre_y, centre_x = float(by_row @ rows), float(by_column @ columns)
        spread_y = float(np.sqrt(by_row @ (rows - centre_y) ** 2))
        spread_x = float(np.sqrt(by_column @ (columns - centre_x) ** 2))
        places.append((centre_x, centre_y, spread_x, spread_y))
        levels.append(float(np.percentile(above[inside], 75)))
    return Regions(
        places=np.array(places, dtype=np.float32),
        levels=np.array(levels, dtype=np.float32),
        areas=areas[order].astype(np.int64),
    )


def regions_agree(
    a: Regions | None,
    b: Regions | None,
    mirror: bool,
    place: float = PLACE_TOLERANCE,
    contrast: float = CONTRAST_TOLERANCE,
) -> bool:
    """Whether two clips hold as many regions, each at the same place and spread (within
    ``place``, as a share of the picture) and as bright (within ``contrast``, |log| of the
    ratio), ``b`` mirrored left to right when ``mirror``. False when either is None."""
    if a is None or b is None or len(a.levels) != len(b.levels):
        return False
    theirs = b.places.astype(np.float64)
    if mirror:
        theirs[:, 0] = 1.0 - theirs[:, 0]
    free = list(range(len(theirs)))
    for ours, level in zip(a.places.astype(np.float64), a.levels, strict=True):
        # Regions are matched by place, not by rank of area: noise can swap two of like size.
        gaps = [float(np.abs(ours - theirs[k]).max()) for k in free]
        nearest = free[int(np.argmin(gaps))]
        if min(gaps) > place or level <= 0 or b.levels[nearest] <= 0:
            return False
        if abs(float(np.log(level / b.levels[nearest]))) > contrast:
            return False
        free.remove(nearest)
    return True
