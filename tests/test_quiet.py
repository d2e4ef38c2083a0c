"""The backends' start-up lines: off the terminal by default, all there with --verbose."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from nightact.core.quiet import filtered_stderr, is_backend_noise

SRC = Path(__file__).resolve().parents[1] / "src"

# Lines seen on this project's CPU machines (no GPU, no TPU) from the first Keras command.
PREAMBLE = (
    b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
)
ONE_DNN = b"I0000 00:00:1796403795.104826  913 port.cc:153] oneDNN custom operations are on.\n"
NO_GPU = (
    b"E0000 00:00:1796403798.535838  913 cuda_platform.cc:52] failed call to cuInit: INTERNAL: "
    b"CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)\n"
)
A_WARNING = b"W0000 00:00:1796403798.5  913 loader.cc:10] a warning\n"
AN_ERROR = b"E0000 00:00:1796403798.5  913 loader.cc:10] could not load a kernel\n"
# The markers of those lines, and of JAX's, as a command prints them.
MARKERS = (
    "absl::InitializeLog",
    "oneDNN",
    "cudart_stub",
    "cpu_feature_guard",
    "cuInit",
    "xla_bridge",
)


def test_noise_is_what_the_log_level_hides_and_a_failed_cuda_probe_where_there_is_no_gpu():
    assert is_backend_noise(ONE_DNN, 2, gpu=False) and is_backend_noise(PREAMBLE, 2, gpu=False)
    assert is_backend_noise(A_WARNING, 2, gpu=False) and not is_backend_noise(A_WARNING, 1, False)
    assert not is_backend_noise(AN_ERROR, 2, gpu=False)  # a real error still shows
    assert is_backend_noise(NO_GPU, 2, gpu=False)
    assert not is_backend_noise(NO_GPU, 2, gpu=True)  # with a GPU, a failed probe is news
    assert is_backend_noise(NO_GPU, 3, gpu=True)  # the user's own level hides it
    # TF_CPP_MIN_LOG_LEVEL=0 set by the user: everything shows.
    assert not any(is_backend_noise(line, 0, False) for line in (PREAMBLE, ONE_DNN, A_WARNING))
    assert not is_backend_noise(b"Traceback (most recent call last):\n", 2, gpu=False)


def test_filtered_stderr_drops_noise_written_by_c_code_and_keeps_the_rest(capfd):
    def noise(line):
        return is_backend_noise(line, 2, gpu=False)

    with filtered_stderr(noise):
        # os.write: straight to descriptor 2, as TensorFlow's C++ logging writes.
        os.write(2, PREAMBLE + ONE_DNN + AN_ERROR + NO_GPU + b"a Python warning\n")
    assert capfd.readouterr().err == (AN_ERROR + b"a Python warning\n").decode()

    with pytest.raises(ImportError):
        with filtered_stderr(noise):
            os.write(2, PREAMBLE + ONE_DNN)
            raise ImportError("the import failed")
    # A failed import shows all it wrote: the lines may say why.
    assert capfd.readouterr().err == (PREAMBLE + ONE_DNN).decode()


def _explain(backend: str, *flags: str) -> subprocess.CompletedProcess:
    # The user has set none of the variables that would decide it for the command.
    decided = ("TF_CPP_MIN_LOG_LEVEL", "KERAS_BACKEND", "NIGHTACT_CHOSE_KERAS_BACKEND")
    environment = {name: value for name, value in os.environ.items() if name not in decided}
    environment.update(PYTHONPATH=str(SRC), KERAS_BACKEND=backend)
    return subprocess.run(
        [sys.executable, "-m", "nightact.cli", "explain", "simple_rnn", *flags],
        capture_output=True,
        text=True,
        env=environment,
        timeout=300,
    )


# JAX, the default on a CPU: its TPU probe (a Python log line) and, as explain imports TensorFlow
# too, TensorFlow's import lines. TensorFlow as the backend adds the failed CUDA probe of its first
# operation; four imports of TensorFlow in all take over 20 s here, so that case is slow.
@pytest.mark.parametrize("backend", ["jax", pytest.param("tensorflow", marks=pytest.mark.slow)])
def test_a_keras_command_prints_no_backend_start_up_lines_unless_verbose(backend):
    verbose = _explain(backend, "--verbose")
    assert verbose.returncode == 0, verbose.stderr
    shown = [marker for marker in MARKERS if marker in verbose.stderr]
    assert shown, f"the backend printed none of its start-up lines:\n{verbose.stderr}"

    quiet = _explain(backend)
    assert quiet.returncode == 0, quiet.stderr
    assert "agrees with Keras" in quiet.stdout  # the command's own output is all there
    assert [marker for marker in MARKERS if marker in quiet.stderr] == [], quiet.stderr
    assert quiet.stderr == ""
