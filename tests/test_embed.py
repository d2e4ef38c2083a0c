"""Embedding a clip store: the right features in the right rows, resumable, never mixed up."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import keras
import numpy as np
import pytest

from nightact.cli import main
from nightact.core.store import is_embedding_store, open_embedding_split, open_split
from nightact.core.videos import write_video
from nightact.data.batches import ClipBatches
from nightact.data.embed import EmbedConfig, embed
from nightact.data.prepare import PrepareConfig, prepare
from nightact.nets.backbones import build_backbone, build_network, network_of
from nightact.scoring.compare import load_run, summarize
from nightact.scoring.evaluate import evaluate
from nightact.serve.predict import predict_videos as predict
from nightact.training.train import TrainConfig, read_history, train, unfreeze_top

BACKBONE = "mobilenet_v3_small"
SIZE = 32
# Background light of each class's videos: a difference that even random convolutions keep once
# their batch normalisation has seen the data (see ``weights_file``).
CLASS_LEVELS = {"dark": 0, "dim": 60, "lit": 120}


def write_night_video(path, level, rng, frames: int = 8) -> None:
    """A noisy clip lit to ``level`` in which a bright blob wanders about."""
    pictures = []
    y, x = rng.integers(8, 24, size=2)
    for _ in range(frames):
        picture = (rng.integers(0, 30, (SIZE, SIZE, 3)) + level).astype(np.uint8)
        y, x = np.clip([y + rng.integers(-2, 3), x + rng.integers(-2, 3)], 6, SIZE - 7)
        picture[y - 5 : y + 5, x - 5 : x + 5] = 220
        pictures.append(picture)
    write_video(path, pictures, fps=10, crf=18)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Three classes of ten night videos, prepared as 4 frames of 32x32, split 6/2/2 per class."""
    folder = tmp_path_factory.mktemp("embed")
    rng = np.random.default_rng(11)
    for name, level in CLASS_LEVELS.items():
        for index in range(10):
            write_night_video(folder / "videos" / name / f"{name}_{index}.mp4", level, rng)
    out = folder / "store"
    prepare(
        PrepareConfig(
            folder / "videos",
            out,
            frames=4,
            height=SIZE,
            width=SIZE,
            split=(0.6, 0.2, 0.2),
            workers=1,
        )
    )
    return out


@pytest.fixture(scope="module")
def weights_file(store, tmp_path_factory):
    """Random weights with batch-norm statistics gathered on the training frames, saved.

    Random weights alone give features that are constant to float precision (MEASURED.md); once
    each batch normalisation knows the real mean and variance of its inputs, they follow the
    frames. Momentum 0 makes one forward pass in training mode store the batch's statistics.
    """
    keras.utils.set_random_seed(1)
    network = build_network(BACKBONE, SIZE, SIZE, weights="none")
    for layer in network.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.0
    frames = np.asarray(open_split(store, "train").frames).reshape(-1, SIZE, SIZE, 3)
    network(frames.astype("float32"), training=True)
    path = tmp_path_factory.mktemp("weights") / "calibrated.weights.h5"
    network.save_weights(path)
    return path


@pytest.fixture(scope="module")
def embedded(store, weights_file, tmp_path_factory):
    """The store embedded in one go, in batches that cut across clips (10 frames, 4 per clip)."""
    out = tmp_path_factory.mktemp("embedded") / "emb"
    config = EmbedConfig(
        store, BACKBONE, out, weights=str(weights_file), batch_size=10, chunk_clips=4
    )
    summary = embed(config)
    return out, config, summary


