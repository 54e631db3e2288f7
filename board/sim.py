"""The virtual board: OpenSSH's own sshd on 127.0.0.1, with everything under one directory.

It is real where it can be: deploy reaches it over real SSH and SFTP with a real host key
and a real client key, and its "remote directory" (``<dir>/root``) is touched only over SSH.
What it does not have is the DPU (runners use the emulator there) and a separate machine.

    <dir>/sshd_config      generated; ListenAddress 127.0.0.1, a free port, publickey only,
                           StrictModes no, UsePAM no, PidFile and HostKey inside <dir>
    <dir>/host_key(.pub)   the board's host key (ed25519)
    <dir>/client_key(.pub) the key deploy logs in with; authorized_keys holds its public half
    <dir>/known_hosts      the client's trusted host key for [127.0.0.1]:<port>
    <dir>/sim.json         host, port, user, pid of the running sshd (absent when down)
    <dir>/sshd.pid, sshd.log
    <dir>/root              the board's remote directory

Nothing outside <dir> is written, except that sshd started as root needs its privilege
separation directory (``/run/sshd`` on Debian), which is created when missing. The system's
ssh configuration and ``~/.ssh`` are never read or changed (``-f`` names the config file).
``up`` when up is a no-op that reports the port; ``down`` stops only the sshd of its own pid file.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from board.inventory import REPO, Board, BoardConfigError
from codec.errors import MedcodecError

HOST = "127.0.0.1"
SSHD_CANDIDATES = ("/usr/sbin/sshd", "/usr/local/sbin/sshd", "/sbin/sshd")
DEFAULT_DIR = REPO / "build" / "sim-board"
START_TIMEOUT_S = 10.0


class SimBoardError(MedcodecError):
    """The virtual board could not be started or stopped."""


@dataclass(frozen=True)
class SimInfo:
    dir: Path
    host: str
    port: int
    user: str
    pid: int
    already_up: bool = False


def find_sshd() -> str | None:
    """OpenSSH's server binary: the usual places, then PATH; None when it is not installed."""
    for cand in SSHD_CANDIDATES:
        if os.access(cand, os.X_OK):
            return cand
    found = shutil.which("sshd")
    return os.path.abspath(found) if found else None


def is_available() -> bool:
    """Whether a virtual board can run here (OpenSSH's sshd is installed)."""
    return find_sshd() is not None


def _user() -> str:
    return pwd.getpwuid(os.getuid()).pw_name


