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
                for problem in exc.problems:  # one line each, led by the YAML path
                    print(f"INVALID {path}: {problem}")
        return 1 if bad else 0


@COMMANDS.register("ls")
class Ls:
    """List registered components: name, where from, one-line doc."""

    @staticmethod
    def add_arguments(p):
        p.add_argument("registry", nargs="?", type=lambda s: s[:-1] if s.endswith("s") and s[:-1] in ALL else s,
                       choices=sorted(ALL), help="one registry, singular or plural (default: all)")

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
    """Export a checkpoint: xr0 format (safetensors + JSON metadata) or the released Xiaomi-Robotics-0 layout."""

    @staticmethod
    def add_arguments(p):
        p.add_argument("checkpoint", help="Lightning checkpoint (xr0 format); for --format release also an xr0 "
                                          "export directory, e.g. the output of `xr0 import-release`")
        p.add_argument("out_dir")
        p.add_argument("--format", choices=("xr0", "release"), default="xr0",
                       help="xr0: model.safetensors + xr0.json (what `xr0 serve` and init_from read); release: "
                            "the MiBoTForActionGeneration layout the released inference code serves")
        p.add_argument("--template", default=None,
                       help="release format: release directory to take config.json, processor, tokenizer and remote "
                            "code from (default: the import's release_files/ when the model came from "
                            "`xr0 import-release`)")
        p.add_argument("--max-shard-gb", type=float, default=5.0, help="release format: shard size")
        p.add_argument("--allow-state-norm", action="store_true",
                       help="release format: export even though the model expects normalised states "
                            "(the release feeds the raw state)")

    @staticmethod
    def run(args):
        if args.format == "release":
            from xr0.commands.release import export_release_verb

            return export_release_verb(args.checkpoint, args.out_dir, args.template, args.max_shard_gb,
                                       args.allow_state_norm)
        if args.template is not None:
            import sys

            print("xr0: error: --template only applies to --format release", file=sys.stderr)
            return 2
        from xr0.export import export_checkpoint

        out = export_checkpoint(args.checkpoint, args.out_dir)
        print(f"exported {args.checkpoint} -> {out}")
        return 0
