"""Deploy a folder to a board over SSH (fabric), content-addressed, verified, switched atomically.

On the board, under its ``remote_dir``::

    releases/<content-hash>/           one complete, verified release per content
    releases/<content-hash>.partial/   an upload in progress (or one that was cut off)
    releases/HISTORY                   one line per switch: "<utc time> deploy|rollback <hash>"
    current -> releases/<content-hash> the release in use (a relative symlink)

``deploy(board, dir, smoke_cmd)``:

1. hashes the local folder: the manifest is ``"<sha256>  <path>"`` per file, paths sorted, and
   the content hash is the sha256 of the manifest (``sha256sum -c`` reads it on the board);
2. uploads into ``releases/<hash>.partial/`` with a progress bar (skipped when that release is
   already on the board);
3. has the board's python hash every file and compares with the manifest: a missing, extra or
   changed file stops the deploy, and the partial upload is removed;
4. renames ``.partial`` to the release, runs the smoke test inside it;
5. only then points ``current`` at it: ``ln -s`` to a temporary name and ``mv -T`` over the old
   link (a rename, atomic), and appends to HISTORY. The previous release stays.

A connection dropped at any point before step 5 leaves ``current`` as it was. Host keys are checked
against the board's own known_hosts file only (paramiko RejectPolicy; ``~/.ssh`` is never read):
an unknown or changed key refuses to connect, unless ``trust_on_first_use`` adds an unknown one
(with a loud warning). Every failure is a one-line :class:`BoardError`.

``rollback(board)`` points ``current`` back at the release before it (HISTORY is a stack: deploy
pushes, rollback pops). ``run`` and ``fetch`` run a command on a board and copy a file back.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import posixpath
import re
import shlex
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import paramiko
from fabric import Config, Connection
from invoke.exceptions import CommandTimedOut
from paramiko.config import SSHConfig
from paramiko.ssh_exception import NoValidConnectionsError

from board.inventory import Board, get_board
from codec.errors import MedcodecError
from codec.fileio import check_writable, sha256_file

MANIFEST = ".medcodec-release.sha256"
HISTORY = "HISTORY"
CONNECT_TIMEOUT_S = 15
COMMAND_TIMEOUT_S = 600
_HASH = re.compile(r"[0-9a-f]{64}")

# Hashes every file under argv[1] with the board's python (3.6 and later: no f-strings).
_HASH_SCRIPT = r"""
import hashlib, json, os, sys
root = sys.argv[1]
out = {}
for d, dirs, files in os.walk(root):
    for f in files:
        p = os.path.join(d, f)
        h = hashlib.sha256()
        with open(p, 'rb') as fh:
            for b in iter(lambda: fh.read(1 << 20), b''):
                h.update(b)
        out[os.path.relpath(p, root).replace(os.sep, '/')] = h.hexdigest()
sys.stdout.write(json.dumps(out))
"""
_HASH_FILE_SCRIPT = r"""
import hashlib, sys
h = hashlib.sha256()
with open(sys.argv[1], 'rb') as fh:
    for b in iter(lambda: fh.read(1 << 20), b''):
        h.update(b)
sys.stdout.write(h.hexdigest())
"""


# ---------------------------------------------------------------------------------------- errors

class BoardError(MedcodecError):
    """Reaching or using a board failed. The message names the board and is one line."""

    def __init__(self, message: str):
        super().__init__(" ".join(line.strip() for line in str(message).splitlines() if line.strip()))


class BoardConnectionError(BoardError):
    """The board cannot be reached, or the connection dropped."""


class BoardAuthError(BoardError):
    """The board refused the key."""


class HostKeyError(BoardError):
    """The board's host key is unknown or differs from its known_hosts entry."""


class ChecksumError(BoardError):
    """Files on the board do not match the manifest."""


class SmokeTestError(BoardError):
    """The smoke test failed inside the new release; ``current`` was not switched."""


class RemoteCommandError(BoardError):
    """A command on the board exited non-zero."""


