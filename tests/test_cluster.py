"""nightact.core.cluster: jobs as Ray tasks on a real local Ray instance (the ray extra)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from nightact.core import cluster  # noqa: E402
from support import cluster_jobs  # noqa: E402


def _jobs_importable(patch: pytest.MonkeyPatch) -> None:
    """PYTHONPATH for the Ray workers started from now on (they inherit this environment), so
    they import ``support.cluster_jobs`` as a cluster's nodes import nightact's own."""
    tests = str(Path(__file__).resolve().parent)
    patch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [tests, os.environ.get("PYTHONPATH")])))


@pytest.fixture(scope="module")
def local_ray():
    """One local instance of 2 CPUs for the module (each start costs seconds)."""
    with pytest.MonkeyPatch.context() as patch:
        _jobs_importable(patch)
        with cluster.connect(cluster.LOCAL, cpus=2):
            yield


def test_every_job_comes_back_and_a_failing_one_alone_fails(local_ray):
    finished = list(cluster.map_unordered(cluster_jobs.fail_on_three, range(6)))
    assert sorted(item.job for item in finished) == list(range(6))
    values = {item.job: item.value for item in finished if item.error is None}
    assert values == {0: 0, 1: 1, 2: 4, 4: 16, 5: 25}
    (broken,) = [item for item in finished if item.error is not None]
    assert broken.job == 3
    assert isinstance(broken.error, ValueError)
    assert "job 3 is broken" in str(broken.error)


def test_a_job_whose_worker_dies_runs_again(local_ray, tmp_path):
    marker = tmp_path / "died"
    (finished,) = cluster.map_unordered(cluster_jobs.die_once, [str(marker)])
    assert finished.error is None
    # The first worker killed itself after writing its pid; another one ran the job again.
    assert finished.value != int(marker.read_text())

    without_retries = tmp_path / "died-for-good"
    (lost,) = cluster.map_unordered(cluster_jobs.die_once, [str(without_retries)], retries=0)
    assert isinstance(lost.error, ray.exceptions.WorkerCrashedError)


def test_only_the_errors_asked_for_are_tried_again(local_ray, tmp_path):
    retried = tmp_path / "retried"
    (finished,) = cluster.map_unordered(
        cluster_jobs.flaky_once, [str(retried)], retry_on=(cluster_jobs.Flaky,)
    )
    assert (finished.value, finished.error) == ("second attempt", None)
    assert retried.read_text().count("attempt") == 2

    once = tmp_path / "once"
    (failed,) = cluster.map_unordered(cluster_jobs.flaky_once, [str(once)])
    assert isinstance(failed.error, cluster_jobs.Flaky)
    assert once.read_text().count("attempt") == 1


def test_the_jobs_out_at_once_are_bounded(local_ray):
    taken = []

    def jobs():
        for number in range(20):
            taken.append(number)
            yield number

    results = cluster.map_unordered(cluster_jobs.square, jobs(), in_flight=3)
    first = next(results)
    # Three submitted before the first result; one more only as each result is taken.
    assert len(taken) == 3 and first.job in taken
    rest = list(results)
    assert len(taken) == 20
    assert sorted(item.value for item in [first, *rest]) == [n * n for n in range(20)]


def test_connect_inside_a_connection_leaves_it_open(local_ray):
    with cluster.connect("auto"):
        assert cluster.cluster_cpus() == 2
    assert ray.is_initialized()
    assert cluster.cluster_gpus() == 0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def two_nodes(monkeypatch):
    """A cluster of two raylets on this machine, started as a lab starts one: `ray start`."""
    ray_command = shutil.which("ray", path=str(Path(sys.executable).parent)) or "ray"
    address = f"127.0.0.1:{_free_port()}"
    # The module's local instance, if a test before this one started it, would take the
    # place of this cluster (connect() inside a connection does nothing): let go of it.
    ray.shutdown()
    # On loopback only, for the test's lifetime: no token to hand around.
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    _jobs_importable(monkeypatch)
    starts = [
        (
            "head",
            ["start", "--head", "--port", address.split(":")[1], "--include-dashboard", "false"],
        ),
        ("second", ["start", "--address", address]),
    ]
    try:
        for name, arguments in starts:
            environment = {**os.environ, "NIGHTACT_TEST_NODE": name}
            subprocess.run(
                [ray_command, *arguments, "--num-cpus", "1", "--disable-usage-stats"],
                env=environment, check=True, capture_output=True, timeout=120,
            )  # fmt: skip
        yield address
    finally:
        subprocess.run([ray_command, "stop", "--force"], capture_output=True, timeout=120)


@pytest.mark.slow
def test_jobs_and_a_prepare_spread_over_two_nodes(two_nodes, tmp_path):
    with cluster.connect(two_nodes):
        assert cluster.cluster_cpus() == 2
        nodes = [item.value for item in cluster.map_unordered(cluster_jobs.node_name, range(8))]
    assert sorted(set(nodes)) == ["head", "second"]

    from nightact.cli import main
    from nightact.sources.synthetic import SynthConfig, write_synthetic_dataset

    videos = tmp_path / "videos"
    write_synthetic_dataset(
        SynthConfig(videos, videos_per_class=2, min_seconds=1, max_seconds=2, size=(96, 128))
    )
    settings = ["--frames", "6", "--size", "48x64", "--no-leakage-check"]
    assert main(["prepare", str(videos), str(tmp_path / "plain"), *settings]) == 0
    on_ray = ["prepare", str(videos), str(tmp_path / "ray"), *settings, "--ray", two_nodes]
    assert main(on_ray) == 0
    for name in ("train.npy", "val.npy", "test.npy", "train_labels.npy", "manifest.csv"):
        assert (tmp_path / "plain" / name).read_bytes() == (tmp_path / "ray" / name).read_bytes()
