"""The command line takes every default from the config it builds, and builds it one way."""

from __future__ import annotations

import argparse
import dataclasses
import inspect

import pytest

from nightact import cli
from nightact.core.doctor import DEFAULT_TIMEOUT
from nightact.core.names import NUM_CLASSES
from nightact.data.embed import EmbedConfig
from nightact.data.leakage import LeakageConfig
from nightact.data.prepare import PrepareConfig
from nightact.demo import DemoConfig
from nightact.scoring.compare import CompareConfig
from nightact.scoring.evaluate import EvaluateConfig
from nightact.scoring.robustness import RobustnessConfig
from nightact.serve.export import ExportConfig
from nightact.serve.predict import PredictConfig
from nightact.serve.timeline import TimelineConfig
from nightact.sources.download import DownloadConfig
from nightact.sources.synthetic import SynthConfig
from nightact.study import StudyConfig
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
        (["leakage", "store"], cli.leakage_config, LeakageConfig("store")),
        (["evaluate", "run"], cli.evaluate_config, EvaluateConfig("run")),
        (["robustness", "run"], cli.robustness_config, RobustnessConfig("run")),
        # The command evaluates runs that are not yet evaluated; the Python API only when asked.
        (
            ["compare", "a", "b"],
            cli.compare_config,
            CompareConfig(("a", "b"), evaluate_missing=True),
        ),
        (["predict", "run", "a.mp4"], cli.predict_config, PredictConfig("run", ("a.mp4",))),
        (
            ["timeline", "run", "a.mp4", "--out", "o"],
            cli.timeline_config,
            TimelineConfig("run", "a.mp4", "o"),
        ),
        (
            ["export", "run", "--format", "onnx", "--out", "m.onnx"],
            cli.export_config,
            ExportConfig("run", "onnx", "m.onnx"),
        ),
        (["study", "--data", "store", "--out", "s"], cli.study_config, StudyConfig("store", "s")),
    ],
    ids=[
        "synth",
        "prepare",
        "demo",
        "download",
        "train",
        "embed",
        "leakage",
        "evaluate",
        "robustness",
        "compare",
        "predict",
        "timeline",
        "export",
        "study",
    ],
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


def test_verbose_goes_before_or_after_the_command():
    assert parse("-v", "models").verbose and parse("models", "--verbose").verbose
    assert parse("--verbose", "prepare", "videos", "store", "-v").verbose
    assert not parse("models").verbose and not parse("prepare", "videos", "store").verbose


def test_resume_without_a_run_folder_is_refused():
    with pytest.raises(ValueError, match="--resume needs --out"):
        cli.train_config(parse("train", "--resume"))
    with pytest.raises(ValueError, match="--data and --model are required"):
        cli.train_config(parse("train", "--model", "gru"))


@pytest.mark.parametrize(
    ("argv", "build", "expected"),
    [
        (
            [
                "evaluate", "run", "--split", "val", "--allow-validation", "--data", "other",
                "--batch-size", "4", "--views", "2",
            ],
            cli.evaluate_config,
            EvaluateConfig("run", "val", "other", 4, True, 2),
        ),
        (
            ["robustness", "run", "--data", "other", "--batch-size", "5"],
            cli.robustness_config,
            RobustnessConfig("run", "other", 5),
        ),
        (
            ["compare", "a", "b", "--out", "rep"],
            cli.compare_config,
            CompareConfig(("a", "b"), "rep", evaluate_missing=True),
        ),
        (
            [
                "predict", "m.onnx", "a.mp4", "videos", "--top-k", "2", "--batch-size", "4",
                "--views", "2", "--engine", "onnx",
            ],
            cli.predict_config,
            PredictConfig("m.onnx", ("a.mp4", "videos"), 2, 4, 2, "onnx"),
        ),
    ],
    ids=["evaluate", "robustness", "compare", "predict"],
)  # fmt: skip
def test_every_flag_of_the_scoring_and_serving_commands_reaches_its_config(argv, build, expected):
    assert build(parse(*argv)) == expected


