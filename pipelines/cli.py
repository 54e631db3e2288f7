"""The ``medcodec`` command line.

Each subcommand lives in its own module, which exposes ``register(subparsers)``:
it adds its parser and sets ``func`` to a callable ``(args) -> int``. Exit codes:
0 success, 1 a failed run (one-line message on stderr, never a traceback for a
user error), 2 bad usage (argparse's own convention).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from codec.errors import MedcodecError

# Subcommand modules, in the order ``--help`` lists them.
COMMANDS = (
    "pipelines.compress",
    "pipelines.eval_cmd",
    "pipelines.info",
    "pipelines.baseline",
    "pipelines.residual_eval",
    "pipelines.volume_cmd",
    "pipelines.train",
    "pipelines.export",
    "pipelines.partition_cmd",
    "pipelines.demo",
    "pipelines.bench",
    "pipelines.board_cmd",
    "pipelines.stage_cmd",
    "pipelines.qat_cmd",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medcodec",
        description="Learned compression of medical images (DICOM) for edge DPUs.",
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except MedcodecError as exc:
        if args.debug:
            raise
        print(f"medcodec {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"medcodec {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
