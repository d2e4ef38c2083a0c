"""nightact.core.backend: the Keras backend chosen before Keras is imported."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import keras  # imported here, under the backend conftest's `import nightact` chose
import pytest

from nightact.core import backend


@pytest.fixture
def no_keras_yet(monkeypatch):
    """This process as if Keras had not been imported, and no KERAS_BACKEND set."""
    monkeypatch.delitem(sys.modules, "keras", raising=False)
    monkeypatch.delenv("KERAS_BACKEND", raising=False)
    monkeypatch.delenv(backend.CHOICE_MARKER, raising=False)


def fake_nvidia_smi(folder: Path, output: str, code: int = 0) -> None:
    script = folder / "nvidia-smi"
    script.write_text(f"#!/bin/sh\necho '{output}'\nexit {code}\n")
    script.chmod(0o755)


def test_keras_backend_variable_always_wins(no_keras_yet, monkeypatch):
    monkeypatch.setenv("KERAS_BACKEND", "torch")
    monkeypatch.setattr(backend, "nvidia_gpu_present", lambda: pytest.fail("GPU asked"))
    assert backend.choose_backend() == "torch"
    assert backend.choose_backend({"KERAS_BACKEND": "tensorflow"}) == "tensorflow"


def test_cpu_machine_gets_jax_when_installed_else_tensorflow(no_keras_yet, no_gpu, monkeypatch):
    pytest.importorskip("jax")
    assert backend.choose_backend() == "jax"
    real_find_spec = backend.importlib.util.find_spec
    monkeypatch.setattr(
        backend.importlib.util,
        "find_spec",
        lambda name, *args: None if name == "jax" else real_find_spec(name, *args),
    )
    assert backend.choose_backend() == "tensorflow"


def test_an_nvidia_gpu_changes_nothing_jax_still_wins(no_keras_yet, no_gpu, tmp_path, monkeypatch):
    """JAX trained all six models fastest on an H200 too: the rule does not even ask the driver."""
    pytest.importorskip("jax")
    gpus = tmp_path / "gpus"
    (gpus / "0000:01:00.0").mkdir(parents=True)
    monkeypatch.setattr(backend, "NVIDIA_GPUS", gpus)
    (tmp_path / "nvidiactl").touch()
    monkeypatch.setattr(backend, "NVIDIA_DEVICES", (tmp_path / "nvidiactl",))
    assert backend.nvidia_gpu_present()
    monkeypatch.setattr(backend, "nvidia_gpu_present", lambda: pytest.fail("GPU asked"))
    choice = backend.explain_backend()
    assert choice.backend == backend.choose_backend() == "jax"
    assert "H200" in choice.reason


def test_a_blocked_keras_is_not_an_imported_one(no_keras_yet, no_gpu, monkeypatch):
    """``sys.modules["keras"] = None`` (a caller keeping Keras out) used to raise AttributeError."""
    pytest.importorskip("jax")
    monkeypatch.setitem(sys.modules, "keras", None)
    assert backend.imported_keras() is None
    assert backend.choose_backend() == "jax"
    assert backend.use_default_backend() == "jax"
    assert os.environ["KERAS_BACKEND"] == "jax"
    # A blocked JAX is not installed, as far as the rule goes.
    monkeypatch.setitem(sys.modules, "jax", None)
    assert backend.choose_backend({}) == "tensorflow"
    assert backend.explain_backend({}).reason == "JAX is not installed"


def test_the_reason_tells_the_users_choice_from_nightacts_own(no_keras_yet, no_gpu):
    pytest.importorskip("jax")
    users = backend.explain_backend({"KERAS_BACKEND": "jax"})
    assert users == backend.BackendChoice(
        "jax", "KERAS_BACKEND=jax is set, and the user's choice wins"
    )
    # Inherited from a process where nightact chose: the rule's own reason, not "the user's".
    own = {"KERAS_BACKEND": "jax", backend.CHOICE_MARKER: "jax"}
    assert backend.explain_backend(own) == backend.explain_backend({})
    # Revised by nightact for `nightact export`.
    export = {"KERAS_BACKEND": "tensorflow", backend.CHOICE_MARKER: "tensorflow"}
    assert backend.explain_backend(export) == backend.BackendChoice(
        "tensorflow", "nightact chose tensorflow for a command that needs it"
    )


@pytest.mark.parametrize(
    ("name", "fix"),
    [
        ("jax", "pip install 'nightact[cuda]'"),
        ("tensorflow", "pip install 'tensorflow[and-cuda]'"),
        ("torch", "pip install torch"),
    ],
)
def test_the_unused_gpu_warning_is_one_line_naming_the_fix(name, fix):
    warning = backend.unused_gpu_warning(name)
    assert "\n" not in warning
    assert f"Keras' {name} backend sees no GPU" in warning
    assert warning.split("to use the GPU: ")[1].startswith(fix)


def test_a_gpu_listed_in_proc_counts_only_with_its_device_files(no_gpu, tmp_path, monkeypatch):
    """A container started without GPU access sees the host's GPUs in /proc, not /dev/nvidia*."""
    gpus = tmp_path / "gpus"
    (gpus / "0000:01:00.0").mkdir(parents=True)
    monkeypatch.setattr(backend, "NVIDIA_GPUS", gpus)
    monkeypatch.setattr(backend, "NVIDIA_DEVICES", (tmp_path / "nvidiactl", tmp_path / "nvidia0"))
    assert not backend.nvidia_gpu_present()
    (tmp_path / "nvidia0").touch()
    assert backend.nvidia_gpu_present()


