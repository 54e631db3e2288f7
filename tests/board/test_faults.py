"""Faults on the virtual board: a dropped connection, a changed or unknown host key, a corrupt file.

In each one ``current`` must stay where it was.
"""

from __future__ import annotations

import dataclasses
import os

import pytest

from board import deploy as d
from board import sim
from tests.board.conftest import make_payload


def test_a_connection_dropped_mid_upload_leaves_current_alone(own_sim, tmp_path):
    board = sim.board(own_sim)
    old = d.deploy(board, make_payload(tmp_path / "v1", "1"), "{python} smoke.py")
    new_dir = make_payload(tmp_path / "v2", "2", extra_files=8)
    seen = []

    def pull_the_cable(event, info):
        if event == "uploaded":
            seen.append(info["path"])
            if info["index"] == 3:
                sim.down(own_sim, hard=True)  # sshd and the connection it serves, killed

    with pytest.raises(d.BoardConnectionError, match="connection to 127.0.0.1:.* dropped uploading") as err:
        d.deploy(board, new_dir, "{python} smoke.py", test_hook=pull_the_cable)
    assert "\n" not in str(err.value) and len(seen) == 3  # it stopped at the drop
    releases = own_sim / "root" / "releases"
    assert os.readlink(own_sim / "root" / "current") == f"releases/{old.release}"
    assert not (releases / d.build_manifest(new_dir).content_hash).exists()
    assert list(releases.glob("*.partial"))  # the cut-off upload, never renamed
    sim.up(own_sim)  # the board comes back
    board = sim.board(own_sim)
    assert d.current_release(board) == old.release
    assert d.run(board, "cd current && {python} smoke.py").stdout.startswith("smoke ok version 1")
    new = d.deploy(board, new_dir, "{python} smoke.py")  # and the next deploy completes
    assert new.previous == old.release and new.uploaded
    assert not list(releases.glob("*.partial"))


def test_a_changed_host_key_is_refused(own_sim, tmp_path):
    board = sim.board(own_sim)
    old = d.deploy(board, make_payload(tmp_path / "v1", "1"))
    sim.down(own_sim)
    sim.rotate_host_key(own_sim)  # the "board" was reinstalled, or someone is in between
    sim.up(own_sim)
    board = sim.board(own_sim)
    for tofu in (False, True):  # trust on first use never accepts a changed key
        with pytest.raises(d.HostKeyError, match="host key of .* has CHANGED.*refusing to connect") as err:
            d.deploy(board, make_payload(tmp_path / "v2", "2"), trust_on_first_use=tofu)
        assert "\n" not in str(err.value)
    assert os.readlink(own_sim / "root" / "current") == f"releases/{old.release}"
    assert len(list((own_sim / "root" / "releases").iterdir())) == 2  # the release and HISTORY, no upload


def test_a_file_corrupted_on_the_board_fails_the_check_and_does_not_switch(sim_board, tmp_path):
    old = d.deploy(sim_board, make_payload(tmp_path / "v1", "1"))
    new_dir = make_payload(tmp_path / "v2", "2")

    def corrupt(event, info):
        if event == "before_verify":
            info["run"](f"printf x >> {info['release']}/data/values.txt")

    with pytest.raises(d.ChecksumError, match=r"does not match its manifest: sha256 differs for data/values.txt; "
                                              r"current was not switched") as err:
        d.deploy(sim_board, new_dir, "{python} smoke.py", test_hook=corrupt)
    assert "\n" not in str(err.value)
    releases = os.listdir(os.path.join(sim_board.remote_dir, "releases"))
    assert sorted(releases) == sorted(["HISTORY", old.release])  # the bad upload is gone
    assert d.current_release(sim_board) == old.release
    # a file missing or added on the board is caught too
    for damage, message in (("rm {}/blob.bin", "missing blob.bin"), ("touch {}/stray", "unexpected stray")):
        def hook(event, info, damage=damage):
            if event == "before_verify":
                info["run"](damage.format(info["release"]))
        with pytest.raises(d.ChecksumError, match=message):
            d.deploy(sim_board, new_dir, test_hook=hook)
    assert d.deploy(sim_board, new_dir).release != old.release  # undamaged, it goes through


def test_an_unknown_host_is_refused_unless_trusted_on_first_use(sim_board, tmp_path, capsys):
    kh = tmp_path / "keys" / "known_hosts"
    kh.parent.mkdir()
    kh.write_text("")
    board = dataclasses.replace(sim_board, known_hosts=kh)
    app = make_payload(tmp_path / "app")
    with pytest.raises(d.HostKeyError, match=r"host key of \[127.0.0.1\]:\d+ \(ssh-ed25519 SHA256:.*\) is not in"):
        d.deploy(board, app)
    with pytest.raises(d.HostKeyError, match="known_hosts file .* not found"):
        d.deploy(dataclasses.replace(board, known_hosts=tmp_path / "none"), app)
    assert not os.path.exists(os.path.join(board.remote_dir, "current"))
    capsys.readouterr()
    r = d.deploy(board, app, trust_on_first_use=True)
    warning = capsys.readouterr().err
    assert "WARNING" in warning and "TRUSTING AN UNKNOWN HOST KEY" in warning and "SHA256:" in warning
    host, typ, blob = kh.read_text().split()
    assert host == f"[127.0.0.1]:{board.port}" and typ == "ssh-ed25519"
    assert blob == (sim_board.sim / "host_key.pub").read_text().split()[1]
    assert d.current_release(board) == r.release  # now known: no flag, no warning
    assert capsys.readouterr().err == ""
