"""Find near-duplicate clips in a prepared store: copies of one recording that would leak.

A dataset of "modified" videos may hold several copies of one recording: re-encoded, resized,
mirrored, brightened, noisier, trimmed or cropped. A random split puts such copies in train and
test, and the test score then measures memory. This module finds them from the frames already in
a prepared store (``nightact prepare``), with NumPy and SciPy (no Keras), and writes::

    STORE/leakage.csv    path_a, split_a, path_b, split_b, similarity, appearance, motion,
                         detail, noise, mirrored, cluster  (paths as in manifest.csv; cross-split
                         pairs, and within-split ones on request), most similar first
    STORE/leakage.json   the LeakageConfig and the summary (pairs across / within splits,
                         clusters, seconds)

How a clip becomes a signature (``clip_signature``), and why:

1. Grey, then the letterbox bars are stripped (rows and columns black in every frame, as wide on
   both sides: letterboxing centres the picture, a dark floor or sky does not come in pairs).
2. Halved until about 64 pixels remain on the short side, then a 3x3 median filter: white speckle
   noise and hot pixels are single bright pixels that a mean would smear into every cell.
3. Averaged over a 2 GRID x 2 GRID grid of the content, whatever its aspect ratio (the *fine*
   cells, kept), then over GRIDxGRID cells blurred across neighbours, so a crop of up to ~10 % of
   each border moves content by less than a cell.
4. Log, then standardised over the whole clip: a gain becomes an offset and a gamma a factor,
   both removed, and night frames that are "all nearly black" spread over the full range.
5. Views: *appearance* (each frame less its smooth light), *motion* (each frame less the clip's
   per-cell temporal median, the *scene*), and the scene's *light* (a low rank over windows wider
   than a figure: the lamp and the floor without the figure).

Two signatures are compared in two steps.

*Content* (``compare_signatures``), as sequences: a store holds N frames sampled evenly over each
clip, so a copy trimmed at either end is sampled at other moments. Every alignment
``t_a = start + (1 - start - end) * t_b`` with trims in [-MAX_TRIM, MAX_TRIM] is tried, the first
clip's frames interpolated at the aligned times, with and without mirroring; each alignment costs
a little (WARP_PENALTY) so that trying many is not a way for different clips to line up. The
content is the lowest of appearance, motion (counted as far as it rises above noise), scene and
light. Pairs whose content is alike are also compared against crops of either clip.

*Verification* (``verify_pairs``) of the pairs whose content is alike (VERIFY_FLOOR): the content
of two takes of one action, two figures standing still in two dark rooms, can be as alike as a
copy's. Two things tell them apart. Copies hold the same frames, and the same frames carry the
same sensor *noise*, drawn anew in every frame of every recording (``noise``: correlation above
chance of what changes from frame to frame); such a pair keeps only NOISE_DISCOUNT of its distance
from a perfect match. Re-encoding wipes that noise out; without it, two clips of one shape (no
crop relates them) must also agree in fine *detail*, at 48x48 cells with the smooth light removed:
still clips in their temporal median, moving ones frame by frame. Different recordings differ
there by a few percent of position, size or pose; copies do not. Clips of different shapes may be
crops of each other (``_cropped_noise``): the crop is found on their still pictures (keeping the
crop's pixel shape) and refined on their noise, and a crop keeps the frames' noise, shifted. So may
clips of one shape whose content is nearly equal but whose detail is not alike at all.
Near-still clips of one aspect ratio that hold what stands out of their still pictures (a
figure, a lamp) at the same place, spread and brightness to a pixel (``nightact.data.figures``)
count as alike as their content without light: a re-encoded or noisier copy of a figure standing
in the dark keeps neither noise nor detail, but keeps its figure where it was, and another take
does not. Last, takes filmed by one fixed camera share their whole background, so content,
detail and even some noise (an encoder's frozen blocks) agree: where both clips hold clear
foreground motion (people walking through the scene), they must also move alike there
(``foreground_agreement``).

A store of thousands of clips has millions of pairs: each clip is compared in full only with its
``candidates`` nearest neighbours by a cheap, mirror- and trim-invariant summary (the time-mean of
both views, made left-right symmetric). Exact copies (equal sha256 in the manifest) are always
reported, with similarity 1.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import io
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from nightact.core import files
from nightact.core.store import SPLIT_NAMES, open_split, read_manifest
from nightact.data.figures import Regions, regions_agree, still_regions

__all__ = [
    "CROP_DETAIL",
    "CROP_FLOOR",
    "CROP_FLOOR_SAME_SHAPE",
    "CROP_SEARCH",
    "CROPS",
    "CSV_COLUMNS",
    "CSV_NAME",
    "FOREGROUND_SHARE",
    "FOREGROUND_SLACK",
    "FOREGROUND_STRENGTH",
    "FIGURE_ASPECT",
    "JSON_NAME",
    "MAX_TRIM",
    "MOVING_SLACK",
    "NOISE_DISCOUNT",
    "SHARED_NOISE",
    "STILL_ENERGY",
    "STILL_SLACK",
    "TRIM_STEPS",
    "VERIFY_FLOOR",
    "WARP_PENALTY",
    "candidate_pairs",
    "check_store",
    "clip_signature",
    "compare_signatures",
    "connected_components",
    "content_box",
    "crop_variants",
    "find_near_duplicates",
    "foreground_agreement",
    "LeakageConfig",
    "LeakageReport",
    "Pair",
    "read_pairs",
    "Signature",
    "store_signatures",
    "verify_pairs",
    "write_report",
]

log = logging.getLogger(__name__)

CSV_NAME = "leakage.csv"
JSON_NAME = "leakage.json"
CSV_COLUMNS = (
    "path_a",
    "split_a",
    "path_b",
    "split_b",
    "similarity",
    "appearance",
    "motion",
    "detail",
    "noise",
    "mirrored",
    "cluster",
)
MAX_TRIM = 0.2  # the largest share of a clip cut at either end that alignment still finds
TRIM_STEPS = 9  # steps of the trim grid: (2 * TRIM_STEPS - 1) offsets x (TRIM_STEPS + 2) scales
_WORK_SIDE = 48  # short side, in pixels, from which clips are halved before the median filter
_FINE = 2  # fine cells per signature cell, kept to derive crop variants
CROPS = (0.0, 0.04, 0.08)  # share cut from each border (per axis) in the crop variants
VERIFY_FLOOR = 0.6  # content score from which a pair is compared with crops and verified
WARP_PENALTY = 0.05  # content lost per unit of |offset| + |log scale| of a trim alignment
SHARED_NOISE = 0.1  # noise score (above chance) from which two clips hold the same frames
NOISE_DISCOUNT = 0.4  # share of (1 - content) left for pairs with the same frames
CROP_FLOOR = 0.8  # content (without light) from which a pair's noise is searched under crops
CROP_FLOOR_SAME_SHAPE = 0.9  # ... for a pair of one shape, whose detail must also differ:
CROP_DETAIL = 0.25  # detail below which alike clips of one shape may be a crop of each other
CROP_SEARCH = 0.15  # the largest share of each border that the crop search cuts
_CROP_COARSE = (0.0, 0.05, 0.1, 0.15)  # borders of the crop search's first, coarse grid
_CROP_STEPS = (0.025, 0.0125, 0.006, 0.003)  # its refinement on the still pictures
_NOISE_STEPS = (0.008, 0.004, 0.002)  # ... and then on the noise
STILL_ENERGY = 0.12  # motion energy below which a clip's detail is its still picture
STILL_SLACK = 0.08  # detail + slack caps the similarity of a still pair of one shape
MOVING_SLACK = 0.15  # ... and of a moving pair of one shape
FOREGROUND_SHARE = 0.05  # a clip's foreground: the share of its cells that move the most
FOREGROUND_STRENGTH = 3.0  # foreground motion, in typical cells' motion, that people make
FOREGROUND_SLACK = 0.12  # foreground agreement + slack caps the similarity of such a pair
FIGURE_ASPECT = 0.01  # |log| of the ratio of two aspect ratios that a resize keeps
_MOTION_BLURS = 2  # [1, 2, 1] passes over the motion view
_HIGH_PASS_BLURS = 8  # [1, 2, 1] passes of the background estimate: sigma 2 cells
_DETAIL_BLURS = 2  # [1, 2, 1] passes of the smooth part removed from fine cells (detail, noise)
_LIGHT_WINDOW = 9  # cells per side of the window whose low rank estimates the scene's light
_LIGHT_RANK = 0.1  # rank, as a share of that window, taken as the light without the figure
_PAD_LEVEL = 2  # a row or column no brighter than this in every frame is letterbox padding
_PAD_SLACK = 2  # pixels by which top and bottom (or left and right) padding may differ


@dataclass
class LeakageConfig:
    """Settings of one leakage check; saved in ``STORE/leakage.json``."""

    store: str | os.PathLike
    within: bool = False  # also report pairs inside one split
    threshold: float = 0.87  # similarity from which two clips count as near-duplicates
    grid: int = 24  # cells per side of the signature grid
    candidates: int = 10  # nearest neighbours per clip compared in full (0: every pair)
    static_motion: float = 0.1  # motion energy (RMS) up to which motion is mostly noise
    motion_floor: float = 0.0  # weight of motion in static clips (their noise is scored apart)
    batch_pairs: int = 2048  # pairs compared at once (memory: ~batch x 2 x frames^2 floats)

    def __post_init__(self) -> None:
        self.store = str(self.store)
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {self.threshold}")
        if self.grid < 4:
            raise ValueError(f"grid must be at least 4, got {self.grid}")
        if self.candidates < 0:
            raise ValueError(f"candidates must not be negative, got {self.candidates}")
        if self.batch_pairs < 1:
            raise ValueError(f"batch_pairs must be positive, got {self.batch_pairs}")


@dataclass
class Signature:
    """What the detector keeps of one clip: two views of each frame on the grid."""

    appearance: np.ndarray  # float32 (frames, grid, grid), ranks centred on 0
    motion: np.ndarray  # float32 (frames, grid, grid), ranks minus their temporal median
    motion_energy: float  # root mean square of ``motion``
    scene: np.ndarray  # float32 (grid, grid), per-cell temporal median, centred
    light: np.ndarray  # float32 (grid, grid), the scene with the figure ranked away, centred
    fine: np.ndarray  # float16 (frames, 2 grid, 2 grid) cell means: crop variants, detail, noise
    size: tuple[int, int] = (0, 0)  # (height, width) in pixels of the content (no letterbox)
    regions: Regions | None = None  # what stands out of the still picture (nightact.data.figures)


@dataclass
class Pair:
    """Two clips the detector holds for copies of one recording."""

    path_a: str
    split_a: str
    path_b: str
    split_b: str
    similarity: float
    appearance: float
    motion: float
    mirrored: bool
    cluster: int = -1
    detail: float = 0.0  # fine-grained agreement of the two clips, as verify_pairs measures it
    noise: float = 0.0  # agreement of their sensor noise: the same frames

    @property
    def cross_split(self) -> bool:
        return self.split_a != self.split_b


@dataclass
class LeakageReport:
    """Every near-duplicate pair found, their clusters, and a summary for people."""

    config: LeakageConfig
    clips: list[tuple[str, str]]  # (path, split) of every clip looked at
    pairs: list[Pair]  # every pair at or above the threshold, within splits too
    clusters: list[list[str]]  # connected components of ``pairs`` with two or more clips
    seconds: float = 0.0
    compared: int = 0  # pairs compared in full
    extra: dict = field(default_factory=dict)

    @property
    def cross_pairs(self) -> list[Pair]:
        return [pair for pair in self.pairs if pair.cross_split]

    @property
    def within_pairs(self) -> list[Pair]:
        return [pair for pair in self.pairs if not pair.cross_split]

    def summary(self) -> dict:
        leaking = [c for c in self.clusters if len({self._split[p] for p in c}) > 1]
        return {
            "clips": len(self.clips),
            "pairs_across_splits": len(self.cross_pairs),
            "pairs_within_splits": len(self.within_pairs),
            "clusters": len(self.clusters),
            "clusters_across_splits": len(leaking),
            "clips_in_clusters": sum(len(c) for c in self.clusters),
            "pairs_compared": self.compared,
            "threshold": self.config.threshold,
            "seconds": round(self.seconds, 3),
        }

    @property
    def _split(self) -> dict[str, str]:
        return dict(self.clips)

    def table(self) -> str:
        summary = self.summary()
        lines = [
            f"clips checked            {summary['clips']}",
            f"pairs across splits      {summary['pairs_across_splits']}",
            f"pairs within a split     {summary['pairs_within_splits']}",
            f"clusters (>= 2 clips)    {summary['clusters']} "
            f"({summary['clusters_across_splits']} spanning splits, "
            f"{summary['clips_in_clusters']} clips)",
            f"threshold                {summary['threshold']}",
            f"time                     {summary['seconds']:.1f} s "
            f"({summary['pairs_compared']} pairs compared in full)",
        ]
        shown = self.cross_pairs[:10]
        if shown:
            lines.append("")
            lines.append("most similar pairs across splits:")
            for pair in shown:
                lines.append(
                    f"  {pair.similarity:.3f}  {pair.split_a}:{pair.path_a}  "
                    f"{pair.split_b}:{pair.path_b}"
                )
        return "\n".join(lines)


# --- one clip ------------------------------------------------------------------------------------


def content_box(frames: np.ndarray) -> tuple[slice, slice]:
    """Rows and columns of a stored clip that are not letterbox padding (black in every frame).

    Letterboxing centres the picture, so its bars are as wide on both sides. Dark bands that are
    not (the black floor of a very dark scene, the sky above a figure) are content and kept.
    """
    # An elementwise maximum over frames, then over the small picture: reducing a big uint8
    # array over several axes at once is many times slower.
    brightest = np.maximum.reduce(frames, axis=0)
    if brightest.ndim == 3:
        brightest = np.maximum.reduce(brightest, axis=2)
    return _centred_span(brightest.max(axis=1)), _centred_span(brightest.max(axis=0))


def _centred_span(profile: np.ndarray) -> slice:
    """The span of a brightness profile between equal dark margins (letterbox bars)."""
    lit = np.flatnonzero(profile > _PAD_LEVEL)
    if len(lit) == 0:
        return slice(None)
    before, after = int(lit[0]), len(profile) - 1 - int(lit[-1])
    if abs(before - after) > _PAD_SLACK:
        return slice(None)
    bar = min(before, after)
    return slice(bar, len(profile) - bar)


def _halve(grey: np.ndarray) -> np.ndarray:
    """Mean of each 2x2 block (an odd last row or column is dropped)."""
    height, width = grey.shape[1] // 2 * 2, grey.shape[2] // 2 * 2
    return (
        grey[:, 0:height:2, 0:width:2]
        + grey[:, 1:height:2, 0:width:2]
        + grey[:, 0:height:2, 1:width:2]
        + grey[:, 1:height:2, 1:width:2]
    ) * 0.25


def _median3(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    return np.maximum(np.minimum(a, b), np.minimum(np.maximum(a, b), c))


def _median3x3(grey: np.ndarray) -> np.ndarray:
    """Separable 3x3 median (a median of 3 down, then across): removes single bright pixels at
    a fraction of the cost of a full median; edges repeated."""
    padded = np.pad(grey, ((0, 0), (1, 1), (0, 0)), mode="edge")
    grey = _median3(padded[:, :-2], padded[:, 1:-1], padded[:, 2:])
    padded = np.pad(grey, ((0, 0), (0, 0), (1, 1)), mode="edge")
    return _median3(padded[:, :, :-2], padded[:, :, 1:-1], padded[:, :, 2:])


def _cell_means(grey: np.ndarray, grid: int) -> np.ndarray:
    """Mean of each of GRIDxGRID cells, with cell edges spread evenly over any size."""
    _, height, width = grey.shape
    if height < grid or width < grid:
        # Fewer pixels than cells: repeat pixels so every cell has at least one.
        grey = np.repeat(np.repeat(grey, -(-grid // height), axis=1), -(-grid // width), axis=2)
        _, height, width = grey.shape
    # Rounded edges are symmetric, so a mirrored clip falls on mirrored cells.
    row_edges = np.round(np.linspace(0, height, grid + 1)).astype(int)
    column_edges = np.round(np.linspace(0, width, grid + 1)).astype(int)
    sums = np.add.reduceat(np.add.reduceat(grey, row_edges[:-1], axis=1), column_edges[:-1], axis=2)
    counts = np.outer(np.diff(row_edges), np.diff(column_edges))
    return sums / counts


@functools.lru_cache(maxsize=32)
def _blur_matrix(size: int, passes: int) -> np.ndarray:
    """(size, size) matrix of ``passes`` [1, 2, 1] / 4 blurs, edges repeated."""
    single = np.zeros((size, size))
    for i in range(size):
        for offset, weight in ((-1, 0.25), (0, 0.5), (1, 0.25)):
            single[i, min(max(i + offset, 0), size - 1)] += weight
    return np.linalg.matrix_power(single, passes).astype(np.float32)


def _blur_cells(cells: np.ndarray, passes: int = 1) -> np.ndarray:
    """``passes`` [1, 2, 1] blurs across neighbouring cells, both ways (edges repeated)."""
    rows = _blur_matrix(cells.shape[-2], passes)
    columns = _blur_matrix(cells.shape[-1], passes)
    return rows @ cells @ columns.T


def _fine_cells(content: np.ndarray, cells: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Mean brightness of CELLSxCELLS cells of the content (the frames without letterbox bars),
    speckles filtered out first, and the content's (height, width) in pixels."""
    size = (int(content.shape[1]), int(content.shape[2]))
    while min(content.shape[1:3]) >= 4 * _WORK_SIDE:
        # Every other pixel of a large frame: the cells average hundreds of pixels anyway, and
        # converting all of them to grey is most of the cost of a signature.
        content = content[:, ::2, ::2]
    if content.ndim == 4:
        # Channel by channel: elementwise adds are far faster than a mean over the last axis.
        grey = content[..., 0].astype(np.float32)
        grey += content[..., 1]
        grey += content[..., 2]
        grey *= 1.0 / 3.0
    else:
        grey = content.astype(np.float32)
    while min(grey.shape[1:]) >= 2 * _WORK_SIDE:
        grey = _halve(grey)
    if min(grey.shape[1:]) >= 3:
        grey = _median3x3(grey)
    return _cell_means(grey, cells), size


