"""The virtual board for tests: a real OpenSSH sshd on 127.0.0.1 under a temporary folder.

``sim_dir`` is one sshd for the whole session; ``sim_board`` gives each test its own remote
directory on it. Tests that kill the server or change its host key use ``own_sim`` (a fresh sshd).
Without sshd installed these tests skip with the reason.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
from pathlib import Path

import pytest

from board import sim

_counter = itertools.count()


def _need_sshd() -> None:
    if not sim.is_available():
        pytest.skip("OpenSSH's sshd is not installed (apt-get install openssh-server): no virtual board")


@pytest.fixture(scope="session")
def sim_dir(tmp_path_factory) -> Path:
    _need_sshd()
    where = tmp_path_factory.mktemp("sim-board")
    sim.up(where)
    yield where
    sim.down(where)


@pytest.fixture
def sim_board(sim_dir):
    """A Board on the session's sshd with a remote directory of its own."""
    return sim.board(sim_dir, name=f"sim{next(_counter)}", remote_dir=sim_dir / "root" / f"t{next(_counter)}")


@pytest.fixture
def own_sim(tmp_path):
    """A virtual board of this test alone (for killing it or changing its host key)."""
    _need_sshd()
    where = tmp_path / "sim"
    sim.up(where)
    yield where
    sim.down(where, hard=True)


def with_remote(board, remote_dir):
    return dataclasses.replace(board, remote_dir=str(remote_dir))


def make_payload(root: Path, version: str = "1", extra_files: int = 0) -> Path:
    """A small real release: a smoke script that checks its data, a nested data file, a binary blob."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "data").mkdir(exist_ok=True)
    (root / "data" / "values.txt").write_text(f"version {version}\n" + "".join(f"{i}\n" for i in range(100)))
    (root / "blob.bin").write_bytes(bytes(range(256)) * 64 + version.encode())
    smoke = root / "smoke.py"
    smoke.write_text(
        "import hashlib, pathlib, sys\n"
        "text = pathlib.Path('data/values.txt').read_text()\n"
        "assert text.startswith('version '), 'bad data'\n"
        "print('smoke ok', text.splitlines()[0], hashlib.sha256(pathlib.Path('blob.bin').read_bytes()).hexdigest())\n"
    )
    os.chmod(smoke, 0o755)
    for i in range(extra_files):
        (root / "data" / f"extra{i:02d}.bin").write_bytes(os.urandom(2048))
    return root
