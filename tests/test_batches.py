"""ClipBatches: which clips each batch holds, per epoch, resumed, threaded or not."""

from __future__ import annotations

import numpy as np
import pytest

from nightact.core.store import Split
from nightact.data.batches import ClipBatches


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
