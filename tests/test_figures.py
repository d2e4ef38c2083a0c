"""What stands out of a still picture (nightact.data.figures): places to a pixel, levels, and
the near-duplicate check's use of them on dark stills re-encoded by a real encoder."""

import numpy as np
import pytest
from scipy import ndimage

from nightact.core.videos import write_video
from nightact.data import figures, leakage
from support.copies import read_frames

HEIGHT, WIDTH = 240, 320


def dark_room(seed: int = 0) -> np.ndarray:
    """A dark room's light: a faint lamp's glow over a floor of 3 grey levels."""
    rows, columns = np.mgrid[0:HEIGHT, 0:WIDTH]
    return 3 + 6 * np.exp(-((rows - 40) ** 2 + (columns - 250) ** 2) / 8000.0)


def standing(left: float, top: float = 50, height: float = 150, level: float = 20) -> np.ndarray:
    """A figure standing still: a rounded body, LEFT its left edge in (fractional) pixels."""
    rows, columns = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float64)
    centre = left + 14
    body = (np.abs(columns - centre) < 14) & (rows > top + 25) & (rows < top + height)
    head = (columns - centre) ** 2 + (rows - top - 12) ** 2 < 12**2
    return ndimage.gaussian_filter(level * (body | head).astype(np.float64), 1.0)


def clip(picture: np.ndarray, seed: int, frames: int = 10, noise: float = 3.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    pixels = picture[None] + rng.normal(0, noise, (frames, *picture.shape))
    grey = np.clip(pixels, 0, 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=3)


def test_a_figure_is_placed_to_a_fraction_of_a_pixel_and_its_level_measured():
    room = dark_room()
    found = figures.still_regions(clip(room + standing(150.0), seed=1))
    assert found is not None and len(found.levels) == 1
    centre_x, centre_y, spread_x, spread_y = found.places[0]
    # The figure is 28 pixels wide, centred on column 164 (pixel centres at +0.5).
    assert centre_x == pytest.approx(164.5 / WIDTH, abs=0.5 / WIDTH)
    assert 0.3 < centre_y < 0.6 and spread_y > 3 * spread_x * WIDTH / HEIGHT / 4
    assert 14 < found.levels[0] < 24
    # Half a pixel further right moves the centre by half a pixel, whatever the noise.
    moved = figures.still_regions(clip(room + standing(150.5), seed=2))
    assert moved.places[0, 0] - centre_x == pytest.approx(0.5 / WIDTH, abs=0.2 / WIDTH)


def test_other_takes_differ_by_a_few_pixels_or_in_light_and_copies_do_not(tmp_path):
    room = dark_room()
    original = clip(room + standing(150.0), seed=1)
    # A copy re-encoded by x264 at CRF 30 keeps its figure within a third of a pixel. (At CRF
    # 38 the figure's outline drifts by up to 2 pixels, as far as another take's: see
    # PLACE_TOLERANCE.)
    path = tmp_path / "copy.mp4"
    write_video(path, list(original), fps=10.0, crf=30)
    copy, _ = read_frames(path)
    copy = np.stack(copy)
    noisier = np.clip(original + np.random.default_rng(7).normal(0, 5, original.shape), 0, 255)
    mirrored = original[:, :, ::-1]
    regions = {
        name: figures.still_regions(frames)
        for name, frames in {
            "original": original,
            "copy": copy,
            "noisier": noisier.astype(np.uint8),
            "mirrored": mirrored,
            "three pixels off": clip(room + standing(153.0), seed=3),
            "taller": clip(room + standing(150.0, top=44, height=156), seed=4),
            "brighter": clip(room + standing(150.0, level=28), seed=5),
        }.items()
    }
    mine = regions["original"]
    assert figures.regions_agree(mine, regions["copy"], mirror=False)
    assert figures.regions_agree(mine, regions["noisier"], mirror=False)
    assert figures.regions_agree(mine, regions["mirrored"], mirror=True)
    # A mirror moves no pixel up or down and no block of the light: it measures the same.
    flipped = regions["mirrored"].places.copy()
    flipped[:, 0] = 1.0 - flipped[:, 0]
    np.testing.assert_allclose(flipped, mine.places, atol=1e-6)
    assert not figures.regions_agree(mine, regions["mirrored"], mirror=False)
    for other in ("three pixels off", "taller", "brighter"):
        assert not figures.regions_agree(mine, regions[other], mirror=False), other


def test_nothing_is_measured_on_small_or_flat_pictures():
    small = clip(dark_room()[:100, :140] + standing(40.0)[:100, :140], seed=1)
    assert figures.still_regions(small) is None
    assert figures.still_regions(np.full((5, HEIGHT, WIDTH, 3), 9, dtype=np.uint8)) is None
    assert not figures.regions_agree(None, None, mirror=False)


def test_a_lamp_and_a_figure_must_both_agree():
    """Takes filmed by one camera share a lamp: a figure elsewhere still tells them apart."""
    rows, columns = np.mgrid[0:HEIGHT, 0:WIDTH]
    lamp = 60.0 * ((rows - 30) ** 2 + (columns - 60) ** 2 < 15**2)
    room = dark_room() + lamp
    here = figures.still_regions(clip(room + standing(150.0), seed=1))
    there = figures.still_regions(clip(room + standing(190.0), seed=2))
    again = figures.still_regions(clip(room + standing(150.0), seed=3))
    assert len(here.levels) == 2
    assert not figures.regions_agree(here, there, mirror=False)
    assert figures.regions_agree(here, again, mirror=False)


def test_the_detector_finds_a_re_encoded_dark_still_but_not_another_take(tmp_path):
    """A figure standing in a dark room, copied at CRF 39 (its noise and detail gone); another
    take stands 3 pixels off. Only the copy is reported."""
    room = dark_room()
    sway = 0.6 * np.sin(np.linspace(0, 2, 10))  # a slight sway, in pixels

    def stand_at(left: float, seed: int) -> np.ndarray:
        return np.concatenate(
            [clip(room + standing(left + s), seed=seed + t, frames=1) for t, s in enumerate(sway)]
        )

    original, take = stand_at(150.0, seed=10), stand_at(153.0, seed=30)
    path = tmp_path / "copy.mp4"
    write_video(path, list(original), fps=10.0, crf=39)
    copy = np.stack(read_frames(path)[0])
    signatures = [leakage.clip_signature(frames) for frames in (original, copy, take)]
    clips = [("original.mp4", "train"), ("copy.mp4", "test"), ("take.mp4", "test")]
    settings = dict(within=True, candidates=0)
    report = leakage.find_near_duplicates(clips, signatures, leakage.LeakageConfig("x", **settings))
    found = {(pair.path_a, pair.path_b) for pair in report.pairs}
    assert found == {("original.mp4", "copy.mp4")}
    # Without the figures' places, the copy's detail alone would not have carried it.
    plain = [leakage.Signature(**{**vars(s), "regions": None}) for s in signatures]
    unplaced = leakage.find_near_duplicates(clips, plain, leakage.LeakageConfig("x", **settings))
    assert ("original.mp4", "copy.mp4") not in {(p.path_a, p.path_b) for p in unplaced.pairs}
