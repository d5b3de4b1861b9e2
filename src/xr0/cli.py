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
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of an error (also XR0_DEBUG=1); accepted anywhere on the line")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for entry in COMMANDS.entries():
        p = sub.add_parser(entry.name, help=entry.doc, description=entry.doc)
        entry.obj.add_arguments(p)
        p.set_defaults(_run=entry.obj.run)
    return parser


def one_line(exc: BaseException) -> str:
    """An exception as one line: xr0's own errors by their message, anything else with its type in front."""
    from xr0.config import RecipeError
    from xr0.plugins import PluginError
    from xr0.registry import RegistryError
    from xr0.run import RunFolderBusy

    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[0] if lines else ""
    if len(lines) > 1:  # a list of problems ("recipe is invalid:\n  - a\n  - b") reads as "...: a; b"
        text += " " + "; ".join(line.removeprefix("- ") for line in lines[1:])
    own = (RecipeError, RegistryError, PluginError, RunFolderBusy, FileNotFoundError, ValueError)
    if not isinstance(exc, own) or not text:
        text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text


def main(argv: list[str] | None = None) -> int:
    """Every error ends here as one line `xr0: error: ...` and exit status 2 (--debug: the traceback)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or bool(os.environ.get("XR0_DEBUG"))
    argv = [a for a in argv if a != "--debug"]
    try:
        from xr0.plugins import load_plugins

        load_plugins()  # once, before the verbs are listed: plugins add verbs, robots and components
        parser = build_parser()
        args = parser.parse_args(argv)
        if not getattr(args, "_run", None):
            parser.print_help()
            return 1
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        if debug:
            raise
        print("xr0: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # the CLI boundary: nothing reaches the user as a raw traceback
        if debug:
            raise
        print(f"xr0: error: {one_line(exc)} (--debug for the traceback)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