def _resampling(cells: int, grid: int, start: float, end: float) -> np.ndarray:
    """(grid, cells) weights averaging the part [start, 1 - end] of CELLS cells into GRID."""
    low = start * cells
    width = (1.0 - start - end) * cells / grid
    out_low = low + width * np.arange(grid)[:, None]
    in_low = np.arange(cells)[None, :]
    overlap = np.clip(
        np.minimum(out_low + width, in_low + 1) - np.maximum(out_low, in_low), 0, None
    )
    return (overlap / width).astype(np.float32)


def _low_rank_filter(cells: np.ndarray, window: int, rank: float) -> np.ndarray:
    """Each cell's RANK quantile over the WINDOWxWINDOW cells around it (edges repeated)."""
    pad = window // 2
    windows = np.lib.stride_tricks.sliding_window_view(
        np.pad(cells, pad, mode="edge"), (window, window)
    ).reshape(*cells.shape, -1)
    k = int(round(rank * (window * window - 1)))
    return np.partition(windows, k, axis=-1)[..., k]


def _signature_from_fine(
    fine: np.ndarray,
    grid: int,
    crop: tuple[float, float, float, float] = (0, 0, 0, 0),
    size: tuple[int, int] = (0, 0),
) -> Signature:
    """The signature of the part of a clip left by ``crop`` (top, bottom, left, right)."""
    fine = fine.astype(np.float32)
    rows = _resampling(fine.shape[1], grid, crop[0], crop[1])
    columns = _resampling(fine.shape[2], grid, crop[2], crop[3])
    cells = rows @ fine @ columns.T
    # In log space a gain is an offset and a gamma a factor: standardising over the whole clip
    # removes both, while keeping the order of brightness between frames.
    cells = np.log1p(np.maximum(_blur_cells(cells), 0))
    cells = (cells - cells.mean()) / max(float(cells.std()), 1e-6)
    # Appearance keeps what stands out from its surroundings (a figure, a prop), not the smooth
    # light of a lamp or the floor that every take in the same scene shares.
    smooth = _blur_cells(cells, _HIGH_PASS_BLURS)
    appearance = (cells - smooth).astype(np.float32)
    scene = np.median(cells, axis=0)
    motion = cells - scene
    # Re-encoding noise flickers from cell to cell; a moving limb spans several cells.
    motion = _blur_cells(motion, _MOTION_BLURS)
    motion = motion.astype(np.float32)
    energy = float(np.sqrt(np.mean(motion**2)))
    # The light of the scene (a lamp's glow, a lit floor) under the figure and its props: they are
    # brighter than their surroundings, so a low rank over a window wider than them leaves them
    # out. Two clips filmed under other lamps differ here even when their figures coincide.
    light = _blur_cells(_low_rank_filter(scene, _LIGHT_WINDOW, _LIGHT_RANK), 2)
    return Signature(
        appearance=appearance,
        motion=motion,
        motion_energy=energy,
        scene=(scene - scene.mean()).astype(np.float32),
        light=(light - light.mean()).astype(np.float32),
        fine=fine.astype(np.float16),
        size=size,
    )


