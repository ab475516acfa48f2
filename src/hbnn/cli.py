"""The ``hbnn`` command line: a thin argparse front over importable functions.

Each feature package contributes its subcommands through a ``commands`` module with a
``register(subparsers)`` function; heavy imports happen inside the handlers, so
``hbnn --help`` stays fast. User mistakes (:class:`hbnn.errors.HbnnError`, ``ValueError``,
``TypeError``, ``OSError``) print one line and exit with code 2; set ``HBNN_DEBUG=1`` to
see the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

__all__ = ["main", "run", "build_parser", "exit_process"]

# Feature packages that contribute subcommands, in help order.
_COMMAND_MODULES = (
    "hbnn.showcase",
    "hbnn.train.commands",
    "hbnn.experiments.commands",
    "hbnn.hw.commands",
    "hbnn.export.commands",
)


class _Parser(argparse.ArgumentParser):
    """argparse with exit code 2 and a one-line message for usage errors."""

    def error(self, message: str) -> None:  # noqa: D401 - argparse API
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """Build the full parser from every available command module."""
    parser = _Parser(prog="hbnn", description="Heterogeneous Bitwidth Binarization toolkit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:  # a real import error inside the module
                raise
            continue
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``hbnn`` console script; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = args.func(args)
    except KeyboardInterrupt:
        print("hbnn: interrupted", file=sys.stderr)
        return 130
    except (ValueError, TypeError, OSError) as exc:
        if os.environ.get("HBNN_DEBUG"):
            raise
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"hbnn: error: {message}", file=sys.stderr)
        return 2
    return int(result or 0)


def exit_process(code: int) -> None:
    """Exit with ``code``; a torchrun worker (``WORLD_SIZE`` > 1) skips interpreter teardown.

    Every file hbnn writes is closed (atomic writes) before ``main`` returns. Under gloo,
    a worker's C++ teardown at interpreter exit can abort ("terminate called without an
    active exception") while a peer is still finishing, failing a job that succeeded;
    ``os._exit`` after flushing the standard streams avoids that teardown.
    """
    try:
        world = int(os.environ.get("WORLD_SIZE") or 1)
    except ValueError:
        world = 1
    if world > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


def run() -> None:
    """The ``hbnn`` console script: :func:`main`, then :func:`exit_process`."""
    exit_process(main())


if __name__ == "__main__":  # pragma: no cover
    run()
