"""The ``hbnn`` command line: a thin argparse front over importable functions.

Each feature package contributes its subcommands through a ``commands`` module with a
``register(subparsers)`` function, listed in :data:`COMMAND_MODULES` (they always ship with
hbnn and are imported directly); heavy imports happen inside the handlers, so
``hbnn --help`` stays fast.

Errors and exit codes:

* a user mistake -- a bad argument, config value or file (every
  :class:`hbnn.errors.HbnnError`: ``ConfigError``, ``DatasetError``, ``CheckpointError``,
  ``FormatError``, ``DistError``), and the plain ``ValueError``, ``TypeError`` and
  ``OSError`` that library calls raise for bad input -- prints **one line**,
  ``<prog>: error: <what, which file, how to fix>``, and exits with code 2; set
  ``HBNN_DEBUG=1`` to see the traceback instead;
* anything else (``RuntimeError``, ``KeyError``, ``AssertionError``, ...) is a bug in hbnn,
  not in the user's files: it is deliberately *not* caught, so it prints its full traceback
  and exits with code 1. Loaders therefore validate what they read and raise the hbnn
  error of their kind; nothing here catches ``Exception`` to hide a bug;
* Ctrl-C prints ``<prog>: interrupted`` and exits with code 130.

:class:`Parser`, :func:`new_parser` and :func:`main` (with ``parser=``) are public so that
another front end (the repository's ``python -m research``) gets the same behaviour.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from hbnn.errors import HbnnError

__all__ = ["COMMAND_MODULES", "Parser", "new_parser", "build_parser", "main", "run", "exit_process"]

#: Feature packages that contribute subcommands, in help order.
COMMAND_MODULES = (
    "hbnn.train.commands",
    "hbnn.experiments.commands",
    "hbnn.hw.commands",
    "hbnn.export.commands",
    "hbnn.kernels.commands",
)


class Parser(argparse.ArgumentParser):
    """argparse with exit code 2 and a one-line message for usage errors."""

    def error(self, message: str) -> None:  # noqa: D401 - argparse API
        self.exit(2, f"{self.prog}: error: {message}\n")


def new_parser(prog: str, description: str) -> tuple[Parser, argparse._SubParsersAction]:
    """An empty :class:`Parser` and its (required) subcommand group, for ``register(subparsers)``."""
    parser = Parser(prog=prog, description=description)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    return parser, sub


def build_parser() -> Parser:
    """Build the full ``hbnn`` parser from every module in :data:`COMMAND_MODULES`."""
    parser, sub = new_parser("hbnn", "Heterogeneous Bitwidth Binarization toolkit")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None, *, parser: argparse.ArgumentParser | None = None) -> int:
    """Parse ``argv``, run the chosen handler, return the process exit code.

    Args:
        argv: arguments (default ``sys.argv[1:]``).
        parser: the parser to use (default :func:`build_parser`, the ``hbnn`` command);
            its ``prog`` prefixes the one-line error messages.

    Returns:
        The handler's code (None counts as 0); 2 after a user mistake, 130 after Ctrl-C
        (a bug propagates: traceback, exit 1; see the module docstring).
    """
    parser = parser or build_parser()
    args = parser.parse_args(argv)
    try:
        result = args.func(args)
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`hbnn recipes | head`): not an error of ours
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the interpreter's final flush does not fail again
        return 0
    except HbnnError as exc:  # every user-file problem (also a ValueError; named for clarity)
        return _one_line(parser.prog, exc)
    except (ValueError, TypeError, OSError) as exc:  # bad input reported by Python or torch
        return _one_line(parser.prog, exc)
    return int(result or 0)


def _one_line(prog: str, exc: BaseException) -> int:
    """Print ``exc`` as ``prog: error: <first line>`` and return 2 (re-raise with ``HBNN_DEBUG``)."""
    if os.environ.get("HBNN_DEBUG"):
        raise exc
    text = str(exc).strip()
    message = text.splitlines()[0] if text else type(exc).__name__
    print(f"{prog}: error: {message}", file=sys.stderr)
    return 2


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
