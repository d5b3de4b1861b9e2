"""The `xr0` command. Each verb is a COMMANDS entry (a class with `add_arguments` and `run`).

Adding a verb is a few lines in a module under xr0/commands/ (found automatically) or in a plugin:

    @COMMANDS.register("hello")
    class Hello:
        '''Say hello.'''
        @staticmethod
        def add_arguments(p): p.add_argument("who")
        @staticmethod
        def run(args): print("hello", args.who); return 0
"""
from __future__ import annotations

import argparse
import os
import sys

from xr0.registry import COMMANDS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xr0", description="Train and deploy vision-language-action policies.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for entry in COMMANDS.entries():
        p = sub.add_parser(entry.name, help=entry.doc, description=entry.doc)
        entry.obj.add_arguments(p)
        p.set_defaults(_run=entry.obj.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    from xr0.config import RecipeError
    from xr0.plugins import PluginError
    from xr0.registry import RegistryError

    try:
        parser = build_parser()
    except PluginError as exc:
        print(f"xr0: error: {exc}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 1
    try:
        return int(args._run(args) or 0)
    except (RecipeError, RegistryError, PluginError, FileNotFoundError, ValueError) as exc:
        # xr0's own errors (bad recipe, card, checkpoint, embodiment) say what to fix: print just that
        if os.environ.get("XR0_DEBUG"):
            raise
        print(f"xr0: error: {exc}\n(set XR0_DEBUG=1 for the traceback)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
