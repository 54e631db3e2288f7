"""Deploy to the virtual board over real SSH: content hash, upload, sha256 check, smoke, switch, rollback."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import socket
import stat
import subprocess
from pathlib import Path

import pytest

from board import deploy as d
from board.sim import _new_keypair
from codec.errors import MedcodecError, OutputExistsError
from pipelines import cli
from pipelines.cli import COMMANDS, main
from tests.board.conftest import make_payload


def _local(board) -> Path:
    """The sim board's remote directory seen from this machine (for assertions only)."""
    return Path(board.remote_dir)


def _history(board) -> list[list[str]]:
    return [ln.split() for ln in (_local(board) / "releases" / "HISTORY").read_text().splitlines()]


def test_the_content_hash_covers_paths_and_contents_only(tmp_path):
    a = make_payload(tmp_path / "a")
    m = d.build_manifest(a)
    assert m.content_hash == hashlib.sha256(m.text.encode()).hexdigest()
    assert [rel for rel, *_ in m.files] == sorted(["blob.bin", "data/values.txt", "smoke.py"])
    assert m.text.splitlines()[0] == f"{hashlib.sha256((a / 'blob.bin').read_bytes()).hexdigest()}  blob.bin"
    b = tmp_path / "b"
    shutil.copytree(a, b)
    os.utime(b / "smoke.py", (1, 1))
    assert d.build_manifest(b).content_hash == m.content_hash  # same content, other folder and times
    (b / "smoke.py").rename(b / "smoke2.py")
    assert d.build_manifest(b).content_hash != m.content_hash
    (b / "smoke2.py").rename(b / "smoke.py")
    (b / "blob.bin").write_bytes(b"x")
    assert d.build_manifest(b).content_hash != m.content_hash
    if shutil.which("sha256sum"):  # the manifest is sha256sum's own format
        (tmp_path / "m.sha256").write_text(m.text)
        subprocess.run(["sha256sum", "--quiet", "-c", str(tmp_path / "m.sha256")], cwd=a, check=True)
    (tmp_path / "empty").mkdir()
    with pytest.raises(MedcodecError, match="nothing to deploy"):
        d.build_manifest(tmp_path / "empty")


def test_deploy_uploads_verifies_smokes_and_switches(sim_board, tmp_path):
    payload = make_payload(tmp_path / "app")
    r = d.deploy(sim_board, payload, "{python} smoke.py")
    m = d.build_manifest(payload)
    assert r.release == m.content_hash and r.uploaded and r.switched and r.previous is None
    assert r.smoke_output.startswith("smoke ok version 1")
    rel = _local(sim_board) / "releases" / r.release
    assert sorted(p.relative_to(rel).as_posix() for p in rel.rglob("*") if p.is_file()) == \
        sorted([d.MANIFEST, "blob.bin", "data/values.txt", "smoke.py"])
    for name, sha, _, mode in m.files:
        assert hashlib.sha256((rel / name).read_bytes()).hexdigest() == sha
        assert stat.S_IMODE((rel / name).stat().st_mode) == mode
    assert (rel / d.MANIFEST).read_text() == m.text
    current = _local(sim_board) / "current"
    assert current.is_symlink() and os.readlink(current) == f"releases/{r.release}"
    assert [h[1:] for h in _history(sim_board)] == [["deploy", r.release]]
    assert not list((_local(sim_board) / "releases").glob("*.partial"))
    assert d.current_release(sim_board) == r.release
    out = d.run(sim_board, "cd current && {python} smoke.py")
    assert out.exited == 0 and out.stdout == r.smoke_output


def test_the_same_content_again_is_verified_but_not_uploaded_or_switched(sim_board, tmp_path):
    payload = make_payload(tmp_path / "app")
    first = d.deploy(sim_board, payload)
    again = d.deploy(sim_board, payload, "{python} smoke.py")
    assert again.release == first.release and not again.uploaded and not again.switched
    assert len(_history(sim_board)) == 1


def test_a_new_release_keeps_the_previous_one_and_rollback_goes_back(sim_board, tmp_path):
    one = d.deploy(sim_board, make_payload(tmp_path / "v1", "1"), "{python} smoke.py")
    two = d.deploy(sim_board, make_payload(tmp_path / "v2", "2"), "{python} smoke.py")
    assert two.previous == one.release and two.release != one.release
    releases = _local(sim_board) / "releases"
    assert (releases / one.release).is_dir() and (releases / two.release).is_dir()
    assert d.run(sim_board, "cd current && {python} smoke.py").stdout.startswith("smoke ok version 2")
    back = d.rollback(sim_board, "{python} smoke.py")
    assert (back.previous, back.current) == (two.release, one.release)
    assert os.readlink(_local(sim_board) / "current") == f"releases/{one.release}"
    assert d.run(sim_board, "cd current && {python} smoke.py").stdout.startswith("smoke ok version 1")
    assert [h[1:] for h in _history(sim_board)] == [["deploy", one.release], ["deploy", two.release],
                                                    ["rollback", one.release]]
    with pytest.raises(d.BoardError, match="nothing to roll back to"):
        d.rollback(sim_board)


def test_a_failing_smoke_test_does_not_switch(sim_board, tmp_path):
    one = d.deploy(sim_board, make_payload(tmp_path / "v1", "1"))
    bad = make_payload(tmp_path / "bad", "2")
    (bad / "data" / "values.txt").write_text("garbage\n")
    with pytest.raises(d.SmokeTestError, match=r"smoke test .* failed \(exit 1\): AssertionError: bad data; "
                                               r"current was not switched") as err:
        d.deploy(sim_board, bad, "{python} smoke.py")
    assert "\n" not in str(err.value)
    assert d.current_release(sim_board) == one.release and len(_history(sim_board)) == 1


