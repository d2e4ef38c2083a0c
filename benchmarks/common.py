"""What several benchmarks share: the machine they ran on, the model widths, stand-in splits.

Benchmarks import it as ``import common``: a script run as ``python benchmarks/X.py`` has
benchmarks/ first on ``sys.path``, so that needs no path set-up. No benchmark imports another
benchmark script; what two of them need lives here, and the project's own names and figures (model
names, class count, the original's ms per step) come from :mod:`nightact.core.names`.

Nothing here imports a deep-learning library: package versions are read from the installed
metadata, and the GPU, if any, from ``nvidia-smi``.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# The test corpora (support.copies, support.shifted) live beside the tests, not in the installed
# library; benchmarks/leakage.py and benchmarks/augment.py score nightact on them. Put tests/ on
# the path, once and last, so ``import support`` finds them without shadowing anything installed.
TESTS = REPO / "tests"
if str(TESTS) not in sys.path:
    sys.path.append(str(TESTS))

# The packages whose versions decide the figures.
PACKAGES = ("nightact", "keras", "tensorflow", "jax", "jaxlib", "torch", "numpy", "av")


def model_settings(full_shape: bool = False) -> dict:
    """How train.py, backends.py and torch_threads.py build the six models.

    ``full_shape``: the original's widths, for its 10 x 240x320 clips; otherwise a convolution
    scaled down for their 10 x 60x80 clips.
    """
    if full_shape:
        return {}  # the original's: units 128/64/32, conv 256 filters, 15x15, stride 15
    # At reduced frames the convolution shrinks with the frame, as in `nightact demo`.
    return {"conv_filters": 64, "conv_kernel": 4, "conv_stride": 4}


def demo_model_settings() -> dict:
    """The widths ``nightact demo`` builds its models with (nightact.demo.DemoConfig's defaults).

    GRU 64/32/16, dropout 0.1, 32 conv filters of 4x4, stride 4: for the demo's 8 x 48x64 clips.
    """
    from nightact.demo import DemoConfig

    demo = DemoConfig()
    return {
        "units": demo.units,
        "dropout": demo.dropout,
        "conv_filters": demo.conv_filters,
        "conv_kernel": demo.conv_kernel,
        "conv_stride": demo.conv_stride,
    }


def split_from_arrays(frames, labels):
    """A store's split (nightact.core.store.Split) over bare arrays: classes "class 0", ...

    For benchmarks that time the training reader on random clips rather than on a prepared store.
    """
    from nightact.core.names import NUM_CLASSES
    from nightact.core.store import Split

    names = [f"class {index}" for index in range(NUM_CLASSES)]
    return Split("train", frames, labels, names, [""] * len(labels))


# --- the machine ----------------------------------------------------------------------------------


def cpu_model() -> str:
    """The CPU's marketing name (Linux: /proc/cpuinfo), or what the platform module knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpus() -> list[str]:
    """Name and memory of every NVIDIA GPU that ``nvidia-smi`` lists; empty where there is none."""
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        listing = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in listing.splitlines() if line.strip()]


def memory_gb() -> float | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        return None


def versions() -> dict[str, str]:
    """Installed versions of PACKAGES in this interpreter; a package not installed is left out."""
    found = {}
    for name in PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def describe_machine() -> dict:
    """The machine, its load right now and the package versions, as JSON-ready values."""
    memory = memory_gb()
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "memory_gb": round(memory, 1) if memory else None,
        "load_average": [round(value, 2) for value in os.getloadavg()],
        "gpus": gpus(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": versions(),
    }


def format_machine(machine: dict) -> str:
    """Two lines for people: the hardware and load, then the software."""
    load = ", ".join(f"{value:.2f}" for value in machine["load_average"])
    gpu = "; ".join(machine["gpus"]) or "no GPU"
    memory = f", {machine['memory_gb']:.0f} GB RAM" if machine.get("memory_gb") else ""
    software = ", ".join(f"{name} {version}" for name, version in machine["versions"].items())
    return (
        f"machine: {machine['cpu']}, {machine['cpus']} CPUs{memory}, {gpu}; "
        f"load average (1, 5, 15 min) {load}; {machine['date']}\n"
        f"software: Python {machine['python']}, {software}; {machine['platform']}"
    )


def machine_summary() -> str:
    """The one line several benchmarks' JSON keeps as "machine": architecture, CPUs, platform."""
    return f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}"
