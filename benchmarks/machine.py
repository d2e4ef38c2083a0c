"""Describe the machine a benchmark runs on, so every table can say where its figures came from.

Nothing here imports a deep-learning library: versions are read from the installed packages'
metadata, and the GPU, if any, from ``nvidia-smi``.

    python benchmarks/machine.py        # one line, as the benchmarks print it
"""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import shutil
import subprocess

# The packages whose versions decide the figures.
PACKAGES = ("nightact", "keras", "tensorflow", "jax", "jaxlib", "torch", "numpy", "av")


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


if __name__ == "__main__":
    print(format_machine(describe_machine()))