# ------------------------------------------------------------------------------------- manifest

@dataclass(frozen=True)
class Manifest:
    """The files of a local folder: (relative posix path, sha256, size, mode), sorted by path."""

    root: Path
    files: tuple[tuple[str, str, int, int], ...]

    @property
    def text(self) -> str:
        return "".join(f"{sha}  {rel}\n" for rel, sha, _, _ in self.files)

    @property
    def content_hash(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()

    @property
    def total_bytes(self) -> int:
        return sum(size for _, _, size, _ in self.files)

    def expected(self) -> dict[str, str]:
        """What the board must hold: every file, plus the manifest itself (whose hash is the release)."""
        out = {rel: sha for rel, sha, _, _ in self.files}
        out[MANIFEST] = self.content_hash
        return out




def build_manifest(local_dir) -> Manifest:
    """Hash every regular file under ``local_dir`` (file symlinks are followed, folder ones refused)."""
    root = Path(local_dir)
    if not root.is_dir():
        raise MedcodecError(f"{root}: not a directory")
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            if (Path(dirpath) / d).is_symlink():
                raise MedcodecError(f"{Path(dirpath) / d}: a symlinked folder cannot be deployed")
        for name in filenames:
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            if "\n" in rel or "\\" in rel:
                raise MedcodecError(f"{path}: a file name with a newline or backslash cannot be deployed")
            if rel == MANIFEST:
                raise MedcodecError(f"{path}: {MANIFEST} is the name deploy gives its manifest")
            if not path.is_file():
                raise MedcodecError(f"{path}: not a regular file")
            st = path.stat()
            files.append((rel, sha256_file(path), st.st_size, st.st_mode & 0o777))
    if not files:
        raise MedcodecError(f"{root}: nothing to deploy (no files)")
    return Manifest(root, tuple(sorted(files)))


# ----------------------------------------------------------------------------------- connection

def _fingerprint(key: paramiko.PKey) -> str:
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def _host_id(board: Board) -> str:
    return board.host if board.port == 22 else f"[{board.host}]:{board.port}"


class _RejectUnknown(paramiko.RejectPolicy):
    """paramiko's RejectPolicy with a one-line error that says what to do."""

    def __init__(self, board: Board):
        self.board = board

    def missing_host_key(self, client, hostname, key):
        raise HostKeyError(
            f"board {self.board.name}: host key of {hostname} ({key.get_name()} {_fingerprint(key)}) is not in "
            f"{self.board.known_hosts}: refusing to connect (check the fingerprint on the board, then add it, "
            f"or deploy once with --trust-on-first-use)")


_KNOWN_HOSTS_LOCK = threading.Lock()


class _TrustOnFirstUse(paramiko.MissingHostKeyPolicy):
    """Add an unknown host key to the board's known_hosts file, loudly. A changed key is still refused."""

    def __init__(self, board: Board):
        self.board = board

    def missing_host_key(self, client, hostname, key):
        kh = self.board.known_hosts
        line = f"{hostname} {key.get_name()} {key.get_base64()}\n"
        with _KNOWN_HOSTS_LOCK:  # boards of a fleet may share one known_hosts file
            old = kh.read_text() if kh.exists() else ""
            if old and not old.endswith("\n"):
                old += "\n"
            kh.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{kh.name}.", suffix=".tmp", dir=kh.parent)
            with os.fdopen(fd, "w") as fh:
                fh.write(old + line)
            os.replace(tmp, kh)
        client.get_host_keys().add(hostname, key.get_name(), key)
        print(f"WARNING: board {self.board.name}: TRUSTING AN UNKNOWN HOST KEY ON FIRST USE: {hostname} "
              f"{key.get_name()} {_fingerprint(key)} was added to {kh}. Check this fingerprint on the board "
              f"(ssh-keygen -lf on its host key); if it differs, remove the line: someone may be in between.",
              file=sys.stderr, flush=True)


def _is_dropped(conn: Connection) -> bool:
    transport = conn.client.get_transport()
    return transport is None or not transport.is_active()


@contextlib.contextmanager
def _errors(board: Board, doing: str, conn: Connection | None = None):
    """Turn paramiko and socket failures into one-line BoardErrors."""
    try:
        yield
    except BoardError:
        raise
    except paramiko.BadHostKeyException as exc:
        raise HostKeyError(
            f"board {board.name}: host key of {_host_id(board)} has CHANGED: {board.known_hosts} has "
            f"{_fingerprint(exc.expected_key)}, the board offers {exc.key.get_name()} {_fingerprint(exc.key)}; "
            f"refusing to connect (if the board was reinstalled, check the new key and replace its line)"
        ) from None
    except paramiko.AuthenticationException as exc:
        raise BoardAuthError(f"board {board.name}: authentication as {board.user} with {board.key} failed "
                             f"({exc}); is its public key in the board's authorized_keys?") from None
    except NoValidConnectionsError as exc:
        why = "; ".join(sorted({e.strerror or str(e) for e in exc.errors.values()}))
        raise BoardConnectionError(f"board {board.name}: cannot connect to {board.host}:{board.port} "
                                   f"({why.lower()})") from None
    except TimeoutError:
        raise BoardConnectionError(f"board {board.name}: timed out {doing} ({board.host}:{board.port})") from None
    except socket.gaierror as exc:
        raise BoardConnectionError(f"board {board.name}: cannot resolve {board.host} ({exc.strerror})") from None
    except (paramiko.SSHException, EOFError, OSError) as exc:
        if conn is None or _is_dropped(conn):
            raise BoardConnectionError(f"board {board.name}: connection to {board.host}:{board.port} dropped "
                                       f"{doing} ({exc or type(exc).__name__})") from None
        raise BoardError(f"board {board.name}: {doing}: {exc or type(exc).__name__}") from None


@dataclass
class RunResult:
    cmd: str
    exited: int
    stdout: str
    stderr: str

    def last_line(self) -> str:
        lines = [ln.strip() for ln in (self.stderr + "\n" + self.stdout).splitlines() if ln.strip()]
        return lines[-1] if lines else "(no output)"


class Session:
    """An open connection to one board: shell commands, SFTP, and the board's remote directory."""

    def __init__(self, board: Board, conn: Connection):
        self.board = board
        self.conn = conn
        self.remote = ""

    def errors(self, doing: str):
        return _errors(self.board, doing, self.conn)

    def sh(self, cmd: str, doing: str = "running a command", check: bool = True,
           timeout: int | None = COMMAND_TIMEOUT_S) -> RunResult:
        self._alive(doing)
        with self.errors(doing):
            try:
                r = self.conn.run(cmd, hide=True, warn=True, in_stream=False, timeout=timeout, pty=False)
            except CommandTimedOut:
                raise BoardError(f"board {self.board.name}: {doing}: timed out after {timeout} s") from None
        result = RunResult(cmd, r.exited, r.stdout, r.stderr)
        if check and result.exited != 0:
            if result.exited == -1 or _is_dropped(self.conn):
                raise BoardConnectionError(f"board {self.board.name}: connection dropped {doing}")
            raise RemoteCommandError(f"board {self.board.name}: {doing} failed (exit {result.exited}): "
                                     f"{result.last_line()}")
        return result

    def _alive(self, doing: str) -> None:
        """Fabric would quietly open a new connection after a drop; a deploy must not."""
        if self.remote and _is_dropped(self.conn):
            raise BoardConnectionError(f"board {self.board.name}: connection to {self.board.host}:{self.board.port} "
                                       f"dropped before {doing}")

    @property
    def sftp(self) -> paramiko.SFTPClient:
        self._alive("using SFTP")
        with self.errors("opening SFTP"):
            sftp = self.conn.sftp()
            sftp.get_channel().settimeout(CONNECT_TIMEOUT_S * 4)
            return sftp

    def path(self, *parts: str) -> str:
        return posixpath.join(self.remote, *parts)

    def python(self, script: str, *args: str, doing: str) -> str:
        cmd = " ".join([shlex.quote(self.board.python), "-c", shlex.quote(script), *map(shlex.quote, args)])
        r = self.sh(cmd, doing, check=False)
        if r.exited == 127:
            raise BoardError(f"board {self.board.name}: its python {self.board.python!r} was not found "
                             f"(set python in the board inventory)")
        if r.exited != 0:
            if _is_dropped(self.conn):
                raise BoardConnectionError(f"board {self.board.name}: connection dropped {doing}")
            raise RemoteCommandError(f"board {self.board.name}: {doing} failed (exit {r.exited}): {r.last_line()}")
        return r.stdout

    def readlink(self, rel: str) -> str | None:
        with self.errors("reading a link"):
            try:
                return self.sftp.readlink(self.path(rel))
            except FileNotFoundError:
                return None

    def exists(self, rel: str) -> bool:
        with self.errors("looking for a file"):
            try:
                self.sftp.stat(self.path(rel))
                return True
            except FileNotFoundError:
                return False

    def read_text(self, rel: str) -> str | None:
        with self.errors("reading a file"):
            try:
                with self.sftp.open(self.path(rel), "r") as fh:
                    return fh.read().decode()
            except FileNotFoundError:
                return None


@contextlib.contextmanager
def connect(board: Board | str, trust_on_first_use: bool = False, timeout: int = CONNECT_TIMEOUT_S):
    """Open a :class:`Session` to a board, checking its host key against its known_hosts only."""
    board = get_board(board) if isinstance(board, str) else board
    if not board.key.is_file():
        raise BoardAuthError(f"board {board.name}: key file {board.key} not found")
    if not board.known_hosts.is_file() and not trust_on_first_use:
        raise HostKeyError(f"board {board.name}: known_hosts file {board.known_hosts} not found: refusing to "
                           f"connect (add the board's host key to it, or use --trust-on-first-use)")
    # An explicit, empty SSH config and lazy loading: no ~/.ssh/config, no /etc/ssh, no fabric.yml.
    config = Config(ssh_config=SSHConfig(), lazy=True)
    conn = Connection(board.host, user=board.user, port=board.port, config=config, connect_timeout=timeout,
                      connect_kwargs={"key_filename": [str(board.key)], "look_for_keys": False,
                                      "allow_agent": False, "banner_timeout": timeout, "auth_timeout": timeout})
    client = paramiko.SSHClient()  # fabric's own client would auto-add unknown keys
    if board.known_hosts.is_file():
        with _errors(board, "reading known_hosts"):
            client.load_host_keys(str(board.known_hosts))
    client.set_missing_host_key_policy(_TrustOnFirstUse(board) if trust_on_first_use else _RejectUnknown(board))
    conn.client = client
    session = Session(board, conn)
    try:
        with _errors(board, "while connecting", None):
            conn.open()
            conn.transport.set_keepalive(15)
        with session.errors("resolving the remote directory"):
            home = session.sftp.normalize(".")
        remote_dir = board.remote_dir[2:] if board.remote_dir.startswith("~/") else board.remote_dir
        session.remote = posixpath.normpath(posixpath.join(home, remote_dir))
        yield session
    finally:
        with contextlib.suppress(Exception):
            conn.close()


# --------------------------------------------------------------------------------------- deploy

@dataclass
class DeployResult:
    board: str
    release: str  # the content hash
    path: str  # the release's folder on the board
    files: int
    bytes: int
    uploaded: bool  # False when the release was on the board already
    previous: str | None  # the release that was current before (a hash), if any
    switched: bool  # False when the release was current already
    smoke_output: str = ""

    def summary(self) -> str:
        what = "uploaded" if self.uploaded else "already on the board"
        switch = (f"current -> {self.release[:12]} (was {self.previous[:12] if self.previous else 'none'})"
                  if self.switched else "already current")
        files = f"{self.files} file{'' if self.files == 1 else 's'}, {self.bytes} bytes"
        return f"{self.board}: {self.release[:12]} ({files}) {what}, verified, {switch}"


@dataclass
class FleetResult:
    board: str
    result: DeployResult | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def _release_of(link: str | None) -> str | None:
    if not link:
        return None
    name = posixpath.basename(link.rstrip("/"))
    return name if _HASH.fullmatch(name) else None


def _stack(history: str | None) -> list[str]:
    """Replay HISTORY: deploy pushes a release, rollback pops back to the one it names."""
    stack: list[str] = []
    for line in (history or "").splitlines():
        fields = line.split()
        if len(fields) != 3 or not _HASH.fullmatch(fields[2]):
            continue
        action, release = fields[1], fields[2]
        if action == "deploy":
            if not stack or stack[-1] != release:
                stack.append(release)
        elif action == "rollback":
            if stack:
                stack.pop()
            if not stack or stack[-1] != release:
                stack.append(release)
    return stack


def _switch(s: Session, release: str, action: str) -> None:
    """current -> releases/<release>: a symlink under a temporary name renamed over the old one."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    tmp = f".current.{os.getpid()}.tmp"
    cmd = (f"cd {shlex.quote(s.remote)} && rm -f {tmp} && ln -s releases/{release} {tmp} && "
           f"mv -T {tmp} current && printf '%s\\n' '{stamp} {action} {release}' >> releases/{HISTORY}")
    s.sh(cmd, f"switching current to {release[:12]}")


def _verify(s: Session, where: str, manifest: Manifest) -> None:
    got = json.loads(s.python(_HASH_SCRIPT, where, doing="computing sha256 on the board") or "{}")
    want = manifest.expected()
    bad = sorted(p for p in want if p in got and got[p] != want[p])
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    if bad or missing or extra:
        def names(xs):
            return ", ".join(xs[:3]) + (f" and {len(xs) - 3} more" if len(xs) > 3 else "")
        parts = ([f"sha256 differs for {names(bad)}"] if bad else []) + \
                ([f"missing {names(missing)}"] if missing else []) + ([f"unexpected {names(extra)}"] if extra else [])
        raise ChecksumError(f"board {s.board.name}: release {manifest.content_hash[:12]} does not match its "
                            f"manifest: {'; '.join(parts)}; current was not switched")


def _smoke(s: Session, release_dir: str, smoke_cmd: str) -> str:
    cmd = smoke_cmd.replace("{python}", shlex.quote(s.board.python))
    r = s.sh(f"cd {shlex.quote(release_dir)} && {cmd}", "running the smoke test", check=False)
    if r.exited != 0:
        if _is_dropped(s.conn):
            raise BoardConnectionError(f"board {s.board.name}: connection dropped during the smoke test; "
                                       f"current was not switched")
        raise SmokeTestError(f"board {s.board.name}: smoke test `{smoke_cmd}` failed (exit {r.exited}): "
                             f"{r.last_line()}; current was not switched")
    return r.stdout


def _upload(s: Session, manifest: Manifest, partial: str, progress, test_hook) -> None:
    from tqdm import tqdm

    sftp = s.sftp
    made = {partial}
    with tqdm(total=manifest.total_bytes, unit="B", unit_scale=True, desc=f"deploy {s.board.name}",
              disable=(None if progress is None else not progress), file=sys.stderr, leave=False) as bar:
        for i, (rel, _sha, _size, mode) in enumerate(manifest.files, 1):
            remote = posixpath.join(partial, rel)
            parent = posixpath.dirname(remote)
            missing = []
            while parent not in made:
                missing.append(parent)
                parent = posixpath.dirname(parent)
            with s.errors(f"uploading {rel}"):
                for d in reversed(missing):
                    sftp.mkdir(d)
                    made.add(d)
                done = [0]

                def step(sent, _total, done=done):
                    bar.update(sent - done[0])
                    done[0] = sent

                sftp.put(str(manifest.root / rel), remote, callback=step, confirm=True)
                sftp.chmod(remote, mode)
            if test_hook:
                test_hook("uploaded", {"board": s.board, "path": rel, "index": i, "total": len(manifest.files)})
        with s.errors("uploading the manifest"), sftp.open(posixpath.join(partial, MANIFEST), "w") as fh:
            fh.write(manifest.text.encode())


def deploy(board: Board | str, local_dir, smoke_cmd: str | None = None, *, trust_on_first_use: bool = False,
           keep: int = 3, progress: bool | None = None, manifest: Manifest | None = None,
           test_hook: Callable[[str, dict], None] | None = None) -> DeployResult:
    """Upload ``local_dir`` as a release, verify it, smoke-test it, then make it ``current``.

    ``smoke_cmd`` runs in the release's folder on the board; ``{python}`` in it stands for the board's
    python. ``keep`` releases of the history (at least 2) stay on the board; older ones are removed.
    ``progress`` None shows a bar on a terminal only. ``test_hook(event, info)`` is for tests only:
    called with "uploaded" after each file and "before_verify" (info has "release" and "run").
    """
    board = get_board(board) if isinstance(board, str) else board
    if keep < 2:
        raise MedcodecError("keep must be at least 2 (the current release and the one to roll back to)")
    manifest = manifest or build_manifest(local_dir)
    release = manifest.content_hash
    with connect(board, trust_on_first_use) as s:
        releases = s.path("releases")
        final = posixpath.join(releases, release)
        partial = final + ".partial"
        s.sh(f"mkdir -p {shlex.quote(releases)} && rm -rf {shlex.quote(releases)}/*.partial",
             "preparing the releases folder")
        previous = _release_of(s.readlink("current"))
        uploaded = not s.exists(posixpath.join("releases", release))
        where = partial if uploaded else final
        if uploaded:
            s.sh(f"mkdir {shlex.quote(partial)}", "making the upload folder")
            _upload(s, manifest, partial, progress, test_hook)
        if test_hook:
            test_hook("before_verify", {"board": board, "release": where,
                                        "run": lambda cmd: s.sh(cmd, "running a test hook")})
        try:
            _verify(s, where, manifest)
        except ChecksumError:
            if uploaded:
                s.sh(f"rm -rf {shlex.quote(partial)}", "removing the failed upload", check=False)
            raise
        if uploaded:
            with s.errors("completing the release"):
                s.sftp.rename(partial, final)  # plain SFTP rename: fails if the target exists
        smoke_output = _smoke(s, final, smoke_cmd) if smoke_cmd else ""
        switched = previous != release
        if switched:
            _switch(s, release, "deploy")
        try:
            _prune(s, keep)
        except BoardError as exc:  # the deploy itself is done: say so, do not fail it
            print(f"warning: {exc} (old releases were not removed)", file=sys.stderr)
    return DeployResult(board.name, release, final, len(manifest.files), manifest.total_bytes, uploaded,
                        previous, switched, smoke_output)


def _prune(s: Session, keep: int) -> list[str]:
    """Remove releases that are neither current nor among the last ``keep`` of the history."""
    stack = _stack(s.read_text(posixpath.join("releases", HISTORY)))
    keepers = set()
    for release in reversed(stack):
        if len(keepers) >= keep:
            break
        keepers.add(release)
    current = _release_of(s.readlink("current"))
    if current:
        keepers.add(current)
    with s.errors("listing releases"):
        names = s.sftp.listdir(s.path("releases"))
    old = [n for n in names if _HASH.fullmatch(n) and n not in keepers]
    if old:
        s.sh("rm -rf " + " ".join(shlex.quote(s.path("releases", n)) for n in old), "removing old releases")
    return old


def deploy_fleet(boards, local_dir, smoke_cmd: str | None = None, *, max_workers: int | None = None,
                 **kwargs) -> list[FleetResult]:
    """Deploy to several boards at once (a thread each); one result per board, in order.

    A board that fails does not stop the others; its result carries the one-line error.
    """
    boards = [get_board(b) if isinstance(b, str) else b for b in boards]
    manifest = build_manifest(local_dir)

    def one(b: Board) -> FleetResult:
        try:
            return FleetResult(b.name, deploy(b, local_dir, smoke_cmd, manifest=manifest, **kwargs))
        except MedcodecError as exc:
            return FleetResult(b.name, error=str(exc))

    with ThreadPoolExecutor(max_workers=max_workers or max(1, min(len(boards), 8))) as pool:
        return list(pool.map(one, boards))


# ------------------------------------------------------------------------------ rollback, run, fetch

@dataclass
class RollbackResult:
    board: str
    previous: str  # the release that was current
    current: str  # the release now current


def rollback(board: Board | str, smoke_cmd: str | None = None, *,
             trust_on_first_use: bool = False) -> RollbackResult:
    """Point ``current`` back at the release before it (smoke-testing it first when asked)."""
    board = get_board(board) if isinstance(board, str) else board
    with connect(board, trust_on_first_use) as s:
        current = _release_of(s.readlink("current"))
        if current is None:
            raise BoardError(f"board {board.name}: no current release to roll back from")
        stack = _stack(s.read_text(posixpath.join("releases", HISTORY)))
        if not stack or stack[-1] != current:
            raise BoardError(f"board {board.name}: current release {current[:12]} is not the last one in "
                             f"releases/{HISTORY}; refusing to guess the previous one")
        if len(stack) < 2:
            raise BoardError(f"board {board.name}: nothing to roll back to ({current[:12]} is the only release "
                             f"in releases/{HISTORY})")
        target = stack[-2]
        if not s.exists(posixpath.join("releases", target)):
            raise BoardError(f"board {board.name}: the previous release {target[:12]} is no longer on the board")
        if smoke_cmd:
            _smoke(s, s.path("releases", target), smoke_cmd)
        _switch(s, target, "rollback")
    return RollbackResult(board.name, current, target)


def current_release(board: Board | str, *, trust_on_first_use: bool = False) -> str | None:
    """The content hash ``current`` points at, or None."""
    with connect(board, trust_on_first_use) as s:
        return _release_of(s.readlink("current"))


def run(board: Board | str, cmd: str, *, check: bool = True, timeout: int | None = COMMAND_TIMEOUT_S,
        trust_on_first_use: bool = False) -> RunResult:
    """Run a shell command on the board in its remote directory (``{python}``: the board's python)."""
    board = get_board(board) if isinstance(board, str) else board
    with connect(board, trust_on_first_use) as s:
        s.sh(f"mkdir -p {shlex.quote(s.remote)}", "making the remote directory")
        cmd = cmd.replace("{python}", shlex.quote(board.python))
        return s.sh(f"cd {shlex.quote(s.remote)} && {cmd}", f"running `{cmd}`", check=check, timeout=timeout)


def fetch(board: Board | str, remote_path: str, local_path, *, force: bool = False,
          trust_on_first_use: bool = False) -> Path:
    """Copy a file from the board (relative paths: to its remote directory), checked by sha256.

    Written to a temporary name beside ``local_path`` and renamed, so it is whole or absent.
    """
    board = get_board(board) if isinstance(board, str) else board
    local = check_writable(local_path, force)
    parent = local.parent if str(local.parent) else Path(".")
    if not parent.is_dir():
        raise MedcodecError(f"{local}: directory {parent} does not exist")
    with connect(board, trust_on_first_use) as s:
        remote = s.path(remote_path)
        want = s.python(_HASH_FILE_SCRIPT, remote, doing=f"hashing {remote_path}").strip()
        fd, tmp = tempfile.mkstemp(prefix=f".{local.name}.", suffix=".tmp", dir=parent)
        os.close(fd)
        try:
            with s.errors(f"fetching {remote_path}"):
                s.sftp.get(remote, tmp)
            got = sha256_file(Path(tmp))
            if got != want:
                raise ChecksumError(f"board {board.name}: {remote_path} arrived with sha256 {got[:12]}, "
                                    f"the board has {want[:12]}")
            os.replace(tmp, local)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
    return local