def test_embedding_store_holds_the_backbones_features_row_for_row(store, weights_file, embedded):
    out, _, summary = embedded
    assert summary.embedded_now == 30 and not summary.already_done
    assert sorted(path.name for path in out.iterdir()) == sorted(
        [
            "store.json",
            "classes.json",
            "manifest.csv",
            "embed_config.json",
            *(
                f"{split}{suffix}"
                for split in ("train", "val", "test")
                for suffix in (".npy", "_labels.npy")
            ),
        ]
    )
    info = json.loads((out / "store.json").read_text())
    record = info["embedding"]
    assert info["kind"] == "embeddings" and is_embedding_store(out)
    assert record["backbone"] == BACKBONE and record["network"] == "MobileNetV3Small"
    assert record["weights"]["name"] == "file"
    assert record["weights"]["path"] == str(weights_file.resolve())
    assert record["input"] == [SIZE, SIZE, 3] and record["features"] == 576
    assert record["axes"] == ["clip", "frame", "feature"]
    assert (out / "manifest.csv").read_bytes() == (store / "manifest.csv").read_bytes()
    assert json.loads((out / "classes.json").read_text())["class_names"] == sorted(CLASS_LEVELS)

    backbone = build_backbone(BACKBONE, SIZE, SIZE, weights=str(weights_file))
    for split in ("train", "val", "test"):
        clips = open_split(store, split)
        embeddings = open_embedding_split(out, split)
        assert embeddings.frames.shape == (len(clips), 4, 576)
        assert embeddings.frames.dtype == np.float16
        assert np.array_equal(embeddings.labels, clips.labels)
        assert embeddings.paths == clips.paths and embeddings.class_names == clips.class_names
        # Independently: every frame of the split through the backbone in one call.
        frames = np.asarray(clips.frames).reshape(-1, SIZE, SIZE, 3)
        direct = np.asarray(backbone.predict_on_batch(frames)).reshape(len(clips), 4, 576)
        np.testing.assert_allclose(embeddings.frames, direct, rtol=2e-3, atol=2e-3)
        # The generic reader opens it too, so the batch reader can feed either kind of store.
        assert np.array_equal(open_split(out, split).frames, embeddings.frames)

    # Informative: the features differ between clips (random weights alone would not).
    train = np.asarray(open_embedding_split(out, "train").frames, dtype=np.float32)
    assert train.std(axis=0).mean() > 0.05


@pytest.fixture(scope="module")
def trained(embedded, tmp_path_factory):
    """A GRU head trained by ``nightact.training.train`` on the embeddings."""
    out = embedded[0]
    run = tmp_path_factory.mktemp("runs") / "gru"
    config = TrainConfig(
        data=out,
        model="gru",
        out=run,
        epochs=40,
        batch_size=6,
        learning_rate=3e-3,
        units=(32,),
        dropout=0.1,
    )
    return train(config, verbose=0)


def test_a_recurrent_head_learns_from_the_embeddings(embedded, trained):
    run = Path(trained.run)
    config = json.loads((run / "config.json").read_text())
    assert config["backbone"] == BACKBONE and config["frames"] == 4
    assert (run / "head.keras").is_file() and (run / "model.keras").is_file()
    head = keras.saving.load_model(run / "head.keras")
    held_out = [
        head.evaluate(ClipBatches(open_embedding_split(embedded[0], split), 6), verbose=0)[1]
        for split in ("val", "test")
    ]
    # 12 held-out clips of 3 classes; chance is 1/3.
    assert np.mean(held_out) >= 0.6, held_out


def test_the_saved_model_reads_videos_and_equals_embed_plus_head(store, embedded, trained):
    run = Path(trained.run)
    # Plain Keras, no custom objects: backbone and head in one file that reads uint8 clips.
    model = keras.saving.load_model(run / "model.keras", compile=False)
    assert tuple(model.input.shape) == (None, 4, SIZE, SIZE, 3)
    assert model.input.dtype == "uint8"
    head = keras.saving.load_model(run / "head.keras", compile=False)
    test = open_embedding_split(embedded[0], "test")
    expected = np.asarray(head.predict_on_batch(np.asarray(test.frames, dtype=np.float32)))

    videos = [store.parent / "videos" / path for path in test.paths]
    predictions = predict(run, videos, top_k=1, progress=False)
    assert all(prediction.ok for prediction in predictions)
    got = np.stack([prediction.probabilities for prediction in predictions])
    np.testing.assert_allclose(got, expected, atol=2e-3)

    # Evaluation scores the end-to-end model on the clip store the embeddings came from.
    metrics = evaluate(run)
    assert metrics["data"] == str(store.resolve()) and metrics["clips"] == len(test)
    assert metrics["accuracy"] == pytest.approx(
        float(np.mean(expected.argmax(axis=1) == test.labels)), abs=1 / len(test)
    )
    row = summarize([load_run(run)])[0]
    assert row["label"] == "MobileNetV3Small + GRU"


