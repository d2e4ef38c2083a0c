"""The benchmark scripts' smoke paths, run for real, so that a script cannot rot unnoticed.

``benchmarks/gpu.sh`` runs only on a lent GPU machine; its first run there after it was written
failed in every part. Its ``--smoke`` path runs every part at a tiny size on the CPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_sh_smoke_runs_every_part_on_the_cpu(tmp_path):
    out = tmp_path / "gpu"
    environment = {
        **os.environ,
        "NIGHTACT_PYTHON": sys.executable,
        # Chosen here, so that gpu.sh does not import TensorFlow only to look for a GPU.
        "KERAS_BACKEND": "jax",
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
    }
    command = ["bash", str(ROOT / "benchmarks" / "gpu.sh"), str(out), "--smoke"]
    # One model at one precision, nightact train on one data path: the smoke test stays short
    # (`--models lstm` runs the kernels part, which this selection skips).
    command += ["--models", "simple_rnn", "--precisions", "mixed_float16", "--paths", "device"]
    finished = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr[-3000:]
    report = json.loads((out / "gpu.json").read_text())
    assert report["smoke"] and report["environment"]["keras_backend"] == "jax"

    # Step time with the data on the device, at the precision asked for (one, for time).
    (device,) = report["device"]["rows"]
    assert (device["model"], device["precision"], device["status"]) == (
        "simple_rnn",
        "mixed_float16",
        "ok",
    )
    assert device["ms_per_step"] > 0 and device["clips_per_second"] > 0

    # nightact train itself on the device path, at the precision of the step it is set against.
    (path,) = report["paths"]["rows"]
    assert (path["model"], path["path"], path["status"]) == ("simple_rnn", "device", "ok")
    assert path["data_path"] == "device" and path["precision"] == "mixed_float16"
    assert path["step_ms"] == device["ms_per_step"]
    assert path["over_step"] == path["ms_per_step"] / device["ms_per_step"] > 0
    assert report["kernels"]["rows"] == [] and "skipped" in report["kernels"]["status"]

    # Prepare at 1 and 2 workers, and the profile of one.
    prepare = report["prepare"]
    assert prepare["status"] == "ok"
    assert [row["workers"] for row in prepare["scaling"]] == [1, 2]
    assert all(row["clips_per_second"] > 0 and row["clips"] > 0 for row in prepare["scaling"])
    assert prepare["profile"]["cpu_ms_per_clip"] > 0
    assert prepare["hwaccel"]["pyav"]
    assert (out / "prepare.json").is_file()

    # The real `nightact study`, its runs' epoch times, and the arithmetic to the full size.
    study = report["study"]
    assert study["status"] == "ok", study
    (run,) = study["runs"]
    assert run["model"] == "simple_rnn" and run["status"] == "ok"
    assert run["steady_epoch_seconds"] > 0 and run["clips_per_second"] > 0
    assert study["estimate"]["scale"] == 6613 / study["clips"]
    assert study["estimate"]["full_study_seconds"] > study["wall_seconds"]

    loader = json.loads((out / "loader.json").read_text())
    assert loader["results"] and all(row["clips_per_second"] > 0 for row in loader["results"])
    assert report["parallel"]["devices"] == 2 and report["parallel"]["ms_per_step"] > 0
    assert report["seconds"] > 0
