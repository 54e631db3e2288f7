import os

import pytest

from codec.errors import MedcodecError, OutputExistsError
from codec.fileio import atomic_write, check_writable


def test_atomic_write_creates_and_leaves_no_temporary(tmp_path):
    out = atomic_write(tmp_path / "a.bin", b"hello")
    assert out.read_bytes() == b"hello"
    assert os.listdir(tmp_path) == ["a.bin"]


def test_existing_output_is_refused_without_force(tmp_path):
    target = tmp_path / "a.bin"
    target.write_bytes(b"original")
    with pytest.raises(OutputExistsError, match="use --force"):
        atomic_write(target, b"new")
    assert target.read_bytes() == b"original"
    atomic_write(target, b"new", force=True)
    assert target.read_bytes() == b"new"


def test_missing_directory_and_directory_target_are_user_errors(tmp_path):
    with pytest.raises(MedcodecError, match="does not exist"):
        atomic_write(tmp_path / "nope" / "a.bin", b"x")
    with pytest.raises(MedcodecError):
        check_writable(tmp_path, force=True)


def test_failed_write_keeps_the_old_file_and_cleans_up(tmp_path, monkeypatch):
    target = tmp_path / "a.bin"
    target.write_bytes(b"original")

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        atomic_write(target, b"new", force=True)
    assert target.read_bytes() == b"original"
    assert os.listdir(tmp_path) == ["a.bin"]
