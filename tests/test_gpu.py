"""nightact.nets.gpu: one warning line when an NVIDIA GPU is present and the backend cannot see it.

The GPU is simulated (a fake ``/proc/driver/nvidia/gpus`` entry, a fake ``nvidia-smi`` on PATH);
the backend is the real one, which on the project's machines sees only the CPU.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import keras
import pytest

from nightact.core import backend
from nightact.nets import gpu


@pytest.fixture
def first_check(monkeypatch):
    """This process as if it had not looked for an unused GPU yet."""
    monkeypatch.setattr(gpu, "_checked", False)


@pytest.fixture
def cpu_only_backend():
    if gpu.backend_sees_gpu():
        pytest.skip("this machine's backend sees a real GPU")
    return keras.config.backend()


def test_an_unseen_gpu_is_said_once_in_one_line_naming_the_fix(
    first_check, fake_gpu, cpu_only_backend, caplog
):
    with caplog.at_level(logging.WARNING, logger=gpu.__name__):
        assert gpu.warn_if_gpu_unused()
        assert not gpu.warn_if_gpu_unused()
    (record,) = caplog.records
    message = record.getMessage()
    assert "\n" not in message
    assert f"Keras' {cpu_only_backend} backend sees no GPU" in message
    assert backend.CUDA_INSTALL[cpu_only_backend] in message
    if cpu_only_backend == "jax":
        assert "pip install 'nightact[cuda]'" in message


def test_no_gpu_no_warning(first_check, no_gpu, cpu_only_backend, caplog):
    with caplog.at_level(logging.WARNING, logger=gpu.__name__):
        assert not gpu.warn_if_gpu_unused()
    assert caplog.records == []


def test_a_gpu_hidden_on_purpose_is_not_warned_about(
    first_check, fake_gpu, cpu_only_backend, monkeypatch, caplog
):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    with caplog.at_level(logging.WARNING, logger=gpu.__name__):
        assert not gpu.warn_if_gpu_unused()
    assert caplog.records == []


def test_a_process_without_keras_is_not_asked_and_keeps_its_check(
    first_check, fake_gpu, cpu_only_backend, monkeypatch, caplog
):
    """The ONNX engine never loads Keras: nothing to warn about, and the driver is not asked."""
    with monkeypatch.context() as patched:
        patched.setitem(sys.modules, "keras", None)
        patched.setattr(backend, "nvidia_gpu_present", lambda: pytest.fail("driver asked"))
        assert not gpu.warn_if_gpu_unused()
    # The one check is still to come once Keras is loaded.
    with caplog.at_level(logging.WARNING, logger=gpu.__name__):
        assert gpu.warn_if_gpu_unused()
    assert len(caplog.records) == 1


def fake_nvidia_smi(folder: Path) -> Path:
    """An ``nvidia-smi`` that lists one H200 and notes each call in FOLDER/asked."""
    script = folder / "nvidia-smi"
    script.write_text(
        f'#!/bin/sh\necho "$@" >> {folder / "asked"}\n'
        'case "$1" in -L) echo "GPU 0: NVIDIA H200 (UUID: GPU-1)";; '
        '*) echo "NVIDIA H200, 580.65.06";; esac\n'
    )
    script.chmod(0o755)
    return folder / "asked"


def run_nightact(*argv: str, path_first: Path) -> subprocess.CompletedProcess:
    """``nightact ARGV`` with PATH_FIRST ahead on PATH and no GPU hidden on purpose."""
    environment = {
        key: value
        for key, value in os.environ.items()
        if key not in ("CUDA_VISIBLE_DEVICES", "JAX_PLATFORMS")
    }
    environment["PATH"] = f"{path_first}{os.pathsep}{os.environ['PATH']}"
    return subprocess.run(
        [sys.executable, "-m", "nightact.cli", *argv],
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_a_keras_command_warns_once_and_a_data_command_never(tmp_path, barcode_video):
    """``nightact predict`` on a machine with a (fake) GPU and a CPU-only backend; ``synth``."""
    from trained_run import tiny_run

    if gpu.backend_sees_gpu():
        pytest.skip("this machine's backend sees a real GPU")
    bin_folder = tmp_path / "bin"
    bin_folder.mkdir()
    asked = fake_nvidia_smi(bin_folder)
    synth = run_nightact(
        "synth", str(tmp_path / "videos"), "--videos-per-class", "1", "--max-seconds", "2.5",
        "--size", "48x64", "--workers", "1", path_first=bin_folder,
    )  # fmt: skip
    assert synth.returncode == 0, synth.stderr
    assert "GPU" not in synth.stderr
    assert not asked.exists()  # the data commands never ask the driver

    run = tiny_run(tmp_path)
    predict = run_nightact("predict", str(run), str(barcode_video()), path_first=bin_folder)
    assert predict.returncode == 0, predict.stderr
    warnings = [line for line in predict.stderr.splitlines() if "sees no GPU" in line]
    assert len(warnings) == 1, predict.stderr
    assert warnings[0].startswith("WARNING nightact.nets.gpu: an NVIDIA GPU is present")
    backend_name = backend.choose_backend()
    assert backend.CUDA_INSTALL[backend_name] in warnings[0]
    assert asked.exists()