def test_an_interrupted_embed_resumes_to_the_same_store(store, weights_file, embedded, tmp_path):
    uninterrupted, config, _ = embedded
    out = tmp_path / "emb"
    chunks = []

    def stop_after_two(split, start, stop):
        chunks.append((split, start, stop))
        if len(chunks) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        embed(EmbedConfig(**{**config.__dict__, "out": str(out)}), on_chunk=stop_after_two)
    assert chunks == [("train", 0, 4), ("train", 4, 8)]
    assert not (out / "store.json").exists()
    journal = (out / ".partial" / "journal.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in journal] == [
        {"split": "train", "start": 0, "stop": 4},
        {"split": "train", "start": 4, "stop": 8},
    ]
    # Another backbone's weights must not be mixed into the unfinished store.
    with pytest.raises(ValueError, match="holds unfinished embeddings by MobileNetV3Small"):
        embed(EmbedConfig(store, BACKBONE, out, weights="none"))

    summary = embed(EmbedConfig(**{**config.__dict__, "out": str(out)}))
    assert summary.embedded_now == 30 - 8
    assert not (out / ".partial").exists()
    for split in ("train", "val", "test"):
        assert np.array_equal(
            np.load(out / f"{split}.npy"), np.load(uninterrupted / f"{split}.npy")
        ), split
    assert (
        json.loads((out / "store.json").read_text())["embedding"]
        == json.loads((uninterrupted / "store.json").read_text())["embedding"]
    )


def test_random_weights_embed_but_their_features_are_constant(store, weights_file, tmp_path):
    out = tmp_path / "random"
    first = embed(EmbedConfig(store, BACKBONE, out, weights="none", batch_size=40))
    assert json.loads((out / "store.json").read_text())["embedding"]["weights"] == {"name": "none"}
    train = np.asarray(open_embedding_split(out, "train").frames, dtype=np.float32)
    # Why --weights none is for plumbing and timing only (see MEASURED.md).
    assert train.std(axis=0).max() < 1e-3
    assert first.embedded_now == 30

    again = embed(EmbedConfig(store, BACKBONE, out, weights="none"))
    assert again.already_done and "nothing to do" in again.table()
    with pytest.raises(ValueError, match="already holds embeddings by MobileNetV3Small with none"):
        embed(EmbedConfig(store, BACKBONE, out, weights=str(weights_file)))
    with pytest.raises(ValueError, match="already holds embeddings"):
        embed(EmbedConfig(store, "efficientnet_v2_b0", out, weights="none"))
    # --overwrite replaces them.
    replaced = embed(
        EmbedConfig(store, BACKBONE, out, weights=str(weights_file), batch_size=40), overwrite=True
    )
    assert replaced.embedded_now == 30
    assert json.loads((out / "store.json").read_text())["embedding"]["weights"]["name"] == "file"


def test_the_same_weights_elsewhere_are_the_same_embeddings(embedded, weights_file, tmp_path):
    out, config, _ = embedded
    moved = tmp_path / "moved.weights.h5"
    shutil.copyfile(weights_file, moved)
    summary = embed(EmbedConfig(**{**config.__dict__, "weights": str(moved)}))
    assert summary.already_done


