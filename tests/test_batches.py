"""ClipBatches: which clips each batch holds, per epoch, resumed, threaded or not."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from nightact.core.store import Split
from nightact.data.batches import ClipBatches

# The device path is JAX's (nightact.data.placement); make test's TensorFlow leg skips it.
needs_jax = pytest.mark.skipif(
    keras.config.backend() != "jax", reason="batches are made on the device on JAX only"
)


def fake_split(count: int = 10, classes: int = 3) -> Split:
    """A split whose clip i is filled with the value i, so batches tell which rows they hold."""
    frames = np.broadcast_to(
        np.arange(count, dtype=np.uint8)[:, None, None, None, None], (count, 2, 4, 4, 3)
    )
    labels = np.arange(count, dtype=np.int64) % classes
    names = [f"class {index}" for index in range(classes)]
    return Split("train", frames, labels, names, [f"{index}.mp4" for index in range(count)])


def rows_of(batch) -> list[int]:
    return [int(clip[0, 0, 0, 0]) for clip in batch[0]]


def test_shuffled_batches_cover_every_clip_once_per_epoch():
    split = fake_split(10)
    batches = ClipBatches(split, batch_size=4, shuffle=True, seed=7)
    assert len(batches) == 3 and batches.num_batches is None  # an endless stream for fit

    epochs = []
    for epoch in range(3):
        seen = []
        for step in range(len(batches)):
            clips, labels = batches[epoch * len(batches) + step]
            rows = rows_of((clips, labels))
            # Rows are read in ascending order, and each label is the one-hot of its row's label.
            assert rows == sorted(rows)
            assert np.array_equal(labels.argmax(axis=1), split.labels[rows])
            assert labels.dtype == np.float32 and clips.dtype == np.uint8
            seen += rows
        assert sorted(seen) == list(range(10))
        epochs.append(seen)
    assert epochs[0] != epochs[1] != epochs[2]

    # Same seed, same order; a stream resumed at epoch 2 reads what epoch 2 read.
    again = ClipBatches(split, batch_size=4, shuffle=True, seed=7)
    assert [rows_of(again[step]) for step in range(9)] == [
        rows_of(batches[step]) for step in range(9)
    ]
    resumed = ClipBatches(split, batch_size=4, shuffle=True, seed=7, start_epoch=2)
    assert sum((rows_of(resumed[step]) for step in range(3)), []) == epochs[2]
    other_seed = ClipBatches(split, batch_size=4, shuffle=True, seed=8)
    assert sum((rows_of(other_seed[step]) for step in range(3)), []) != epochs[0]


def test_dropping_the_remainder_keeps_every_batch_full():
    split = fake_split(10)
    batches = ClipBatches(split, batch_size=4, shuffle=True, seed=3, drop_remainder=True)
    full = ClipBatches(split, batch_size=4, shuffle=True, seed=3)
    assert len(batches) == 2
    for epoch in range(3):
        rows = [rows_of(batches[epoch * 2 + step]) for step in range(2)]
        assert [len(batch) for batch in rows] == [4, 4]
        # The same epoch order as without dropping, less its last two clips.
        assert rows == [rows_of(full[epoch * 3 + step]) for step in range(2)]
        assert len(set(rows[0] + rows[1])) == 8


def test_ordered_batches_and_read_ahead_threads_agree():
    split = fake_split(10)
    plain = ClipBatches(split, batch_size=4)
    threaded = ClipBatches(split, batch_size=4, workers=3)
    try:
        assert plain.num_batches == 3
        assert [rows_of(plain[i]) for i in range(3)] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
        assert [rows_of(threaded[i]) for i in range(3)] == [rows_of(plain[i]) for i in range(3)]
        with pytest.raises(IndexError):
            plain[3]
        shuffled = ClipBatches(split, batch_size=4, shuffle=True, seed=1, workers=3)
        reference = ClipBatches(split, batch_size=4, shuffle=True, seed=1)
        assert [rows_of(shuffled[i]) for i in range(7)] == [rows_of(reference[i]) for i in range(7)]
        shuffled.close()
    finally:
        threaded.close()


def test_read_ahead_threads_over_a_mapped_store_give_the_same_batches(tmp_path):
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 256, size=(21, 2, 4, 6, 3), dtype=np.uint8)
    np.save(tmp_path / "train.npy", frames)
    labels = np.arange(21) % 3
    split = Split("train", np.load(tmp_path / "train.npy", mmap_mode="r"), labels, list("abc"), [])
    one = ClipBatches(split, batch_size=8, shuffle=True, seed=4)
    four = ClipBatches(split, batch_size=8, shuffle=True, seed=4, workers=4)
    try:
        for index in range(7):  # past two epoch ends, the last batch of each short
            expected, got = one[index], four[index]
            np.testing.assert_array_equal(got[0], frames[one.rows(index)])
            np.testing.assert_array_equal(got[0], expected[0])
            np.testing.assert_array_equal(got[1], expected[1])
    finally:
        four.close()


def test_processes_read_their_shares_of_each_global_batch():
    split = fake_split(16)
    whole = ClipBatches(split, batch_size=8, shuffle=True, seed=3, drop_remainder=True)
    shares = [
        ClipBatches(split, batch_size=8, shuffle=True, seed=3, drop_remainder=True, process=(i, 2))
        for i in range(2)
    ]
    for index in range(4):  # two epochs
        # JAX joins the processes' shares in process order: that must be the global batch.
        assert rows_of(shares[0][index]) + rows_of(shares[1][index]) == rows_of(whole[index])
        assert len(shares[1][index][0]) == 4
    with pytest.raises(ValueError, match="process 0 of 3"):
        ClipBatches(split, batch_size=8, process=(0, 3))


def test_padded_batches_weigh_their_real_clips_only():
    split = fake_split(11)
    batches = ClipBatches(split, batch_size=4, pad_to=4)
    clips, labels, weights = batches[0]
    assert rows_of((clips,)) == [0, 1, 2, 3] and weights.tolist() == [1, 1, 1, 1]
    clips, labels, weights = batches[2]  # rows 8, 9, 10 and a copy of 10
    assert rows_of((clips,)) == [8, 9, 10, 10]
    assert weights.tolist() == [1, 1, 1, 0]
    # Keras' metrics are weighted means over every clip: the copy does not count.
    correct = np.array([1.0, 0.0, 1.0, 1.0])
    assert np.sum(weights * correct) / np.sum(weights) == pytest.approx(2 / 3)
    # Shared by 2 processes, the padding lands in the last one's share.
    last = ClipBatches(split, batch_size=4, pad_to=4, process=(1, 2))[2]
    assert rows_of(last) == [10, 10] and last[2].tolist() == [1, 0]


def test_rows_read_from_a_mapped_store_equal_indexing(tmp_path):
    from nightact.data.batches import read_rows

    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(9, 2, 5, 7, 3), dtype=np.uint8)
    np.save(tmp_path / "train.npy", frames)
    mapped = np.load(tmp_path / "train.npy", mmap_mode="r")
    rows = np.array([0, 3, 4, 8])
    read = read_rows(mapped, rows)
    assert type(read) is np.ndarray and read.flags.c_contiguous
    np.testing.assert_array_equal(read, frames[rows])
    # A slice of the map (its offset is its parent's) and a plain array take the indexing path.
    np.testing.assert_array_equal(read_rows(mapped[2:], np.array([0, 6])), frames[[2, 8]])
    np.testing.assert_array_equal(read_rows(frames, rows), frames[rows])
    # A file cut short is an error, not a batch of zeros.
    with open(tmp_path / "train.npy", "r+b") as handle:
        handle.truncate(mapped.offset + 5 * frames[0].nbytes)
    with pytest.raises(OSError, match="ends before row 8"):
        read_rows(mapped, rows)


# --- the device path: the split copied to the device once, batches gathered there --------------


def candidate_split(count: int = 13, per_segment: int = 2, name: str = "train") -> Split:
    """Random clips of 3 segments x ``per_segment`` candidates, labels cycling over 3 classes."""
    generator = np.random.default_rng(1)
    frames = generator.integers(0, 256, size=(count, 3 * per_segment, 8, 12, 3), dtype=np.uint8)
    labels = np.arange(count) % 3
    return Split(name, frames, labels, ["a", "b", "c"], [""] * count, per_segment)


def assert_same_batches(first, second, indices) -> None:
    for index in indices:
        ours, theirs = first[index], second[index]
        assert len(ours) == len(theirs)
        for mine, other in zip(ours, theirs, strict=True):
            np.testing.assert_array_equal(np.asarray(mine), np.asarray(other))


@needs_jax
def test_batches_gathered_on_the_device_equal_those_read_from_the_store():
    import jax

    from nightact.data.augment import AugmentConfig

    split = candidate_split()
    # Training: shuffled, a random candidate per segment, augmented; over three epochs.
    training = dict(shuffle=True, seed=5, augment=AugmentConfig(), drop_remainder=True)
    host = ClipBatches(split, 4, **training)
    placed = ClipBatches(split, 4, place=True, workers=3, **training)
    device = ClipBatches(split, 4, on_device=True, workers=2, **training)
    resumed = ClipBatches(split, 4, on_device=True, start_epoch=2, **training)
    try:
        assert_same_batches(host, device, range(9))
        assert_same_batches(host, placed, range(9))
        # A stream resumed at epoch 2 gathers what epoch 2 read.
        for step in range(3):
            np.testing.assert_array_equal(
                np.asarray(resumed[step][0]), np.asarray(host[6 + step][0])
            )
        clips, labels = device[4]
        # On the device, as Keras takes it: a JAX array, not a NumPy copy; labels stay NumPy.
        assert isinstance(clips, jax.Array) and isinstance(placed[4][0], jax.Array)
        assert clips.dtype == np.uint8 and clips.shape == (4, 3, 8, 12, 3)
        assert type(labels) is np.ndarray and type(host[4][0]) is np.ndarray
        # The augmentation did act: these are not the stored frames of candidate 0.
        assert not np.array_equal(np.asarray(clips), split.frames[device.rows(4)][:, ::2])
    finally:
        for batches in (placed, device, resumed):
            batches.close()

    # Evaluation views: a chosen candidate, mirrored; a padded last batch with its weights.
    view = dict(candidate=1, mirror=True, pad_to=4)
    on_device = ClipBatches(split, 8, on_device=True, **view)
    assert_same_batches(ClipBatches(split, 8, **view), on_device, [0, 1])
    np.testing.assert_array_equal(np.asarray(on_device[0][0]), split.frames[:8, 1::2, :, ::-1])
    assert on_device[1][2].tolist() == [1, 1, 1, 1, 1, 0, 0, 0]
    on_device.close()


@needs_jax
def test_one_copy_on_the_device_serves_several_readers_until_released():
    from nightact.data.placement import DeviceSplit

    split = candidate_split(count=6, per_segment=3, name="test")
    copy = DeviceSplit(split)
    assert len(copy) == 6 and copy.segments == 3 and copy.name == "test"
    np.testing.assert_array_equal(np.asarray(copy.frames), split.frames)
    views = [ClipBatches(copy, 4, candidate=candidate) for candidate in range(3)]
    for candidate, view in enumerate(views):
        np.testing.assert_array_equal(np.asarray(view[1][0]), split.frames[4:, candidate::3])
        view.close()  # a reader frees only the copy it made itself
    assert copy.frames is not None
    copy.release()
    assert copy.frames is None


@needs_jax
def test_a_split_is_copied_to_an_accelerator_in_pieces(recwarn):
    import jax

    from nightact.data.placement import copy_to_device

    frames = candidate_split(count=11).frames
    where = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    # Pieces of 3 rows and a last one of 2: as an accelerator gets it (the CPU cannot donate the
    # buffer, so here each piece copies it, with a warning: the result is what matters).
    copied = copy_to_device(frames, where, chunk_bytes=3 * frames[0].nbytes, pieces=True)
    np.testing.assert_array_equal(np.asarray(copied), frames)
    assert copied.sharding == where


def test_the_device_path_is_chosen_where_the_splits_fit_with_room_to_spare(monkeypatch):
    from types import SimpleNamespace

    from nightact.data import placement

    train, val = candidate_split(count=10), candidate_split(count=4, name="val")
    needed = train.frames.nbytes + val.frames.nbytes
    gpu = [SimpleNamespace(platform="gpu", id=0)]

    def free(amount):
        monkeypatch.setattr(placement, "memory_free", lambda devices: (amount, "on gpu:0"))

    def choose(setting, splits=(train, val), **where):
        return placement.choose(setting, list(splits), "jax", **{"devices": gpu, **where})

    free(3 * needed)
    choice = choose("auto")
    assert choice.on_device and "train + val" in choice.reason and "on gpu:0" in choice.reason
    free(int(1.5 * needed))  # fits, but in more than half of what is free: not by itself
    choice = choose("auto")
    assert not choice.on_device and "more than 50%" in choice.reason
    assert choose("yes").on_device and choose("yes").risky
    free(needed // 2)
    with pytest.raises(ValueError, match="do not fit"):
        choose("yes")

    # Logical CPU devices hold a copy each, in the host's memory, made through one host array.
    cpus = [SimpleNamespace(platform="cpu", id=index) for index in range(2)]
    free(int(5.9 * needed))
    assert not choose("auto", devices=cpus).on_device
    free(int(6.1 * needed))
    assert "a copy on each of 2 devices" in choose("auto", devices=cpus).reason

    free(100 * needed)
    assert not choose("no").on_device
    choice = placement.choose("auto", [train], "tensorflow")
    assert not choice.on_device and "tensorflow" in choice.reason
    with pytest.raises(ValueError, match="2 processes"):
        choose("yes", processes=2)
    with pytest.raises(ValueError, match="data_on_device"):
        choose("always")


@needs_jax
def test_a_cpu_device_counts_the_host_memory_available():
    import jax

    from nightact.data.placement import memory_free

    free, where = memory_free(jax.local_devices()[:1])
    assert where == "in host memory" and free > 0


@needs_jax
def test_keras_trains_on_the_gathered_batches_without_copying_them(monkeypatch):
    """fit hands the device's batches to its step as they are, and trains as on the store's."""
    import jax
    from keras.src.backend.jax import trainer

    split = candidate_split(count=12, per_segment=1)
    made, stepped = [], []

    class Watched(ClipBatches):
        def __getitem__(self, index):
            batch = super().__getitem__(index)
            made.append(batch[0])
            return batch

    # What Keras' JAX trainer feeds its compiled step, after its own conversions and placement.
    feed = trainer.JAXEpochIterator._get_iterator

    def watching(self):
        for data in feed(self):
            stepped.append(data[0])
            yield data

    monkeypatch.setattr(trainer.JAXEpochIterator, "_get_iterator", watching)

    def train(**where):
        made.clear()
        stepped.clear()
        keras.utils.set_random_seed(0)
        model = keras.Sequential(
            [keras.Input((3, 8, 12, 3)), keras.layers.Flatten(), keras.layers.Dense(3)]
        )
        model.compile(optimizer="adam", loss=keras.losses.CategoricalCrossentropy(from_logits=True))
        batches = Watched(split, 4, shuffle=True, seed=2, drop_remainder=True, **where)
        try:
            model.fit(batches, steps_per_epoch=len(batches), epochs=2, verbose=0, shuffle=False)
        finally:
            batches.close()
        return model.get_weights()

    for where in ({"on_device": True}, {"place": True, "workers": 2}):
        weights = train(**where)
        # Every batch reached the step as the very JAX array the reader made: never copied.
        assert len(stepped) >= 6
        assert all(isinstance(clips, jax.Array) for clips in stepped)
        assert all(any(clips is mine for mine in made) for clips in stepped)
        for ours, theirs in zip(weights, train(), strict=True):
            np.testing.assert_array_equal(ours, theirs)
    assert all(type(clips) is np.ndarray for clips in stepped)  # from the store, as NumPy