@pytest.mark.parametrize(
    ("name", "environ", "hidden"),
    [
        ("jax", {}, None),
        ("jax", {"CUDA_VISIBLE_DEVICES": "-1"}, "CUDA_VISIBLE_DEVICES=-1"),
        ("tensorflow", {"CUDA_VISIBLE_DEVICES": ""}, "CUDA_VISIBLE_DEVICES="),
        ("jax", {"CUDA_VISIBLE_DEVICES": "0,1"}, None),
        ("jax", {"JAX_PLATFORMS": "cpu"}, "JAX_PLATFORMS=cpu"),
        ("jax", {"JAX_PLATFORMS": "cuda,cpu"}, None),
        ("tensorflow", {"JAX_PLATFORMS": "cpu"}, None),
    ],
)
def test_gpus_hidden_on_purpose(name, environ, hidden):
    assert backend.gpus_hidden_by(name, environ) == hidden


def test_nvidia_smi_is_asked_when_proc_says_nothing(no_gpu, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # where the fake nvidia-smi goes
    assert not backend.nvidia_gpu_present()
    fake_nvidia_smi(tmp_path, "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-1234)")
    assert backend.nvidia_gpu_present()
    # A driver without devices lists nothing and fails.
    fake_nvidia_smi(tmp_path, "No devices were found", code=6)
    assert not backend.nvidia_gpu_present()


def test_export_may_revise_nightacts_choice_but_never_the_users(no_keras_yet, no_gpu):
    pytest.importorskip("jax")
    assert backend.use_default_backend() == "jax"
    assert os.environ[backend.CHOICE_MARKER] == "jax"
    assert backend.prefer_backend("tensorflow") == "tensorflow"
    assert os.environ["KERAS_BACKEND"] == "tensorflow"
    # The user's own choice (a value nightact did not write) stays.
    os.environ["KERAS_BACKEND"] = "jax"
    assert backend.prefer_backend("tensorflow") == "jax"


def test_a_child_process_can_revise_the_choice_it_inherited():
    """`nightact export` run from a process that imported nightact (KERAS_BACKEND=jax inherited)."""
    pytest.importorskip("jax")
    code = (
        "import nightact, os; from nightact.core.backend import prefer_backend; "
        "print(prefer_backend('tensorflow'))"
    )
    inherited = {"KERAS_BACKEND": "jax", backend.CHOICE_MARKER: "jax"}
    assert run_fresh(code, **inherited) == "tensorflow"
    assert run_fresh(code, KERAS_BACKEND="jax") == "jax"  # the user's, not nightact's


def test_keras_imported_first_keeps_its_backend(monkeypatch):
    monkeypatch.delenv("KERAS_BACKEND", raising=False)
    assert backend.choose_backend() == keras.config.backend()
    assert backend.use_default_backend() == keras.config.backend()
    assert "KERAS_BACKEND" not in os.environ


def run_fresh(code: str, **environment) -> str:
    """stdout of ``code`` in a fresh interpreter whose environment lacks KERAS_BACKEND."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("KERAS_BACKEND", backend.CHOICE_MARKER)
    }
    env.update(environment)
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_importing_nightact_sets_the_backend_keras_then_uses(tmp_path):
    pytest.importorskip("jax")
    code = "import nightact, os; print(os.environ['KERAS_BACKEND'])"
    assert run_fresh(code) == "jax"
    assert run_fresh(code, KERAS_BACKEND="tensorflow") == "tensorflow"
    # Keras imported before nightact: its backend stays, and so does the environment.
    code = (
        "import keras, nightact, os; print(keras.config.backend(), 'KERAS_BACKEND' in os.environ)"
    )
    # (A Keras home of its own: a keras.json elsewhere could name another default.)
    assert run_fresh(code, KERAS_HOME=str(tmp_path)) == "tensorflow False"


def test_importing_nightact_asks_no_driver_and_blocked_keras_is_fine(tmp_path):
    """The rule needs no GPU check any more, so ``import nightact`` runs no nvidia-smi."""
    pytest.importorskip("jax")
    asked = tmp_path / "asked"
    script = tmp_path / "nvidia-smi"
    script.write_text(f"#!/bin/sh\necho \"$@\" >> {asked}\necho 'GPU 0: NVIDIA H200'\n")
    script.chmod(0o755)
    path = f"{tmp_path}{os.pathsep}{os.environ.get('PATH', '')}"
    code = (
        "import sys; sys.modules['keras'] = None; "
        "import nightact, os; print(os.environ['KERAS_BACKEND'])"
    )
    assert run_fresh(code, PATH=path) == "jax"
    assert not asked.exists()


def test_export_api_under_another_backend_says_what_to_do(tmp_path):
    """Exporting needs TensorFlow's converters; under JAX (the CPU default) the API says so.

    That ``nightact export`` itself chooses TensorFlow from a JAX default is exercised by every
    test that builds its ONNX file with ``trained_run.export_onnx`` (test_timeline.py).
    """
    pytest.importorskip("tf2onnx")
    if keras.config.backend() == "tensorflow":
        pytest.skip("this suite runs on TensorFlow, where exporting in-process works")
    from nightact.serve.export import ExportError, export_model
    from trained_run import tiny_run

    run = tiny_run(tmp_path)
    with pytest.raises(ExportError, match="TensorFlow backend.*nightact export"):
        export_model(run, "onnx", tmp_path / "api.onnx")
    assert not (tmp_path / "api.onnx").exists()
