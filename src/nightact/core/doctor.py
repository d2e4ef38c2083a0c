"""``nightact doctor``: what nightact runs on here, and what each installed backend can see.

:func:`diagnose` gathers, without importing Keras or a backend into this process:

- nightact's and Python's versions, and the Keras backend the rule in
  :mod:`nightact.core.backend` picks, with its reason;
- the versions of Keras, the backends and their CUDA plugins, NumPy and PyAV, where installed;
- whether the NVIDIA driver reports a GPU (the GPUs' names and the driver version where
  ``nvidia-smi`` answers);
- the devices each installed backend (JAX, TensorFlow, torch) sees, each asked in a fresh
  interpreter of its own with a time limit, so that one backend's import (TensorFlow taking GPU
  memory, a driver that hangs) can neither change nor block what the next one reports;
- the problems found: the warning :func:`nightact.core.backend.unused_gpu_warning` words when
  an NVIDIA GPU is present and the chosen backend sees none, a chosen backend that is not
  installed or fails to start.

:func:`format_diagnosis` writes it for people; ``dataclasses.asdict`` gives the JSON of
``nightact doctor --json``.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from nightact.core import backend
from nightact.core.names import VERSION

__all__ = [
    "BACKENDS",
    "DEFAULT_TIMEOUT",
    "NVIDIA_VERSION",
    "OPTIONAL_PACKAGES",
    "PACKAGES",
    "PROBES",
    "BackendDevices",
    "Diagnosis",
    "NvidiaDriver",
    "diagnose",
    "format_diagnosis",
    "installed_versions",
    "nvidia_driver",
    "probe_devices",
]

# The distributions whose versions are reported; the CUDA plugins only where installed.
PACKAGES = (
    "keras",
    "jax",
    "jaxlib",
    "jax-cuda12-plugin",
    "jax-cuda13-plugin",
    "tensorflow",
    "torch",
    "numpy",
    "av",
)
OPTIONAL_PACKAGES = ("jax-cuda12-plugin", "jax-cuda13-plugin")

BACKENDS = ("jax", "tensorflow", "torch")

# Seconds each backend's interpreter may take: TensorFlow alone imports in 7 s on a quiet 2-core
# machine, and a GPU's first context can take tens of seconds more.
DEFAULT_TIMEOUT = 120.0

NVIDIA_VERSION = Path("/proc/driver/nvidia/version")

# Each prints one JSON line: the devices as [kind, name] pairs, and a note where a CUDA plugin
# is installed but did not start (the reason JAX otherwise keeps to a log line).
PROBES = {
    "jax": """
import json, jax
devices = list(jax.devices())
if jax.default_backend() != "cpu":
    devices += jax.devices("cpu")
note = None
if not any(device.platform == "gpu" for device in devices):
    try:
        jax.devices("cuda")
    except RuntimeError as error:
        note = str(error).splitlines()[0] if str(error) else None
print(json.dumps({"devices": [[d.platform, d.device_kind] for d in devices], "note": note}))
""",
    "tensorflow": """
import json, tensorflow as tf
devices = []
for device in tf.config.list_physical_devices():
    details = {}
    if device.device_type == "GPU":
        details = tf.config.experimental.get_device_details(device)
    devices.append([device.device_type.lower(), details.get("device_name", device.name)])
print(json.dumps({"devices": devices, "note": None}))
""",
    "torch": """
import json, torch
devices = [["cpu", "cpu"]]
if torch.cuda.is_available():
    devices += [["gpu", torch.cuda.get_device_name(i)] for i in range(torch.cuda.device_count())]
