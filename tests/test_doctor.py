"""nightact.core.doctor and ``nightact doctor``: the backend, versions, and what each backend sees.

Run for real on this machine (JAX and TensorFlow installed, both seeing only the CPU), with the
real JAX beside a simulated NVIDIA GPU (a fake ``/proc/driver/nvidia/gpus`` entry and
``nvidia-smi``), and with stand-in probes for a backend that sees a GPU, fails, or hangs.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
import time

import pytest

import nightact
from nightact import cli
from nightact.core import backend, doctor


@pytest.fixture
def fake_gpu(fake_gpu, monkeypatch, tmp_path):
    """An H200 as the driver reports it: conftest's GPU, and an nvidia-smi that answers queries."""
    bin_folder = tmp_path / "bin"
    bin_folder.mkdir()
    script = bin_folder / "nvidia-smi"
    script.write_text(
        '#!/bin/sh\ncase "$1" in -L) echo "GPU 0: NVIDIA H200 (UUID: GPU-1)";; '
        '*) echo "NVIDIA H200, 580.65.06";; esac\n'
    )
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_folder}{os.pathsep}{os.environ['PATH']}")


def fake_probe(devices: list[list[str]]) -> str:
    """Probe code that answers ``devices`` at once, as a backend seeing them would."""
    return f"import json; print(json.dumps({{'devices': {devices!r}, 'note': None}}))"


def test_a_gpu_the_cpu_only_jax_cannot_see_is_a_problem_naming_the_fix(fake_gpu, monkeypatch):
    """A simulated H200 beside the real, CPU-only JAX."""
    jax = pytest.importorskip("jax")
    if any(device.platform == "gpu" for device in jax.devices()):
        pytest.skip("this machine's JAX sees a real GPU")
    monkeypatch.setattr(doctor, "BACKENDS", ("jax",))
    diagnosis = doctor.diagnose(timeout=300, environ={})
    assert diagnosis.backend == "jax"
    assert diagnosis.nvidia == doctor.NvidiaDriver(True, ["NVIDIA H200"], "580.65.06")
    assert diagnosis.uses == "jax on the CPU"
    assert diagnosis.problems == [backend.unused_gpu_warning("jax")]
    assert "pip install 'nightact[cuda]'" in diagnosis.problems[0]
    text = doctor.format_diagnosis(diagnosis)
    assert "NVIDIA    NVIDIA H200, driver 580.65.06" in text
    assert text.splitlines()[-1] == f"warning   {backend.unused_gpu_warning('jax')}"


def test_a_gpu_hidden_on_purpose_is_no_problem(fake_gpu, monkeypatch):
    monkeypatch.setattr(doctor, "BACKENDS", ("jax",))
    monkeypatch.setattr(doctor, "_importable", lambda name: True)
    monkeypatch.setitem(doctor.PROBES, "jax", fake_probe([["cpu", "cpu"]]))
    diagnosis = doctor.diagnose(environ={"CUDA_VISIBLE_DEVICES": "-1"})
    assert diagnosis.nvidia.present
    assert diagnosis.uses == "jax on the CPU (the GPUs are hidden by CUDA_VISIBLE_DEVICES=-1)"
    assert diagnosis.problems == []


def test_a_cuda_plugin_that_did_not_start_says_why(fake_gpu, monkeypatch):
    """JAX keeps the reason to a log line; the report names the plugin and the reason."""
    monkeypatch.setattr(doctor, "BACKENDS", ("jax",))
    monkeypatch.setattr(doctor, "_importable", lambda name: True)
    reason = "CUDA driver version is insufficient for CUDA runtime version"
    probe = f"import json; print(json.dumps({{'devices': [['cpu', 'cpu']], 'note': {reason!r}}}))"
    monkeypatch.setitem(doctor.PROBES, "jax", probe)
    monkeypatch.setattr(
        doctor, "installed_versions", lambda: {"jax": "0.10.2", "jax-cuda13-plugin": "0.10.2"}
    )
    diagnosis = doctor.diagnose(environ={})
    assert diagnosis.problems == [
        backend.unused_gpu_warning("jax"),
        f"jax-cuda13-plugin is installed but did not start: {reason}",
    ]


def test_a_backend_that_sees_the_gpu_is_used_on_it(fake_gpu, monkeypatch):
    monkeypatch.setattr(doctor, "BACKENDS", ("jax",))
    monkeypatch.setitem(doctor.PROBES, "jax", fake_probe([["gpu", "NVIDIA H200"]]))
    diagnosis = doctor.diagnose(environ={})
    assert diagnosis.devices["jax"].gpus == ["NVIDIA H200"]
    assert diagnosis.uses == "jax on 1 GPU(s): NVIDIA H200"
    assert diagnosis.problems == []