def test_refusals_name_the_folder(store, embedded, tmp_path):
    out = embedded[0]
    with pytest.raises(ValueError, match="another folder than the clip store"):
        embed(EmbedConfig(store, BACKBONE, store, weights="none"))
    with pytest.raises(ValueError, match="already an embedding store"):
        embed(EmbedConfig(out, BACKBONE, tmp_path / "twice", weights="none"))
    other_store = shutil.copytree(store, tmp_path / "other_store")
    with pytest.raises(ValueError, match="other_store: holds a clip store"):
        embed(EmbedConfig(store, BACKBONE, other_store, weights="none"))
    with pytest.raises(ValueError, match="other_store: holds a clip store"):
        embed(EmbedConfig(store, BACKBONE, other_store, weights="none"), overwrite=True)
    with pytest.raises(FileNotFoundError, match="not a prepared store"):
        embed(EmbedConfig(tmp_path / "nothing", BACKBONE, tmp_path / "y", weights="none"))
    with pytest.raises(ValueError, match="a clip store, not an embedding store"):
        open_embedding_split(store, "train")


def test_the_manifest_rows_still_name_their_videos(embedded):
    out = embedded[0]
    with open(out / "manifest.csv", newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row["split"] == "val"]
    data = open_embedding_split(out, "val")
    for row in rows:
        assert data.paths[int(row["row"])] == row["path"]
        assert data.class_names[int(data.labels[int(row["row"])])] == row["class"]


def test_the_command_line_embeds_and_names_the_alternatives_offline(
    store, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "emb"
    # No internet, as on this project's machines: the default weights, imagenet, cannot come.
    monkeypatch.setenv("https_proxy", "http://127.0.0.1:9")
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    monkeypatch.setattr(keras.src.backend.config, "_KERAS_DIR", str(tmp_path / "keras"))
    assert main(["embed", str(store), "--backbone", BACKBONE, "--out", str(out)]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 1 and errors[0].startswith("nightact embed: error: could not get")
    assert "--weights none" in errors[0] and ".weights.h5" in errors[0]
    # Nothing was started that would block other weights in OUT.
    assert not (out / ".partial").exists()

    arguments = ["embed", str(store), "--backbone", BACKBONE, "--weights", "none"]
    assert main([*arguments, "--out", str(out), "--batch-size", "40"]) == 0
    printed = capsys.readouterr().out
    assert "embedded 30 clips with MobileNetV3Small (none)" in printed
    assert f"nightact train --data {out} --model gru" in printed
    assert is_embedding_store(out)


# End to end through the backbone, with XLA compiling its training step: slow on a small CPU.
@pytest.mark.slow
def test_fine_tuning_trains_only_the_top_of_the_backbone(embedded, weights_file, tmp_path):
    run = tmp_path / "tuned"
    config = TrainConfig(
        data=embedded[0],
        model="gru",
        out=run,
        epochs=2,
        batch_size=6,
        units=(8,),
        fine_tune=6,
        fine_tune_epochs=1,
        fine_tune_learning_rate=1e-3,
    )
    result = train(config, verbose=0)
    # The end-to-end epoch continues the head's history.
    assert [row["epoch"] for row in read_history(run)] == [0, 1, 2]
    assert result.epochs_completed == 3

    model = keras.saving.load_model(run / "model.keras", compile=False)
    network = network_of(model.get_layer("frame_features").layer)
    unfrozen = unfreeze_top(model, 6)
    top = network.layers[-6:]
    assert unfrozen == [
        layer.name for layer in top if not isinstance(layer, keras.layers.BatchNormalization)
    ]
    head_weights = {id(weight) for weight in model.get_layer("rnn_1").trainable_weights}
    head_weights |= {id(weight) for weight in model.get_layer("probabilities").trainable_weights}
    top_weights = {id(weight) for layer in top for weight in layer.trainable_weights}
    assert {id(weight) for weight in model.trainable_weights} == head_weights | top_weights
    assert top_weights  # something in the backbone does train

    # What stays frozen is still exactly the weights file's.
    original = build_network(BACKBONE, SIZE, SIZE, weights=str(weights_file))
    for layer, same in zip(network.layers[:-6], original.layers[:-6], strict=True):
        for weight, expected in zip(layer.weights, same.weights, strict=True):
            assert np.array_equal(np.asarray(weight), np.asarray(expected)), weight.path
