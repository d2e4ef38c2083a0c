"""Optional packages: a command that needs a missing one says in one line which extra to install."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from nightact.core.extras import MissingPackageError, require

SRC = Path(__file__).resolve().parents[1] / "src"

# Makes the extras' packages absent, as on a plain `pip install nightact`: an import of them
# fails as it does when they are not installed, and the command then runs as `nightact`.
ABSENT = textwrap.dedent(
    """
    import importlib.abc, runpy, sys
    class Absent(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("onnxruntime", "onnx", "tf2onnx", "ray"):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None
    sys.meta_path.insert(0, Absent())
    sys.argv[0] = "nightact"
    runpy.run_module("nightact.cli", run_name="__main__")
    """
)


def nightact_without_the_extras(*arguments: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", ABSENT, *arguments],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"},
        timeout=300,
    )


ONNX_HINT = "pip install 'nightact[onnx]' (from a clone: pip install -e '.[onnx]')"
EXPORT_HINT = "pip install 'nightact[export]' (from a clone: pip install -e '.[export]')"


@pytest.mark.parametrize("command", ["predict", "timeline"])
def test_the_onnx_engine_without_onnxruntime_says_which_extra(tmp_path, command):
    model = tmp_path / "model.onnx"
    model.write_bytes(b"an exported model")  # never read: the engine is refused first
    (tmp_path / "clip.mp4").write_bytes(b"a video")
    arguments = [command, "--engine", "onnx", str(model), "clip.mp4"]
    if command == "timeline":
        arguments += ["--out", "timeline"]
    completed = nightact_without_the_extras(*arguments, cwd=tmp_path)
    assert completed.returncode == 2
    assert completed.stderr.splitlines() == [
        f"nightact {command}: error: the ONNX engine needs onnxruntime, which is not installed: "
        + ONNX_HINT
    ]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["clip.mp4", "model.onnx"]


def test_an_onnx_export_without_the_export_extra_says_so(tmp_path):
    # Refused before the model is read, so no run is needed (a missing one would be named).
    completed = nightact_without_the_extras(
        "export", "runs/absent", "--format", "onnx", "--out", "model.onnx", cwd=tmp_path
    )
    assert completed.returncode == 2
    assert completed.stderr.splitlines() == [
        "nightact export: error: exporting to onnx needs tf2onnx, which is not installed: "
        + EXPORT_HINT
    ]
    assert list(tmp_path.iterdir()) == []


RAY_HINT = "pip install 'nightact[ray]' (from a clone: pip install -e '.[ray]')"


@pytest.mark.parametrize("command", ["prepare", "study"])
def test_ray_without_the_ray_extra_is_refused_in_one_line_before_any_work(tmp_path, command):
    videos = tmp_path / "videos" / "boxing"
    videos.mkdir(parents=True)
    (videos / "clip.mp4").write_bytes(b"a video")  # never read: --ray is refused first
    if command == "prepare":
        arguments = ["prepare", "videos", "store", "--ray"]
    else:
        arguments = ["study", "--data", "store", "--out", "study", "--ray", "auto"]
    completed = nightact_without_the_extras(*arguments, cwd=tmp_path)
    assert completed.returncode == 2
    assert completed.stderr.splitlines() == [
        f"nightact {command}: error: --ray needs ray, which is not installed: {RAY_HINT}"
    ]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["videos"]


def test_require_names_the_package_a_missing_dependency_and_a_broken_install(tmp_path, monkeypatch):
    (tmp_path / "needs_absent.py").write_text("import absent_dependency_of_nightact_tests\n")
    (tmp_path / "broken_build.py").write_text("raise ImportError('undefined symbol: cblas')\n")
    monkeypatch.syspath_prepend(str(tmp_path))

    with pytest.raises(MissingPackageError) as missing:
        require("absent_package_of_nightact_tests", "the feature", extra="export")
    assert str(missing.value) == (
        "the feature needs absent_package_of_nightact_tests, which is not installed: " + EXPORT_HINT
    )
    assert isinstance(missing.value, ImportError) and "\n" not in str(missing.value)

    with pytest.raises(MissingPackageError, match="whose dependency absent_dependency_of"):
        require("needs_absent", "the feature", package="needs-absent")
    with pytest.raises(MissingPackageError) as broken:
        require("broken_build", "annotate", package="broken-build")
    assert str(broken.value) == (
        "annotate needs broken_build, which does not import (undefined symbol: cblas): "
        "pip install broken-build"
    )
    assert require("json", "reading").dumps([1]) == "[1]"