def test_a_backend_that_fails_or_hangs_is_reported_and_does_not_block_the_others(
    no_gpu, monkeypatch
):
    monkeypatch.setattr(doctor, "BACKENDS", ("jax", "tensorflow"))
    monkeypatch.setattr(doctor, "_importable", lambda name: True)
    failing = "import sys; sys.stderr.write('loading\\nImportError: libcuda.so.1\\n'); sys.exit(1)"
    monkeypatch.setitem(doctor.PROBES, "jax", failing)
    monkeypatch.setitem(doctor.PROBES, "tensorflow", "import time; time.sleep(60)")
    started = time.perf_counter()
    diagnosis = doctor.diagnose(timeout=3, environ={})
    assert time.perf_counter() - started < 30
    assert diagnosis.devices["jax"].error == "ImportError: libcuda.so.1"
    assert diagnosis.devices["tensorflow"].error == "no answer within 3 s"
    assert diagnosis.uses == "nothing"
    assert diagnosis.problems == [
        "the chosen backend jax failed to start: ImportError: libcuda.so.1"
    ]
    assert "tensorflow: failed: no answer within 3 s" in doctor.format_diagnosis(diagnosis)


def test_a_chosen_backend_that_is_not_installed_is_a_problem(no_gpu, monkeypatch):
    monkeypatch.setattr(doctor, "BACKENDS", ("jax", "torch"))
    monkeypatch.setattr(doctor, "_importable", lambda name: name == "jax")
    monkeypatch.setitem(doctor.PROBES, "jax", fake_probe([["cpu", "cpu"]]))
    diagnosis = doctor.diagnose(environ={"KERAS_BACKEND": "torch"})
    assert diagnosis.backend == "torch"
    assert "torch" not in diagnosis.devices
    assert diagnosis.problems == ["the chosen backend torch is not installed: Keras cannot start"]


def test_the_command_prints_json_and_exits_1_on_a_problem(fake_gpu, monkeypatch, capsys):
    monkeypatch.setattr(doctor, "BACKENDS", ("jax",))
    monkeypatch.setattr(doctor, "_importable", lambda name: True)
    monkeypatch.setitem(doctor.PROBES, "jax", fake_probe([["cpu", "cpu"]]))
    assert cli.main(["doctor", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert set(report) == {field.name for field in dataclasses.fields(doctor.Diagnosis)}
    assert report["nvidia"] == {"present": True, "gpus": ["NVIDIA H200"], "driver": "580.65.06"}
    assert report["devices"]["jax"]["devices"] == [["cpu", "cpu"]]
    assert report["versions"]["keras"] == importlib.metadata.version("keras")
    assert report["versions"]["numpy"] == importlib.metadata.version("numpy")
    assert report["problems"] == [backend.unused_gpu_warning(report["backend"])]

    monkeypatch.setitem(doctor.PROBES, "jax", fake_probe([["gpu", "NVIDIA H200"]]))
    monkeypatch.setenv("KERAS_BACKEND", "jax")
    assert cli.main(["doctor"]) == 0
    assert "uses      jax on 1 GPU(s): NVIDIA H200" in capsys.readouterr().out


def test_nightact_doctor_on_this_machine_reports_what_each_backend_sees(no_gpu):
    """The real command and real probes, in its own process as a user types it: JAX and
    TensorFlow both see only the CPU here, and the JAX line matches what JAX says in-process."""
    jax = pytest.importorskip("jax")
    if importlib.util.find_spec("tensorflow") is None:  # asked, not imported: that takes seconds
        pytest.skip("TensorFlow is not installed")
    done = subprocess.run(
        [sys.executable, "-m", "nightact.cli", "doctor"],
        capture_output=True,
        text=True,
        timeout=300,
        env={key: value for key, value in os.environ.items() if key != "KERAS_BACKEND"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stderr == ""
    lines = done.stdout.splitlines()
    assert lines[0].startswith(f"nightact  {nightact.__version__}, Python ")
    # (Not this process's reason: the suite imported Keras before asking.)
    assert lines[1].startswith("backend   jax: JAX is installed; it trained all six models")
    assert f"keras {importlib.metadata.version('keras')}, jax {jax.__version__}" in lines[2]
    assert lines[3].startswith("NVIDIA    none found")
    jax_seen = ", ".join(device.platform for device in jax.devices())
    assert lines[4] == f"devices   jax: {jax_seen}"
    assert lines[5] == "          tensorflow: cpu (/physical_device:CPU:0)"
    assert lines[-1] == "uses      jax on the CPU"
    assert not any(line.startswith("warning") for line in lines)