def clip_signature(frames: np.ndarray, grid: int = 24) -> Signature:
    """The signature of one stored clip, uint8 (frames, height, width, 3) or (frames, h, w)."""
    frames = np.asarray(frames)
    if frames.ndim not in (3, 4) or frames.shape[0] < 1:
        raise ValueError(f"expected (frames, height, width[, 3]) pixels, got {frames.shape}")
    rows, columns = content_box(frames)
    content = frames[:, rows, columns]
    fine, size = _fine_cells(content, _FINE * grid)
    signature = _signature_from_fine(fine, grid, size=size)
    # Measured on every clip, not only near-still ones: noise added to a copy makes it flicker
    # like a moving clip, though its figure stands where it stood.
    signature.regions = still_regions(content)
    return signature


def crop_variants(signature: Signature) -> list[Signature]:
    """Signatures of the clip with each of CROPS cut from its borders: what a cropped copy of
    it shows."""
    grid = signature.appearance.shape[1]
    return [
        _signature_from_fine(
            signature.fine, grid, (vertical, vertical, across, across), signature.size
        )
        for vertical in CROPS
        for across in CROPS
        if vertical or across
    ]


# --- comparing clips -----------------------------------------------------------------------------


def _trim_grid() -> tuple[np.ndarray, np.ndarray]:
    """Offsets and scales of every trim hypothesis (see :func:`_alignments`)."""
    widest = 1.0 / (1.0 - 2 * MAX_TRIM)
    offsets = np.linspace(-MAX_TRIM * widest, MAX_TRIM, 2 * TRIM_STEPS - 1)
    scales = np.geomspace(1.0 / widest, widest, TRIM_STEPS + 2)
    offset, scale = (grid.ravel() for grid in np.meshgrid(offsets, scales, indexing="ij"))
    return offset, scale


