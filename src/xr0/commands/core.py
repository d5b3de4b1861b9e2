"""The foundation verbs: fit, validate, ls, plugins."""
from __future__ import annotations

from xr0.registry import ALL, COMMANDS


@COMMANDS.register("fit")
class Fit:
    """Train the stage a recipe names (overrides as key.path=value)."""

    @staticmethod
    def add_arguments(p):
        p.add_argument("recipe")
        p.add_argument("overrides", nargs="*", help="dotlist overrides, e.g. trainer.max_steps=10")
        p.add_argument("--resume", default=None, help="checkpoint path, or 'last' for the run's last.ckpt")

    @staticmethod
    def run(args):
        from xr0.run import fit

        fit(args.recipe, args.overrides, resume=args.resume)
        return 0


@COMMANDS.register("validate")
class Validate:
    """Check recipes (components, arguments, data cards) without running anything."""

    @staticmethod
    def add_arguments(p):
        p.add_argument("recipe", nargs="+")
        p.add_argument("--set", dest="overrides", action="append", default=[], help="override key.path=value")

    @staticmethod
    def run(args):
        from xr0.config import RecipeError, load_recipe, validate

        bad = 0
        for path in args.recipe:
            try:
                validate(load_recipe(path, args.overrides))
                print(f"ok      {path}")
            except RecipeError as exc:
                bad += 1
                print(f"INVALID {path}: {exc}")
        return 1 if bad else 0


@COMMANDS.register("ls")
class Ls:
    """List registered components: name, where from, one-line doc."""

    @staticmethod
    def add_arguments(p):
        p.add_argument("registry", nargs="?", choices=sorted(ALL), help="one registry (default: all)")

    @staticmethod
    def run(args):
        for kind, reg in ALL.items():
            if args.registry and kind != args.registry:
                continue
            print(f"{kind}s:")
            for e in reg.entries():
                print(f"  {e.name:<24} {e.origin:<24} {e.doc}")
        return 0


@COMMANDS.register("plugins")
class Plugins:
    """List installed xr0 plugins (entry-point group xr0.plugins)."""

    @staticmethod
    def add_arguments(p):
        pass

    @staticmethod
    def run(args):
        from xr0.plugins import load_plugins

        found = load_plugins()
        if not found:
            print("no plugins installed (entry-point group 'xr0.plugins')")
        for p in found:
            state = f"FAILED: {p.error}" if p.error else "ok"
            print(f"{p.name:<20} {p.distribution}=={p.version:<12} {p.module:<28} {state}")
        return 0


@COMMANDS.register("export")
class Export:
    """Export a checkpoint: safetensors weights + JSON metadata (recipe, embodiment, statistics)."""

    @staticmethod
    def add_arguments(p):
        p.add_argument("checkpoint")
        p.add_argument("out_dir")

    @staticmethod
    def run(args):
        from xr0.export import export_checkpoint

        out = export_checkpoint(args.checkpoint, args.out_dir)
        print(f"exported {args.checkpoint} -> {out}")
        return 0