def _write_private(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _new_keypair(path: Path, comment: str) -> str:
    """Write an ed25519 private key (OpenSSH format, 0600) and its .pub; return the public line."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH).decode()
    line = f"{public} {comment}"
    _write_private(path, private)
    _write_text(path.with_name(path.name + ".pub"), line + "\n")
    return line


def _host_field(port: int) -> str:
    return f"[{HOST}]:{port}"


def _known_hosts_for_port(sim_dir: Path, port: int) -> None:
    """known_hosts trusts the host key it was first written with; only its port follows sshd.

    So after :func:`rotate_host_key` the client still expects the old key: a changed host key.
    """
    kh = sim_dir / "known_hosts"
    if not kh.exists():
        typ, blob = (sim_dir / "host_key.pub").read_text().split()[:2]
        _write_text(kh, f"{_host_field(port)} {typ} {blob}\n")
        return
    lines = []
    for line in kh.read_text().splitlines():
        fields = line.split(None, 1)
        if len(fields) == 2 and re.fullmatch(rf"\[{re.escape(HOST)}\]:\d+", fields[0]):
            line = f"{_host_field(port)} {fields[1]}"
        lines.append(line)
    _write_text(kh, "".join(f"{ln}\n" for ln in lines))


def _ensure_keys(sim_dir: Path) -> None:
    if not (sim_dir / "host_key").exists():
        _new_keypair(sim_dir / "host_key", "medcodec-sim-board-host")
        (sim_dir / "known_hosts").unlink(missing_ok=True)
    if not (sim_dir / "client_key").exists():
        line = _new_keypair(sim_dir / "client_key", "medcodec-sim-board-client")
        _write_text(sim_dir / "authorized_keys", line + "\n")


def rotate_host_key(sim_dir=DEFAULT_DIR) -> None:
    """Give the board a new host key (as a reinstall would); known_hosts keeps the old one.

    Takes effect at the next :func:`up`.
    """
    sim_dir = Path(sim_dir)
    _new_keypair(sim_dir / "host_key", "medcodec-sim-board-host")


def _quote(path: Path) -> str:
    text = str(path)
    if '"' in text:
        raise SimBoardError(f"{path}: the virtual board's directory may not contain a double quote")
    return f'"{text}"'


# Lines sshd may not know (older or newer OpenSSH): dropped when `sshd -t` calls them bad.
# SetEnv SHLVL=1: bash run by sshd sources ~/.bashrc only at shell level 1, and this machine's
# dotfiles are not the board's (they also cost a pyenv init per command).
OPTIONAL = ("PerSourcePenalties no", "SetEnv SHLVL=1")


#: the packages the board app needs (its "board image"): no torch. Pinned to requirements.lock.
BOARD_PACKAGES = ("numpy", "constriction", "pydicom")
BOARD_PYTHON = "board-python"


def _board_pins() -> list[str]:
    lock = REPO / "requirements.lock"
    pins = {}
    for line in lock.read_text().splitlines():
        name, _, ver = line.strip().partition("==")
        if ver and name.lower() in BOARD_PACKAGES:
            pins[name.lower()] = f"{name}=={ver}"
    missing = [p for p in BOARD_PACKAGES if p not in pins]
    if missing:
        raise SimBoardError(f"{lock}: no pin for {missing}")
    return [pins[p] for p in BOARD_PACKAGES]


def ensure_board_python(sim_dir=DEFAULT_DIR) -> Path:
    """The virtual board's python: a venv under the board's folder with only the board app's packages
    (numpy, constriction, pydicom; no torch), so the board app is tested without the host's
    environment. Made once (about 10 s with a warm pip cache); sshd puts it first on PATH."""
    import sys

    env = Path(sim_dir).resolve() / BOARD_PYTHON
    py = env / "bin" / "python3"
    pins = _board_pins()
    stamp = env / ".installed"
    if py.exists() and stamp.exists() and stamp.read_text().split() == pins:
        return py
    base = shutil.which("python3") or sys.executable
    for cmd in ([base, "-m", "venv", "--clear", str(env)],
                [str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", *pins]):
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if out.returncode != 0:
            last = (out.stderr.strip().splitlines() or [f"exit {out.returncode}"])[-1]
            raise SimBoardError(f"cannot make the virtual board's python ({' '.join(cmd[:3])}): {last}")
    stamp.write_text(" ".join(pins) + "\n")
    return py


def _config_text(sim_dir: Path, port: int, user: str, optional=OPTIONAL) -> str:
    env_bin = sim_dir / BOARD_PYTHON / "bin"
    if env_bin.is_dir():  # the board image's python first on PATH (sshd's SetEnv; one line, several values)
        path = f"{env_bin}:/usr/local/bin:/usr/bin:/bin"
        if '"' in path or " " in path:
            raise SimBoardError(f"{sim_dir}: the virtual board's directory may not contain spaces or quotes")
        optional = [f"{o} PATH={path}" if o.startswith("SetEnv ") else o for o in optional]
    lines = [
        "# medcodec virtual board (board/sim.py): generated at every start, do not edit",
        f"ListenAddress {HOST}",
        f"Port {port}",
        f"HostKey {_quote(sim_dir / 'host_key')}",
        f"PidFile {_quote(sim_dir / 'sshd.pid')}",
        f"AuthorizedKeysFile {_quote(sim_dir / 'authorized_keys')}",
        f"AllowUsers {user}",
        "PubkeyAuthentication yes",
        "AuthenticationMethods publickey",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "PermitRootLogin prohibit-password",
        "StrictModes no",
        "UsePAM no",
        "UseDNS no",
        "X11Forwarding no",
        "AllowAgentForwarding no",
        "AllowTcpForwarding no",
        "PermitTunnel no",
        "PrintMotd no",
        "PrintLastLog no",
        "Subsystem sftp internal-sftp",
        "LogLevel VERBOSE",
        *optional,
    ]
    return "\n".join(lines) + "\n"


def _check_config(sshd: str, sim_dir: Path, port: int, user: str) -> None:
    """Write sshd_config and have `sshd -t` accept it (drops unknown optional lines; makes the
    privilege separation directory when running as root and it is missing)."""
    optional = list(OPTIONAL)
    cfg = sim_dir / "sshd_config"
    made_privsep = False
    for _ in range(len(OPTIONAL) + 2):
        _write_text(cfg, _config_text(sim_dir, port, user, optional))
        out = subprocess.run([sshd, "-t", "-f", str(cfg)], capture_output=True, text=True, timeout=30)
        if out.returncode == 0:
            return
        err = out.stderr.strip()
        bad = re.search(r"Bad configuration option: (\S+)", err)
        privsep = re.search(r"Missing privilege separation directory: (\S+)", err)
        if bad and any(o.split()[0] == bad.group(1) for o in optional):
            optional = [o for o in optional if o.split()[0] != bad.group(1)]
        elif privsep and os.getuid() == 0 and not made_privsep:
            os.makedirs(privsep.group(1), mode=0o755, exist_ok=True)
            made_privsep = True
        else:
            last = err.splitlines()[-1] if err else f"exit {out.returncode}"
            raise SimBoardError(f"sshd refuses the virtual board's config {cfg}: {last}")
    raise SimBoardError(f"sshd refuses the virtual board's config {cfg}")


def _pid_alive(pid: int) -> bool:
    """The process exists and is not a zombie (a container's init may never reap the daemon)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")


def _pid_is_ours(pid: int, sim_dir: Path) -> bool:
    """The process is alive and is the sshd of this directory's config (not a recycled pid)."""
    if not _pid_alive(pid):
        return False
    cmdline = Path(f"/proc/{pid}/cmdline")
    if not cmdline.parent.parent.is_dir():  # no /proc (not Linux): the pid file is all there is
        return True
    try:
        args = cmdline.read_bytes()  # sshd rewrites its title, but the title keeps "-f <config>"
    except OSError:
        return False
    return str(sim_dir / "sshd_config").encode() in args


def _read_pid(sim_dir: Path) -> int | None:
    try:
        return int((sim_dir / "sshd.pid").read_text().split()[0])
    except (FileNotFoundError, ValueError, IndexError):
        return None


def _banner(port: int, timeout: float = 1.0) -> bytes:
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as s:
            return s.recv(64)
    except OSError:
        return b""


def _free_port(preferred: int | None) -> int:
    for port in ([preferred] if preferred else []) + [0]:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((HOST, port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise SimBoardError("no free port on 127.0.0.1")


def status(sim_dir=DEFAULT_DIR) -> SimInfo | None:
    """The running virtual board of ``sim_dir``, or None."""
    sim_dir = Path(sim_dir).resolve()
    pid = _read_pid(sim_dir)
    if pid is None or not _pid_is_ours(pid, sim_dir):
        return None
    try:
        state = json.loads((sim_dir / "sim.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    if not _banner(int(state["port"])).startswith(b"SSH-"):
        return None
    return SimInfo(sim_dir, state["host"], int(state["port"]), state["user"], pid, already_up=True)


def _log_tail(sim_dir: Path) -> str:
    try:
        lines = [ln for ln in (sim_dir / "sshd.log").read_text(errors="replace").splitlines() if ln.strip()]
    except FileNotFoundError:
        return ""
    return lines[-1] if lines else ""


def up(sim_dir=DEFAULT_DIR, port: int | None = None) -> SimInfo:
    """Start the virtual board (or report the one that runs). Returns where it listens."""
    sshd = find_sshd()
    if sshd is None:
        raise SimBoardError("OpenSSH's sshd is not installed (apt-get install openssh-server)")
    sim_dir = Path(sim_dir).resolve()
    running = status(sim_dir)
    if running is not None:
        return running
    stale = _read_pid(sim_dir)
    if stale is not None and _pid_is_ours(stale, sim_dir):  # ours but not answering, or its state lost
        _stop_pid(stale, sim_dir, hard=False)
    (sim_dir / "root").mkdir(parents=True, exist_ok=True)
    _ensure_keys(sim_dir)
    user = _user()
    last = sim_dir / "port.last"
    preferred = port or (int(last.read_text()) if last.exists() and last.read_text().strip().isdigit() else None)
    (sim_dir / "sim.json").unlink(missing_ok=True)
    error = ""
    for _attempt in range(3):
        port_now = _free_port(preferred)
        preferred = None
        _check_config(sshd, sim_dir, port_now, user)
        (sim_dir / "sshd.pid").unlink(missing_ok=True)
        log = sim_dir / "sshd.log"
        started = subprocess.run([sshd, "-f", str(sim_dir / "sshd_config"), "-E", str(log)],
                                 capture_output=True, text=True, timeout=30)
        if started.returncode != 0:
            error = (started.stderr.strip().splitlines() or [f"exit {started.returncode}"])[-1]
            continue
        deadline = time.monotonic() + START_TIMEOUT_S
        pid = None
        while time.monotonic() < deadline:
            pid = _read_pid(sim_dir)
            if pid and _banner(port_now, 0.5).startswith(b"SSH-"):
                break
            if pid and not _pid_alive(pid):
                break
            time.sleep(0.05)
        if pid and _pid_is_ours(pid, sim_dir) and _banner(port_now, 0.5).startswith(b"SSH-"):
            _known_hosts_for_port(sim_dir, port_now)
            _write_text(last, f"{port_now}\n")
            info = SimInfo(sim_dir, HOST, port_now, user, pid)
            _write_text(sim_dir / "sim.json",
                        json.dumps({"host": HOST, "port": port_now, "user": user, "pid": pid}, indent=1) + "\n")
            return info
        if pid and _pid_alive(pid) and _pid_is_ours(pid, sim_dir):
            _stop_pid(pid, sim_dir, hard=True)
        error = _log_tail(sim_dir) or "sshd did not start"
    raise SimBoardError(f"the virtual board's sshd did not start: {error} (log: {sim_dir / 'sshd.log'})")


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (Linux /proc), deepest last; [] without /proc."""
    children: dict[int, list[int]] = {}
    proc = Path("/proc")
    if not proc.is_dir():
        return []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _stop_pid(pid: int, sim_dir: Path, hard: bool) -> None:
    """Stop our sshd and the connections it serves (its own child processes)."""
    sig = signal.SIGKILL if hard else signal.SIGTERM
    family = [pid, *_descendants(pid)]
    for p in family:
        try:
            os.kill(p, sig)
        except (ProcessLookupError, PermissionError):
            pass
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline and _pid_alive(pid):
        time.sleep(0.02)
    if _pid_alive(pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def down(sim_dir=DEFAULT_DIR, hard: bool = False) -> bool:
    """Stop the virtual board by its own pid file. ``hard`` kills at once (a pulled cable).

    Returns whether one was running. Keys, known_hosts and ``root/`` stay, so the next ``up``
    is the same board (same host key, same port when it is free).
    """
    sim_dir = Path(sim_dir).resolve()
    pid = _read_pid(sim_dir)
    running = pid is not None and _pid_is_ours(pid, sim_dir)
    if running:
        _stop_pid(pid, sim_dir, hard)
    (sim_dir / "sshd.pid").unlink(missing_ok=True)
    (sim_dir / "sim.json").unlink(missing_ok=True)
    return running


def board(sim_dir=DEFAULT_DIR, name: str = "sim", remote_dir=None, python: str = "python3",
          arch=None) -> Board:
    """The :class:`Board` of a running virtual board (``remote_dir`` defaults to ``<dir>/root``)."""
    sim_dir = Path(sim_dir).resolve()
    info = status(sim_dir)
    if info is None:
        raise BoardConfigError(f"the virtual board in {sim_dir} is not up (run: make board-sim-up)")
    return Board(name=name, arch=Path(arch) if arch else REPO / "arch" / "ULTRA96.json", host=info.host,
                 port=info.port, user=info.user, key=sim_dir / "client_key", known_hosts=sim_dir / "known_hosts",
                 remote_dir=str(remote_dir or sim_dir / "root"), python=python, sim=sim_dir)
