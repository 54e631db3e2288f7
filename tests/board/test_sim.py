"""The virtual board: a real sshd on 127.0.0.1, everything under its own folder, idempotent."""

from __future__ import annotations

import socket
import stat
from pathlib import Path

import pytest

from board import deploy, sim
from tests.board.conftest import _need_sshd


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return True
    return False


def test_up_is_idempotent_and_down_stops_only_its_own_sshd(tmp_path):
    _need_sshd()
    where = tmp_path / "vb"
    try:
        first = sim.up(where)
        again = sim.up(where)
        assert not first.already_up and again.already_up
        assert (again.port, again.pid) == (first.port, first.pid)
        assert str(where / "sshd_config") in Path(f"/proc/{first.pid}/cmdline").read_text()
        assert sim.status(where).port == first.port
        assert deploy.run(sim.board(where), "echo hello").stdout == "hello\n"
    finally:
        assert sim.down(where) is True
    assert sim.status(where) is None and _refused(first.port)
    assert not (where / "sshd.pid").exists() and not (where / "sim.json").exists()
    assert sim.down(where) is False
    # the same board comes back: same keys, and the same port when it is free
    host_key = (where / "host_key.pub").read_text()
    try:
        back = sim.up(where)
        assert (where / "host_key.pub").read_text() == host_key
        # the last port is tried first; it may still be held (TIME_WAIT, a lingering session process on a
        # loaded machine), and then another one is taken: known_hosts must follow either way
        assert back.port > 0 and not back.already_up
        deploy.run(sim.board(where), "true")  # known_hosts still matches
    finally:
        sim.down(where)


def test_everything_lives_in_its_folder_and_the_config_is_self_contained(sim_dir):
    names = {p.name for p in sim_dir.iterdir()}
    assert {"sshd_config", "host_key", "host_key.pub", "client_key", "client_key.pub", "authorized_keys",
            "known_hosts", "sshd.pid", "sim.json", "root"} <= names
    for key in ("host_key", "client_key"):
        assert stat.S_IMODE((sim_dir / key).stat().st_mode) == 0o600
    cfg = (sim_dir / "sshd_config").read_text()
    for line in ("ListenAddress 127.0.0.1", "StrictModes no", "UsePAM no", "PasswordAuthentication no",
                 f'PidFile "{sim_dir / "sshd.pid"}"', f'HostKey "{sim_dir / "host_key"}"',
                 f'AuthorizedKeysFile "{sim_dir / "authorized_keys"}"'):
        assert line in cfg.splitlines()
    port = sim.status(sim_dir).port
    assert (sim_dir / "known_hosts").read_text().startswith(f"[127.0.0.1]:{port} ssh-ed25519 ")
    assert (sim_dir / "authorized_keys").read_text().split()[:2] == \
        (sim_dir / "client_key.pub").read_text().split()[:2]


def test_is_available_follows_the_sshd_binary(monkeypatch, tmp_path):
    monkeypatch.setattr(sim, "SSHD_CANDIDATES", ())
    monkeypatch.setenv("PATH", str(tmp_path))
    assert sim.find_sshd() is None and not sim.is_available()
    with pytest.raises(sim.SimBoardError, match="sshd is not installed"):
        sim.up(tmp_path / "vb")
    fake = tmp_path / "sshd"
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    assert sim.find_sshd() == str(fake) and sim.is_available()


def test_the_last_port_is_preferred_when_it_is_free():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    assert sim._free_port(free) == free
    with socket.socket() as s:
        s.bind(("127.0.0.1", free))
        s.listen()
        assert sim._free_port(free) != free  # taken: another one