@pytest.mark.parametrize(
    ("command", "flag", "config_class", "field"),
    [
        ("evaluate", "--split {train,val,test}", EvaluateConfig, "split"),
        ("evaluate", "--views VIEWS", EvaluateConfig, "views"),
        ("predict", "--top-k TOP_K", PredictConfig, "top_k"),
        ("predict", "--batch-size BATCH_SIZE", PredictConfig, "batch_size"),
        ("predict", "--views VIEWS", PredictConfig, "views"),
        ("compare", "--out OUT", CompareConfig, "out"),
    ],
)
def test_help_shows_the_config_default(capsys, command, flag, config_class, field):
    with pytest.raises(SystemExit):
        parse(command, "--help")
    default = next(f.default for f in dataclasses.fields(config_class) if f.name == field)
    assert _option_help(capsys.readouterr().out, flag).endswith(f"(default {default})")


def _option_help(text: str, flag: str) -> str:
    """The help of one option in argparse's output, on one line."""
    entries, entry = [], []
    for line in text.splitlines():
        # An option's entry starts at "  -"; its help goes on in more deeply indented lines.
        if line.startswith("  -") or not line.startswith("   "):
            entries.append(" ".join(" ".join(entry).split()))
            entry = []
        entry.append(line)
    entries.append(" ".join(" ".join(entry).split()))
    (found,) = [entry for entry in entries if entry.startswith(flag + " ")]
    return found


@pytest.mark.parametrize(
    ("argv", "field"),
    [
        (["evaluate", "RUN", "--views", "0"], "views"),
        (["evaluate", "RUN", "--batch-size", "0"], "batch_size"),
        (["robustness", "RUN", "--batch-size", "-1"], "batch_size"),
        (["predict", "RUN", "a.mp4", "--top-k", "0"], "top_k"),
        (["predict", "RUN", "a.mp4", "--views", "0"], "views"),
    ],
)
def test_a_bad_value_is_one_line_naming_it_before_anything_is_read(tmp_path, capsys, argv, field):
    # RUN does not exist: the config refuses the value before any file is looked at.
    argv = [str(tmp_path / "run") if arg == "RUN" else arg for arg in argv]
    assert cli.main(argv) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"nightact {argv[0]}: error: {field} must be at least 1, got ")
    assert error.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_doctor_flags_and_a_bad_timeout(capsys):
    args = parse("doctor", "--json", "--timeout", "30")
    assert (args.json, args.timeout) == (True, 30.0)
    assert (parse("doctor").json, parse("doctor").timeout) == (False, DEFAULT_TIMEOUT)
    assert cli.main(["doctor", "--timeout", "0"]) == 2
    error = capsys.readouterr().err
    assert error == "nightact doctor: error: timeout must be positive, got 0\n"


@pytest.mark.parametrize(
    ("arguments", "hint"),
    [
        (
            ["train", "--data", "s", "--model", "gru", "--out", "r"],
            "; run it again with --resume to go on from its last finished epoch",
        ),
        (
            ["study", "--data", "s", "--out", "o"],
            "; run the same command again to go on where it stopped",
        ),
        (["evaluate", "r"], ""),
    ],
)
def test_ctrl_c_ends_a_command_in_one_line_saying_how_to_go_on(
    monkeypatch, capsys, arguments, hint
):
    def interrupted(args):
        raise KeyboardInterrupt

    real_parse_args = argparse.ArgumentParser.parse_args

    def parsed_then_interrupted(parser, *given, **options):
        parsed = real_parse_args(parser, *given, **options)
        assert parsed.command == arguments[0]
        parsed.handler = interrupted  # the command is stopped as it starts
        return parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parsed_then_interrupted)
    assert cli.main(arguments) == 130
    assert capsys.readouterr().err.splitlines() == [f"nightact {arguments[0]}: interrupted{hint}"]
