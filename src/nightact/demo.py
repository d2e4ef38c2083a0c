"""The whole pipeline on built-in synthetic videos, sized for a laptop CPU: ``nightact demo``.

synth -> prepare -> train the six models -> evaluate each on the test split -> compare, all
under one folder::

    OUT/                  (default ./nightact-demo)
      demo_config.json    the DemoConfig
      videos/             synthetic mp4 files, OUT/videos/<class name>/*.mp4
      store/              the prepared clip store
      runs/<model>/       one training run per model, with evaluation/
      report/             report.html (open it in a browser), report.md, figures

Every step skips what is already done, so an interrupted demo resumes where it stopped.

The defaults trade the original's scale for speed: short clips at 8 frames of 48x64, a small
recurrent head, and a per-frame convolution scaled down with the frame (kernel and stride 4
instead of 15 at 240x320, so each convolution still sees a patch of similar relative size). On a
2-core machine the whole demo takes minutes, and the CNN models reach test accuracies far above
the 1 in 12 of chance.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from nightact.core import files, runs
from nightact.core.locks import folder_lock
from nightact.core.names import MODEL_NAMES
from nightact.data.prepare import PrepareConfig, prepare
from nightact.scoring.compare import compare
from nightact.scoring.evaluate import evaluate
from nightact.sources.synthetic import SynthConfig, write_synthetic_dataset
from nightact.training.train import TrainConfig, train

__all__ = [
    "CONFIG_NAME",
    "DemoConfig",
    "DemoResult",
    "format_demo_result",
    "run_demo",
]

log = logging.getLogger(__name__)

CONFIG_NAME = "demo_config.json"
# DemoConfig fields that TrainConfig also has but that mean something else for the demo: where
# it writes, its processes, and the clip shape (the store it prepares has it).
_NOT_FOR_TRAINING = ("out", "workers", "frames", "height", "width")


@dataclass
class DemoConfig:
    """Settings of the demo; saved as OUT/demo_config.json."""

    out: str = "nightact-demo"
    models: tuple[str, ...] = MODEL_NAMES
    videos_per_class: int = 50
    min_seconds: float = 1.0
    max_seconds: float = 2.5
    # Every synthetic video at 96x128 (4:3, like the clips), which keeps synth and prepare fast;
    # None draws sizes and aspect ratios as `nightact synth` does.
    video_size: tuple[int, int] | None = (96, 128)
    frames: int = 8
    height: int = 48
    width: int = 64
    epochs: int = 12
    batch_size: int = 16
    learning_rate: float = 3e-3
    loss: str = "crossentropy"
    units: tuple[int, ...] = (64, 32, 16)
    dropout: float = 0.1
    conv_filters: int = 32
    conv_kernel: int = 4
    conv_stride: int = 4
    # Clip-consistent augmentation in training (nightact train --augment); docs/augmentation.md.
    augment: bool = False
    seed: int = 0
    workers: int | None = None  # processes for synth and prepare (default: CPUs)

    def __post_init__(self) -> None:
        self.out = str(self.out)
        self.models = tuple(self.models)
        self.units = tuple(self.units)
        self.video_size = tuple(self.video_size) if self.video_size else None
        if not self.models:
            raise ValueError("the demo needs at least one model")

    def content(self) -> dict:
        """Settings that decide the demo's results (not where it is or how fast it runs)."""
        settings = dataclasses.asdict(self)
        for name in ("out", "workers", "models"):
            settings.pop(name)
        settings["units"] = list(self.units)
        if not settings["augment"]:
            # A demo folder from before the setting existed trained without it: still the same.
            settings.pop("augment")
        settings["video_size"] = list(self.video_size) if self.video_size else None
        return settings


@dataclass
class DemoResult:
    """Where the demo put things and how the models did."""

    out: Path
    report: Path
    test_accuracy: dict[str, float]  # model -> accuracy on the test split
    seconds: float  # wall time of this call


def run_demo(config: DemoConfig) -> DemoResult:
    """Run (or resume) the demo in ``config.out``; see the module docstring.

    Holds the lock of ``config.out`` throughout (a second demo into it is refused); its steps
    take the locks of the folders they write inside it.
    """
    with folder_lock(config.out):
        return _run_demo(config)


def _run_demo(config: DemoConfig) -> DemoResult:
    started = time.perf_counter()
    out = Path(config.out)
    _check_or_save_config(config, out)
    steps = 3 + 2 * len(config.models)
    step = 0

    def announce(text: str) -> None:
        nonlocal step
        step += 1
        log.info("demo step %d/%d: %s", step, steps, text)

    announce(f"synthetic videos in {out / 'videos'}")
    write_synthetic_dataset(
        SynthConfig(
            out=out / "videos",
            videos_per_class=config.videos_per_class,
            seed=config.seed,
            min_seconds=config.min_seconds,
            max_seconds=config.max_seconds,
            workers=config.workers,
            size=config.video_size,
        )
    )
    announce(f"clip store in {out / 'store'}")
    summary = prepare(
        PrepareConfig(
            src=out / "videos",
            out=out / "store",
            frames=config.frames,
            height=config.height,
            width=config.width,
            workers=config.workers,
        )
    )
    log.info("%d clips in the store", summary.prepared)

    training_settings = {
        field.name: getattr(config, field.name)
        for field in dataclasses.fields(TrainConfig)
        if hasattr(config, field.name) and field.name not in _NOT_FOR_TRAINING
    }
    accuracies = {}
    run_folders = []
    for model in config.models:
        run = out / "runs" / model
        run_folders.append(run)
        announce(f"train {model} in {run}")
        train(
            TrainConfig(
                data=str(out / "store"),
                model=model,
                out=str(run),
                resume=True,
                **training_settings,
            ),
            verbose=0,
        )
        announce(f"evaluate {model} on the test split")
        metrics = runs.read_metrics(run) if runs.is_evaluated(run) else evaluate(run)
        accuracies[model] = metrics["accuracy"]

    announce(f"report in {out / 'report'}")
    report = compare(run_folders, out / "report")
    seconds = time.perf_counter() - started
    log.info("demo finished in %.0f s; open %s", seconds, report)
    return DemoResult(out=out, report=report, test_accuracy=accuracies, seconds=seconds)


def _check_or_save_config(config: DemoConfig, out: Path) -> None:
    """A demo folder resumes only with the settings it was started with."""
    path = out / CONFIG_NAME
    if path.exists():
        runs.require_same_settings(
            runs.read_json(path, "demo config"),
            config.content(),
            where=out,
            what="a demo",
            remedy="use another --out or delete it",
        )
    files.write_json_atomic(path, {**config.content(), "models": list(config.models)})


def format_demo_result(result: DemoResult) -> str:
    """What the demo prints at the end: test accuracy per model, time, and the report's path."""
    width = max(len("model"), *(len(name) for name in result.test_accuracy))
    lines = [f"{'model':<{width}}  test accuracy"]
    for name, accuracy in result.test_accuracy.items():
        lines.append(f"{name:<{width}}  {100 * accuracy:12.1f} %")
    lines += [
        "",
        f"demo finished in {result.seconds / 60:.1f} min; everything is in {result.out}",
        f"report: {result.report.resolve()}",
    ]
    return "\n".join(lines)