def test_old_releases_are_pruned_to_keep(sim_board, tmp_path):
    made = [d.deploy(sim_board, make_payload(tmp_path / f"v{i}", str(i)), keep=2).release for i in range(4)]
    left = sorted(p.name for p in (_local(sim_board) / "releases").iterdir() if p.is_dir())
    assert left == sorted(made[-2:])
    assert d.rollback(sim_board).current == made[-2]


def test_run_and_fetch(sim_board, tmp_path):
    d.deploy(sim_board, make_payload(tmp_path / "app"))
    with pytest.raises(d.RemoteCommandError, match=r"failed \(exit 7\): oops") as err:
        d.run(sim_board, "echo oops >&2; exit 7")
    assert "\n" not in str(err.value)
    assert d.run(sim_board, "exit 7", check=False).exited == 7
    out = tmp_path / "out" / "values.txt"
    out.parent.mkdir()
    assert d.fetch(sim_board, "current/data/values.txt", out) == out
    assert out.read_text() == (tmp_path / "app" / "data" / "values.txt").read_text()
    assert [p.name for p in out.parent.iterdir()] == ["values.txt"]  # no temporary left behind
    with pytest.raises(OutputExistsError):
        d.fetch(sim_board, "current/blob.bin", out)
    d.fetch(sim_board, "current/blob.bin", out, force=True)
    assert out.read_bytes() == (tmp_path / "app" / "blob.bin").read_bytes()
    with pytest.raises(d.RemoteCommandError, match="hashing nope.txt failed"):
        d.fetch(sim_board, "nope.txt", tmp_path / "out" / "nope.txt")
    assert not (tmp_path / "out" / "nope.txt").exists()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_fleet_gives_one_result_per_board(sim_board, tmp_path):
    a = sim_board
    b = dataclasses.replace(sim_board, name="other", remote_dir=sim_board.remote_dir + "-b")
    dead = dataclasses.replace(sim_board, name="dead", port=_closed_port())
    results = d.deploy_fleet([a, dead, b], make_payload(tmp_path / "app"), "{python} smoke.py")
    assert [r.board for r in results] == [a.name, "dead", "other"]
    assert [r.ok for r in results] == [True, False, True]
    assert "cannot connect" in results[1].error and "connection refused" in results[1].error
    assert results[0].result.release == results[2].result.release
    for board in (a, b):
        assert d.current_release(board) == results[0].result.release


def test_refused_connection_and_bad_key_are_one_line_errors(sim_board, tmp_path):
    with pytest.raises(d.BoardConnectionError, match="cannot connect to 127.0.0.1:.*connection refused"):
        d.run(dataclasses.replace(sim_board, port=_closed_port()), "true")
    _new_keypair(tmp_path / "stranger", "not-authorized")
    with pytest.raises(d.BoardAuthError, match="authentication as .* failed") as err:
        d.run(dataclasses.replace(sim_board, key=tmp_path / "stranger"), "true")
    assert "\n" not in str(err.value)
    with pytest.raises(d.BoardAuthError, match="key file .* not found"):
        d.run(dataclasses.replace(sim_board, key=tmp_path / "missing"), "true")


def test_the_cli_deploys_and_rolls_back_boards_of_an_inventory(sim_dir, sim_board, tmp_path, capsys, monkeypatch):
    inv = tmp_path / "boards.toml"
    arch = Path(d.__file__).resolve().parents[1] / "arch" / "ULTRA96.json"
    inv.write_text(f'[vb]\nsim = "{sim_dir}"\narch = "{arch}"\nhost = "127.0.0.1"\n'
                   f'key = "{sim_board.key}"\nknown_hosts = "{sim_board.known_hosts}"\n'
                   f'remote_dir = "{sim_board.remote_dir}"\npython = "python3"\n'
                   f'[gone]\narch = "{arch}"\nhost = "127.0.0.1"\nport = {_closed_port()}\nuser = "{sim_board.user}"\n'
                   f'key = "{sim_board.key}"\nknown_hosts = "{sim_board.known_hosts}"\nremote_dir = "gone"\n')
    assert "pipelines.board_cmd" in COMMANDS
    monkeypatch.setattr(cli, "COMMANDS", ("pipelines.board_cmd",))  # the others import torch: seconds
    assert main(["board-sim", "status", "--board", "vb", "--inventory", str(inv)]) == 0
    assert "up at" in capsys.readouterr().out
    for v in ("1", "2"):
        app = make_payload(tmp_path / f"v{v}", v)
        assert main(["deploy", "--board", "vb", "--dir", str(app), "--smoke", "{python} smoke.py",
                     "--inventory", str(inv)]) == 0
        assert "verified, current ->" in capsys.readouterr().out
    assert main(["rollback", "--board", "vb", "--inventory", str(inv)]) == 0
    assert d.run(sim_board, "cd current && {python} smoke.py").stdout.startswith("smoke ok version 1")
    assert main(["rollback", "--board", "vb", "--inventory", str(inv)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("medcodec rollback: error: board vb: nothing to roll back to")
    # a fleet with one board down: the other is deployed, the command fails with one line
    assert main(["deploy", "--board", "vb,gone", "--dir", str(tmp_path / "v2"), "--inventory", str(inv)]) == 1
    out, err = capsys.readouterr()
    assert "vb: " in out and "gone: FAILED: board gone: cannot connect" in out
    assert err.strip() == "medcodec deploy: error: deploy failed on 1 of 2 boards (gone)"
