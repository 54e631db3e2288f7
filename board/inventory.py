"""Boards as data: ``boards/boards.toml`` -> :class:`Board`.

Each table of the inventory names one board (see the comment at the top of the file).
Values are read lazily: an unset ``${VAR}`` is an error only when that board is used, so
``medcodec board-sim up`` works without the real board's variables.

    get_board("ultra96")            -> Board (host, key ... from MEDCODEC_BOARD_* variables)
    get_boards("ultra96-a,ultra96-b") -> [Board, Board]   (a fleet)
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from codec.errors import MedcodecError

REPO = Path(__file__).resolve().parents[1]
INVENTORY = REPO / "boards" / "boards.toml"

FIELDS = ("arch", "host", "port", "user", "key", "known_hosts", "remote_dir", "python")
META = ("extends", "sim")
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class BoardConfigError(MedcodecError):
    """A board that is not in the inventory, or whose entry cannot be resolved."""


@dataclass(frozen=True)
class Board:
    """One board, fully resolved: everything deploy needs to reach it."""

    name: str
    #: the board's hardware description (arch/<NAME>.json)
    arch: Path
    host: str
    port: int
    user: str
    #: private key file that logs in
    key: Path
    #: the only file whose host keys are trusted for this board
    known_hosts: Path
    #: where releases live on the board; relative = relative to the login's home directory
    remote_dir: str
    #: the board's python interpreter
    python: str = "python3"
    #: the sim directory for a virtual board, else None
    sim: Path | None = None

    @property
    def address(self) -> str:
        return f"{self.user}@{self.host}:{self.port}"


def _expand(board: str, field: str, value, env) -> str:
    if not isinstance(value, str | int):
        raise BoardConfigError(f"board {board}: field {field} must be a string or an integer")
    value = str(value)

    def sub(m: re.Match) -> str:
        name, default = m.group(1), m.group(2)
        got = env.get(name)
        if got:
            return got
        if default is not None:
            return default
        raise BoardConfigError(f"board {board}: {field} needs the environment variable {name}, which is not set")

    return _VAR.sub(sub, value)


def load_inventory(path=None) -> dict[str, dict]:
    """The raw tables of the inventory file (no expansion)."""
    path = Path(path) if path else INVENTORY
    try:
        doc = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise BoardConfigError(f"{path}: board inventory not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise BoardConfigError(f"{path}: not valid TOML ({exc})") from None
    for name, table in doc.items():
        if not isinstance(table, dict):
            raise BoardConfigError(f"{path}: {name} is not a table")
        unknown = set(table) - set(FIELDS) - set(META)
        if unknown:
            raise BoardConfigError(f"{path}: board {name}: unknown field(s) {', '.join(sorted(unknown))}")
    return doc


def _merged(name: str, doc: dict, path) -> dict:
    seen = []
    table: dict = {}
    while name is not None:
        if name in seen:
            raise BoardConfigError(f"{path}: board {seen[0]}: extends loop {' -> '.join([*seen, name])}")
        if name not in doc:
            where = f" (extended by {seen[-1]})" if seen else ""
            known = ", ".join(sorted(doc))
            raise BoardConfigError(f"board {name}{where} is not in {path} (boards: {known})")
        seen.append(name)
        parent = doc[name]
        table = {**parent, **table}
        name = parent.get("extends")
    table.pop("extends", None)
    return table


def _repo_path(value: str, repo: Path) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() else repo / p


def read_sim_state(sim_dir: Path) -> dict:
    """What ``board-sim up`` wrote: port, user, pid."""
    state = Path(sim_dir) / "sim.json"
    try:
        return json.loads(state.read_text())
    except FileNotFoundError:
        raise BoardConfigError(f"the virtual board in {sim_dir} is not up (run: make board-sim-up)") from None
    except json.JSONDecodeError:
        raise BoardConfigError(f"{state}: corrupt (run: make board-sim-down board-sim-up)") from None


def get_board(name: str, inventory=None, env=None, repo=None) -> Board:
    """Resolve one board of the inventory; raises BoardConfigError with one line."""
    path = Path(inventory) if inventory else INVENTORY
    env = os.environ if env is None else env
    repo = Path(repo) if repo else path.resolve().parent.parent
    name = name.strip()
    table = _merged(name, load_inventory(path), path)
    sim_dir = _repo_path(table.pop("sim"), repo) if "sim" in table else None
    values = {k: _expand(name, k, v, env) for k, v in table.items()}
    if sim_dir is not None:
        state = read_sim_state(sim_dir)
        values["port"], values["user"] = str(state["port"]), state["user"]
        remote = Path(values["remote_dir"]) if "remote_dir" in values else sim_dir / "root"
        values["remote_dir"] = str(remote if remote.is_absolute() else repo / remote)
    missing = [f for f in FIELDS if f not in values and f not in ("port", "python")]
    if missing:
        raise BoardConfigError(f"board {name}: missing field(s) {', '.join(missing)} in {path}")
    try:
        port = int(values.get("port", "22"))
    except ValueError:
        raise BoardConfigError(f"board {name}: port {values['port']!r} is not a number") from None
    if not 0 < port < 65536:
        raise BoardConfigError(f"board {name}: port {port} is out of range")
    arch = _repo_path(values["arch"], repo)
    if not arch.is_file():
        raise BoardConfigError(f"board {name}: arch file {arch} not found")
    return Board(name=name, arch=arch, host=values["host"], port=port, user=values["user"],
                 key=_repo_path(values["key"], repo), known_hosts=_repo_path(values["known_hosts"], repo),
                 remote_dir=values["remote_dir"], python=values.get("python", "python3"), sim=sim_dir)


def board_names(spec: str) -> list[str]:
    """``"a, b"`` -> ``["a", "b"]``; empty names and duplicates are errors."""
    names = [n.strip() for n in str(spec).split(",")]
    if not all(names):
        raise BoardConfigError(f"bad board list {spec!r}: empty name")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise BoardConfigError(f"bad board list {spec!r}: {', '.join(dup)} named twice")
    return names


def get_boards(spec: str, inventory=None, env=None, repo=None) -> list[Board]:
    """A fleet: every board of a comma-separated list, resolved."""
    return [get_board(n, inventory, env, repo) for n in board_names(spec)]


def sim_dir(name: str = "sim", inventory=None, repo=None) -> Path:
    """The directory of the virtual board ``name`` (its ``sim`` field), without resolving the rest."""
    path = Path(inventory) if inventory else INVENTORY
    repo = Path(repo) if repo else path.resolve().parent.parent
    table = _merged(name, load_inventory(path), path)
    if "sim" not in table:
        raise BoardConfigError(f"board {name} is not a virtual board (no sim field in {path})")
    return _repo_path(_expand(name, "sim", table["sim"], os.environ), repo).resolve()


def arch_of(name: str, inventory=None, repo=None) -> Path:
    """The arch file of board ``name`` (the first of a fleet), without host, key or environment."""
    path = Path(inventory) if inventory else INVENTORY
    repo = Path(repo) if repo else path.resolve().parent.parent
    first = board_names(name)[0]
    table = _merged(first, load_inventory(path), path)
    if "arch" not in table:
        raise BoardConfigError(f"board {first}: no arch field in {path}")
    return _repo_path(_expand(first, "arch", table["arch"], os.environ), repo)