print(json.dumps({"devices": devices, "note": None}))
""",
}


@dataclass
class BackendDevices:
    """What one backend reported from its own interpreter."""

    backend: str
    devices: list[list[str]] = field(default_factory=list)  # [kind, name]: kind gpu, cpu, tpu
    error: str | None = None  # it failed to import or to answer (the last line it printed)
    note: str | None = None  # e.g. why JAX's CUDA plugin did not start
    seconds: float = 0.0

    @property
    def gpus(self) -> list[str]:
        return [name for kind, name in self.devices if kind == "gpu"]


@dataclass
class NvidiaDriver:
    present: bool
    gpus: list[str] = field(default_factory=list)
    driver: str | None = None


@dataclass
class Diagnosis:
    nightact: str
    python: str
    executable: str
    backend: str
    reason: str
    versions: dict[str, str | None]
    nvidia: NvidiaDriver
    devices: dict[str, BackendDevices]
    uses: str  # the devices Keras will run on, in words
    problems: list[str]


def installed_versions(packages=PACKAGES) -> dict[str, str | None]:
    """Each distribution's installed version (None: not installed), read without importing it."""
    versions = {}
    for name in packages:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def nvidia_driver() -> NvidiaDriver:
    """Whether the driver reports an NVIDIA GPU; the GPUs and driver version where it says."""
    if not backend.nvidia_gpu_present():
        return NvidiaDriver(False)
    gpus, driver = [], None
    smi = shutil.which("nvidia-smi")
    if smi is not None:
        query = [smi, "--query-gpu=name,driver_version", "--format=csv,noheader"]
        try:
            answered = subprocess.run(query, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            answered = None
        if answered is not None and answered.returncode == 0:
            for line in answered.stdout.splitlines():
                name, _, version = line.rpartition(",")
                if name.strip():
                    gpus.append(name.strip())
                    driver = version.strip() or driver
    if driver is None:
        try:
            found = re.search(r"Kernel Module\s+(\S+)", NVIDIA_VERSION.read_text())
            driver = found.group(1) if found else None
        except OSError:
            pass
    return NvidiaDriver(True, gpus, driver)


def probe_devices(name: str, timeout: float = DEFAULT_TIMEOUT) -> BackendDevices:
    """The devices backend ``name`` sees, asked in a fresh interpreter within ``timeout`` s."""
    environment = dict(os.environ)
    # TensorFlow's C++ start-up lines are not the answer; its errors still reach stderr.
    environment.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # JAX reserves 75 % of a GPU's memory once it uses it; a probe needs none, and a training
    # run may hold that GPU.
    environment.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    started = time.perf_counter()
    try:
        done = subprocess.run(
            [sys.executable, "-c", PROBES[name]],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=environment,
        )
    except subprocess.TimeoutExpired:
        return BackendDevices(name, error=f"no answer within {timeout:g} s", seconds=timeout)
    seconds = round(time.perf_counter() - started, 2)
    lines = done.stdout.strip().splitlines()
    try:
        answer = json.loads(lines[-1])
        devices = [[str(kind).lower(), str(label)] for kind, label in answer["devices"]]
    except (IndexError, ValueError, KeyError, TypeError):
        said = [line for line in done.stderr.splitlines() if line.strip()]
        error = said[-1].strip() if said else f"exited with status {done.returncode}"
        return BackendDevices(name, error=error[:300], seconds=seconds)
    return BackendDevices(name, devices, note=answer.get("note"), seconds=seconds)


def diagnose(timeout: float = DEFAULT_TIMEOUT, environ=None) -> Diagnosis:
    """Everything ``nightact doctor`` reports; the backends are asked side by side."""
    choice = backend.explain_backend(environ)
    versions = installed_versions()
    installed = [name for name in BACKENDS if _importable(name)]
    with ThreadPoolExecutor(max_workers=len(BACKENDS) + 1) as pool:
        nvidia = pool.submit(nvidia_driver)
        answers = list(pool.map(lambda name: probe_devices(name, timeout), installed))
        nvidia = nvidia.result()
    devices = {answer.backend: answer for answer in answers}
    uses, problems = _verdict(choice.backend, devices, nvidia, versions, environ)
    return Diagnosis(
        nightact=VERSION,
        python=platform.python_version(),
        executable=sys.executable,
        backend=choice.backend,
        reason=choice.reason,
        versions={
            name: version
            for name, version in versions.items()
            if version is not None or name not in OPTIONAL_PACKAGES
        },
        nvidia=nvidia,
        devices=devices,
        uses=uses,
        problems=problems,
    )


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _verdict(chosen: str, devices: dict, nvidia: NvidiaDriver, versions: dict, environ=None):
    """The devices Keras will use, in words, and the problems found."""
    answer = devices.get(chosen)
    if answer is None:
        return "nothing", [f"the chosen backend {chosen} is not installed: Keras cannot start"]
    if answer.error is not None:
        return "nothing", [f"the chosen backend {chosen} failed to start: {answer.error}"]
    problems = []
    if answer.gpus:
        uses = f"{chosen} on {len(answer.gpus)} GPU(s): {', '.join(answer.gpus)}"
    else:
        uses = f"{chosen} on the CPU"
        hidden = backend.gpus_hidden_by(chosen, environ)
        if nvidia.present and hidden:
            uses += f" (the GPUs are hidden by {hidden})"
        elif nvidia.present:
            problems.append(backend.unused_gpu_warning(chosen))
            plugins = [name for name in OPTIONAL_PACKAGES if versions.get(name)]
            if chosen == "jax" and plugins and answer.note:
                problems.append(f"{plugins[0]} is installed but did not start: {answer.note}")
    return uses, problems


def format_diagnosis(diagnosis: Diagnosis) -> str:
    """The report for people, one fact a line."""
    installed = [f"{name} {version}" for name, version in diagnosis.versions.items() if version]
    missing = [name for name, version in diagnosis.versions.items() if not version]
    versions = ", ".join(installed) + (f"; not installed: {', '.join(missing)}" if missing else "")
    nvidia = diagnosis.nvidia
    if nvidia.present:
        gpus = ", ".join(nvidia.gpus) or "GPU(s) listed by the driver"
        driver = f"{gpus}, driver {nvidia.driver}" if nvidia.driver else gpus
    else:
        driver = "none found (no GPU under /proc/driver/nvidia, none from nvidia-smi)"
    lines = [
        f"nightact  {diagnosis.nightact}, Python {diagnosis.python} ({diagnosis.executable})",
        f"backend   {diagnosis.backend}: {diagnosis.reason}",
        f"versions  {versions}",
        f"NVIDIA    {driver}",
    ]
    for index, (name, answer) in enumerate(diagnosis.devices.items()):
        if answer.error is not None:
            seen = f"failed: {answer.error}"
        else:
            seen = ", ".join(
                kind if label == kind else f"{kind} ({label})" for kind, label in answer.devices
            )
        lines.append(f"{'devices' if index == 0 else '':<9} {name}: {seen}")
    if not diagnosis.devices:
        lines.append("devices   no backend installed (jax, tensorflow, torch)")
    lines.append(f"uses      {diagnosis.uses}")
    lines.extend(f"warning   {problem}" for problem in diagnosis.problems)
    return "\n".join(lines)
