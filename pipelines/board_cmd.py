"""``medcodec board-sim``, ``deploy`` and ``rollback``: the boards of ``boards/boards.toml``.

    medcodec board-sim up|down|status [--board sim]
    medcodec deploy --board NAME[,NAME...] --dir DIR [--smoke CMD] [--trust-on-first-use] [--keep N]
    medcodec rollback --board NAME[,NAME...] [--smoke CMD] [--trust-on-first-use]

A comma-separated ``--board`` is a fleet: every board is tried, one line each, and the command
fails (exit 1) when any board failed. The logic lives in board/deploy.py and board/sim.py.
"""

from __future__ import annotations

from board import deploy as deploy_mod
from board import sim
from board.inventory import get_boards, sim_dir
from codec.errors import MedcodecError


def register(sub) -> None:
    p = sub.add_parser("board-sim", help="start, stop or show the virtual board (sshd on 127.0.0.1)",
                       description="The virtual board: OpenSSH's sshd on 127.0.0.1 with its keys, config and "
                                   "remote directory under its sim folder (build/sim-board for the board sim).")
    p.add_argument("action", choices=("up", "down", "status"))
    p.add_argument("--board", default="sim", help="a virtual board of the inventory (default sim)")
    p.add_argument("--inventory", default=None, metavar="TOML", help="board inventory (default boards/boards.toml)")
    p.set_defaults(func=run_sim)

    p = sub.add_parser("deploy", help="upload a folder to boards as a verified release and make it current",
                       description="Upload DIR to releases/<content-hash> on each board, check every sha256 on "
                                   "the board, run the smoke test there, then switch `current` atomically.")
    p.add_argument("--board", required=True, help="board name, or a comma-separated fleet")
    p.add_argument("--dir", required=True, help="the folder to deploy")
    p.add_argument("--smoke", default=None, metavar="CMD",
                   help="command run inside the new release before the switch; {python} is the board's python")
    p.add_argument("--trust-on-first-use", action="store_true",
                   help="accept and record an unknown host key (a changed one is always refused)")
    p.add_argument("--keep", type=int, default=3, help="releases kept on the board (default 3, at least 2)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--inventory", default=None, metavar="TOML")
    p.set_defaults(func=run_deploy)

    p = sub.add_parser("rollback", help="point a board's current release back at the previous one",
                       description="Switch `current` back to the release before it (releases/HISTORY).")
    p.add_argument("--board", required=True, help="board name, or a comma-separated fleet")
    p.add_argument("--smoke", default=None, metavar="CMD", help="smoke-test the previous release before switching")
    p.add_argument("--trust-on-first-use", action="store_true")
    p.add_argument("--inventory", default=None, metavar="TOML")
    p.set_defaults(func=run_rollback)


def run_sim(args) -> int:
    where = sim_dir(args.board, args.inventory)
    if args.action == "up":
        info = sim.up(where)
        state = "already up" if info.already_up else "up"
        print(f"virtual board {args.board} {state}: {info.user}@{info.host}:{info.port} (sshd pid {info.pid}), "
              f"remote directory {where / 'root'}")
    elif args.action == "down":
        was = sim.down(where)
        print(f"virtual board {args.board} {'stopped' if was else 'was not running'}")
    else:
        info = sim.status(where)
        if info is None:
            print(f"virtual board {args.board}: down ({where})")
        else:
            print(f"virtual board {args.board}: up at {info.user}@{info.host}:{info.port} (sshd pid {info.pid})")
    return 0


def _fleet_failed(what: str, failed: list[str], total: int) -> MedcodecError:
    return MedcodecError(f"{what} failed on {len(failed)} of {total} boards ({', '.join(failed)})")


def run_deploy(args) -> int:
    boards = get_boards(args.board, args.inventory)
    progress = False if args.no_progress else None
    if len(boards) == 1:
        result = deploy_mod.deploy(boards[0], args.dir, args.smoke, trust_on_first_use=args.trust_on_first_use,
                                   keep=args.keep, progress=progress)
        print(result.summary())
        return 0
    results = deploy_mod.deploy_fleet(boards, args.dir, args.smoke, trust_on_first_use=args.trust_on_first_use,
                                      keep=args.keep, progress=progress)
    for r in results:
        print(r.result.summary() if r.ok else f"{r.board}: FAILED: {r.error}")
    failed = [r.board for r in results if not r.ok]
    if failed:
        raise _fleet_failed("deploy", failed, len(results))
    return 0


def run_rollback(args) -> int:
    boards = get_boards(args.board, args.inventory)
    failed = []
    for board in boards:
        try:
            r = deploy_mod.rollback(board, args.smoke, trust_on_first_use=args.trust_on_first_use)
        except MedcodecError as exc:
            if len(boards) == 1:
                raise
            print(f"{board.name}: FAILED: {exc}")
            failed.append(board.name)
            continue
        print(f"{r.board}: current -> {r.current[:12]} (was {r.previous[:12]})")
    if failed:
        raise _fleet_failed("rollback", failed, len(boards))
    return 0
