"""``hbnn kernels``: build the C kernels ahead of time (``build``) or show their state (``status``).

``build`` compiles the shared library for this machine now (or loads the cached one) so the
first training step does not; ``status`` reports without compiling. Both honour
``$HBNN_KERNELS`` (:mod:`hbnn.kernels.toolchain`). Imports happen inside the handlers.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

__all__ = ["register"]


def _report(args: argparse.Namespace, info: dict) -> int:
    from hbnn.kernels.toolchain import format_status

    print(json.dumps(info, indent=2) if args.json else format_status(info))
    return 0


def _cmd_build(args: argparse.Namespace) -> int:
    from hbnn.kernels.toolchain import build

    return _report(args, build())


def _cmd_status(args: argparse.Namespace) -> int:
    from hbnn.kernels.toolchain import status

    return _report(args, status())


def register(subparsers: Any) -> None:
    """Add ``kernels`` with ``build`` and ``status``."""
    kernels = subparsers.add_parser("kernels", help="build the C kernels now, or show which variant runs")
    sub = kernels.add_subparsers(dest="kernels_command", metavar="SUBCOMMAND", parser_class=type(kernels))
    sub.required = True
    p = sub.add_parser("build", help="compile the C kernels for this machine now (cached; HBNN_KERNELS applies)")
    p.add_argument("--json", action="store_true", help="print the status as a JSON object")
    p.set_defaults(func=_cmd_build)
    p = sub.add_parser("status", help="mode, compiler, cached library and selected variant, without compiling")
    p.add_argument("--json", action="store_true", help="print the status as a JSON object")
    p.set_defaults(func=_cmd_status)
