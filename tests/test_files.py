"""Atomic writes, hashing and the free-space check of nightact.core.files."""

import hashlib
import json
import shutil
from types import SimpleNamespace

import pytest

from nightact.core import files


def test_write_json_atomic_leaves_only_the_final_file(tmp_path):
    target = tmp_path / "deep" / "config.json"
    files.write_json_atomic(target, {"a": 1, "b": [2, 3]})
    assert json.loads(target.read_text()) == {"a": 1, "b": [2, 3]}
    assert sorted(path.name for path in target.parent.iterdir()) == ["config.json"]


def test_failed_write_keeps_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "data.bin"
    files.write_bytes_atomic(target, b"old")
    with pytest.raises(RuntimeError), files.open_atomic(target) as handle:
        handle.write(b"half")
        raise RuntimeError("interrupted")
    assert target.read_bytes() == b"old"
    assert not files.temporary_name(target).exists()


def test_sha256_of_matches_hashlib_across_chunks(tmp_path):
    payload = bytes(range(256)) * 9000  # more than one 1 MiB chunk
    path = tmp_path / "payload"
    path.write_bytes(payload)
    assert files.sha256_of(path) == hashlib.sha256(payload).hexdigest()
    assert files.file_size(path) == len(payload)
    assert files.file_size(tmp_path / "missing") == 0


def test_check_free_space_names_both_figures(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "disk_usage", lambda path: SimpleNamespace(free=1_000_000_000))
    files.check_free_space(tmp_path, 500_000_000, "copying")
    with pytest.raises(files.DiskSpaceError, match=r"copying: needs 2.00 GB, 1.00 GB free"):
        files.check_free_space(tmp_path, 2_000_000_000, "copying")
