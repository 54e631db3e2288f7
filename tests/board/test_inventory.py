"""boards/boards.toml: boards are data, resolved from the environment, with one-line errors."""

from __future__ import annotations

import json
import re
import tomllib

import pytest

from board.inventory import (
    INVENTORY,
    REPO,
    BoardConfigError,
    arch_of,
    board_names,
    get_board,
    get_boards,
    sim_dir,
)

ENV = {"MEDCODEC_BOARD_HOST": "board.example", "MEDCODEC_BOARD_KEY": "keys/id_board",
       "MEDCODEC_BOARD_KNOWN_HOSTS": "keys/known_hosts"}


def test_ultra96_comes_from_the_environment_with_defaults():
    b = get_board("ultra96", env=ENV)
    assert (b.host, b.port, b.user, b.python, b.remote_dir) == ("board.example", 22, "xilinx", "python3", "medcodec")
    assert b.key == REPO / "keys" / "id_board" and b.known_hosts == REPO / "keys" / "known_hosts"
    assert b.arch == REPO / "arch" / "ULTRA96.json" and b.arch.is_file() and b.sim is None
    assert arch_of("ultra96-b,sim") == b.arch  # no environment needed for the arch alone
    b = get_board("ultra96", env={**ENV, "MEDCODEC_BOARD_PORT": "2222", "MEDCODEC_BOARD_USER": "root"})
    assert (b.port, b.user) == (2222, "root")


@pytest.mark.parametrize("missing", sorted(ENV))
def test_an_unset_variable_is_a_one_line_error_naming_it(missing):
    env = {k: v for k, v in ENV.items() if k != missing}
    with pytest.raises(BoardConfigError, match=rf"board ultra96: .* {missing}, which is not set") as err:
        get_board("ultra96", env=env)
    assert "\n" not in str(err.value)


def test_a_fleet_is_a_comma_separated_list():
    env = {**ENV, "MEDCODEC_BOARD_A_HOST": "a.example", "MEDCODEC_BOARD_B_HOST": "b.example"}
    a, b = get_boards("ultra96-a, ultra96-b", env=env)
    assert (a.name, a.host, b.name, b.host) == ("ultra96-a", "a.example", "ultra96-b", "b.example")
    assert a.key == b.key == get_board("ultra96", env=env).key  # extends ultra96
    assert board_names("x,y") == ["x", "y"]
    for bad in ("x,,y", "x,x", ""):
        with pytest.raises(BoardConfigError, match="bad board list"):
            board_names(bad)
    with pytest.raises(BoardConfigError, match=r"board nope is not in .*boards: .*ultra96"):
        get_boards("ultra96,nope", env=env)


def test_the_inventory_holds_no_address_user_or_key_of_a_real_board():
    doc = tomllib.loads(INVENTORY.read_text())
    assert {"ultra96", "sim"} <= set(doc)
    for name, table in doc.items():
        for field in ("host", "key", "known_hosts", "user"):
            value = str(table.get(field, "${X}"))
            assert value.startswith("${") or table.get("sim") or name == "sim", (name, field, value)
        assert not re.search(r"\b\d+\.\d+\.\d+\.\d+\b", json.dumps(table).replace("127.0.0.1", "")), name


def test_the_sim_board_reads_its_port_and_user_from_its_state(tmp_path):
    inv = tmp_path / "boards" / "boards.toml"
    inv.parent.mkdir()
    inv.write_text('[vb]\nsim = "state"\narch = "arch/ULTRA96.json"\nhost = "127.0.0.1"\nkey = "state/k"\n'
                   'known_hosts = "state/kh"\nremote_dir = "state/root"\n')
    (tmp_path / "arch").mkdir()
    (tmp_path / "arch" / "ULTRA96.json").write_text("{}")
    with pytest.raises(BoardConfigError, match="is not up"):
        get_board("vb", inventory=inv, env={})
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "sim.json").write_text(json.dumps({"host": "127.0.0.1", "port": 40123, "user": "u"}))
    b = get_board("vb", inventory=inv, env={})
    assert (b.port, b.user, b.remote_dir) == (40123, "u", str(tmp_path / "state" / "root"))
    assert b.key == tmp_path / "state" / "k" and b.sim == tmp_path / "state"
    assert sim_dir("vb", inventory=inv) == (tmp_path / "state").resolve()
    assert sim_dir() == (REPO / "build" / "sim-board").resolve()


@pytest.mark.parametrize("text, message", [
    ('[a]\nhost = "h"\ncolour = "red"\n', "unknown field"),
    ('[a]\nextends = "b"\n[b]\nextends = "a"\n', "extends loop"),
    ('[a]\nextends = "zz"\n', "board zz .extended by a. is not in"),
    ('[a]\nhost = "h"\n', "missing field"),
    ('[a]\nhost = "h"\nport = "x"\nuser = "u"\nkey = "k"\nknown_hosts = "kh"\nremote_dir = "r"\n'
     'arch = "arch/ULTRA96.json"\n', "port 'x' is not a number"),
    ('[a]\nhost = "h"\nuser = "u"\nkey = "k"\nknown_hosts = "kh"\nremote_dir = "r"\narch = "arch/NOPE.json"\n',
     "arch file .* not found"),
    ("[a\n", "not valid TOML"),
])
def test_bad_inventories_are_refused_with_one_line(tmp_path, text, message):
    inv = tmp_path / "boards.toml"
    inv.write_text(text)
    with pytest.raises(BoardConfigError, match=message) as err:
        get_board("a", inventory=inv, env={}, repo=REPO)
    assert "\n" not in str(err.value)