def _warp_penalties() -> np.ndarray:
    """What each trim hypothesis costs: untrimmed copies are the common case, and every
    hypothesis tried is one more chance for two different clips to line up by accident."""
    offset, scale = _trim_grid()
    return (WARP_PENALTY * (np.abs(offset) + np.abs(np.log(scale)))).astype(np.float32)


def _alignments(frames: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """For every trim hypothesis, where each frame of clip b falls among the frames of clip a.

    Clip a covers [start_a, 1 - end_a] of the recording and clip b [start_b, 1 - end_b], so a
    time u_b in b is u_a = offset + scale * u_b in a. Offsets and scales are tried over the range
    that trims of up to MAX_TRIM at each end of either clip produce. Returns floor indices, ceil
    indices, interpolation weights (hypotheses, frames) and a validity mask (b's frame falls
    inside a's sampled span).
    """
    offset, scale = _trim_grid()
    # Sampled frame i sits at time i / frames of its clip (prepare's int(i * total / N)).
    times_b = np.arange(frames) / frames
    position = (offset[:, None] + scale[:, None] * times_b[None, :]) * frames
    valid = (position >= -0.5) & (position <= frames - 0.5)
    position = np.clip(position, 0, frames - 1)
    floor = np.floor(position).astype(int)
    ceil = np.minimum(floor + 1, frames - 1)
    weight = (position - floor).astype(np.float32)
    return floor, ceil, weight, valid


def _aligned_scores(a: np.ndarray, b: np.ndarray, alignment: tuple, centred: bool) -> np.ndarray:
    """Correlation of a (interpolated) with b over aligned frames, for every pair and hypothesis.

    ``a`` and ``b`` are (pairs, frames, features). Returns (pairs, hypotheses).
    """
    floor, ceil, weight, valid = alignment
    # Batched matrix products (BLAS), not einsum: this is where the detector spends its time.
    cross = a @ b.transpose(0, 2, 1)  # <a_i, b_j>
    gram = a @ a.transpose(0, 2, 1)  # <a_i, a_k>
    norms_b = np.einsum("pjf,pjf->pj", b, b)
    frames_b = np.arange(b.shape[1])[None, :]
    # <interp a at b_j's time, b_j>: linear in the two neighbouring frames of a.
    dot = (1 - weight) * cross[:, floor, frames_b] + weight * cross[:, ceil, frames_b]
    square = (
        (1 - weight) ** 2 * gram[:, floor, floor]
        + 2 * weight * (1 - weight) * gram[:, floor, ceil]
        + weight**2 * gram[:, ceil, ceil]
    )
    if centred:
        # Appearance: mean over aligned frames of each frame's correlation.
        per_frame = dot / np.sqrt(np.maximum(square * norms_b[:, None, :], 1e-12))
        per_frame = np.where(valid, per_frame, 0.0)
        return per_frame.sum(axis=2) / valid.sum(axis=1)
    # Motion: one correlation over all aligned frames together, so still frames weigh little.
    numerator = np.where(valid, dot, 0.0).sum(axis=2)
    energy_a = np.where(valid, square, 0.0).sum(axis=2)
    energy_b = np.where(valid, norms_b[:, None, :], 0.0).sum(axis=2)
    return numerator / np.sqrt(np.maximum(energy_a * energy_b, 1e-12))


def _correlations(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise correlation of two (pairs, features) arrays of centred rows."""
    numerator = np.einsum("pf,pf->p", a, b)
    return numerator / np.sqrt(np.maximum((a * a).sum(axis=1) * (b * b).sum(axis=1), 1e-12))


def compare_signatures(
    first: list[Signature],
    second: list[Signature],
    static_motion: float = 0.1,
    motion_floor: float = 0.0,
) -> np.ndarray:
    """Content similarity of each pair (first[k], second[k]): (pairs, 5) columns content,
    appearance, motion, mirrored (1.0 when the mirrored alignment won), and the content without
    the scene's light.

    The content is the lowest of appearance, motion (weighted by how far it rises above noise),
    the static scene and its light, at the best trim alignment less what that alignment costs.
    The light is the darkest part of the picture, which noise and gamma change most: where two
    clips share their frames' noise (verify_pairs), it is left out.
    """
    if len(first) != len(second):
        raise ValueError("compare_signatures needs two lists of equal length")
    if not first:
        return np.zeros((0, 5), dtype=np.float32)
    frames = first[0].appearance.shape[0]
    alignment = _alignments(frames)
    min_valid = alignment[3].sum(axis=1) >= max(2, frames // 2)
    penalties = _warp_penalties()

    def stack(signatures, view, mirror=False):
        values = np.stack([getattr(s, view) for s in signatures]).astype(np.float32)
        if mirror:
            values = values[..., ::-1]
        values = values.reshape(len(signatures), frames, -1)
        if view == "appearance":
            values = values - values.mean(axis=2, keepdims=True)
        return values

    def stack_still(signatures, view, mirror=False):
        values = np.stack([getattr(s, view) for s in signatures]).astype(np.float32)
        return (values[..., ::-1] if mirror else values).reshape(len(signatures), -1)

    energy = np.array(
        [min(a.motion_energy, b.motion_energy) for a, b in zip(first, second, strict=True)]
    )
    motion_weight = np.clip((energy - static_motion) / static_motion, motion_floor, 1.0)
    results = []
    for mirror in (False, True):
        appearance = _aligned_scores(
            stack(first, "appearance"), stack(second, "appearance", mirror), alignment, True
        )
        motion = _aligned_scores(
            stack(first, "motion"), stack(second, "motion", mirror), alignment, False
        )
        # Motion counts in proportion to how far it rises above the noise floor.
        trusted = motion_weight[:, None] * motion + (1 - motion_weight[:, None]) * appearance
        scene = _correlations(stack_still(first, "scene"), stack_still(second, "scene", mirror))
        light = _correlations(stack_still(first, "light"), stack_still(second, "light", mirror))
        unlit = np.minimum(np.minimum(appearance, trusted), scene[:, None]) - penalties[None, :]
        combined = np.minimum(unlit, light[:, None] - penalties[None, :])
        combined = np.where(min_valid[None, :], combined, -1.0)
        best = combined.argmax(axis=1)
        rows = np.arange(len(first))
        results.append(
            np.stack(
                [
                    combined[rows, best],
                    appearance[rows, best],
                    motion[rows, best],
                    np.where(min_valid[best], unlit[rows, best], -1.0),
                ],
                axis=1,
            )
        )
    plain, mirrored = results
    use_mirror = mirrored[:, 0] > plain[:, 0]
    chosen = np.where(use_mirror[:, None], mirrored, plain)
    return np.column_stack([chosen[:, :3], use_mirror.astype(np.float32), chosen[:, 3]]).astype(
        np.float32
    )


# --- verifying a pair: the same detail? the same frames? -----------------------------------------


@dataclass
class _Fine:
    """What verification needs of one clip, from its fine cells (both ways round)."""

    detail: np.ndarray  # float32 (frames, cells): each frame less its smooth part
    still: np.ndarray  # float32 (cells,): the temporal median less its smooth part
    noise: np.ndarray  # float32 (frames, cells): what changes from frame to frame, finest scale
    quiet: np.ndarray  # bool (cells,): cells where nothing moves, so that change is noise
    side: int  # cells per side


def _standard_cells(signature: Signature, mirror: bool) -> np.ndarray:
    """The fine cells in log, standardised over the clip (frames, side, side), mirrored or not."""
    cells = np.log1p(np.maximum(signature.fine.astype(np.float32), 0))
    # The log makes a gain an offset and a gamma a factor; standardising removes both.
    cells = (cells - cells.mean()) / max(float(cells.std()), 1e-6)
    return cells[..., ::-1] if mirror else cells


def _fine_views(signature: Signature, mirror: bool) -> _Fine:
    return _views_of_cells(_standard_cells(signature, mirror))


def _views_of_cells(cells: np.ndarray) -> _Fine:
    """Detail, still picture, noise and quiet cells of standardised fine cells."""
    frames, side = cells.shape[0], cells.shape[-1]
    detail = cells - _blur_cells(cells, _DETAIL_BLURS)
    median = np.median(cells, axis=0)
    change = cells - median
    smooth = _blur_cells(change, _DETAIL_BLURS)
    # A moving figure changes whole neighbourhoods of cells; sensor noise does not. Cells whose
    # smoothed change stays within twice the clip's typical value, and their neighbours, are quiet.
    moving = np.abs(smooth).max(axis=0)
    quiet = np.pad(moving <= 2.0 * np.median(moving), 1, constant_values=False)
    quiet = np.lib.stride_tricks.sliding_window_view(quiet, (3, 3)).all(axis=(-1, -2))
    return _Fine(
        detail=detail.reshape(frames, -1),
        still=(median - _blur_cells(median, _DETAIL_BLURS)).ravel(),
        noise=(change - smooth).reshape(frames, -1),
        quiet=quiet.ravel(),
        side=side,
    )


def _unit_rows(values: np.ndarray) -> np.ndarray:
    values = values - values.mean(axis=-1, keepdims=True)
    return values / np.maximum(np.linalg.norm(values, axis=-1, keepdims=True), 1e-9)


def _best_frames(a_noise, a_quiet, b_noise, b_quiet) -> float:
    """Mean over the frames of both clips of the noise correlation with the best-matching frame
    of the other, over cells quiet in both."""
    quiet = a_quiet & b_quiet
    if quiet.sum() < 50:
        return 0.0
    matrix = _unit_rows(a_noise[:, quiet]) @ _unit_rows(b_noise[:, quiet]).T
    return float(0.5 * (matrix.max(axis=0).mean() + matrix.max(axis=1).mean()))


def _shared_noise(a: _Fine, b: _Fine) -> float:
    """How far the two clips' frames carry the same sensor noise, above chance.

    Noise is drawn anew in every frame of every recording: only copies of one frame share it.
    Each frame is matched with the best frame of the other clip, so a trimmed copy scores on the
    frames both clips sampled. Chance matches, and patterns every video of one size shares (the
    encoder's block grid), are measured by matching the same frames shifted against each other by
    a fraction of the picture, and subtracted: other recordings score about 0 +- 0.05.
    """
    score = _best_frames(a.noise, a.quiet, b.noise, b.quiet)
    side = b.side
    shifted_noise = b.noise.reshape(-1, side, side)
    shifted_quiet = b.quiet.reshape(side, side)
    chance = [
        _best_frames(
            a.noise,
            a.quiet,
            np.roll(shifted_noise, shift, axis=(1, 2)).reshape(len(b.noise), -1),
            np.roll(shifted_quiet, shift, axis=(0, 1)).ravel(),
        )
        for shift in ((side // 3, side // 2), (side // 2, side // 5), (side // 4, side // 3))
    ]
    return score - float(np.mean(chance))


def _moving_detail(first: list[_Fine], second: list[_Fine]) -> np.ndarray:
    """Mean per-frame correlation of fine detail at the best trim alignment, for each pair."""
    frames = first[0].detail.shape[0]
    alignment = _alignments(frames)
    min_valid = alignment[3].sum(axis=1) >= max(2, frames // 2)
    a = _unit_rows(np.stack([view.detail for view in first]))
    b = _unit_rows(np.stack([view.detail for view in second]))
    scores = _aligned_scores(a, b, alignment, True) - _warp_penalties()[None, :]
    return np.where(min_valid[None, :], scores, -1.0).max(axis=1)


def _same_shape(a: Signature, b: Signature) -> bool:
    """Whether two clips' pictures have one shape, to a pixel: then no crop relates them."""
    if 0 in a.size or 0 in b.size:
        return True
    difference = abs(np.log(a.size[0] / a.size[1]) - np.log(b.size[0] / b.size[1]))
    return difference <= 1.0 / min(a.size[0], b.size[0]) + 1.0 / min(a.size[1], b.size[1])


# --- verifying a cropped pair: find the crop, then the same frames? -----------------------------


def _crop_of(cells: np.ndarray, crop: tuple[float, float, float, float]) -> np.ndarray:
    """The part of (..., side, side) cells left by ``crop`` (top, bottom, left, right), resampled
    to side x side cells."""
    side = cells.shape[-1]
    rows = _resampling(side, side, crop[0], crop[1])
    columns = _resampling(side, side, crop[2], crop[3])
    return rows @ cells @ columns.T


def _picture_correlations(pictures: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Correlation of each of (..., side, side) pictures with one target picture."""
    pictures = pictures - pictures.mean(axis=(-1, -2), keepdims=True)
    target = target - target.mean()
    numerator = (pictures * target).sum(axis=(-1, -2))
    norms = np.sqrt((pictures**2).sum(axis=(-1, -2)) * float((target**2).sum()))
    return numerator / np.maximum(norms, 1e-12)


def _still_alignment(
    big: np.ndarray, small: np.ndarray, widening: float
) -> tuple[float, list[float]]:
    """The crop of the still picture ``big`` that best matches ``small``, and how well.

    A crop is resized whole to fit the store, so its pixels keep their shape: the part of ``big``
    it shows is ``widening`` times as wide (as a share of big's width) as it is high (as a share
    of its height), and three borders decide the fourth. Every crop of a coarse grid is tried,
    then each border moved in ever smaller steps while that improves the match.
    """
    grid = [
        [top, bottom, left]
        for top in _CROP_COARSE
        for bottom in _CROP_COARSE
        for left in np.arange(0.0, CROP_SEARCH + 1e-9, _CROP_STEPS[0]).tolist()
    ]
    borders = [_fourth_border(three, widening) for three in grid]
    borders = [candidate for candidate in borders if candidate is not None]
    if not borders:
        return -2.0, [0.0, 0.0, 0.0, 0.0]
    # The coarse grid on pictures of half the side: a quarter of the cells, the same answer.
    halved_big, halved_small = _halve(big[None])[0], _halve(small[None])[0]
    scores = _picture_correlations(
        np.stack([_crop_of(halved_big, c) for c in borders]), halved_small
    )
    crop = borders[int(scores.argmax())]
    best = float(_picture_correlations(_crop_of(big, crop), small))
    for step in _CROP_STEPS:
        for _ in range(4):
            tried = [
                _fourth_border(_moved(crop, border, sign * step)[:3], widening)
                for border in range(3)
                for sign in (-1, 1)
            ]
            tried = [candidate for candidate in tried if candidate is not None]
            scores = _picture_correlations(np.stack([_crop_of(big, c) for c in tried]), small)
            if scores.max() <= best:
                break
            best, crop = float(scores.max()), tried[int(scores.argmax())]
    return best, crop


def _fourth_border(three: list[float], widening: float) -> list[float] | None:
    """(top, bottom, left, right) of the crop whose width is ``widening`` times its height, or
    None when its right border falls outside the search."""
    top, bottom, left = three
    right = 1.0 - left - (1.0 - top - bottom) * widening
    if not -_CROP_STEPS[-1] <= right <= CROP_SEARCH:
        return None
    return [top, bottom, left, right]


def _moved(crop: list[float], border: int, move: float) -> list[float]:
    moved = list(crop)
    moved[border] = min(max(moved[border] + move, 0.0), CROP_SEARCH)
    return moved


def _cropped_noise(a: Signature, b: Signature) -> float:
    """Shared noise of two clips, one a crop of the other (either way round, either mirrored).

    A crop keeps the recording's frames, and so their noise, only shifted and rescaled. The crop
    is found on the still pictures (the temporal medians), then refined on the noise itself:
    noise matches only where cells cover the same pixels, to a fraction of a cell. The score is
    _shared_noise's at the crop found, chance subtracted.
    """
    found = []
    # The share of the bigger picture's width a crop of it shows, per share of its height.
    widening = (a.size[0] / max(a.size[1], 1)) * (b.size[1] / max(b.size[0], 1))
    for mirror in (False, True):
        first, second = _standard_cells(a, False), _standard_cells(b, mirror)
        medians = np.median(first, axis=0), np.median(second, axis=0)
        for big, small, order, ratio in (
            (0, 1, (first, second), widening),
            (1, 0, (second, first), 1 / widening),
        ):
            score, crop = _still_alignment(medians[big], medians[small], ratio)
            found.append((score, crop, order))
    _, crop, (big, small) = max(found, key=lambda candidate: candidate[0])
    target = _views_of_cells(small)
    crop = _noise_alignment(big, target, crop)
    return _shared_noise(_views_of_cells(_crop_of(big, crop)), target)


def _noise_alignment(big: np.ndarray, target: _Fine, crop: list[float]) -> list[float]:
    """The crop of ``big`` (standardised cells) near ``crop`` whose noise best matches the
    target's: each border moved in ever smaller steps while that improves the match.

    While searching, the noise is cropped rather than recomputed from the cropped cells, and the
    quiet cells are those at the first crop: both change little over steps of a fraction of a
    cell, and recomputing them is most of the cost.
    """
    change = big - np.median(big, axis=0)
    noise = change - _blur_cells(change, _DETAIL_BLURS)
    quiet = _views_of_cells(_crop_of(big, crop)).quiet
    frames = len(big)

    def match(candidate: list[float]) -> float:
        cropped = _crop_of(noise, candidate).reshape(frames, -1)
        return _best_frames(cropped, quiet, target.noise, target.quiet)

    best = match(crop)
    for step in _NOISE_STEPS:
        improved = True
        while improved:
            improved = False
            for border in range(4):
                for move in (-step, step):
                    candidate = _moved(crop, border, move)
                    score = match(candidate)
                    if score > best + 1e-6:
                        best, crop, improved = score, candidate, True
    return crop


def _foreground(signature: Signature) -> tuple[np.ndarray, float]:
    """The cells where a clip moves the most (FOREGROUND_SHARE of them), and how clearly: the
    median peak motion there over the median peak motion of all cells."""
    peak = np.abs(signature.motion).max(axis=0).ravel()
    cells = peak >= np.quantile(peak, 1.0 - FOREGROUND_SHARE)
    return cells, float(np.median(peak[cells]) / max(float(np.median(peak)), 1e-6))


def foreground_agreement(a: Signature, b: Signature, mirror: bool) -> float | None:
    """How well two clips that both hold clear foreground motion (people walking through a
    scene) move alike where they move, at the best trim alignment, ``b`` mirrored or not as
    their content matched best; None when either clip's foreground is not clear
    (FOREGROUND_STRENGTH), as in a near-still clip.

    Takes filmed by one fixed camera share their whole background, so their content, detail and
    even some noise (an encoder's frozen blocks, a sensor's fixed pattern) agree; only what moves
    tells them apart. The motion is compared on each clip's own foreground cells in turn and the
    better kept: a transform that adds flicker elsewhere in one clip does not count against it.
    """
    cells_a, strength_a = _foreground(a)
    cells_b, strength_b = _foreground(b)
    if min(strength_a, strength_b) < FOREGROUND_STRENGTH:
        return None
    frames, side = a.motion.shape[0], a.motion.shape[-1]
    alignment = _alignments(frames)
    min_valid = alignment[3].sum(axis=1) >= max(2, frames // 2)
    penalties = _warp_penalties()
    first = a.motion.reshape(1, frames, -1)
    second = (b.motion[..., ::-1] if mirror else b.motion).reshape(1, frames, -1)
    cells_b = cells_b.reshape(side, side)
    best = -1.0
    for cells in (cells_a, (cells_b[:, ::-1] if mirror else cells_b).ravel()):
        scores = _aligned_scores(first[..., cells], second[..., cells], alignment, False)
        best = max(best, float(np.where(min_valid, scores[0] - penalties, -1.0).max()))
    return best


def _same_figures(a: Signature, b: Signature, ways: tuple[bool, ...]) -> bool:
    """Whether two clips of one aspect ratio, one of them near-still, hold what stands out of
    their still pictures at the same place, spread and brightness (``figures.regions_agree``),
    one of them mirrored as ``ways`` allows.

    A re-encoded or noisier copy of a figure standing in the dark keeps neither its frames'
    noise nor its fine detail, so it looks like another take in the same room, but it keeps its
    figure where it was to a pixel; another take does not (``nightact.data.figures``).
    """
    if min(a.motion_energy, b.motion_energy) >= STILL_ENERGY:
        return False
    (height_a, width_a), (height_b, width_b) = a.size, b.size
    if min(height_a, width_a, height_b, width_b) <= 0:
        return False
    if abs(np.log(height_a * width_b / (width_a * height_b))) > FIGURE_ASPECT:
        return False
    return any(regions_agree(a.regions, b.regions, mirror) for mirror in ways)


def _may_be_crop(a: Signature, b: Signature, unlit: float, detail: float) -> bool:
    """Whether a crop may relate two clips that share no noise as they are.

    Clips of other shapes whose content is alike, CROP_FLOOR and up. A crop may also keep the
    shape to a pixel: then content must be nearly equal (CROP_FLOOR_SAME_SHAPE) while fine detail
    is not alike at all (below CROP_DETAIL), as when a crop shifts every cell. Searching crops for
    every pair of one shape lets two takes of one dark scene match by chance (measured); takes
    lie a few pixels apart and keep part of their detail.
    """
    if _same_shape(a, b):
        return unlit >= CROP_FLOOR_SAME_SHAPE and detail < CROP_DETAIL
    return unlit >= CROP_FLOOR


def _verify_batch(first, second, content, mirrored, views) -> np.ndarray:
    """(pairs, 3): similarity, detail, noise; see verify_pairs."""
    plain = [views(s, False) for s in first]
    both = {mirror: [views(s, mirror) for s in second] for mirror in (False, True)}
    moving = np.maximum(*(_moving_detail(plain, both[m]) for m in (False, True)))
    out = np.zeros((len(first), 3), dtype=np.float32)
    for k, (a, b) in enumerate(zip(first, second, strict=True)):
        still = min(a.motion_energy, b.motion_energy) < STILL_ENERGY
        stills = [float(_unit_rows(plain[k].still) @ _unit_rows(both[m][k].still)) for m in (0, 1)]
        detail = max(stills) if still else float(moving[k])
        noise = max(_shared_noise(plain[k], both[m][k]) for m in (False, True))
        lit, unlit = content[k]
        same_frames = 1.0 - (1.0 - unlit) * NOISE_DISCOUNT
        if noise >= SHARED_NOISE:
            similarity = same_frames
        elif _same_shape(a, b):
            similarity = min(lit, detail + (STILL_SLACK if still else MOVING_SLACK))
        else:
            similarity = lit
        ways = (False, True) if np.isnan(mirrored[k]) else (bool(mirrored[k]),)
        if similarity < unlit and _same_figures(a, b, ways):
            similarity = unlit
        if similarity < same_frames and _may_be_crop(a, b, unlit, detail):
            # Once the crop is found, their noise may still show the same frames.
            cropped = _cropped_noise(a, b)
            if cropped >= SHARED_NOISE:
                similarity, noise = same_frames, cropped
        agreements = [foreground_agreement(a, b, mirror) for mirror in ways]
        if None not in agreements:
            foreground = max(agreements)
            similarity = min(similarity, foreground + FOREGROUND_SLACK)
        out[k] = (similarity, detail, noise)
    return out


def verify_pairs(
    first: list[Signature],
    second: list[Signature],
    content: np.ndarray,
    batch: int = 128,
    mirrored: np.ndarray | None = None,
) -> np.ndarray:
    """Final similarity of pairs whose content (compare_signatures) is alike: (pairs, 3) columns
    similarity, detail, noise. ``content`` is (pairs, 2): the content with and without light;
    ``mirrored`` whether it matched with the second clip mirrored (None: either way).

    *Noise*: frames that share their sensor noise are the same frames, so the pair is a copy
    whatever a transform did to its content; only NOISE_DISCOUNT of its distance from a perfect
    match (1 - content) remains. *Detail*: without such frames, two clips of one shape must also
    agree in fine detail (48x48 cells, the smooth light removed): still clips in their temporal
    median, where noise averages out, moving ones frame by frame. Different recordings of one
    action, even in one scene, differ there by a few percent of position or size; copies do
    not. Clips of different shapes may be crops of each other, which shifts detail: when their
    content (without light) reaches CROP_FLOOR, the crop relating them is searched and their
    noise compared there; without shared noise their content decides. So are clips of one shape
    whose content is nearly equal but whose detail is not alike at all (``_may_be_crop``).
    *Foreground*: two clips that both hold clear motion (people walking through a scene) must
    also move alike where they move (``foreground_agreement``): takes filmed by one fixed
    camera share everything else, even some of their noise.
    """
    if mirrored is None:
        mirrored = np.full(len(first), np.nan)
    cache: dict[tuple[int, bool], _Fine] = {}

    def views(signature: Signature, mirror: bool) -> _Fine:
        key = (id(signature), mirror)
        if key not in cache:
            cache[key] = _fine_views(signature, mirror)
        return cache[key]

    parts = [
        _verify_batch(
            first[i : i + batch],
            second[i : i + batch],
            content[i : i + batch],
            mirrored[i : i + batch],
            views,
        )
        for i in range(0, len(first), batch)
    ]
    return np.concatenate(parts) if parts else np.zeros((0, 3), dtype=np.float32)


def _summaries(signatures: list[Signature]) -> np.ndarray:
    """Unit vectors that are cheap to compare: time-means of both views, left-right symmetric."""
    parts = []
    for view in ("appearance", "motion"):
        values = np.stack([getattr(s, view) for s in signatures])
        if view == "motion":
            values = np.abs(values)
        mean = values.mean(axis=1)
        symmetric = (mean + mean[..., ::-1]).reshape(len(signatures), -1)
        symmetric = symmetric - symmetric.mean(axis=1, keepdims=True)
        symmetric /= np.maximum(np.linalg.norm(symmetric, axis=1, keepdims=True), 1e-12)
        parts.append(symmetric)
    return np.concatenate(parts, axis=1) / np.sqrt(2.0)


def candidate_pairs(signatures: list[Signature], candidates: int) -> np.ndarray:
    """Pairs (i < j) worth a full comparison: each clip's nearest ``candidates`` by summary, or
    every pair when ``candidates`` is 0 or not below the number of clips."""
    count = len(signatures)
    if candidates == 0 or candidates >= count - 1:
        first, second = np.triu_indices(count, k=1)
        return np.column_stack([first, second])
    summary = _summaries(signatures).astype(np.float32)
    found = set()
    block = 1024
    for start in range(0, count, block):
        similarity = summary[start : start + block] @ summary.T
        for offset, row in enumerate(similarity):
            index = start + offset
            row[index] = -np.inf
            nearest = np.argpartition(-row, candidates)[:candidates]
            found.update((min(index, j), max(index, j)) for j in nearest.tolist())
    return np.array(sorted(found), dtype=np.int64).reshape(-1, 2)


# --- a whole store -------------------------------------------------------------------------------


def store_signatures(store: str | os.PathLike, grid: int = 24) -> tuple[list, list[Signature]]:
    """(path, split) and signature of every stored clip, split by split, row by row."""
    clips, signatures = [], []
    for split in SPLIT_NAMES:
        data = open_split(store, split)
        for row in tqdm(range(len(data)), desc=f"leakage {split}", unit="clip", leave=False):
            signatures.append(clip_signature(np.asarray(data.frames[row]), grid))
            clips.append((data.paths[row], split))
    return clips, signatures


def connected_components(count: int, edges: list[tuple[int, int]]) -> np.ndarray:
    """Component id of each of ``count`` nodes (union-find); ids are the smallest member."""
    parent = list(range(count))

    def root(node: int) -> int:
        while parent[node] != node:
            parent[node] = parent[parent[node]]
            node = parent[node]
        return node

    for a, b in edges:
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return np.array([root(node) for node in range(count)])


def _compare_cropped(
    signatures: list[Signature], candidates: np.ndarray, scores: np.ndarray, config
) -> None:
    """Compare the pairs whose content is alike again, each clip against crops of the other;
    raise their scores in place where a crop matches better."""
    near = np.flatnonzero((scores[:, 0] < 1.0) & (scores[:, :5:4].max(axis=1) >= VERIFY_FLOOR))
    if len(near) == 0:
        return
    variants: dict[int, list[Signature]] = {}

    def of(index: int) -> list[Signature]:
        if index not in variants:
            variants[index] = crop_variants(signatures[index])
        return variants[index]

    per_pair = 2 * (len(CROPS) ** 2 - 1)
    step = max(1, config.batch_pairs // per_pair)
    for start in range(0, len(near), step):
        rows = near[start : start + step]
        first, second = [], []
        for i, j in candidates[rows].tolist():
            first += of(i) + [signatures[i]] * len(of(j))
            second += [signatures[j]] * len(of(i)) + of(j)
        cropped = compare_signatures(first, second, config.static_motion, config.motion_floor)
        cropped = cropped.reshape(len(rows), per_pair, cropped.shape[1])
        best = cropped[np.arange(len(rows)), cropped[:, :, 0].argmax(axis=1)]
        better = best[:, 0] > scores[rows, 0]
        scores[rows[better]] = best[better]


def _pair_scores(signatures: list[Signature], candidates: np.ndarray, config) -> np.ndarray:
    """(pairs, 6): similarity, appearance, motion, mirrored, detail, noise of every candidate
    pair; pairs whose content stays below VERIFY_FLOOR keep their content as similarity."""
    content = np.zeros((len(candidates), 5), dtype=np.float32)
    for start in range(0, len(candidates), config.batch_pairs):
        batch = candidates[start : start + config.batch_pairs]
        content[start : start + len(batch)] = compare_signatures(
            [signatures[i] for i in batch[:, 0]],
            [signatures[j] for j in batch[:, 1]],
            config.static_motion,
            config.motion_floor,
        )
    _compare_cropped(signatures, candidates, content, config)
    scores = np.column_stack([content[:, :4], np.zeros((len(candidates), 2), dtype=np.float32)])
    alike = np.flatnonzero(np.maximum(content[:, 0], content[:, 4]) >= VERIFY_FLOOR)
    verified = verify_pairs(
        [signatures[i] for i in candidates[alike, 0]],
        [signatures[j] for j in candidates[alike, 1]],
        content[alike][:, [0, 4]],
        mirrored=content[alike, 3],
    )
    scores[alike, 0] = verified[:, 0]
    scores[alike, 4:] = verified[:, 1:]
    return scores


def _exact_copies(clips: list[tuple[str, str]], sha256: dict[str, str]) -> list[tuple[int, int]]:
    """Pairs of clips whose files are byte-identical (equal sha256 in the manifest)."""
    by_digest: dict[str, list[int]] = {}
    for index, (path, _) in enumerate(clips):
        if sha256.get(path):
            by_digest.setdefault(sha256[path], []).append(index)
    return [
        (min(i, j), max(i, j))
        for members in by_digest.values()
        for x, i in enumerate(members)
        for j in members[x + 1 :]
    ]


def find_near_duplicates(
    clips: list[tuple[str, str]],
    signatures: list[Signature],
    config: LeakageConfig,
    sha256: dict[str, str] | None = None,
) -> LeakageReport:
    """Compare the clips' signatures and gather the pairs at or above the threshold."""
    started = time.perf_counter()
    candidates = candidate_pairs(signatures, config.candidates)
    scores = _pair_scores(signatures, candidates, config)
    found: dict[tuple[int, int], tuple] = {}
    for (i, j), score in zip(candidates.tolist(), scores.tolist(), strict=True):
        if score[0] >= config.threshold:
            found[(i, j)] = tuple(score)
    # Byte-identical files are copies whatever their pixels say.
    for pair in _exact_copies(clips, sha256 or {}):
        found[pair] = (1.0, 1.0, 1.0, 0.0, 1.0, 1.0)
    component = connected_components(len(clips), list(found))
    pairs = [
        Pair(
            path_a=clips[i][0],
            split_a=clips[i][1],
            path_b=clips[j][0],
            split_b=clips[j][1],
            similarity=round(score[0], 4),
            appearance=round(score[1], 4),
            motion=round(score[2], 4),
            mirrored=bool(score[3]),
            cluster=int(component[i]),
            detail=round(score[4], 4),
            noise=round(score[5], 4),
        )
        for (i, j), score in found.items()
    ]
    pairs.sort(key=lambda pair: (-pair.similarity, pair.path_a, pair.path_b))
    members: dict[int, list[str]] = {}
    for index, root in enumerate(component.tolist()):
        members.setdefault(root, []).append(clips[index][0])
    clusters = [sorted(group) for group in members.values() if len(group) > 1]
    clusters.sort(key=lambda group: (-len(group), group[0]))
    return LeakageReport(
        config=config,
        clips=list(clips),
        pairs=pairs,
        clusters=clusters,
        seconds=time.perf_counter() - started,
        compared=len(candidates),
    )


def check_store(config: LeakageConfig) -> LeakageReport:
    """Find near-duplicate clips in the store ``config.store`` (nothing is written)."""
    started = time.perf_counter()
    clips, signatures = store_signatures(config.store, config.grid)
    sha256 = {row["path"]: row["sha256"] for row in read_manifest(config.store)}
    report = find_near_duplicates(clips, signatures, config, sha256)
    report.seconds = time.perf_counter() - started
    return report


def write_report(report: LeakageReport, store: str | os.PathLike | None = None) -> Path:
    """Write ``STORE/leakage.csv`` (cross-split pairs, and within-split ones when the config asks)
    and ``STORE/leakage.json``; return the CSV's path."""
    store = Path(store or report.config.store)
    pairs = report.pairs if report.config.within else report.cross_pairs
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for pair in pairs:
        row = dataclasses.asdict(pair)
        row["mirrored"] = int(pair.mirrored)
        writer.writerow({column: row[column] for column in CSV_COLUMNS})
    csv_path = files.write_text_atomic(store / CSV_NAME, buffer.getvalue())
    settings = dataclasses.asdict(report.config)
    files.write_json_atomic(store / JSON_NAME, {"config": settings, "summary": report.summary()})
    return csv_path


def read_pairs(path: str | os.PathLike) -> list[dict]:
    """Rows of a ``leakage.csv``."""
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))
