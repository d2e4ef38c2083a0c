"""The command line takes every default from the config it builds, and builds it one way."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

from nightact import cli
from nightact.core.names import NUM_CLASSES
from nightact.data.embed import EmbedConfig
from nightact.data.prepare import PrepareConfig
from nightact.demo import DemoConfig
from nightact.sources.download import DownloadConfig
from nightact.sources.synthetic import SynthConfig
from nightact.training.train import TrainConfig


def parse(*argv: str):
    return cli.build_parser().parse_args(list(argv))


@pytest.mark.parametrize(
    ("argv", "build", "expected"),
    [
        (["synth", "videos"], cli.synth_config, SynthConfig("videos")),
        (["prepare", "src", "store"], cli.prepare_config, PrepareConfig("src", "store")),
        (["demo"], cli.demo_config, DemoConfig()),
        (["download"], cli.download_config, DownloadConfig()),
        (
            ["train", "--data", "store", "--model", "gru", "--out", "run"],
            cli.train_config,
            TrainConfig("store", "gru", "run"),
        ),
        (
            ["embed", "store", "--backbone", "mobilenet_v3_small", "--out", "emb"],
            cli.embed_config,
            EmbedConfig("store", "mobilenet_v3_small", "emb"),
        ),
    ],
    ids=["synth", "prepare", "demo", "download", "train", "embed"],
)
def test_a_command_without_flags_builds_the_default_config(argv, build, expected):
    assert build(parse(*argv)) == expected


def test_models_defaults_are_the_store_and_training_defaults_and_the_builders():
    from nightact.nets.models import build_model

    settings = cli.models_settings(parse("models"))
    store, train = PrepareConfig("s", "o"), TrainConfig("s", "gru", "o")
    assert settings == dict(
        frames=store.frames,
        height=store.height,
        width=store.width,
        num_classes=NUM_CLASSES,
        units=train.units,
        conv_filters=train.conv_filters,
    )
    # build_model's own defaults agree, so the Python API and the command describe one model.
    defaults = {
        name: parameter.default
        for name, parameter in inspect.signature(build_model).parameters.items()
        if name in settings
    }
    assert defaults == settings


def test_flags_reach_the_config_and_help_shows_the_dataclass_defaults(capsys):
    config = cli.prepare_config(
        parse("prepare", "s", "o", "--size", "48x64", "--split", "0.5,0.25,0.25", "--seed", "3")
    )
    assert (config.height, config.width, config.split, config.seed) == (
        48,
        64,
        (0.5, 0.25, 0.25),
        3,
    )
    config = cli.train_config(
        parse(
            "train",
            "--data",
            "s",
            "--model",
            "lstm",
            "--out",
            "r",
            "--lr",
            "0.01",
            "--units",
            "8,4",
        )
    )
    assert (config.learning_rate, config.units) == (0.01, (8, 4))
    with pytest.raises(SystemExit):
        parse("train", "--help")
    text = " ".join(capsys.readouterr().out.split())
    for name, flag in [("epochs", "--epochs"), ("batch_size", "--batch-size")]:
        default = next(f.default for f in dataclasses.fields(TrainConfig) if f.name == name)
        assert f"(default {default})" in text, flag


def test_resume_without_a_run_folder_is_refused():
    with pytest.raises(ValueError, match="--resume needs --out"):
        cli.train_config(parse("train", "--resume"))
    with pytest.raises(ValueError, match="--data and --model are required"):
        cli.train_config(parse("train", "--model", "gru"))
